"""The entry point: ``python -m lora_research.train [overrides]`` (Hydra; ``-m`` for sweeps).

compose (conf/) → validate (config.py) → build + fit (training.py) → run folder (outputs.py).

A run folder that already holds checkpoints is resumed (``trainer.resume=auto``): re-run the same
command with ``hydra.run.dir=<that folder>``. A job that fails writes ``error.json`` into its
folder; in a sweep the other jobs still run and keep their results.
"""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_research import distributed, outputs, tracking
from lora_research.config import validate

log = logging.getLogger("lora_research")


def _command() -> str:
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        overrides = sys.argv[1:]
    return "python -m lora_research.train " + " ".join(overrides)


def run(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict:
    """Validate, train and write one run folder; returns ``summary.json``'s content."""
    run_cfg = validate(cfg)  # fails before anything heavy is loaded
    from lora_research.training import fit

    from lora_research.preemption import EXIT_PREEMPTED, Preempted

    main = distributed.is_main()  # DDP: rank 0 alone writes the run folder and logs to W&B
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if main:
        outputs.atomic_write_text(run_dir / outputs.CONFIG_FILE, OmegaConf.to_yaml(resolved))
    name = f"{run_cfg.task.name}-{run_cfg.model.name}-{run_cfg.method.name}-s{run_cfg.seed}"
    tracker = tracking.start(run_cfg.logger, resolved, run_dir, name=name, group=group) if main else tracking.Tracker()
    try:
        summary = fit(run_cfg, run_dir, command=_command(), tracker=tracker)
    except Preempted as e:
        if main:
            outputs.atomic_write_json(run_dir / outputs.ERROR_FILE, e.record())
        tracker.finish(exit_code=EXIT_PREEMPTED)
        raise
    except BaseException as e:
        if main:
            outputs.atomic_write_json(
                run_dir / outputs.ERROR_FILE,
                {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()},
            )
        tracker.finish(exit_code=1)
        raise
    if main:
        (run_dir / outputs.ERROR_FILE).unlink(missing_ok=True)  # a resumed run is no longer failed
    tracker.log_summary(summary, run_dir)
    tracker.finish()
    return summary


@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = distributed.shared_run_dir(Path(hc.runtime.output_dir))
    distributed.take_local_parallel_slot(cfg, hc)  # local_parallel: this job's share of CPUs / GPU
    group = hc.runtime.choices.get("experiment") or (Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None)
    from lora_research.preemption import EXIT_PREEMPTED, Preempted

    try:
        summary = run(cfg, run_dir, group=group)
    except Preempted as e:
        if e.requeue is not None:  # a submitit job on SLURM: its handler requeues this job and exits
            e.requeue(e.signum, None)
        if distributed.is_main():
            print(f"interrupted: {e}\nresumable: run the same command again to resume", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if hc.mode.name == "MULTIRUN":
            raise  # Hydra records the failed job; the sweep's other jobs go on
        print(f"error: {e}", file=sys.stderr)
        if (run_dir / outputs.ERROR_FILE).exists():
            print(f"(traceback: {run_dir / outputs.ERROR_FILE})", file=sys.stderr)
        sys.exit(2)
    main_value = summary["metrics"].get(summary["main_metric"])
    if not distributed.is_main():
        return main_value
    print(f"\nrun folder: {run_dir}")
    print(f"best dev {summary['task']} (epoch {summary['best_epoch']}): " + ", ".join(
        f"{k}={v:.4f}" for k, v in summary["metrics"].items() if isinstance(v, float) and "/" not in k and k != "loss"
    ))
    return main_value  # lets Hydra sweepers (e.g. Optuna) optimise the main metric


def cli() -> None:
    """Console entry: under torchrun, replicas (rank > 0) run Hydra without its own files."""
    sys.argv += distributed.replica_hydra_overrides()
    main()


if __name__ == "__main__":
    cli()
