"""Dropout masks drawn fast on CPU (``trainer.fast_dropout=true``): the same Bernoulli dropout, other draws.

On CPU, PyTorch draws each dropout mask element with ``bernoulli_``: one double from the Mersenne twister per
element, on one thread on non-Intel CPUs, ~6-9 ns per element here. A MiniLM training step at 32 x 128 tokens
draws 60M elements (20 masks: 14 on hidden states, 6 on attention probabilities) and spends ~19% of its time
there, the same in LoRA and in full fine-tuning.

Here a mask costs ~0.4 ns per element to draw: 16 random bits per element from numpy's SFC64 generator
(``BitGenerator.random_raw``), seeded for each mask from torch's default generator, so ``torch.manual_seed``
and a checkpoint's saved RNG state fix every mask, as before. Element ``i`` is dropped when its 16 bits, read as a
signed number ``v_i`` (uniform on -32768..32767), satisfy ``v_i < k - 32768`` with ``k = round(p * 65536)``: k of
the 65536 values; kept values are scaled by ``1 / (1 - k/65536)``. So each element is dropped with probability
``k/65536`` (p = 0.1: 0.1000061) and the expectation of every output is its input, as with
``torch.nn.functional.dropout`` (Srivastava et al. 2014). The backward multiplies the gradient by the same mask
and scale.

What changes: which elements are dropped (another random stream), so a run's numbers move the way another
seed's would. Off (``false``, the default): torch's own draws, bitwise as plain PyTorch. Only CPU tensors take
the fast draws; on CUDA the masks are torch's (drawn in parallel there already).

How it plugs in, without a copy of the model's code (:func:`enable`, undone by :meth:`FastDropout.remove`):

* every ``nn.Dropout`` module of the model (hidden states, classifier, the LoRA and VeRA branch inputs)
  becomes a :class:`Dropout`, its subclass: same ``p``, no state;
* the attention implementation becomes :func:`attention` around the one the model had, registered as
  ``lora_research.attention_wrap`` says: in training with attention dropout on CPU it attends in the written-out
  form ``dropout(softmax(q kᵀ · scale + mask)) v`` with a fast mask; otherwise it is the model's own
  implementation (SDPA: the same math; on CPU with dropout SDPA runs this form too).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from transformers.integrations.sdpa_attention import repeat_kv

from lora_research import attention_wrap

ATTENTION = "lora_research_fast_dropout"
_BITS = 16
_LEVELS = 1 << _BITS


def keep_mask(shape, p: float) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of ``shape`` (True: kept, probability ``1 - k/65536``, ``k = round(p·65536)``) and
    the scale ``1 / (1 - k/65536)`` that keeps the expectation. The seed comes from torch's default generator."""
    k = round(p * _LEVELS)
    if not 0 <= k < _LEVELS:
        raise ValueError(f"dropout probability p={p} gives {k} of {_LEVELS} levels dropped; valid: 0 <= p < 1")
    seed = int(torch.randint(0, 2 ** 63 - 1, ()).item())
    n = 1
    for s in shape:
        n *= int(s)
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # 4 x 16 bits per 64-bit word
    bits = torch.from_numpy(words.view(np.int16)[:n])  # signed: torch compares int16, not uint16
    return (bits >= k - _LEVELS // 2).view(*shape), _LEVELS / (_LEVELS - k)  # k values of 65536 lie below


class _Masked(torch.autograd.Function):
    """``x · keep · scale``; the backward applies the same mask and scale to the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        keep, = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the fast mask on CPU (a new tensor there); torch's own elsewhere, and
    for p >= 1."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training, inplace)
    keep, scale = keep_mask(x.shape, p)
    return _Masked.apply(x, keep, scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks are drawn by :func:`keep_mask` (on CPU ``inplace`` gives a new tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inplace)


def sdpa(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
         scale: Optional[float] = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the fast mask on the probabilities (CPU, dropout > 0).

    ``softmax(q kᵀ · scale + mask) `` then :func:`dropout`, then ``· v``; ``[b, h, L, d]`` in and out. A boolean
    mask marks the keys attended (True); masked scores get the dtype's lowest value, so a row with no key left
    attends uniformly instead of giving NaN (its output is a padding position's). Elsewhere: SDPA itself."""
    if dropout_p == 0.0 or query.device.type != "cpu":
        return nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                                          is_causal=is_causal, scale=scale)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    low = torch.finfo(scores.dtype).min
    if is_causal:
        q_len, k_len = scores.shape[-2:]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril_()
        scores = scores.masked_fill(~causal, low)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, low) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = dropout(torch.softmax(scores, dim=-1), dropout_p)
    return torch.matmul(probs, value)


# keyword arguments of transformers' attention functions that the written-out form does not compute
_UNSUPPORTED = ("softcap", "position_bias", "sliding_window", "s_aux", "sinks")


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: Optional[float] = None,
              is_causal: Optional[bool] = None, *, fallback: str = "sdpa", **kwargs):
    """A transformers attention function: :func:`sdpa` in CPU training with attention dropout, else ``fallback``.

    Mirrors transformers' ``sdpa_attention_forward`` (grouped-query heads repeated; causal when the module is
    and no mask is given) and returns ``([b, L, heads, d], None)`` as it does."""
    plain = (dropout == 0.0 or query.device.type != "cpu" or kwargs.get("output_attentions")
             or any(kwargs.get(k) is not None for k in _UNSUPPORTED))
    if plain:
        return attention_wrap.call(fallback, module, query, key, value, attention_mask, dropout=dropout,
                                   scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_len = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and key.shape[2] > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[2]]
    out = sdpa(query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=causal, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def attention_name(fallback: str) -> str:
    """The registered name of :func:`attention` around ``fallback``."""
    return fallback if is_fast(fallback) else attention_wrap.wrapper_name(ATTENTION, fallback, attention)


def is_fast(implementation: Optional[str]) -> bool:
    """Whether an attention implementation name is :func:`attention`'s (``lora_research.unpadded`` asks)."""
    return bool(implementation) and implementation.startswith(ATTENTION)


class FastDropout:
    """What :func:`enable` changed on one model; :meth:`remove` gives it back as it was."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = [m for m in model.modules() if type(m) is nn.Dropout]
        for m in self.modules:
            m.__class__ = Dropout
        self.previous = getattr(model.config, "_attn_implementation", None) if hasattr(model, "config") else None
        self.attention = self.previous is not None and hasattr(model, "set_attn_implementation")
        if self.attention:
            model.set_attn_implementation(attention_name(self.previous))

    def remove(self) -> None:
        for m in self.modules:
            m.__class__ = nn.Dropout
        self.modules = []
        if self.attention:
            self.model.set_attn_implementation(self.previous)
            self.attention = False


def enable(model: nn.Module) -> FastDropout:
    """Draw ``model``'s CPU dropout masks fast: its ``nn.Dropout`` modules and its attention dropout. Call after
    the method is applied (its dropout modules exist then)."""
    return FastDropout(model)
