"""Tasks, registered by kind (``glue``: the 8 GLUE tasks, ``e2e``: E2E NLG). Importing this
package imports every module in it, so a new task kind is one new file here plus its YAML."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lora_research.structured import as_dataclass
from lora_research.tasks.base import HEADS, TASKS, Task, TaskData, get_task_class, register_task

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def task_config(node: Any):
    """The typed config of a ``task=`` node: the schema of its kind (default ``glue``)."""
    kind = node.kind if hasattr(node, "kind") else dict(node or {}).get("kind", "glue")
    return as_dataclass(get_task_class(kind).Config, node, "in 'task' config")


def build_task(task_cfg: Any) -> Task:
    """The :class:`Task` for a task config (its ``kind`` picks the registered class)."""
    cfg = task_config(task_cfg)
    return get_task_class(cfg.kind)(cfg)


__all__ = ["HEADS", "TASKS", "Task", "TaskData", "build_task", "get_task_class", "register_task", "task_config"]
