"""Models from the Hugging Face Hub, fetched the way diffusers' `from_pretrained` fetches them.

A hub id (`org/name`, or the ids behind an alias such as `sdxl`) resolves to a snapshot folder:

- **offline** (`HF_HUB_OFFLINE=1`, or `--offline`): only the local cache is read; a model that is not there is
  refused in one line naming the model, the cache and the setting.
- **online** (the default, as with diffusers): `DiffusionPipeline.download` (diffusers) returns the cached
  snapshot when it is complete and otherwise downloads exactly the files `from_pretrained` would read: configs,
  tokenizers and safetensors weights (`use_safetensors=True`: pickled `.bin` weights are never fetched), never a
  repository's own pipeline code (`trust_remote_code=False`: such a repository is refused before anything
  runs). `HF_ENDPOINT` (a mirror) and `HF_TOKEN` (gated models) are honoured as huggingface_hub reads them.

The cache folder is the one `registry.hub_cache_dir()` reads from the environment at call time. Nothing here
loads weights; `registry` loads the folder this returns with its usual checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")


class HubUnavailableError(Exception):
    """The model cannot be had from the cache or the Hub; the message names the model and the setting."""


def offline(explicit: bool | None = None) -> bool:
    """Whether to stay off the network: `explicit` when given, else `HF_HUB_OFFLINE` read now (huggingface_hub
    reads it once, at import; a CLI flag or a test sets it later)."""
    if explicit is not None:
        return explicit
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in OFFLINE_VALUES


def endpoint() -> str:
    """The Hub endpoint downloads go to (for messages): `HF_ENDPOINT`, else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cached_snapshot(repo_id: str, cache: Path) -> Path | None:
    """The cached snapshot folder of `repo_id` at `main`, if its model_index.json is in `cache`."""
    path = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=str(cache))
    return Path(path).parent if isinstance(path, str) else None


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:240]


def _root_cause(e: BaseException) -> BaseException:
    """The first error of a chain: diffusers answers a refused connection with "not fully cached locally",
    raised from the network error that says what happened."""
    seen = {id(e)}
    while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        e = nxt
    return e


def snapshot(repo_ids: tuple[str, ...], cache: Path, *, offline_mode: bool | None = None,
             hint: str = "pass the saved folder as the model") -> tuple[str, Path]:
    """The first of `repo_ids` that can be had, and its snapshot folder (see the module docstring)."""
    if offline(offline_mode):
        for repo_id in repo_ids:
            found = cached_snapshot(repo_id, cache)
            if found is not None:
                return repo_id, found
        raise HubUnavailableError(
            f"{' or '.join(repo_ids)} is not in the local Hugging Face cache ({cache}; set by HF_HOME/"
            f"HF_HUB_CACHE) and downloads are off (HF_HUB_OFFLINE=1 or --offline); unset it to download, run "
            f"`hf download {repo_ids[0]}` on a machine with internet and copy that cache here, or {hint}")
    from diffusers import DiffusionPipeline  # lazy: diffusers is heavy and only needed for a hub id

    reasons = []
    for repo_id in repo_ids:
        try:
            folder = DiffusionPipeline.download(repo_id, cache_dir=str(cache), use_safetensors=True,
                                                trust_remote_code=False)
        except Exception as e:  # network, HTTP (404, gated, 5xx), no safetensors, remote code: say why, try the next
            root = _root_cause(e)
            reasons.append(f"{repo_id}: {type(root).__name__}: {_one_line(root)}")
            continue
        return repo_id, Path(folder)
    reasons = reasons if len(repo_ids) > 1 else [r.split(": ", 1)[1] for r in reasons]
    raise HubUnavailableError(
        f"{' or '.join(repo_ids)} could not be downloaded from {endpoint()} into {cache} ({'; '.join(reasons)}); "
        f"check the network (HF_ENDPOINT for a mirror, HF_TOKEN for a gated model), or {hint}")
