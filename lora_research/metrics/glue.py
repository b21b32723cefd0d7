"""Official GLUE metrics (Wang et al., 2019, "GLUE: A Multi-Task Benchmark ...", Table 1).

Names and definitions follow the Hugging Face ``glue`` metric (``evaluate``/``datasets``
``metrics/glue/glue.py``), which in turn follows the GLUE leaderboard:

==========  ==========================================  =====================
task        metrics reported                             paper Table 2 column
==========  ==========================================  =====================
cola        ``matthews_correlation``                     Matthews corr.
stsb        ``pearson``, ``spearmanr``                   Pearson
mrpc, qqp   ``accuracy``, ``f1`` (F1 of class 1)         accuracy
sst2, mnli, ``accuracy``                                 accuracy
qnli, rte
==========  ==========================================  =====================

This module is pure (numbers in, numbers out) and deliberately does not import the task
or model code, so it can be used from evaluation scripts and the analysis layer alike.
Computations use scikit-learn (``matthews_corrcoef``, ``f1_score``) and scipy
(``pearsonr``, ``spearmanr``), exactly as the Hugging Face ``glue`` metric does; each is imported by the
task that needs it (scipy.stats and sklearn.metrics take ~0.9 s to import, and accuracy-only tasks such as
SST-2 need neither: issue #13's start-up).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GLUE_EVALUATE_PATH",
    "GLUE_METRIC_NAMES",
    "REGRESSION_TASKS",
    "compute_glue_metrics",
    "logits_to_predictions",
]

#: Metric names reported for each GLUE task, in reporting order. The task specs in
#: :mod:`lora_research.tasks.glue_specs` take their ``metric_names`` from this table.
GLUE_METRIC_NAMES: Mapping[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}

#: These metrics as an ``evaluate`` metric module (offline): ``evaluate.load(GLUE_EVALUATE_PATH, "mrpc")``.
GLUE_EVALUATE_PATH: str = str(Path(__file__).with_name("glue_evaluate"))

#: Tasks whose label is a real-valued score (one output unit, MSE loss).
REGRESSION_TASKS: frozenset[str] = frozenset({"stsb"})


def _scipy_stats():
    import scipy.stats

    return scipy.stats


def _check_task(task: str) -> str:
    if task not in GLUE_METRIC_NAMES:
        raise ValueError(
            f"unknown GLUE task {task!r}; valid choices: {sorted(GLUE_METRIC_NAMES)}"
        )
    return task


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def logits_to_predictions(task: str, logits: Any) -> np.ndarray:
    """Turn model outputs into the predictions :func:`compute_glue_metrics` expects.

    Classification tasks: ``argmax`` over the last axis of ``logits`` with shape
    ``(n, num_labels)`` → class ids (int64). Regression (``stsb``): the single output unit,
    shape ``(n, 1)`` or ``(n,)`` → floats (the same as ``np.squeeze`` in HF ``run_glue.py``).
    """
    _check_task(task)
    arr = np.asarray(logits)
    if task in REGRESSION_TASKS:
        return _as_1d("regression logits", arr).astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"classification logits for {task!r} must have shape (n, num_labels), "
            f"got {arr.shape}"
        )
    return arr.argmax(axis=-1).astype(np.int64)


def compute_glue_metrics(task: str, predictions: Any, references: Any) -> dict[str, float]:
    """Official GLUE metrics for ``task`` (see the module docstring for the table).

    Args:
        task: one of ``cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte``.
        predictions: class ids (or float scores for ``stsb``), e.g. from
            :func:`logits_to_predictions`.
        references: gold labels (class ids, or float scores for ``stsb``).

    Returns:
        ``{metric_name: value}`` as plain floats, keys as in :data:`GLUE_METRIC_NAMES`.
        Definitions: accuracy = mean(pred == ref); ``f1`` = F1 of the positive class 1
        (``sklearn.metrics.f1_score``, binary); ``matthews_correlation`` =
        (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) (sklearn, 0 when undefined);
        ``pearson``/``spearmanr`` = Pearson's r / Spearman's ρ (scipy; NaN when an input
        is constant, as in the official metric).
    """
    _check_task(task)
    preds = _as_1d("predictions", predictions)
    refs = _as_1d("references", references)
    if preds.shape != refs.shape:
        raise ValueError(
            f"predictions and references differ in length: {preds.shape[0]} vs {refs.shape[0]}"
        )
    if preds.size == 0:
        raise ValueError(f"no predictions given for task {task!r}")

    if task in REGRESSION_TASKS:
        p, r = preds.astype(np.float64), refs.astype(np.float64)
        return {
            "pearson": float(_scipy_stats().pearsonr(p, r)[0]),
            "spearmanr": float(_scipy_stats().spearmanr(p, r)[0]),
        }

    if task == "cola":
        from sklearn.metrics import matthews_corrcoef

        return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}

    out = {"accuracy": float(np.mean(preds == refs))}
    if "f1" in GLUE_METRIC_NAMES[task]:
        from sklearn.metrics import f1_score

        out["f1"] = float(f1_score(y_true=refs, y_pred=preds, pos_label=1, average="binary"))
    return out
