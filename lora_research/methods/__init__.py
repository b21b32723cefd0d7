"""Fine-tuning methods, one module each. Each registers itself (``@register_method``); importing
this package imports every module in it, so a new method is one new file here."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lora_research.methods.base import (
    METHODS,
    MergeNotSupported,
    Method,
    ParamCounts,
    count_parameters,
    get_method_class,
    register_method,
)
from lora_research.structured import as_dataclass

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from lora_research.methods.lora import LoRA, LoRAConfig, LoRALinear  # noqa: E402


def build_method(cfg: Any) -> Method:
    """Build a method from a config (dict, DictConfig or the method's dataclass).

    Unknown keys and wrong types fail here, naming the key and the method's valid keys.
    """
    name = cfg.name if hasattr(cfg, "name") else dict(cfg).get("name", "<missing name>")
    cls = get_method_class(name)
    return cls(as_dataclass(cls.Config, cfg, f"for method {cls.name!r}", noun="option"))


__all__ = [
    "METHODS",
    "MergeNotSupported",
    "Method",
    "ParamCounts",
    "LoRA",
    "LoRAConfig",
    "LoRALinear",
    "build_method",
    "count_parameters",
    "get_method_class",
    "register_method",
]
