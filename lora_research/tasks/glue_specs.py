"""The eight GLUE tasks of the LoRA paper as static specs: columns, labels, metrics, splits.

GLUE: Wang et al., 2019 (ICLR). The LoRA paper (Hu et al., 2021, Table 2) reports on the GLUE dev
sets: MNLI matched/mismatched accuracy, CoLA Matthews correlation, STS-B Pearson, the rest accuracy
(metric names from :mod:`lora_research.metrics.glue`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_research.metrics.glue import GLUE_METRIC_NAMES

__all__ = ["GLUE_TASKS", "GlueTaskSpec", "get_task_spec", "resolve_splits"]


@dataclass(frozen=True)
class GlueTaskSpec:
    """Static description of one GLUE task.

    Attributes:
        name: hub config name (``"cola"``, ``"sst2"``, ...), also the key in :data:`GLUE_TASKS`.
        text_columns: the hub's text column(s), in model-input order, e.g.
            ``("sentence1", "sentence2")``; one column for single-sentence tasks.
        num_labels: size of the classifier head; ``1`` for regression (STS-B).
        label_names: class names in label-id order (the hub ``ClassLabel`` names);
            ``()`` for regression.
        is_regression: ``True`` for STS-B (float score in [0, 5], MSE loss).
        metric_names: metrics reported by :func:`lora_research.metrics.glue.compute_glue_metrics`.
        main_metric: metric used for best-epoch selection and the paper's Table 2 column
            (CoLA ``matthews_correlation``, STS-B ``pearson``, all others ``accuracy``).
        eval_splits: dev splits to evaluate on (MNLI: matched and mismatched; others
            ``("validation",)``). The first one is :attr:`main_eval_split`.
        test_splits: unlabelled (GLUE leaderboard) test splits, as named on the hub.
        glue_dir_name: folder name in the original GLUE download (``"CoLA"``, ``"SST-2"``...).
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    is_regression: bool
    metric_names: tuple[str, ...]
    main_metric: str
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    glue_dir_name: str

    @property
    def main_eval_split(self) -> str:
        """The dev split whose ``main_metric`` selects the best epoch (MNLI: matched)."""
        return self.eval_splits[0]

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names of the task, as on the hub: train, eval splits, test splits."""
        return ("train", *self.eval_splits, *self.test_splits)

    @property
    def default_splits(self) -> tuple[str, ...]:
        """What training needs (``splits=None``): train and the eval splits, no test."""
        return ("train", *self.eval_splits)


def _spec(name, text_columns, label_names, glue_dir_name, main_metric="accuracy",
          eval_splits=("validation",), test_splits=("test",)) -> GlueTaskSpec:
    is_regression = not label_names
    return GlueTaskSpec(
        name=name,
        text_columns=tuple(text_columns),
        num_labels=1 if is_regression else len(label_names),
        label_names=tuple(label_names),
        is_regression=is_regression,
        metric_names=GLUE_METRIC_NAMES[name],
        main_metric=main_metric,
        eval_splits=tuple(eval_splits),
        test_splits=tuple(test_splits),
        glue_dir_name=glue_dir_name,
    )


#: The eight GLUE tasks of the LoRA paper (WNLI and AX are not used).
GLUE_TASKS: dict[str, GlueTaskSpec] = {
    "cola": _spec("cola", ["sentence"], ["unacceptable", "acceptable"], "CoLA",
                  main_metric="matthews_correlation"),
    "sst2": _spec("sst2", ["sentence"], ["negative", "positive"], "SST-2"),
    "mrpc": _spec("mrpc", ["sentence1", "sentence2"], ["not_equivalent", "equivalent"], "MRPC"),
    "qqp": _spec("qqp", ["question1", "question2"], ["not_duplicate", "duplicate"], "QQP"),
    "stsb": _spec("stsb", ["sentence1", "sentence2"], [], "STS-B", main_metric="pearson"),
    "mnli": _spec("mnli", ["premise", "hypothesis"], ["entailment", "neutral", "contradiction"],
                  "MNLI", eval_splits=("validation_matched", "validation_mismatched"),
                  test_splits=("test_matched", "test_mismatched")),
    "qnli": _spec("qnli", ["question", "sentence"], ["entailment", "not_entailment"], "QNLI"),
    "rte": _spec("rte", ["sentence1", "sentence2"], ["entailment", "not_entailment"], "RTE"),
}


def get_task_spec(task: str) -> GlueTaskSpec:
    """Return the spec of ``task``; ``ValueError`` naming the valid choices otherwise."""
    try:
        return GLUE_TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown GLUE task {task!r}; valid choices: {', '.join(GLUE_TASKS)}"
        ) from None


def resolve_splits(spec: GlueTaskSpec, splits: Sequence[str] | str | None) -> tuple[str, ...]:
    if splits is None:
        return spec.default_splits
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(dict.fromkeys(splits))  # de-duplicate, keep order
    bad = [s for s in splits if s not in spec.splits]
    if bad or not splits:
        raise ValueError(
            f"invalid split(s) {bad!r} for GLUE task {spec.name!r}; "
            f"valid choices: {', '.join(spec.splits)}"
        )
    return splits
