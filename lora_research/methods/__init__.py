"""Fine-tuning methods, one module each; ``METHODS`` maps ``method=`` names to them."""
from __future__ import annotations

from typing import Any

from lora_research.methods.base import MergeNotSupported, Method, ParamCounts, count_parameters
from lora_research.methods.finetune import FineTuneTop2, FullFineTuning
from lora_research.methods.adapters import AdapterDrop, AdapterH, AdapterL, AdapterP
from lora_research.methods.bitfit import BitFit
from lora_research.methods.lora import LoRA, LoRAConfig, LoRALinear
from lora_research.methods.prefix import PrefixEmbedding, PrefixLayer

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (LoRA, FullFineTuning, FineTuneTop2, BitFit, AdapterH, AdapterL, AdapterP, AdapterDrop, PrefixEmbedding, PrefixLayer)}  # noqa: E501


def get_method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid choices: {sorted(METHODS)}") from None


def build_method(cfg: Any) -> Method:
    """Build a method from a config (dict, DictConfig or the method's dataclass).

    Unknown keys and wrong types fail here, naming the key and the method's valid keys.
    """
    from dataclasses import fields, is_dataclass

    from omegaconf import OmegaConf

    if is_dataclass(cfg):
        return get_method_class(cfg.name)(cfg)
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    cls = get_method_class(data.get("name", "<missing name>"))
    valid = [f.name for f in fields(cls.Config)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {cls.name!r}; valid options: {valid}")
    merged = OmegaConf.merge(OmegaConf.structured(cls.Config), data)
    return cls(OmegaConf.to_object(merged))


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
]
