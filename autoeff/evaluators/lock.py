"""A per-device inter-process lock, held while timing, so two workers on one machine never time at once.

Two latency measurements running at the same moment on one device slow each other down (on CPU they share
cores; on a GPU they share SMs and memory bandwidth), and both numbers are then wrong. Every process that
times on a device takes this lock first. It is a `filelock.FileLock` on a file named after the host and
the device, in `$AUTOEFF_LOCK_DIR` (default `~/.cache/autoeff/locks`); the host name is in the file name
so a home directory shared between machines (NFS) does not serialize different machines.

This module does not import torch, so lock-only helpers stay light.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["DeviceLockTimeout", "device_lock", "lock_dir", "lock_path", "normalize_device"]

DeviceLockTimeout = Timeout


def lock_dir() -> Path:
    """`$AUTOEFF_LOCK_DIR`, or `~/.cache/autoeff/locks`; created if missing."""
    path = Path(os.environ.get("AUTOEFF_LOCK_DIR") or Path.home() / ".cache" / "autoeff" / "locks")
    path.mkdir(parents=True, exist_ok=True)
    return path


def normalize_device(device: str) -> str:
    """`cpu`, `cuda:<i>`, `mps`...: `cuda` without an index becomes the current CUDA device's index.

    Every CPU device string means the whole machine's CPUs (`cpu:1` is still `cpu`): timings on CPU share
    the same cores whatever torch calls the device.
    """
    text = str(device).strip().lower()
    if not text:
        raise ValueError("device is empty; pass 'cpu' or 'cuda:0'")
    kind, _, index = text.partition(":")
    if kind == "cpu":
        return "cpu"
    if kind == "cuda" and not index:
        import torch  # only here: the CPU path stays torch-free

        index = str(torch.cuda.current_device()) if torch.cuda.is_available() else "0"
    return f"{kind}:{index}" if index else kind


def lock_path(device: str) -> Path:
    """The lock file of `device` on this host."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "localhost")
    dev = re.sub(r"[^A-Za-z0-9_.-]", "_", normalize_device(device))
    return lock_dir() / f"{host}-{dev}.lock"


@contextmanager
def device_lock(device: str, timeout: float = -1) -> Iterator[FileLock]:
    """Hold the lock of `device` for the `with` block: `with device_lock("cuda:0"): ...`.

    `timeout` is in seconds (-1 waits forever); on timeout `DeviceLockTimeout` is raised naming the file.
    Re-entrant within one process (one singleton `FileLock` per file, which counts nested acquisitions),
    so a timed section may call code that takes the lock again.
    """
    lock = FileLock(str(lock_path(device)), is_singleton=True)
    with lock.acquire(timeout=timeout):
        yield lock
