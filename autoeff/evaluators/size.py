"""The storage a denoiser's weights occupy, counted as the kernels store them.

Packed int8 weights (torch.ao) count 1 byte per value plus their scales and zero points, torchao tensor
subclasses the sum of their inner tensors, fp32 4 bytes; a fake-quantized layer (marked with
`FAKE_BITS_ATTR` by the quantize knob) can be counted at its simulated width. An evaluator: it never knows
which knob produced the module it measures.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Marks a layer whose weight was fake-quantized, with its simulated bit width (see `model_size_mb`).
FAKE_BITS_ATTR = "_autoeff_fake_quant_bits"


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores: quantized tensors as int values + their scales/zero points; tensor subclasses
    (torchao) as the sum of their inner tensors."""
    if t.is_quantized:
        nbytes = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            s, z = t.q_per_channel_scales(), t.q_per_channel_zero_points()
            return nbytes + s.numel() * s.element_size() + z.numel() * z.element_size()
        return nbytes + 16  # one float64 scale and one int64 zero point
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, nn.Parameter):
        # the tensor-subclass protocol (torchao): defined by the subclass, not declared on torch.Tensor
        names, _ = t.__tensor_flatten__()  # type: ignore[attr-defined]
        inner = (getattr(t, n, None) for n in names)
        return sum(_tensor_bytes(x) for x in inner if isinstance(x, torch.Tensor))
    return t.numel() * t.element_size()


def model_size_mb(module: nn.Module, count_simulated: bool = True) -> float:
    """Bytes of the weights (parameters, buffers and packed quantized weights) of `module`, in MB (1e6 bytes).

    Packed int8 weights count 1 byte per value plus their scales and zero points, int4 0.5 byte, fp32 4 bytes.
    With `count_simulated`, a fake-quantized layer's weight counts at its simulated width plus one fp32 scale
    per output channel (what a real kernel backend would store); without it, at its actual float bytes.
    Storage shared by several tensors is counted once.
    """
    total = 0
    seen: set[tuple[int, int | torch.SymInt]] = set()

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is None:
            return
        if not t.is_quantized and type(t) in (torch.Tensor, nn.Parameter) and t.numel() > 0:
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if key in seen:
                return
            seen.add(key)
        total += _tensor_bytes(t)

    for m in module.modules():
        bits = getattr(m, FAKE_BITS_ATTR, None)
        for name, p in m.named_parameters(recurse=False):
            if name == "weight" and bits is not None and count_simulated:
                total += math.ceil(p.numel() * bits / 8) + p.shape[0] * 4
            else:
                add(p)
        for b in m.buffers(recurse=False):
            add(b)
        # torch.ao quantized modules keep weights in packed objects: quantized Conv2d and the
        # LinearPackedParams child of a quantized Linear expose them through `_weight_bias()`.
        weight_bias = getattr(m, "_weight_bias", None)
        if callable(weight_bias) and not isinstance(getattr(m, "_packed_params", None), nn.Module):
            w, b = weight_bias()
            add(w)
            add(b)
    return total / 1e6
