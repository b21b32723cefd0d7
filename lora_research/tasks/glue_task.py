"""The GLUE tasks as the trainer sees them (wraps :mod:`lora_research.tasks.glue`)."""
from __future__ import annotations

import numpy as np
from transformers import DataCollatorWithPadding

from lora_research.metrics.glue import compute_glue_metrics, logits_to_predictions
from lora_research.tasks.base import Task, TaskData
from lora_research.tasks.glue import get_task_spec, prepare_glue_features


class GlueTask(Task):
    """A GLUE task: sequence classification (regression for STS-B), official dev metrics.

    The best epoch is chosen on the task's main metric (CoLA Matthews correlation, STS-B Pearson,
    accuracy otherwise); for MNLI on matched accuracy, mismatched reported at the same epoch.
    """

    kind = "glue"

    def __init__(self, cfg, data_root=None):
        super().__init__(cfg, data_root)
        self.spec = get_task_spec(cfg.name)
        self.name = self.spec.name
        self.num_labels = self.spec.num_labels
        self.problem_type = "regression" if self.spec.is_regression else "single_label_classification"
        self.main_metric = self.spec.main_metric

    def prepare(self, tokenizer, *, seed: int) -> TaskData:
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
        logits = eval_pred.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        preds = logits_to_predictions(self.name, np.asarray(logits))
        return compute_glue_metrics(self.name, preds, np.asarray(eval_pred.label_ids))
