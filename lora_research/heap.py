"""Give freed heap memory back to the operating system (issue #13, memory).

glibc keeps memory that Python and torch free in its arenas; the resident size stays at the high-water mark of
whatever ran before. ``malloc_trim(0)`` releases every whole free page of every arena (``madvise``), at a cost of
milliseconds. Elsewhere (macOS, musl) :func:`trim` does nothing.
"""
from __future__ import annotations

import ctypes
from typing import Optional

_libc: Optional[ctypes.CDLL] = None
_missing = False


def trim() -> None:
    """``malloc_trim(0)`` where the C library is glibc; a no-op elsewhere."""
    global _libc, _missing
    if _missing:
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 (AttributeError where the library has no malloc_trim)
        except (OSError, AttributeError):
            _missing = True
            return
    _libc.malloc_trim(0)
