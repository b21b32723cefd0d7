"""Multi-process data parallel (``torchrun`` / ``accelerate launch``): who writes, who prints.

Every process trains (Trainer + accelerate handle DDP: gloo on CPU, NCCL on GPUs); only the main
process (global rank 0) writes the run folder, starts W&B and prints the result. Replicas
(rank > 0) run Hydra without its ``.hydra/`` folder and log file, and use rank 0's run folder, so a
``${now:...}`` folder name that differs by a second between processes still gives one run folder.

The global batch is ``per-device batch × gradient accumulation × world size``; evaluation scores
every dev example exactly once (accelerate's ``gather_for_metrics`` drops the samples the
distributed sampler repeats to even out the last batch).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def rank() -> int:
    """Global rank from the launcher's environment (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def replica_hydra_overrides() -> list[str]:
    """Hydra overrides for rank > 0: no ``.hydra/`` folder, no log file, no console logging."""
    if is_main():
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def _state():
    from accelerate import PartialState

    return PartialState()  # initialises the process group once (Trainer re-uses it)


def shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run folder on every rank; a replica's own (empty) Hydra folder is removed."""
    if world_size() == 1:
        return run_dir
    import torch.distributed as dist

    _state()
    box = [str(run_dir)]
    dist.broadcast_object_list(box, src=0)
    shared = Path(box[0])
    if shared != run_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return shared


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. writes the tokenised-feature cache), then the others."""
    if world_size() == 1:
        yield
        return
    with _state().main_process_first():
        yield


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective: call it on all ranks)."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or not dist.is_available() or not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
