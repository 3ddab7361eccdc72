"""Process-wide memory allocator setting for CPU inference, applied by the ``vistream`` command
at start (no torch import: it runs before any command, including the light ones).

glibc serves every block over its mmap threshold (128 KiB at first) with a fresh ``mmap`` and
unmaps it on free, so each activation tensor of a CNN forward pass (2 MiB for 32 x 16 x 32 x 32
floats) is zero-filled page by page by the kernel before a conv may write it. Keeping freed
blocks in the heap for reuse (what tcmalloc and jemalloc do, and why PyTorch's CPU performance
guides recommend them) removes that: the unpruned ResNet-20, batch 32, 1 thread, took 31.8 ms a
forward pass instead of 35.6-36.0 ms (``reference_ms`` of ``vistream bench backbone``, run
as is and with ``VISTREAM_MALLOC_TUNING=0``; docs/pruning.md). The fault cost follows the
activations, which channel pruning shrinks only inside residual blocks, so a pruned net gains
relatively more. The price is a resident size that stays near the process's peak. ``VISTREAM_MALLOC_TUNING=0``
leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it
TRIM_THRESHOLD = 256 << 20
_tuned: bool | None = None  # None: not tried yet in this process


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks below :data:`MMAP_THRESHOLD` bytes in the heap for reuse,
    and return heap memory to the system only once :data:`TRIM_THRESHOLD` bytes are free at its
    top. Process-wide and idempotent; returns whether the allocator is tuned (False off glibc,
    or with ``VISTREAM_MALLOC_TUNING=0`` in the environment)."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux") and os.environ.get("VISTREAM_MALLOC_TUNING", "1") != "0":
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned


def allocator_tuned() -> bool:
    """Whether :func:`retain_freed_memory` has tuned this process's allocator."""
    return bool(_tuned)
