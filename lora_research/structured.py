"""One way to turn a config node (dict, DictConfig or the dataclass itself) into its typed schema."""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


def as_dataclass(schema: type[T], node: Any, where: str, noun: str = "key") -> T:
    """``node`` merged onto ``schema``'s defaults, as an instance of ``schema``.

    An unknown key or a wrong type raises ``ValueError`` naming the place (``where``, e.g.
    ``"in 'trainer' config"``), the bad key and the valid keys.
    """
    if isinstance(node, schema):
        return node
    if is_dataclass(node):
        node = OmegaConf.structured(node)
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    valid = [f.name for f in fields(schema)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {noun}(s) {unknown} {where}; valid {noun}s: {valid}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except Exception as e:  # omegaconf's type errors name the key; keep them, add where
        raise ValueError(f"invalid value {where}: {e}") from None
    return OmegaConf.to_object(merged)
