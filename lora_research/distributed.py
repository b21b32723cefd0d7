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


def mean_loss_per_batch(model) -> None:
    """Tell Trainer that a model's loss is a plain batch mean (classification heads), not a sum over
    ``num_items_in_batch`` (causal LMs). Trainer otherwise sees ``**kwargs`` in ``forward``, assumes
    the latter, and multiplies the loss by the world size (and skips dividing by the gradient
    accumulation steps): DDP gradients ×N. Causal LMs keep Trainer's exact token average."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if type(model).__name__ not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        model.accepts_loss_kwargs = False


# --- local_parallel: several jobs of a sweep on one machine -----------------------------------

def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_jobs() -> int:
    """``hydra/launcher=local_parallel``'s default job count: one per visible GPU, else 2."""
    return visible_gpus() or 2


def local_parallel_slot(launcher_cfg, job_num: int) -> tuple[int, int | None]:
    """(torch threads, GPU index or None) for job ``job_num`` of a joblib (local_parallel) sweep;
    (0, None) under any other launcher. Threads: the CPU cores this process may use ÷ ``n_jobs``."""
    if "joblib" not in str(launcher_cfg.get("_target_", "")):
        return 0, None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_jobs = int(launcher_cfg.get("n_jobs") or 1)
    n_jobs = cores if n_jobs < 1 else n_jobs
    gpus = visible_gpus()
    return max(1, cores // n_jobs), (job_num % gpus if gpus > 1 else None)


def take_local_parallel_slot(cfg, hydra_cfg) -> None:
    """Under ``local_parallel``: set ``trainer.threads`` (when 0 = auto) to this job's share of the
    cores, and pin the job to its GPU when several are visible."""
    threads, gpu = local_parallel_slot(hydra_cfg.launcher, hydra_cfg.job.get("num") or 0)
    if threads and cfg.trainer.threads == 0:
        cfg.trainer.threads = threads
    if gpu is not None and cfg.trainer.device in ("auto", "cuda"):
        import torch

        torch.cuda.set_device(gpu)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("lora_local_jobs"):
        OmegaConf.register_new_resolver("lora_local_jobs", local_jobs)


_register_resolvers()
