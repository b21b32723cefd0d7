"""lora_research.heap: big buffers kept off the heap go back to the system when freed.

Oracle: the process's memory mappings (``/proc/self/maps``): freed memory that is handed back is no longer mapped."""
from __future__ import annotations

import os

import pytest
import torch

from lora_research import heap
from lora_research.beam_cache import BeamCacheLayer

MB = 2 ** 20


def test_zeros_off_heap_is_a_writable_zero_tensor():
    t = heap.zeros_off_heap((3, 4, 5), torch.float32)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32 and t.is_contiguous()
    assert torch.equal(t, torch.zeros(3, 4, 5))
    t[1, 2] = 7.0
    assert t.sum().item() == 35.0
    assert heap.zeros_off_heap((0, 3), torch.bfloat16).shape == (0, 3)
    assert heap.zeros_off_heap((2,), torch.int64).dtype == torch.int64


def _mapped(address: int) -> bool:
    """Whether ``address`` lies in a mapping of this process (``/proc/self/maps``)."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_a_freed_buffer_is_unmapped_at_once():
    """The memory goes back to the system when the tensor is freed: its pages are no longer mapped. (A heap block
    of the same size, ``torch.zeros``, usually stays mapped as free heap here: glibc serves blocks up to the largest
    one freed so far, up to 32 MB, from its heap; the 24 MB block below makes sure of that.)"""
    big = torch.zeros(6 * MB)
    del big
    off = heap.zeros_off_heap((4 * MB,), torch.float32)
    off.fill_(1.0)
    address = off.data_ptr()
    assert _mapped(address)
    view = off[10:20]
    del off
    assert _mapped(address)  # a view keeps it alive
    del view
    assert not _mapped(address)


def test_the_beam_cache_keeps_its_buffers_off_the_heap(monkeypatch):
    made = []
    real = heap.zeros_off_heap
    monkeypatch.setattr(heap, "zeros_off_heap", lambda *a, **k: made.append(a[0]) or real(*a, **k))
    layer = BeamCacheLayer()
    k = torch.randn(2, 3, 5, 4)
    keys, values = layer.update(k, k + 1)
    assert torch.equal(keys, k) and torch.equal(values, k + 1)
    assert made == [(2, 3, 5 + BeamCacheLayer.grow, 4)] * 2  # keys and values
