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


_THRESHOLD_PROBE = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from lora_research import heap

def mapping(address):  # the last field of the /proc/self/maps line that maps address ("" if unnamed), else None
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5] if len(fields) > 5 else ""
    return None

def block(mb):  # [in the brk heap while alive, still mapped after it is freed]
    t = torch.ones(int(mb * 2 ** 20) // 4)
    address = t.data_ptr() + t.nbytes // 2
    alive = mapping(address) == "[heap]"
    del t
    return [alive, mapping(address) is not None]

big = torch.zeros(24 * 2 ** 20 // 4)
del big  # glibc's own threshold rises to 24 MB: blocks up to that size are heap from now on
out = {}
if sys.argv[2] == "set":
    out["set"] = heap.set_mmap_threshold(2)
out["6mb"], out["1mb"] = block(6), block(1)
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps") or heap._glibc("mallopt") is None, reason="needs Linux and glibc")
def test_blocks_above_the_mmap_threshold_go_back_to_the_system():
    """Two fresh processes, the same allocations. With glibc's rising threshold a 6 MB block is heap (in the brk
    ``[heap]`` mapping) and stays mapped when freed; after ``set_mmap_threshold(2)`` it is a mapping of its own,
    unmapped at once when freed, and a 1 MB block is still heap. A lower trim threshold would also unmap the freed
    block, from the heap's top: where the live block lies tells the two apart. Each check has its own process: a
    block freed into the heap by an earlier check would serve a later request of its size, whatever the threshold."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(heap.__file__).resolve().parents[1])
    probe = lambda mode: json.loads(subprocess.run([sys.executable, "-c", _THRESHOLD_PROBE, root, mode], capture_output=True,
                                                   text=True, check=True).stdout.strip().splitlines()[-1])
    assert probe("plain") == {"6mb": [True, True], "1mb": [True, True]}
    assert probe("set") == {"set": True, "6mb": [False, False], "1mb": [True, True]}


@pytest.mark.parametrize("bad", [0, -1, 33, 1e9])
def test_an_impossible_mmap_threshold_is_refused(bad):
    with pytest.raises(ValueError, match=f"{bad!r} MB is not valid; valid: 0 < MB <= 32"):
        heap.set_mmap_threshold(bad)
    assert heap.set_mmap_threshold(None) is False  # null: glibc's own, nothing set


def test_the_trainer_option_is_validated_by_name():
    from lora_research.config import validate
    from conftest import compose

    with pytest.raises(ValueError, match=r"trainer.malloc_mmap_threshold_mb=64.0 is not valid; valid: 0 < MB <= 32"):
        validate(compose(["model=tiny_bert", "task=sst2", "logger=none", "trainer.malloc_mmap_threshold_mb=64"]))
    run = validate(compose(["model=tiny_bert", "task=sst2", "logger=none", "trainer.malloc_mmap_threshold_mb=null"]))
    assert run.trainer.malloc_mmap_threshold_mb is None
    assert validate(compose(["model=tiny_bert", "task=sst2", "logger=none"])).trainer.malloc_mmap_threshold_mb is None
    assert validate(compose(["experiment=smollm2_lora_e2e_cpu", "logger=none"])).trainer.malloc_mmap_threshold_mb == 2


def test_training_sets_the_threshold_and_it_is_not_part_of_the_run(glue_dir, tmp_path, monkeypatch):
    """``trainer.malloc_mmap_threshold_mb`` reaches glibc at the start of training; it changes no number, so the
    run folder's fingerprint ignores it: the same run with another threshold is the completed run, not a new one."""
    from conftest import compose
    from lora_research.train import run

    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    calls, real = [], heap.set_mmap_threshold
    monkeypatch.setattr(heap, "set_mmap_threshold", lambda mb: calls.append(mb) or real(mb))
    base = ["model=tiny_bert", "task=rte", "logger=none", "task.max_train_samples=16", "task.max_eval_samples=8",
            "task.max_length=32", "trainer.device=cpu", "trainer.batch_size=8", "trainer.epochs=1", "trainer.threads=1"]
    first = run(compose(base + ["trainer.malloc_mmap_threshold_mb=2.5"]), tmp_path / "run")
    assert calls == [2.5] and first["status"] == "completed"
    again = run(compose(base + ["trainer.malloc_mmap_threshold_mb=null"]), tmp_path / "run")
    assert again.get("already_completed") is True and calls == [2.5]
