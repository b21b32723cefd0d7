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

``adapter.safetensors`` format ``lora_research.adapter/1``: tensors by parameter name (LoRA:
``<module>.lora_A.<matrix>`` (r, k) and ``<module>.lora_B.<matrix>`` (d, r)); string metadata
``format``, ``method``, ``base_model``, ``model_family``, ``r``, ``alpha``, ``scaling``, ``config``
(the method config as JSON) and ``index``: a JSON list, one entry per adapted matrix::

    {"layer": 3, "matrix": "q", "module": "bert.encoder.layer.3.attention.self.query",
     "A": "<key>", "B": "<key>", "r": 8, "alpha": 16.0, "scaling": 2.0,
     "out_slice": null | [start, stop], "base_shape": [out, in]}

(full fine-tuning entries carry ``"W": "<key>"`` — the fine-tuned matrix — instead of A/B).
ΔW of an entry, in the module's (out, in) orientation on rows ``out_slice``, is ``scaling·B@A``.
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

ADAPTER_FORMAT = "lora_research.adapter/1"
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
    """Write ``adapter.safetensors``: tensors plus string metadata (non-strings as JSON)."""
    from safetensors.torch import save_file

    meta = {"format": ADAPTER_FORMAT}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, default=_json_default) for k, v in metadata.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_adapter_file(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``adapter.safetensors`` back: (tensors, metadata with JSON values decoded)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"no adapter file at {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return tensors, meta


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
