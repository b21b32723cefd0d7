"""Weights & Biases tracking: one W&B run per job, grouped by sweep; never blocks a run.

``logger=wandb`` with ``logger.mode=auto`` logs online when an API key is configured
(``WANDB_API_KEY`` or a ``~/.netrc`` login) and offline otherwise (sync later with
``wandb sync <run_dir>/wandb/offline-run-*``). ``logger=none`` switches tracking off. Any
failure to start W&B (no network, bad key, missing package) is reported as a warning and the run
continues untracked.
"""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` → online with an API key, else offline."""
    if mode == "auto":
        return "online" if _has_api_key() else "offline"
    return mode


class Tracker:
    """A started W&B run (or a no-op when tracking is off or failed to start)."""

    def __init__(self, run: Any = None):
        self.run = run

    @property
    def active(self) -> bool:
        return self.run is not None

    def log_summary(self, summary: dict) -> None:
        if not self.run:
            return
        try:
            flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
            for k, v in (summary.get("metrics") or {}).items():
                flat[f"best/{k}"] = v
            self.run.summary.update(flat)
        except Exception as e:  # tracking must never break a run
            log.warning("W&B summary update failed: %s", e)

    def finish(self, exit_code: int = 0) -> None:
        if not self.run:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:
            log.warning("W&B finish failed: %s", e)
        self.run = None


def start(logger_cfg, config: dict, run_dir: Path, name: str, group: Optional[str]) -> Tracker:
    """Start a W&B run for this job, or return an inactive :class:`Tracker`."""
    if logger_cfg.name != "wandb":
        return Tracker()
    mode = resolve_mode(logger_cfg.mode)
    if mode == "disabled":
        return Tracker()
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=logger_cfg.group or group or "single",
            name=name,
            tags=list(logger_cfg.tags),
            config=config,
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=60, console="off"),
        )
        log.info("W&B run %s (%s mode) in %s", name, mode, run_dir)
        return Tracker(run)
    except Exception as e:
        log.warning("W&B could not start (%s: %s); continuing without tracking", type(e).__name__, e)
        return Tracker()
