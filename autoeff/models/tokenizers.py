"""Small tokenizers for the tiny test pipelines, built in memory (no download, no files).

transformers 5's `CLIPTokenizer` and `T5Tokenizer` are backed by the `tokenizers` library and accept a
vocabulary (and merges) as Python objects; `save_pretrained` writes a `tokenizer.json` that
`from_pretrained` reads back, so pipelines holding them round-trip through a folder. (The file-path
arguments `vocab_file=`/`merges_file=` are silently ignored by transformers 5, see FACTS.md; passing the
objects avoids files altogether.)

The vocabularies are deliberately minimal but complete, so no input ever maps to "unknown":
- CLIP: byte-level BPE with no merges, i.e. the 256 byte symbols, the same with CLIP's end-of-word suffix
  `</w>`, then `<|startoftext|>` and `<|endoftext|>` last, as in the real CLIP vocabulary (514 entries).
- T5: a Unigram model over printable ASCII characters, each alone and with SentencePiece's word-start
  marker, after T5's `<pad>`, `</s>`, `<unk>` (3 + 1 + 2 * 94 = 192 entries).
- Gemma (Sana's text encoder): a BPE model with no merges over the same characters, after Gemma's `<pad>`,
  `<eos>`, `<bos>`, `<unk>`, `<mask>` (5 + 1 + 2 * 94 = 194 entries).
"""

from __future__ import annotations

import string

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

CLIP_MAX_LENGTH = 77  # CLIP's context length; SD pipelines pad prompts to `tokenizer.model_max_length`.
T5_MAX_LENGTH = 512


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer, 514 tokens: bytes 0-255, bytes + `</w>` 256-511, bos 512, eos 513."""
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A character-level T5 (Unigram) tokenizer with 192 tokens (`<pad>`=0, `</s>`=1, `<unk>`=2)."""
    chars = sorted(set(string.printable) - set(string.whitespace))
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in chars:
        pieces.append(("\u2581" + c, -3.0))
        pieces.append((c, -4.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def tiny_gemma_tokenizer() -> GemmaTokenizer:
    """A character-level Gemma (BPE, no merges) tokenizer with 194 tokens (`<pad>`=0, `<eos>`=1, `<bos>`=2)."""
    chars = sorted(set(string.printable) - set(string.whitespace))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for c in chars:
        vocab[c] = len(vocab)
        vocab["\u2581" + c] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[])
