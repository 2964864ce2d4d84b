"""Validate a `--device` string against what this machine has."""

from __future__ import annotations

import re


class DeviceError(ValueError):
    """The device does not exist here; the message says what does."""


def validate_device(device: str) -> str:
    """`cpu`, `cuda`, `cuda:N` (when present) -> canonical string; anything else raises DeviceError."""
    import torch  # lazy: the CLI imports this module before it may load torch (OMP_WAIT_POLICY first)

    d = str(device).strip().lower()
    if d == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", d)
    if m:
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device!r} is not available on this machine (torch sees no CUDA "
                              "device); use --device cpu or run on a machine with an NVIDIA GPU")
        idx = int(m.group(1) or 0)
        count = torch.cuda.device_count()
        if idx >= count:
            raise DeviceError(f"--device {device!r} does not exist; this machine has {count} CUDA device(s): "
                              f"cuda:0..cuda:{count - 1}")
        return f"cuda:{idx}"
    raise DeviceError(f"--device {device!r} is not a device autoeff can measure on; use cpu, cuda or cuda:N")
