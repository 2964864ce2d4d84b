"""`autoeff env`: versions and devices, the first thing to paste into a bug report."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

PACKAGES = ("autoeff", "torch", "diffusers", "transformers", "optuna", "torchmetrics", "open_clip_torch",
            "torch-pruning", "joblib", "safetensors", "torchao", "torch-tensorrt", "tensorrt")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux) or platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, object]:
    """A JSON-able description of this machine and the installed stack."""

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}"})
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cuda_devices": cuda,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "versions": versions,
    }


def device_description(device: str) -> str:
    """A human description of `device` (`cpu`, `cuda`, `cuda:1`)."""

    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        return f"{torch.cuda.get_device_name(idx)} (cuda:{idx})"
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"
