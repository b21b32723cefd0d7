"""What a Hugging Face model's ``forward`` accepts, read from its signature (differs across transformers 5.x)."""
from __future__ import annotations

import inspect


def forward_takes(model, name: str) -> bool:
    """Whether ``model.forward`` has a parameter ``name`` (e.g. ``logits_to_keep``)."""
    return name in inspect.signature(type(model).forward).parameters


def cache_keyword(model) -> str:
    """The key/value cache keyword of ``model.forward``: ``cache`` since transformers 5.2x, ``past_key_values`` before."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"
