"""Keep large freed tensors in the process heap instead of returning them to the OS.

Torch commands (tokenizer, training, generation) make tensors of tens of MB per step. glibc serves
allocations above its mmap threshold with fresh ``mmap`` calls, so every step page-faults
them in again, which on a few CPU cores doubled a training step (docs/benchmarks.md,
"Measured design choices"). ``mallopt`` raises the threshold
and the trim limit at run time. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def keep_freed_memory(limit_bytes: int = 2**31 - 1) -> bool:
    """Raise glibc's mmap and trim thresholds; True if applied."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(opt, val) == 1
        for opt, val in (
            (M_MMAP_THRESHOLD, limit_bytes),
            (M_TRIM_THRESHOLD, limit_bytes),
            (M_TOP_PAD, 1 << 28),
        )
    )
    _done = ok
    return ok
