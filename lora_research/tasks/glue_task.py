"""The GLUE tasks as the trainer sees them: specs from :mod:`~lora_research.tasks.glue_specs`, features from
:mod:`~lora_research.tasks.glue_features`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lora_research.tasks.base import Task, TaskData, register_task
from lora_research.tasks.glue_features import prepare_glue_features
from lora_research.tasks.glue_specs import GLUE_TASKS


@dataclass
class GlueTaskConfig:
    """A GLUE task (``task=`` group: cola sst2 mrpc qqp stsb mnli qnli rte)."""

    name: str = "rte"
    kind: str = "glue"
    data_dir: Optional[str] = None  # local GLUE folder (GLUE_DIR); null = the hub's nyu-mll/glue
    max_length: int = 128  # max tokens per example (Table 9: 512 for RoBERTa-base)
    max_train_samples: Optional[int] = None  # seeded random subset of train
    max_eval_samples: Optional[int] = None  # seeded random subset of each eval split
    subset_seed: int = 0  # seed of those subsets; fixed, so runs with different seeds see the same data
    cache_dir: Optional[str] = None  # tokenised-feature cache (default ~/.cache/lora_research)


@register_task
class GlueTask(Task):
    """A GLUE task: sequence classification (regression for STS-B), official dev metrics.

    The best epoch is chosen on the task's main metric (CoLA Matthews correlation, STS-B Pearson,
    accuracy otherwise); for MNLI on matched accuracy, mismatched reported at the same epoch.
    """

    kind = "glue"
    Config = GlueTaskConfig

    def __init__(self, cfg: GlueTaskConfig):
        if cfg.name not in GLUE_TASKS:
            raise ValueError(f"task.name={cfg.name!r} is not valid; valid choices: {sorted(GLUE_TASKS)}")
        super().__init__(cfg)
        self.spec = GLUE_TASKS[cfg.name]
        self.name = self.spec.name
        self.head = "regression" if self.spec.is_regression else "classification"
        self.num_labels = self.spec.num_labels
        self.problem_type = "regression" if self.spec.is_regression else "single_label_classification"
        self.main_metric = self.spec.main_metric

    def prepare(self, tokenizer, *, seed: int) -> TaskData:
        from transformers import DataCollatorWithPadding

        # Subsets use task.subset_seed, not the training seed: seeds differ in training only.
        splits = ("train",) + tuple(self.spec.eval_splits)
        features, hit = prepare_glue_features(
            self.name,
            tokenizer,
            max_length=self.cfg.max_length,
            data_dir=self.cfg.data_dir,
            splits=splits,
            cache_dir=self.cfg.cache_dir,
            max_train_samples=self.cfg.max_train_samples,
            max_eval_samples=self.cfg.max_eval_samples,
            seed=self.cfg.subset_seed,
        )
        return TaskData(
            train=features["train"],
            evals={s: features[s] for s in self.spec.eval_splits},
            collator=DataCollatorWithPadding(tokenizer),
            cache_hit=hit,
        )

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        import numpy as np

        from lora_research.metrics.glue import compute_glue_metrics, logits_to_predictions

        logits = eval_pred.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        preds = logits_to_predictions(self.name, np.asarray(logits))
        return compute_glue_metrics(self.name, preds, np.asarray(eval_pred.label_ids))
