"""The ``evaluate`` metric module of the GLUE metrics: ``evaluate.load(lora_research.metrics.glue.GLUE_EVALUATE_PATH, task)``."""
