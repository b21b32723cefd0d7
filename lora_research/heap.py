"""Give freed heap memory back to the operating system, or keep big buffers off the heap (issue #13, memory).

glibc keeps memory that Python and torch free in its arenas; the resident size stays at the high-water mark of
whatever ran before. ``malloc_trim(0)`` releases every whole free page of every arena (``madvise``), at a cost of
milliseconds. Elsewhere (macOS, musl) :func:`trim` does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os

import torch


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


def zeros_off_heap(shape, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero tensor whose memory comes straight from the operating system and goes back to it when the tensor is
    freed: on CPU under POSIX, an anonymous private ``mmap`` (zero pages from the kernel, faulted in when first
    touched); elsewhere ``torch.zeros``.

    For big buffers that are replaced by bigger ones again and again (the beam search's key/value cache,
    :mod:`lora_research.beam_cache`). From the heap, each replaced buffer stays resident as free heap until a
    :func:`trim`: glibc serves blocks below its mmap threshold from the heap, and that threshold rises to the size
    of the largest block freed (up to 32 MB), so after the first big free the cache's buffers are all heap."""
    device = torch.device(device)
    numel = math.prod(shape)
    if device.type != "cpu" or os.name != "posix" or numel == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    memory = mmap.mmap(-1, numel * itemsize, flags=mmap.MAP_PRIVATE)
    return torch.frombuffer(memory, dtype=dtype, count=numel).view(shape)  # the tensor keeps the mapping alive
