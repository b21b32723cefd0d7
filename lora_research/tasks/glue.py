"""Old import place of the GLUE names, kept for ``predict.py`` and ``tests/test_real_learning.py``.

The code lives by concept: specs in :mod:`~lora_research.tasks.glue_specs`, the file loader in
:mod:`~lora_research.tasks.glue_files`, tokenised features in :mod:`~lora_research.tasks.glue_features`
(their cache: :mod:`~lora_research.tasks.feature_cache`). New code imports from those.
"""
from __future__ import annotations

from lora_research.tasks.glue_features import features_fingerprint, prepare_glue_features
from lora_research.tasks.glue_files import HUB_DATASET_ID, _tsv_format, load_glue
from lora_research.tasks.glue_specs import GLUE_TASKS, GlueTaskSpec, get_task_spec

__all__ = ["GLUE_TASKS", "GlueTaskSpec", "HUB_DATASET_ID", "_tsv_format", "features_fingerprint", "get_task_spec",
           "load_glue", "prepare_glue_features"]
