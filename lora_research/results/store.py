"""The results store: run folders -> one pandas row per run, and cells that never pool unlike runs.

A *run folder* is any folder holding ``summary.json``, ``error.json`` or ``config.yaml`` (Hydra's
``.hydra/`` copies are skipped). :func:`load_runs` gives one row per folder with

* the resolved config, flattened (``method.r``, ``trainer.lr``, ``task.decode.num_beams``; lists as
  tuples, so ``method.targets == ("q", "v")``),
* every metric of ``summary.json`` (``metrics.<name>`` at the best epoch, ``final.<name>`` from the
  final evaluation, e.g. E2E ``final.BLEU``), the headline number (``value``, on the paper's scale)
  and its name (``value_name``),
* parameter counts, runtime, steps, peak memory, device,
* ``status`` (completed | diverged | failed | preempted | incomplete), ``reason`` and
  ``overrides`` (from ``error.json`` where it has them; older files carry only ``error``).

:func:`cells` aggregates the completed runs of each (row, task) over seeds. A row is keyed on the
*full identity* of what was trained: every ``method.*`` option, the model, and every other config
key that changes the model or its training (trainer, task, init_from) and varies between runs of
the same method on the same task. Keys that cannot change what is learned (device, paths, logging,
eval batch size, threads, W&B) are not identity (:data:`NOT_IDENTITY`). So two runs that differ
only in ``method.alpha`` are two rows; runs of one row that use a different lr per task (paper
Table 9) stay one row, with the lr shown per task.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Iterable

from lora_research import outputs

SUMMARY, ERROR, CONFIG = "summary.json", "error.json", "config.yaml"
CONFIG_GROUPS = ("model", "task", "method", "trainer", "logger")
CONFIG_TOP = ("seed", "init_from", "experiment_name", "overwrite")
#: config keys that do not change what is trained (never split rows)
NOT_IDENTITY = {
    "seed", "experiment_name", "overwrite",
    "trainer.device", "trainer.eval_batch_size", "trainer.logging_steps", "trainer.num_workers", "trainer.resume",
    "trainer.keep_checkpoints", "trainer.save_total_limit", "trainer.threads", "trainer.malloc_mmap_threshold_mb",
    "trainer.lean_activations",
    "task.data_dir", "task.cache_dir", "task.decode.batch_size",
}
NOT_IDENTITY_PREFIXES = ("logger.",)
SUMMARY_KEYS = (
    "task", "model", "method", "method_label", "seed", "main_metric", "best_epoch", "best_step",
    "trainable_params", "trainable_params_without_head", "head_params", "total_params", "train_runtime_s",
    "train_steps", "train_loss", "num_train_examples", "peak_rss_mb", "peak_cuda_mb", "device", "world_size",
    "global_batch_size", "resumed_from", "command",
)
#: how the paper aggregates seeds per task kind (PAPER.md: median of 5 for GLUE, D.1; mean of 3 for E2E, D.3)
PAPER_AGGREGATE = {"glue": "median", "e2e": "mean"}


# --- loading --------------------------------------------------------------------------------------

def find_run_dirs(paths: Iterable) -> list[Path]:
    """Every run folder at or below ``paths`` (sorted, no duplicates)."""
    found = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run folder or sweep: {root}")
        candidates = [root] if root.is_file() else [root, *[p for p in root.rglob("*") if p.is_dir()]]
        for d in candidates:
            d = d.parent if d.is_file() else d
            rel = d.relative_to(root) if d != root and root.is_dir() else Path()
            if any(part.startswith(".") or part in ("checkpoints", "wandb") for part in rel.parts):
                continue
            if any((d / f).is_file() for f in (SUMMARY, ERROR, CONFIG)):
                found.add(d.resolve())
    return sorted(found)


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def flatten(d: dict, prefix: str = "") -> dict:
    """{"method": {"r": 8, "targets": ["q"]}} -> {"method.r": 8, "method.targets": ("q",)}; {} is absent."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = _hashable(v)
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_run(run_dir: Path | str) -> dict:
    """One run folder as a flat record (the row :func:`load_runs` gives it)."""
    d = Path(run_dir)
    rec: dict = {"run_dir": str(d)}
    cfg = outputs.read_config(d, required=False)
    if cfg:
        from lora_research.config import canonical  # every key at its default where config.yaml predates it

        cfg = canonical(cfg)
    rec.update(flatten({k: v for k, v in cfg.items() if k in CONFIG_GROUPS}))
    rec.update({k: _hashable(cfg[k]) for k in CONFIG_TOP if k in cfg})
    summary = _read_json(d / SUMMARY) if (d / SUMMARY).is_file() else None
    error = _read_json(d / ERROR) if (d / ERROR).is_file() else None
    if summary is not None:
        for k in SUMMARY_KEYS:
            if k in summary:
                rec[k] = summary[k]
        for k, v in (summary.get("metrics") or {}).items():
            rec[f"metrics.{k}"] = v
        for k, v in (summary.get("final_evaluation") or {}).items():
            if _finite(v):
                rec[f"final.{k}"] = v
        head = summary.get("headline_metric")
        if isinstance(head, dict) and head.get("value") is not None:
            rec["value"], rec["value_name"] = float(head["value"]), head.get("name")
        else:
            rec["value"], rec["value_name"] = _legacy_value(summary)
        rec["status"], rec["reason"] = summary.get("status", "completed"), None
        bad = [k for k in ("train_loss", "metrics.loss") if k in rec and rec[k] is not None and not _finite(rec[k])]
        if bad or rec.get("value") is None or not _finite(rec["value"]):
            rec["status"] = "diverged"
            rec["reason"] = (f"non-finite {', '.join(bad)}" if bad else "no finite headline metric")
    elif error is not None:
        rec["status"] = error.get("status") or "failed"
        rec["reason"] = error.get("reason") or error.get("error") or "unknown (error.json has no reason)"
        rec["error"] = error.get("error")
    else:
        rec["status"], rec["reason"] = "incomplete", "no summary.json or error.json (running, or killed hard)"
    if error is not None and error.get("overrides") is not None:
        rec["overrides"] = _hashable(error["overrides"])
    elif summary is not None and summary.get("command"):
        rec["overrides"] = tuple(summary["command"].split()[3:])
    for k in ("task", "model", "method"):  # failed runs: from the config
        if rec.get(k) is None and rec.get(f"{k}.name") is not None:
            rec[k] = rec[f"{k}.name"]
    return rec


