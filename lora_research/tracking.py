"""Weights & Biases tracking: one W&B run per job, grouped by sweep; never blocks a run.

``logger=wandb`` with ``logger.mode=auto`` logs online when an API key is configured
(``WANDB_API_KEY`` or a ``~/.netrc`` login) and offline otherwise (sync later with
``wandb sync <run_dir>/wandb/offline-run-*``). ``logger=none`` switches tracking off. Any
failure to start W&B (no network, bad key, missing package) is reported as a warning and the run
continues untracked. Under DDP only rank 0 starts a run.

What a run holds (so runs can be filtered and compared in the W&B UI):

* ``group``: ``logger.group``, else the ``experiment=`` preset (a study), else the sweep folder,
  else ``single``; ``job_type``: the method; ``tags``: task, model, method (+ ``logger.tags``);
* ``config``: the resolved run config, flattened to dotted keys (``method.r``, ``trainer.lr``);
* history: every Trainer log (train loss, learning rate, dev metrics) at its global step;
* ``summary``: the best-epoch metrics (``best/<metric>``), parameter counts, runtime, peak memory,
  world size and global batch (the content of ``summary.json``);
* ``logger.log_adapter=true``: ``adapter.safetensors`` as a W&B artifact (type ``adapter``).

The run's id is derived from the run folder, so a resumed job (preemption, requeue) continues the
same W&B run. :func:`log_results_table` logs a study's results table as a W&B Table;
:func:`read_offline_run` reads an offline run back from its ``.wandb`` file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import netrc
import os
import struct
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "status", "task", "model", "method", "seed", "main_metric", "best_epoch", "best_step",
    "trainable_params", "trainable_params_without_head", "head_params", "total_params",
    "train_runtime_s", "train_steps", "train_loss", "peak_rss_mb", "peak_cuda_mb",
    "world_size", "global_batch_size", "device",
)


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


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"method": {"r": 8}}`` → ``{"method.r": 8}`` (lists stay values)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_id(run_dir: Path) -> str:
    """A stable W&B run id for a run folder: a resumed job logs to the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class Tracker:
    """A started W&B run (or a no-op when tracking is off or failed to start)."""

    def __init__(self, run: Any = None, log_adapter: bool = False):
        self.run = run
        self.log_adapter = log_adapter

    @property
    def active(self) -> bool:
        return self.run is not None

    def callback(self):
        """A Trainer callback that logs every Trainer log line to this run's history."""
        from transformers import TrainerCallback

        tracker = self

        class _History(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if tracker.run is None or not state.is_world_process_zero or not logs:
                    return
                values = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                values = {
                    (f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v
                    for k, v in values.items() if k != "epoch"
                }
                values["train/epoch"] = state.epoch or 0.0
                try:
                    tracker.run.log(values, step=state.global_step)
                except Exception as e:
                    log.warning("W&B log failed: %s", e)

        return _History()

    def log_summary(self, summary: dict, run_dir: Optional[Path] = None) -> None:
        if not self.run:
            return
        try:
            flat = {k: summary[k] for k in SUMMARY_KEYS if summary.get(k) is not None}
            for k, v in (summary.get("metrics") or {}).items():
                flat[f"best/{k}"] = v
            self.run.summary.update(flat)
            if self.log_adapter and run_dir is not None and (Path(run_dir) / "adapter.safetensors").exists():
                import wandb

                art = wandb.Artifact(f"adapter-{self.run.id}", type="adapter", metadata=flat)
                art.add_file(str(Path(run_dir) / "adapter.safetensors"))
                self.run.log_artifact(art)
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
        task, model, method = (config.get(k, {}).get("name") for k in ("task", "model", "method"))
        run = wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=logger_cfg.group or group or "single",
            job_type=method,
            name=name,
            id=run_id(run_dir),
            resume="allow",
            tags=[t for t in (task, model, method) if t] + list(logger_cfg.tags),
            config=flatten(config),
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=60, console="off"),
        )
        log.info("W&B run %s (%s mode) in %s", name, mode, run_dir)
        return Tracker(run, log_adapter=bool(getattr(logger_cfg, "log_adapter", False)))
    except Exception as e:
        log.warning("W&B could not start (%s: %s); continuing without tracking", type(e).__name__, e)
        return Tracker()


def log_results_table(rows: list[dict], *, project: str, group: str, name: str = "results",
                      mode: str = "auto", entity: Optional[str] = None, dir: Optional[str] = None) -> None:
    """Log a study's results (one dict per row, e.g. from ``lora_research.results``) as a W&B Table."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    columns = sorted({k for r in rows for k in r})
    table = wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])
    with wandb.init(project=project, entity=entity, group=group, job_type="results", name=name,
                    mode=resolve_mode(mode), dir=dir, reinit="finish_previous",
                    settings=wandb.Settings(console="off")) as run:
        run.log({name: table})


def _cell(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)


# --- reading an offline run back ---------------------------------------------------------------

_HEADER = 7  # ":W&B" + magic 0xBEE1 + version: then a LevelDB-style log of protobuf Records
_BLOCK = 32768


def _records(path: Path):
    """Payloads of the ``.wandb`` transaction log (LevelDB log framing: 32 KiB blocks of chunks
    ``crc32 (4) | length (2, little-endian) | type (1: full, 2: first, 3: middle, 4: last)``)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, parts = _HEADER, []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            parts = [chunk]
        elif kind == 3:
            parts.append(chunk)
        elif kind == 4:
            parts.append(chunk)
            yield b"".join(parts)


def read_offline_run(run_path: Path | str) -> dict:
    """Read an offline W&B run (``wandb/offline-run-*`` folder or its ``.wandb`` file) back:
    ``{"id", "group", "job_type", "tags", "config", "history", "summary"}`` as W&B stored them."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_path)
    if path.is_dir():
        path = next(path.glob("*.wandb"))
    out: dict = {"config": {}, "history": [], "summary": {}}
    for payload in _records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(id=rec.run.run_id, group=rec.run.run_group, job_type=rec.run.job_type,
                       tags=list(rec.run.tags), name=rec.run.display_name)
            _config(out["config"], rec.run.config.update)
        elif kind == "config":
            _config(out["config"], rec.config.update)
        elif kind == "history":
            row: dict = {}
            for i in rec.history.item:
                _put(row, [i.key] if i.key else list(i.nested_key), json.loads(i.value_json))
            out["history"].append(row)
        elif kind == "summary":
            for i in rec.summary.update:
                _put(out["summary"], [i.key] if i.key else list(i.nested_key), json.loads(i.value_json))
    return out


def _put(into: dict, keys: list, value) -> None:
    for k in keys[:-1]:
        into = into.setdefault(k, {})
    into[keys[-1]] = value


def _config(into: dict, items) -> None:
    for i in items:
        value = json.loads(i.value_json)
        into[i.key or ".".join(i.nested_key)] = value.get("value") if isinstance(value, dict) and "value" in value else value
