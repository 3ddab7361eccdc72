"""Process-wide memory allocator setting for CPU inference, applied by the ``vistream`` command
at start (no torch import: it runs before any command, including the light ones).

glibc serves every block over its mmap threshold (128 KiB at first) with a fresh ``mmap`` and
unmaps it on free, so each activation tensor of a CNN forward pass (2 MiB for 32 x 16 x 32 x 32
floats) is zero-filled page by page by the kernel before a conv may write it. Keeping freed
blocks in the heap for reuse (what tcmalloc and jemalloc do, and why PyTorch's CPU performance
guides recommend them) removes that: ResNet-20, batch 32, 1 thread went from 36-37 to 31-32 ms a
forward pass on this machine. The fault cost follows the activations, which channel pruning
shrinks only inside residual blocks, so a pruned net gains relatively more (docs/pruning.md).
The price is a resident size that stays near the process's peak. ``VISTREAM_MALLOC_TUNING=0``
leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator_state: dict[str, object] = {}


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Make glibc keep freed blocks below ``mmap_threshold`` bytes (32 MiB, glibc's ceiling) in
    the heap for reuse, and return heap memory to the system only once ``trim_threshold`` bytes
    are free at its top. The price is a resident size that stays near the process's peak.

    Process-wide and idempotent; returns whether the allocator is tuned (False off glibc, or with
    ``VISTREAM_MALLOC_TUNING=0`` in the environment)."""
    if "tuned" in _allocator_state:
        return bool(_allocator_state["tuned"])
    tuned = False
    if sys.platform.startswith("linux") and os.environ.get("VISTREAM_MALLOC_TUNING", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            mallopt = None
        if mallopt is not None:
            tuned = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
                mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    _allocator_state["tuned"] = tuned
    return tuned


def allocator_tuned() -> bool:
    """Whether :func:`retain_freed_memory` has tuned this process's allocator."""
    return bool(_allocator_state.get("tuned", False))
