"""The run folder: what every run leaves behind, written atomically.

::

    <run_dir>/
      config.yaml            resolved config (Hydra composition + validated defaults)
      metrics.jsonl          one JSON object per evaluation: {"epoch", "step", "split", "<metric>": ...}
      summary.json           best-epoch dev metrics under their official names, parameter counts,
                             runtime, peak memory, task/model/method/seed, the command line
      adapter.safetensors    the method's trained tensors at the best epoch (+ head), with metadata
      checkpoints/           trainer checkpoints (resume); deleted at the end unless kept
      error.json             only when the run failed: the exception and traceback

``adapter.safetensors`` (format ``lora_research.adapter/2``: tensors, base-model identity, checksum
and an index of every adapted matrix) is owned by :mod:`lora_research.adapter_file`, which writes,
reads and verifies it and computes each entry's ΔW; :func:`save_adapter` / :func:`load_adapter_file`
here are its run-folder entry points.
Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a killed run never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

ADAPTER_FORMAT = "lora_research.adapter/2"  # lora_research.adapter_file.FORMAT (its owner)
ADAPTER_FILE = "adapter.safetensors"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
ERROR_FILE = "error.json"


def atomic_write(path: Path | str, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(Path(path), write)


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_metrics(run_dir: Path | str) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_metrics(run_dir: Path | str, record: dict) -> None:
    """Add one evaluation record to ``metrics.jsonl`` (the file is rewritten atomically)."""
    records = read_metrics(run_dir) + [record]
    atomic_write_text(
        Path(run_dir) / METRICS_FILE,
        "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records),
    )


def save_adapter(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``adapter.safetensors`` (its format is owned by :func:`lora_research.adapter_file.save`)."""
    from lora_research import adapter_file

    return adapter_file.save(path, tensors, metadata)


def load_adapter_file(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify ``adapter.safetensors`` of a run folder (or a file): (tensors, metadata);
    see :func:`lora_research.adapter_file.read`."""
    from lora_research import adapter_file

    return adapter_file.load(path)


def best_record(records: Iterable[dict], key: str, greater_is_better: bool = True) -> dict | None:
    """The evaluation record with the best ``key`` (ties: the earliest), or None."""
    best = None
    for r in records:
        if key not in r:
            continue
        if best is None or (r[key] > best[key] if greater_is_better else r[key] < best[key]):
            best = r
    return best


def load_summary(run_dir: Path | str) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
