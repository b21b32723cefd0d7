"""Tasks by kind: ``glue`` (8 GLUE tasks) and ``e2e`` (E2E NLG)."""
from __future__ import annotations

from typing import Any

from lora_research.tasks.base import Task, TaskData


def build_task(task_cfg: Any) -> Task:
    """The :class:`Task` for a validated task config (dispatch on ``task_cfg.kind``)."""
    kind = getattr(task_cfg, "kind", "glue")
    if kind == "glue":
        from lora_research.tasks.glue_task import GlueTask

        return GlueTask(task_cfg)
    if kind == "e2e":
        from lora_research.tasks.e2e_task import E2ETask

        return E2ETask(task_cfg)
    raise ValueError(f"unknown task kind {kind!r}; valid choices: ['glue', 'e2e']")


__all__ = ["Task", "TaskData", "build_task"]
