"""The run folder: what every run leaves behind, written atomically, and who may write into it.

::

    <run_dir>/
      config.yaml            resolved config (Hydra composition); its fingerprint says which run this folder holds
      metrics.jsonl          one JSON object per evaluation: {"epoch", "step", "split", "<metric>": ...}
      summary.json           best-epoch dev metrics under their official names, parameter counts,
                             runtime, peak memory, task/model/method/seed, the command line, the
                             config fingerprint and ``files`` (bytes + sha256 of adapter.safetensors)
      adapter.safetensors    the method's trained tensors at the best epoch (+ head), with metadata
      checkpoints/           trainer checkpoints (resume); deleted at the end unless kept. Each holds
                             model.safetensors (the trainable tensors only) + model.safetensors.sha256
                             (verified on resume), and Trainer's optimizer / scheduler / RNG / state files
      error.json             only when the run did not complete (schema below)
      .hydra/                Hydra's config.yaml / hydra.yaml / overrides.yaml of the accepted run
      train.log              the log of every invocation in this folder (Hydra's job log)
      replaced-<time>/       an earlier run's files, moved aside by ``overwrite=true``

**One folder, one run.** The fingerprint (:func:`fingerprint`) is a sha256 of the resolved config
without the keys that do not change the result (:data:`FINGERPRINT_IGNORED`: logging, device,
threads, resume mode, ...). Started into an existing folder, a run (:func:`inspect_run_dir`) is

* a no-op that says so when the folder holds a *completed* run of the same fingerprint;
* resumed (from its last valid checkpoint, evaluations after it dropped) when it holds an
  unfinished / failed / diverged / preempted run of the same fingerprint;
* refused (:class:`RunFolderConflict`, one line naming the folder, the differing keys and the way
  out) when it holds results of a different config, unless ``overwrite=true``: then the old files
  first move to ``replaced-<time>/`` (``summary.json``, ``error.json`` and ``config.yaml`` renamed
  ``*.replaced`` so that tools that find runs by those names do not count the old run twice). A folder whose
  earlier attempt failed before producing anything (no metrics, adapter, checkpoint or summary)
  is taken over by a new config the same way, without ``overwrite``.

``error.json`` (strict JSON, like every file here), written whenever a run does not complete::

    {"status": "failed" | "diverged" | "preempted",
     "reason": "<one line: what went wrong, naming the file / key / value>",
     "overrides": ["trainer.lr=-1", ...] | null,   # the job's command-line overrides (Hydra)
     "command": "python -m lora_research.train ...",
     "error": "<ExceptionType>: <message>", "traceback": "<full traceback>",
     "fingerprint": "<sha256>" | null, "run_dir": "...", "time": "<ISO 8601, UTC>",
     "resumable": true | false,
     "step": N}                                     # diverged / preempted: the optimiser step

``diverged``: a non-finite training loss, gradient norm or evaluation metric ("diverged at step
N: loss=nan"); ``preempted``: SIGTERM / SIGINT / SLURM's signal, a checkpoint was written
(``signal``, ``checkpoint`` added). A sweep also writes ``<sweep_dir>/.lora_jobs/<job>.json``
per job (``status`` one of completed / skipped / failed / diverged / preempted / refused,
``reason``, ``overrides``, ``run_dir``), read back for the end-of-sweep count.

``adapter.safetensors`` (format ``lora_research.adapter/2``: tensors, base-model identity, checksum
and an index of every adapted matrix) is owned by :mod:`lora_research.adapter_file`, which writes,
reads and verifies it and computes each entry's ΔW; :func:`save_adapter` / :func:`load_adapter_file`
here are its run-folder entry points.
Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a killed run never leaves a half-written file; files get the permissions the
umask gives (``0666 & ~umask``), as ``open()`` would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import time
import traceback as _traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from lora_research.atomic import atomic_write  # the run folder's writer (tests patch outputs.atomic_write)

if TYPE_CHECKING:  # pragma: no cover
    import torch

ADAPTER_FORMAT = "lora_research.adapter/2"  # lora_research.adapter_file.FORMAT (its owner)
ADAPTER_FILE = "adapter.safetensors"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


def read_config(run_dir: "Path | str", required: bool = True) -> dict:
    """A run folder's resolved ``config.yaml`` as a plain dict (interpolations kept as written).

    The one reader of that file (training's restore, evaluate_e2e, the results store, the analysis).
    ``required=False``: ``{}`` for a folder without one. Raises ``FileNotFoundError`` naming the folder
    when a required file is missing, ``ValueError`` when it is not a YAML mapping.
    """
    from omegaconf import OmegaConf

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        if not required:
            return {}
        raise FileNotFoundError(f"{run_dir} is not a run folder: no {CONFIG_FILE} "
                                "(pass the folder that python -m lora_research.train wrote)")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # noqa: BLE001 - any YAML error
        raise ValueError(f"{path} is unreadable ({one_line(e)[:200]})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is unreadable (not a mapping)")
    return loaded
ERROR_FILE = "error.json"
CHECKPOINTS_DIR = "checkpoints"
REPLACED_PREFIX = "replaced-"
REPLACED_SUFFIX = ".replaced"
JOBS_DIR = ".lora_jobs"
STATUSES = ("failed", "diverged", "preempted")


# --------------------------------------------------------------------------- writing


def atomic_write_text(path: Path | str, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(Path(path), write)


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±Inf) replaced by ``None``: strict JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0 and not isinstance(obj, (str, bytes)):
        try:
            return strict(obj.item())
        except (TypeError, ValueError):
            return obj
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON text (``allow_nan=False`` after :func:`strict`); numpy/torch scalars and paths allowed."""
    return json.dumps(strict(obj), allow_nan=False, default=_json_default, **kwargs)


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def _json_default(o):
    if hasattr(o, "tolist") and getattr(o, "ndim", 0) > 0:  # arrays / tensors
        return strict(o.tolist())
    if hasattr(o, "item"):
        return strict(o.item())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json_file(path: Path | str, what: str = "file") -> Any:
    """Parse a JSON file; ``ValueError`` naming the file, line and column when it is not JSON."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: byte {e.start}: not UTF-8 (0x{raw[e.start]:02x}); the {what} is corrupted") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: line {e.lineno}, column {e.colno} (byte {e.pos}): not valid JSON ({e.msg}); "
            f"the {what} is truncated or corrupted"
        ) from None


def read_metrics(run_dir: Path | str) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: not valid JSON ({e.msg}); the file is corrupted") from None
    return records


def write_metrics(run_dir: Path | str, records: Iterable[dict]) -> None:
    """Rewrite ``metrics.jsonl`` atomically with ``records`` (strict JSON, one object a line)."""
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(dumps(r, sort_keys=True) + "\n" for r in records))


def append_metrics(run_dir: Path | str, record: dict) -> None:
    """Add one evaluation record to ``metrics.jsonl`` (the file is rewritten atomically)."""
    write_metrics(run_dir, read_metrics(run_dir) + [record])


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
    """The evaluation record with the best ``key`` (ties: the earliest), or None. Non-finite values never win."""
    best = None
    for r in records:
        v = r.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            continue
        if best is None or (v > best[key] if greater_is_better else v < best[key]):
            best = r
    return best


def load_summary(run_dir: Path | str) -> dict:
    return read_json_file(Path(run_dir) / SUMMARY_FILE, "summary")


# --------------------------------------------------------------------------- one-line messages


def one_line(text: Any) -> str:
    """``text`` on one line: line breaks and runs of blanks become single spaces."""
    return " ".join(str(text).split())


def error_message(exc: BaseException) -> str:
    """The user-facing one line for an exception: its message; ``file: reason`` for OS errors."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and exc.strerror:
        target = exc.filename if not getattr(exc, "filename2", None) else f"{exc.filename} -> {exc.filename2}"
        return one_line(f"{target}: {exc.strerror}")
    if isinstance(exc, KeyError) and exc.args:
        return one_line(f"missing key {exc.args[0]!r}")
    msg = one_line(exc) if str(exc) else type(exc).__name__
    return msg


def utf8_error(path: Path | str, encoding: str = "utf-8") -> Optional[str]:
    """Where ``path`` stops being UTF-8: ``"<path>: line L, byte B: not UTF-8 (0xNN)..."``, or None."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
        return None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return (f"{path}: line {line}, byte {e.start}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
                "the file must be UTF-8 text (re-save it as UTF-8 or restore the original)")


# --------------------------------------------------------------------------- fingerprint

#: Keys that do not change what a run computes (where and how fast it runs, how it logs).
FINGERPRINT_IGNORED = (
    "hydra", "logger", "experiment_name", "overwrite",
    "trainer.device", "trainer.resume", "trainer.threads", "trainer.num_workers", "trainer.keep_checkpoints",
    "trainer.save_total_limit", "trainer.logging_steps", "trainer.eval_batch_size", "task.cache_dir",
    "trainer.malloc_mmap_threshold_mb", "trainer.lean_activations",
)


def fingerprint_view(config: dict) -> dict:
    """The part of a resolved config that determines the result (``config`` minus :data:`FINGERPRINT_IGNORED`)."""
    view = json.loads(json.dumps(config, default=str))
    for key in FINGERPRINT_IGNORED:
        node, *rest = key.split(".")
        if not rest:
            view.pop(node, None)
        elif isinstance(view.get(node), dict):
            view[node].pop(rest[0], None)
    return view


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint_view(config), sort_keys=True).encode("utf-8")).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict, limit: int = 3) -> list[str]:
    """``["model.name: tiny_bert -> tiny_roberta", ...]`` over the fingerprinted keys (at most ``limit``)."""
    a, b = _flatten(fingerprint_view(old)), _flatten(fingerprint_view(new))
    diffs = []
    # the most telling keys first: model.name, task.name, method.name ..., then shallow before deep
    for k in sorted(set(a) | set(b), key=lambda k: (not k.endswith(".name"), k.count("."), k)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            diffs.append(f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}")
    if len(diffs) > limit:
        diffs = diffs[:limit] + [f"and {len(diffs) - limit} more"]
    return diffs


# --------------------------------------------------------------------------- run folder state

_HYDRA_LOG_SUFFIX = ".log"


class RunFolderConflict(ValueError):
    """A run was started into a folder that holds another run (one line: folder, difference, way out)."""


@dataclass
class RunFolder:
    """What :func:`inspect_run_dir` found in a run folder.

    ``status``: ``new`` (nothing of a run yet), ``completed``, ``unfinished`` (config.yaml but
    neither summary nor error: killed), ``failed``, ``diverged``, ``preempted``.
    """

    path: Path
    status: str = "new"
    config: Optional[dict] = None
    config_error: Optional[str] = None
    fingerprint: Optional[str] = None
    summary: Optional[dict] = None
    summary_error: Optional[str] = None
    error: Optional[dict] = None
    has_results: bool = False
    files: list = field(default_factory=list)


def _run_entries(run_dir: Path) -> list[Path]:
    """Entries of a run folder that belong to a run (not Hydra's log, not moved-aside runs)."""
    if not run_dir.is_dir():
        return []
    def belongs(p: Path) -> bool:
        if p.name == ".hydra":
            return True
        if p.name.startswith((".", REPLACED_PREFIX)):  # temp files, .lora_jobs, moved-aside runs
            return False
        return not (p.is_file() and p.name.endswith(_HYDRA_LOG_SUFFIX))

    return sorted(p for p in run_dir.iterdir() if belongs(p))


def inspect_run_dir(run_dir: Path | str) -> RunFolder:
    """Read what ``run_dir`` holds (never writes). Unreadable files are recorded, not raised."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    state = RunFolder(path=run_dir, files=[p.name for p in _run_entries(run_dir)])
    ours = [n for n in state.files if n != ".hydra"]
    if not ours:
        return state
    cfg_path = run_dir / CONFIG_FILE
    if cfg_path.is_file():
        try:
            state.config = read_config(run_dir)
            state.fingerprint = fingerprint(state.config)
        except ValueError as e:  # any parse error: the folder's run cannot be identified
            state.config_error = str(e)
    summary_path, error_path = run_dir / SUMMARY_FILE, run_dir / ERROR_FILE
    if summary_path.is_file():
        try:
            state.summary = read_json_file(summary_path, "summary")
        except (ValueError, OSError) as e:
            state.summary_error = one_line(e)
    if error_path.is_file():
        try:
            state.error = read_json_file(error_path, "error record")
        except (ValueError, OSError):
            state.error = {"status": "failed", "reason": f"{error_path} is unreadable"}
    metrics = run_dir / METRICS_FILE
    ckpts = run_dir / CHECKPOINTS_DIR
    state.has_results = bool(
        summary_path.exists() or (run_dir / ADAPTER_FILE).exists()
        or (metrics.is_file() and metrics.stat().st_size > 0)
        or (ckpts.is_dir() and any(ckpts.iterdir()))
    )
    if state.error is not None:
        s = state.error.get("status") if isinstance(state.error, dict) else None
        state.status = s if s in STATUSES else "failed"
    elif state.summary is not None or state.summary_error is not None:
        state.status = "completed"
    elif state.config is not None or state.config_error is not None:
        state.status = "unfinished"
    else:
        state.status = "unfinished" if state.has_results else "new"
    return state


def move_aside(run_dir: Path | str) -> Optional[Path]:
    """Move a run's files into ``<run_dir>/replaced-<time>/`` (summary/error/config renamed ``*.replaced``).

    Hydra's log (``*.log``, still open) stays. Returns the new folder, or None when there was nothing.
    """
    run_dir = Path(run_dir)
    entries = _run_entries(run_dir)
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = run_dir / f"{REPLACED_PREFIX}{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir / f"{REPLACED_PREFIX}{stamp}-{n}"
    dest.mkdir()
    for p in entries:
        name = p.name + REPLACED_SUFFIX if p.name in (SUMMARY_FILE, ERROR_FILE, CONFIG_FILE) else p.name
        os.replace(p, dest / name)
    return dest


# --------------------------------------------------------------------------- error.json


def error_record(status: str, reason: str, *, exc: Optional[BaseException] = None, overrides=None,
                 fingerprint: Optional[str] = None, run_dir=None, command: str = "", **extra) -> dict:
    """The ``error.json`` content (see the module docstring)."""
    if status not in STATUSES:
        raise ValueError(f"error status {status!r}; valid: {list(STATUSES)}")
    rec = {
        "status": status,
        "reason": one_line(reason),
        "overrides": list(overrides) if overrides is not None else None,
        "command": command,
        "error": f"{type(exc).__name__}: {one_line(exc)}" if exc is not None else one_line(reason),
        "traceback": "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else None,
        "fingerprint": fingerprint,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resumable": status == "preempted",
    }
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------- verification

_ST_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                   "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path | str) -> dict:
    """``{"bytes": N, "sha256": "..."}`` of a file (what ``summary.json["files"]`` records)."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def safetensors_header(path: Path | str) -> dict:
    """The parsed header of a safetensors file after checking its structure.

    ``ValueError`` naming the file and the byte offset when the file is truncated, its header is
    not JSON, or a tensor's bytes lie outside the file.
    """
    path = Path(path)
    size = path.stat().st_size
    hint = "re-create it (re-run the training) or use another file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated ({size} bytes): not a safetensors file; {hint}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"{path}: truncated or corrupted: the header claims {n} bytes at byte 8, "
                             f"the file has {size}; {hint}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: corrupted header (bytes 8..{8 + n}: {one_line(e)[:80]}); {hint}") from None
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            count = math.prod(int(d) for d in info["shape"])
            width = _ST_DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupted header entry for tensor {name!r}; {hint}") from None
        if not 0 <= start <= stop or (width is not None and stop - start != count * width):
            raise ValueError(f"{path}: corrupted header: tensor {name!r} spans bytes {start}..{stop}, "
                             f"its shape needs {count * (width or 0)}; {hint}")
        end = max(end, stop)
    if end != data_len:
        raise ValueError(f"{path}: truncated or corrupted: the header declares {end} bytes of tensor data "
                         f"after byte {8 + n}, the file holds {data_len}; {hint}")
    return header


def verify_adapter(path: Path | str) -> Path:
    """Check an ``adapter.safetensors`` (or a run folder holding one) before it is used.

    Structure (:func:`safetensors_header`), and, when the run folder's ``summary.json`` recorded
    ``files["adapter.safetensors"]``, size and sha256 (catches flipped bits inside tensors).
    Returns the file path; ``FileNotFoundError`` / ``ValueError`` naming the file otherwise.
    """
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / ADAPTER_FILE
        if not path.is_file():
            why = ""
            err = run_dir / ERROR_FILE
            if err.is_file():
                try:
                    e = read_json_file(err)
                    why = f" (the run did not complete: {e.get('status', 'failed')}: {e.get('reason') or e.get('error', '?')})"
                except (ValueError, OSError):
                    why = " (the run did not complete: see error.json)"
            elif not (run_dir / CONFIG_FILE).is_file():
                why = " (not a run folder: no config.yaml either)"
            raise FileNotFoundError(f"no {ADAPTER_FILE} in {run_dir}{why}")
    elif not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    safetensors_header(path)
    summary_path = run_dir / SUMMARY_FILE
    if path.name == ADAPTER_FILE and summary_path.is_file():
        try:
            recorded = (read_json_file(summary_path, "summary").get("files") or {}).get(ADAPTER_FILE)
        except (ValueError, OSError, AttributeError):
            recorded = None
        if recorded and recorded.get("sha256"):
            if path.stat().st_size != recorded.get("bytes", path.stat().st_size) or file_sha256(path) != recorded["sha256"]:
                raise ValueError(
                    f"{path}: corrupted: its sha256 differs from the one {summary_path.name} recorded when the "
                    "run finished; restore it from a backup or re-run the training"
                )
    return path


def verify_torch_file(path: Path | str) -> None:
    """A ``torch.save`` file (a zip archive): every member's CRC-32 checked; ``ValueError`` naming it."""
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: truncated or corrupted ({one_line(e)})") from None
    if bad is not None:
        raise ValueError(f"{path}: corrupted (CRC mismatch in {bad})")


CHECKPOINT_WEIGHTS = "model.safetensors"  # Trainer's name (SAFE_WEIGHTS_NAME): its resume loads it
LEGACY_CHECKPOINT_WEIGHTS = "trainable.safetensors"  # checkpoints written before 2026-12-02


def save_trainable(model, folder: Path | str) -> Path:
    """The trainable tensors of ``model`` into ``folder/model.safetensors`` (+ its ``.sha256``, checked
    before a resume). The frozen base is not saved: it is the pretrained model the run starts from."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_WEIGHTS
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(path), metadata={"format": "pt", "content": "trainable parameters only"})
    (folder / (CHECKPOINT_WEIGHTS + ".sha256")).write_text(f"{file_sha256(path)}  {CHECKPOINT_WEIGHTS}\n",
                                                           encoding="ascii")
    return path


def upgrade_checkpoint(ckpt: Path | str) -> None:
    """A checkpoint of the earlier layout (``trainable.safetensors``) renamed to the current one (safe
    when several DDP ranks do it at once: the digest first, then the weights, each rename atomic)."""
    ckpt = Path(ckpt)
    old, new = ckpt / LEGACY_CHECKPOINT_WEIGHTS, ckpt / CHECKPOINT_WEIGHTS
    if not old.is_file() or new.exists():
        return
    try:
        digest = ckpt / (LEGACY_CHECKPOINT_WEIGHTS + ".sha256")
        if digest.is_file():
            text = digest.read_text(encoding="ascii", errors="replace")
            atomic_write_text(ckpt / (CHECKPOINT_WEIGHTS + ".sha256"),
                              text.replace(LEGACY_CHECKPOINT_WEIGHTS, CHECKPOINT_WEIGHTS))
        os.replace(old, new)
        digest.unlink(missing_ok=True)
    except FileNotFoundError:  # another rank renamed it first
        pass


def check_checkpoint_tensors(ckpt: Path | str, model) -> None:
    """The checkpoint holds exactly ``model``'s trainable tensors (names and shapes), else a ``ValueError``
    naming the first differences (a different method, rank or targets than the run being resumed)."""
    header = safetensors_header(Path(ckpt) / CHECKPOINT_WEIGHTS)
    saved = {n: tuple(v["shape"]) for n, v in header.items() if n != "__metadata__"}
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(trainable) - set(saved))
    unexpected = sorted(set(saved) - set(trainable))
    reshaped = sorted(n for n in set(saved) & set(trainable) if saved[n] != trainable[n])
    if missing or unexpected or reshaped:
        raise ValueError(f"checkpoint {ckpt} does not match this run's trainable tensors (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, other shape {reshaped[:5]})")


def verify_checkpoint(ckpt: Path | str) -> None:
    """Check a trainer checkpoint folder before resuming from it; ``ValueError`` naming the bad file."""
    ckpt = Path(ckpt)
    weights = ckpt / CHECKPOINT_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{ckpt}: no {CHECKPOINT_WEIGHTS} (incomplete checkpoint)")
    safetensors_header(weights)
    digest = ckpt / (CHECKPOINT_WEIGHTS + ".sha256")
    if digest.is_file() and digest.read_text(encoding="ascii", errors="replace").split()[:1] != [file_sha256(weights)]:
        raise ValueError(f"{weights}: corrupted (sha256 differs from {digest.name})")
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        raise ValueError(f"{ckpt}: no trainer_state.json (incomplete checkpoint)")
    read_json_file(state, "checkpoint state")
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (ckpt / name).is_file():
            raise ValueError(f"{ckpt}: no {name} (incomplete checkpoint)")
    for p in sorted(ckpt.iterdir()):
        if p.suffix in (".pt", ".pth", ".bin") and p.is_file():
            verify_torch_file(p)


# --------------------------------------------------------------------------- sweep job records


def write_job_record(sweep_dir: Path | str, job: Any, record: dict) -> None:
    atomic_write_json(Path(sweep_dir) / JOBS_DIR / f"{job}.json", record)


def read_job_records(sweep_dir: Path | str) -> list[dict]:
    d = Path(sweep_dir) / JOBS_DIR
    out = []
    for p in sorted(d.glob("*.json"), key=lambda p: (len(p.stem), p.stem)) if d.is_dir() else []:
        try:
            out.append(read_json_file(p))
        except (ValueError, OSError):
            out.append({"status": "failed", "reason": f"{p} is unreadable", "job": p.stem})
    return out


def clear_job_records(sweep_dir: Path | str) -> None:
    shutil.rmtree(Path(sweep_dir) / JOBS_DIR, ignore_errors=True)
