"""Give freed heap memory back to the operating system, or keep big buffers off the heap (issue #13, memory).

glibc keeps memory that Python and torch free in its arenas; the resident size stays at the high-water mark of
whatever ran before. ``malloc_trim(0)`` releases every whole free page of every arena (``madvise``), at a cost of
milliseconds. Elsewhere (macOS, musl) :func:`trim` does nothing.

glibc serves a block from its heap when it is smaller than its mmap threshold, and that threshold rises to the size
of the largest mapped block freed so far (up to 32 MB). After the first SmolLM2 training step (its [tokens,
49,152] logits, ~27 MB) every block is heap, and a step's big blocks, freed and taken again between smaller ones,
leave free heap that stays resident. :func:`set_mmap_threshold` (``trainer.malloc_mmap_threshold_mb``; the SmolLM2
E2E CPU preset sets 2) fixes the threshold: bigger blocks are mapped from the system and handed back when freed,
at the cost of a page fault per 4 KB each time one is taken (jobs with many big blocks per step, such as a padded
MiniLM batch's [32, 12, 128, 128] attention, take longer).
"""
from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os

import torch


@functools.lru_cache(maxsize=None)
def _glibc(name: str):
    """glibc's function ``name`` (``malloc_trim``, ``mallopt``), or None where the C library is not glibc."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc
        return None


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MAX_MMAP_THRESHOLD_MB = 32  # glibc's largest threshold on 64-bit systems (HEAP_MAX_SIZE / 2)


def set_mmap_threshold(mb) -> bool:
    """Blocks of ``mb`` MB and more come straight from the system (``mmap``) and go back to it when freed:
    ``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_`` would set it at start-up, for the rest of the
    process (glibc's own rising threshold is off from then on). ``None``: nothing changes. Returns whether the
    threshold was set (False where the C library is not glibc). The numbers computed do not change.

    Measured (2-core CPU, issue #13): SmolLM2 E2E LoRA training peaks at 1,503–1,511 MB with 2 MB against
    1,548–1,567 MB with glibc's threshold, in the same time; the padded quickstart job (``trainer.unpadded=false
    trainer.train_batch_split=none``, interleaved runs) at 1,190 MB against 1,375–1,393 MB, but in 88–90 s against
    84 s (results/benchmarks/README.md)."""
    if mb is None:
        return False
    if not 0 < mb <= MAX_MMAP_THRESHOLD_MB:
        raise ValueError(f"malloc mmap threshold {mb!r} MB is not valid; valid: 0 < MB <= {MAX_MMAP_THRESHOLD_MB} "
                         "(glibc's limit), or null for glibc's own")
    mallopt = _glibc("mallopt")
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, int(mb * 2 ** 20)))


def trim() -> None:
    """``malloc_trim(0)`` where the C library is glibc; a no-op elsewhere."""
    release = _glibc("malloc_trim")
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
