"""Keep large freed blocks in the process instead of returning them to the kernel.

glibc serves big allocations (above a threshold that starts at 128 KiB) with
mmap and gives them back with munmap on free.  NumPy code that allocates the
same multi-megabyte temporaries on every step then spends most of its time in
page faults, the kernel zeroing fresh pages: silu forward + backward on a
million float32 elements takes about three times as long that way as with
the blocks reused (``python -m bench.micro`` prints both).  ``tune_malloc()``
raises glibc's mmap and trim thresholds so that freed blocks are reused.  The
cost: memory freed stays in the process (its RSS does not shrink back) up to
the threshold per block.

It changes the allocator of the whole process, so the library never calls it
on its own: ``handydl train`` (a process of its own) and the benchmark do, and
a user's training script calls it once.  What it buys in training, measured by
``python -m bench`` with it on and off: see docs/performance.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def tune_malloc(threshold_mb: int = 256) -> bool:
    """Reuse freed blocks up to ``threshold_mb`` MiB (glibc only); True if applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):          # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    size = int(threshold_mb) << 20
    _done = bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * size))
    return _done
