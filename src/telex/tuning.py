"""Process-wide tuning for a long-running server, applied by ``telex serve`` (not the library).

glibc gives freed memory back to the system whenever more than 128 KiB is free at the
top of the heap. A server that takes each read's messages as fresh ``bytes`` objects
and frees them a moment later pays page faults for that memory on every read: about a
microsecond a 4 KiB message. Keeping up to 64 MiB of freed memory for reuse takes that
away. It changes nothing on other C libraries or systems.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory"]

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_TOP_PAD = -2


def retain_freed_memory(size: int = 64 * 1024 * 1024) -> bool:
    """Ask glibc to keep up to ``size`` bytes of freed heap; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_TRIM_THRESHOLD, size)) and bool(mallopt(M_TOP_PAD, size // 4))
