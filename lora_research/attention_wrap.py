"""Attention implementations that wrap the one a model has (``lora_research.unpadded``, ``fast_dropout``).

transformers looks a model's attention function up by name (``config._attn_implementation``) in
``AttentionInterface``, and the function that builds its masks by the same name in ``AttentionMaskInterface``;
for a name it has no mask function for, it builds **no mask**, and padding goes unmasked. So a wrapper is
registered once per implementation it wraps, as ``<prefix>_<wrapped>``, with the wrapped one's mask function
(SDPA: boolean masks; eager: additive ones), and is called with ``fallback=<wrapped>``.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def wrapper_name(prefix: str, wrapped: str, function: Callable) -> str:
    """The registered name of ``function(..., fallback=wrapped)`` (registered on first use)."""
    name = f"{prefix}_" + re.sub(r"[^A-Za-z0-9_]", "_", wrapped)  # transformers parses ':' and '/' in names
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, functools.partial(function, fallback=wrapped))
        if wrapped in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[wrapped])
    return name


def call(fallback: str, module, query, key, value, attention_mask, **kwargs):
    """The wrapped implementation itself."""
    return ALL_ATTENTION_FUNCTIONS[fallback](module, query, key, value, attention_mask, **kwargs)
