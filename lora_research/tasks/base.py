"""What the trainer needs from a task: data, a collator, metrics, its head, and (for generation) decoding.

A task kind (GLUE, E2E) subclasses :class:`Task`, sets ``kind`` and ``Config`` (its schema) and
registers itself with :func:`register_task`; every module of ``lora_research/tasks/`` is imported
by the package. ``tasks/`` knows data and metrics, never methods.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, TypeVar

HEADS = ("classification", "regression", "generation")


@dataclass
class TaskData:
    """Tokenised splits. ``evals`` is ordered: the first split is the main dev split."""

    train: Any
    evals: dict[str, Any]
    collator: Callable
    cache_hit: bool = False


class Task(abc.ABC):
    """One fine-tuning task as the trainer sees it. ``__init__`` checks the config (``ValueError``)."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type]  # the ``task=`` schema (a dataclass)
    final_evaluation: ClassVar[bool] = False  # True: restore the best weights after training, run final_evaluate
    name: str = ""
    head: str = "classification"  # one of HEADS: which model head the task trains
    num_labels: Optional[int] = None  # classification heads; None for causal LMs
    problem_type: Optional[str] = None  # "regression" for STS-B
    main_metric: str = "loss"  # metric that picks the best epoch
    greater_is_better: bool = True

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def validate(self, family, model: Optional[str] = None) -> None:
        """Refuse a model family whose heads cannot serve this task: one line naming the model, the task
        and the valid choices (model families with this head), before any weight loads."""
        if self.head not in family.heads:
            from lora_research.targets import FAMILIES

            fits = sorted(n for n, f in FAMILIES.items() if self.head in f.heads)
            who = f"model={model} cannot run task={self.name}: " if model else ""
            raise ValueError(
                f"{who}task={self.name} needs a {self.head} head, which model family {family.name!r} does not have "
                f"(its heads: {list(family.heads)}); valid choices: a model of family {fits} for task={self.name}, "
                f"or a task with a {' or '.join(family.heads)} head for this model"
            )

    @abc.abstractmethod
    def prepare(self, tokenizer, *, seed: int) -> TaskData:
        """Load, subsample and tokenise the splits."""

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        """Metrics from a ``transformers.EvalPrediction`` (official names, no prefix)."""
        return {}

    def final_evaluate(self, model, tokenizer, run_dir: Path, device) -> dict[str, Any]:
        """Metrics computed once after training on the best weights (e.g. decoding + BLEU)."""
        return {}

    def headline(self, metrics: dict, final_evaluation: dict) -> Optional[dict]:
        """The number a results table shows for a run, on the paper's scale: ``{"name", "value"}``.

        Default: the best-epoch main metric ×100 (0–1 metrics, as in the paper's tables).
        """
        v = metrics.get(self.main_metric)
        return None if v is None else {"name": self.main_metric, "value": 100.0 * float(v)}


TASKS: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register_task(cls: T) -> T:
    """Class decorator: make ``cls`` the task of ``task.kind=<cls.kind>``."""
    other = TASKS.get(cls.kind)
    if other is not None and other is not cls:
        raise ValueError(f"task kind {cls.kind!r} is taken by {other.__module__}.{other.__qualname__}")
    TASKS[cls.kind] = cls
    return cls


def get_task_class(kind: str) -> type[Task]:
    try:
        return TASKS[kind]
    except KeyError:
        raise ValueError(f"unknown task kind {kind!r}; valid choices: {sorted(TASKS)}") from None
