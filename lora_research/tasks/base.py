"""What the trainer needs from a task: data, a collator, metrics, and (for generation) decoding.

``tasks/`` knows data and metrics, never methods. A task kind (GLUE, E2E) subclasses :class:`Task`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass
class TaskData:
    """Tokenised splits. ``evals`` is ordered: the first split is the main dev split."""

    train: Any
    evals: dict[str, Any]
    collator: Callable
    cache_hit: bool = False


class Task(abc.ABC):
    """One fine-tuning task as the trainer sees it."""

    kind: str = ""
    name: str = ""
    num_labels: Optional[int] = None  # classification heads; None for causal LMs
    problem_type: Optional[str] = None  # "regression" for STS-B
    main_metric: str = "loss"  # metric that picks the best epoch
    greater_is_better: bool = True

    def __init__(self, cfg: Any, data_root: Optional[str] = None):
        self.cfg = cfg
        self.data_root = data_root

    @abc.abstractmethod
    def prepare(self, tokenizer, *, seed: int) -> TaskData:
        """Load, subsample and tokenise the splits."""

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        """Metrics from a ``transformers.EvalPrediction`` (official names, no prefix)."""
        return {}

    def final_evaluate(self, model, tokenizer, run_dir: Path, device) -> dict[str, Any]:
        """Metrics computed once after training on the best weights (e.g. decoding + BLEU)."""
        return {}
