"""Give freed heap memory back to the operating system (issue #13, memory).

glibc keeps memory that Python and torch free in its arenas; the resident size stays at the high-water mark of
whatever ran before. ``malloc_trim(0)`` releases every whole free page of every arena (``madvise``), at a cost of
milliseconds. Elsewhere (macOS, musl) :func:`trim` does nothing.
"""
from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim() -> None:
    """``malloc_trim(0)`` where the C library is glibc; a no-op elsewhere."""
    release = _malloc_trim()
    if release is not None:
        release(0)
