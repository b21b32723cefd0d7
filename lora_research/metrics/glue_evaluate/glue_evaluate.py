"""The GLUE metrics of :mod:`lora_research.metrics.glue` as an ``evaluate`` metric module, loadable offline:

    import evaluate
    from lora_research.metrics.glue import GLUE_EVALUATE_PATH
    glue = evaluate.load(GLUE_EVALUATE_PATH, "mrpc")      # config name = GLUE task
    glue.compute(predictions=[1, 0, 1], references=[1, 1, 1])  # {'accuracy': ..., 'f1': ...}

Same numbers as :func:`lora_research.metrics.glue.compute_glue_metrics` (Wang et al. 2019, Table 1;
the paper's Table 2 columns), which this module calls.
"""
import datasets
import evaluate

from lora_research.metrics.glue import GLUE_METRIC_NAMES, REGRESSION_TASKS, compute_glue_metrics

_DESCRIPTION = "GLUE dev-set metrics as reported in the LoRA paper (Hu et al. 2021, Table 2)."
_KWARGS = """predictions: class ids (float scores for stsb); references: gold labels (floats for stsb).
Returns {metric: value} with the names of lora_research.metrics.glue.GLUE_METRIC_NAMES[task]."""
_CITATION = """@inproceedings{wang2019glue, title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding}, author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy,
Omer and Bowman, Samuel R.}, booktitle={ICLR}, year={2019}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class GlueEvaluate(evaluate.Metric):
    def _info(self):
        if self.config_name not in GLUE_METRIC_NAMES:
            raise KeyError(f"unknown GLUE task {self.config_name!r}; valid choices: {sorted(GLUE_METRIC_NAMES)}")
        dtype = "float32" if self.config_name in REGRESSION_TASKS else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
        )

    def _compute(self, predictions, references):
        return compute_glue_metrics(self.config_name, predictions, references)