def _legacy_value(summary: dict):
    """Summaries without ``headline_metric``: E2E BLEU, else the main metric x100."""
    bleu = (summary.get("final_evaluation") or {}).get("BLEU")
    if bleu is not None:
        return float(bleu), "BLEU"
    v = (summary.get("metrics") or {}).get(summary.get("main_metric"))
    return (None if v is None else 100.0 * float(v)), summary.get("main_metric")


def load_runs(paths) -> "pandas.DataFrame":  # noqa: F821
    """One row per run folder at or below ``paths`` (a path, or a list of them)."""
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = [read_run(d) for d in find_run_dirs(paths)]
    df = pd.DataFrame.from_records(records)
    if df.empty:
        df = pd.DataFrame(columns=["run_dir", "status", "reason"])
    first = [c for c in ("run_dir", "status", "reason", "task", "model", "method", "seed", "value_name", "value")
             if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


# --- identity and cells ---------------------------------------------------------------------------

def is_config_column(c: str) -> bool:
    return c in CONFIG_TOP or (("." in c) and c.split(".", 1)[0] in CONFIG_GROUPS)


def identity_columns(columns) -> list[str]:
    """Config columns that change what is trained (everything but :data:`NOT_IDENTITY`)."""
    return [c for c in columns if is_config_column(c) and c not in NOT_IDENTITY
            and not c.startswith(NOT_IDENTITY_PREFIXES)]


_MISSING = "<unset>"


def _canon(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return _MISSING
    return v


def _records(df) -> list[dict]:
    return [{k: _canon(v) for k, v in r.items()} for r in df.to_dict("records")]


def row_key_columns(df) -> list[str]:
    """The columns that key a table row: model, every method option, and any other identity key
    that varies between runs of the same method (and options) on the same task."""
    ident = [c for c in identity_columns(df.columns) if c != "task.name"]
    base = [c for c in ident if c == "model.name" or c.startswith("method.")]
    others = [c for c in ident if c not in base]
    recs = _records(df)
    varying = []
    for c in others:
        seen: dict = {}
        for r in recs:
            k = tuple(r.get(b, _MISSING) for b in base) + (r.get("task.name", r.get("task")),)
            seen.setdefault(k, set()).add(r.get(c, _MISSING))
        if any(len(v) > 1 for v in seen.values()):
            varying.append(c)
    return base + varying


def aggregate(values: list[float], agg: str) -> float:
    return statistics.median(values) if agg == "median" else statistics.fmean(values)


def paper_aggregate(kind) -> str:
    return PAPER_AGGREGATE.get(kind, "median")


def short(c: str) -> str:
    return c.split(".", 1)[1] if c.startswith(("method.", "trainer.", "task.", "model.")) else c


def fmt_value(v) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) if all(not isinstance(x, tuple) for x in v) else json.dumps(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


LABEL_KEYS = ("method.r", "method.targets", "method.prefix_len", "method.top_layers")


def cells(df, metrics=("value",), agg: str | None = None):
    """Aggregate completed runs per (row, task) over seeds: a DataFrame, one line per (row, task, metric).

    Columns: ``row`` (a label), ``row_key`` (the identity, as a tuple of (column, value)), ``row_id``
    (the preset's row name, from ``experiment_name``), ``task``, ``metric``, ``value`` (the aggregate),
    ``agg``, ``n``, ``std`` (sample std over seeds, 0 for one seed), ``min``, ``max``, ``seeds``,
    ``lr``, ``params`` (trainable without head), ``runs`` (the run folders), plus every row-key column.
    """
    import pandas as pd

    ok = df[df["status"] == "completed"] if "status" in df.columns else df
    if ok.empty:
        return pd.DataFrame(columns=["row", "row_key", "row_id", "task", "metric", "value", "agg", "n", "std", "min",
                                     "max", "seeds", "lr", "params", "runs"])
    key_cols = row_key_columns(ok)
    recs = _records(ok)
    groups: dict = {}
    for r in recs:
        rk = tuple((c, r.get(c, _MISSING)) for c in key_cols)
        task = r.get("task.name", r.get("task"))
        groups.setdefault((rk, task), []).append(r)
    labels = _labels([dict(rk) for rk, _ in groups], key_cols)
    out = []
    for (rk, task), runs in groups.items():
        kind = runs[0].get("task.kind", _MISSING)
        how = agg or paper_aggregate(kind)
        for m in metrics:
            vals = [float(r[m]) for r in runs if m in r and r[m] != _MISSING and _finite(r[m])]
            if not vals:
                continue
            lrs = sorted({r.get("trainer.lr") for r in runs} - {_MISSING})
            params = sorted({r.get("trainable_params_without_head") for r in runs} - {_MISSING})
            line = {
                "row": labels[rk], "row_key": rk, "row_id": _row_id(runs), "task": task, "metric": m,
                "value": aggregate(vals, how), "agg": how, "n": len(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "min": min(vals), "max": max(vals),
                "seeds": tuple(sorted(r.get("seed") for r in runs if m in r and _finite(r.get(m)))),
                "lr": lrs[0] if len(lrs) == 1 else tuple(lrs),
                "params": params[0] if len(params) == 1 else tuple(params),
                "runs": tuple(r["run_dir"] for r in runs),
            }
            line.update({c: (None if v == _MISSING else v) for c, v in rk})
            out.append(line)
    return pd.DataFrame(out)


def _row_id(runs: list[dict]) -> str:
    """The preset's row name: experiment_name without its ``<task>-<model>-`` prefix, else the method."""
    ids = []
    for r in runs:
        name, prefix = str(r.get("experiment_name", "")), f"{r.get('task.name')}-{r.get('model.name')}-"
        ids.append(name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else r.get("method.name"))
    return Counter(ids).most_common(1)[0][0]


def _labels(keys: list[dict], key_cols: list[str]) -> dict:
    """Readable, unique row labels: method [r=.. targets] + every key that tells two rows apart."""
    by_method: dict = {}
    for k in keys:
        by_method.setdefault((k.get("model.name"), k.get("method.name")), []).append(k)
    models = {k.get("model.name") for k in keys}
    labels = {}
    for (model, method), ks in by_method.items():
        differing = [c for c in key_cols if c not in ("model.name", "method.name") and len({k.get(c) for k in ks}) > 1]
        for k in ks:
            parts = [str(method)]
            for c in LABEL_KEYS:
                if k.get(c, _MISSING) != _MISSING:
                    v = k[c]
                    parts.append(fmt_value(v) if c == "method.targets" else f"{short(c)}={fmt_value(v)}")
            parts += [f"{short(c)}={fmt_value(k.get(c))}" for c in differing if c not in LABEL_KEYS]
            if len(models) > 1:
                parts.insert(0, f"{model}:")
            labels[tuple((c, k.get(c, _MISSING)) for c in key_cols)] = " ".join(parts)
    return labels


def failures(df) -> "pandas.DataFrame":  # noqa: F821
    """Runs that did not complete, or diverged: run_dir, status, reason, overrides."""
    if "status" not in df.columns:
        return df.iloc[0:0]
    bad = df[df["status"] != "completed"]
    cols = [c for c in ("run_dir", "status", "reason", "task", "method", "seed", "overrides") if c in bad.columns]
    return bad[cols]
