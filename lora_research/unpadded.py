"""Encoders that compute only a batch's real tokens (``trainer.unpadded=true``): BERT and RoBERTa families.

A padded batch of ``n`` rows of width ``L`` holds ``N ≤ n·L`` real tokens. Every part of an encoder layer
but attention works on each token alone (the Q/K/V and output projections with their LoRA, adapter or
BitFit changes, the MLP, LayerNorm, dropout), so those run on the ``N`` real tokens packed into one row
``[1, N, hidden]``; only attention needs the rows apart, and gets them: the packed queries, keys and values
are scattered back to ``[n, heads, L, d]`` and attend with the padding masked, as before. On SST-2 batches
of 32 (two thirds padding) a LoRA training step computes 0.35x the tokens.

How it plugs in, without a copy of the model's code:

* a forward pre-hook on the model body (``model.base_model``) reads the 2-D ``attention_mask``;
* a pre-hook on ``encoder`` packs the embeddings' output (positions were already added on the padded
  batch, so each token keeps its own) and passes the packing down the layers as a keyword argument,
  which transformers hands to the attention function;
* :func:`unpadded_attention`, registered around the implementation the model had (with its mask
  function: ``lora_research.attention_wrap``) and set as the model's attention implementation, attends per
  row; without the keyword (a batch without padding, hidden states requested) it is the implementation the
  model had, padding masked as there;
* a forward hook on ``encoder`` scatters the packed output back to ``[n, L, hidden]`` (zeros at padding)
  for the pooler and the head.

Results: the same function of the real tokens; outputs and gradients equal the padded model's to float
rounding. In training the dropout draws change (they are drawn for real tokens only), so a run's numbers
move the way another seed's would. Methods that insert positions (prefix tuning's hooks on the blocks)
cannot be packed: :func:`enable` refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lora_research import attention_wrap, fast_dropout

ATTENTION = "lora_research_unpadded"


@dataclass
class Packing:
    """Where a padded batch's real tokens are: flat indices into ``n·L`` and the per-row key mask."""

    flat: torch.Tensor  # [N] indices of the real tokens in the flattened [n*L] batch, row-major
    rows: int
    width: int
    key_mask: torch.Tensor  # [n, 1, 1, L] bool, True where a key is a real token

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> "Packing":
        real = attention_mask.bool()
        n, width = real.shape
        return cls(real.reshape(-1).nonzero().squeeze(1), n, width, real[:, None, None, :])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, L, ...]`` → ``[N, ...]``: the real tokens, row after row."""
        return x.reshape(self.rows * self.width, *x.shape[2:]).index_select(0, self.flat)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` → ``[n, L, ...]``, zeros at padding."""
        full = x.new_zeros(self.rows * self.width, *x.shape[1:]).index_copy(0, self.flat, x)
        return full.view(self.rows, self.width, *x.shape[1:])


def unpadded_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: Optional[float] = None, unpadded: Optional[Packing] = None, *,
                       fallback: str = "sdpa", **kwargs):
    """The attention function: packed ``[1, heads, N, d]`` inputs attend within their rows (SDPA, padding masked).

    Without ``unpadded`` it is ``fallback``, the attention implementation the model had before :func:`enable`
    (registered per fallback with its mask function: ``lora_research.attention_wrap``). Packed, attention is SDPA,
    or :func:`lora_research.fast_dropout.sdpa` where the fallback draws its dropout masks that way.
    Returns ``([1, N, heads, d], None)``, the layout transformers' attention functions return.
    """
    if unpadded is None:
        return attention_wrap.call(fallback, module, query, key, value, attention_mask, dropout=dropout,
                                   scaling=scaling, **kwargs)
    # [1, h, N, d] -> [N, h, d] -> [n, L, h, d] -> [n, h, L, d]
    q, k, v = (unpadded.unpack(x[0].transpose(0, 1)).transpose(1, 2) for x in (query, key, value))
    sdpa = fast_dropout.sdpa if fast_dropout.is_fast(fallback) else F.scaled_dot_product_attention
    out = sdpa(q, k, v, attn_mask=unpadded.key_mask, dropout_p=dropout, scale=scaling)
    return unpadded.pack(out.transpose(1, 2)).unsqueeze(0), None


def attention_name(fallback: str) -> str:
    """The registered name of :func:`unpadded_attention` around ``fallback``."""
    return attention_wrap.wrapper_name(ATTENTION, fallback, unpadded_attention)


class Unpadded:
    """The hooks of one model; :meth:`remove` gives the model back as it was."""

    def __init__(self, model):
        self.model = model
        self.body = model.base_model
        self.encoder = self.body.encoder
        self.previous = model.config._attn_implementation
        self._pending: Optional[Packing] = None
        self.packed_calls = 0  # forwards that ran packed (tests, logs)
        self._handles = [
            self.body.register_forward_pre_hook(self._read_mask, with_kwargs=True),
            self.encoder.register_forward_pre_hook(self._pack, with_kwargs=True),
            self.encoder.register_forward_hook(self._unpack, with_kwargs=True),
        ]
        model.set_attn_implementation(attention_name(self.previous))

    def _read_mask(self, body, args, kwargs):
        self._pending = None
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool(mask.bool().all()):
            return None
        config = body.config
        if kwargs.get("output_hidden_states", config.output_hidden_states) or \
                kwargs.get("output_attentions", config.output_attentions):
            return None  # per-layer outputs are asked for in the padded layout: run padded
        if kwargs.get("inputs_embeds") is not None or kwargs.get("encoder_hidden_states") is not None:
            return None
        self._pending = Packing.of(mask)
        return None

    def _pack(self, encoder, args, kwargs):
        packing = self._pending
        if packing is None:
            return None
        hidden, rest = (args[0], list(args[1:])) if args else (kwargs.pop("hidden_states"), [])
        if rest:
            rest[0] = None  # the attention mask, given positionally: attention gets the packing instead
        else:
            kwargs["attention_mask"] = None
        kwargs["unpadded"] = packing
        self.packed_calls += 1
        return (packing.pack(hidden).unsqueeze(0), *rest), kwargs

    def _unpack(self, encoder, args, kwargs, output):
        packing = kwargs.get("unpadded")
        if packing is None:
            return None
        self._pending = None
        output.last_hidden_state = packing.unpack(output.last_hidden_state[0])
        return output

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.model.set_attn_implementation(self.previous)


def refusal(family, method) -> Optional[str]:
    """Why batches of this model family and method cannot be packed (None: they can). Config validation and
    :func:`enable` both ask here."""
    if family.is_decoder:
        return f"model family {family.name!r} is a decoder"
    if not getattr(method, "token_wise", True):
        return f"method {method.name!r} inserts positions into the blocks' inputs"
    return None


def enable(model, family, method) -> Unpadded:
    """Compute ``model``'s encoder on real tokens only; ``ValueError`` where that would change what it computes."""
    why = refusal(family, method)
    if why:
        raise ValueError(f"trainer.unpadded=true cannot pack method {method.name!r} with model family "
                         f"{family.name!r}: {why}; valid with it: trainer.unpadded=false")
    body = model.base_model
    encoder = getattr(body, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise ValueError(f"trainer.unpadded=true: {type(model).__name__} has no BERT-style encoder "
                         "(base_model.encoder.layer); valid here: trainer.unpadded=false")
    hooked = [name for name, m in encoder.named_modules() if m._forward_pre_hooks or m._forward_hooks]
    if hooked:
        raise ValueError(f"trainer.unpadded=true: method {method.name!r} hooks {hooked[0]!r}, whose inputs would be "
                         "packed; valid with it: trainer.unpadded=false")
    return Unpadded(model)
