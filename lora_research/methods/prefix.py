"""Prefix-embedding and prefix-layer tuning (Li & Liang 2021; LoRA paper §5.1 baselines).

Both insert l_p *prefix* and l_i *infix* positions into the token sequence and train something
at those positions while the model stays frozen:

* ``prefix_embed`` — PreEmbed: the inserted positions get trainable *word embeddings* (they go
  through the embedding layer's position embeddings/LayerNorm and every block like real tokens).
  |Θ| = d_model × (l_p + l_i).
* ``prefix_layer`` — PreLayer: "instead of just learning the word embeddings (or equivalently, the
  activations after the embedding layer) for some special tokens, we learn the activations after
  every Transformer layer. The activations computed from previous layers are simply replaced by
  trainable ones" (LoRA paper §5.1). The hidden state entering block ℓ at an inserted position
  is replaced by a trainable vector P[ℓ] ∈ R^d, for each of the L blocks.
  |Θ| = L × d_model × (l_p + l_i).

Mechanism (identical for BERT/RoBERTa, GPT-2 and LLaMA in transformers 5):

1. a forward pre-hook on the model embeds ``input_ids`` and passes ``inputs_embeds`` with the
   inserted positions; ``attention_mask`` gets ones there, ``token_type_ids`` zeros, and explicit
   ``position_ids`` (if given) are shifted so positions stay contiguous over the longer sequence
   (when not given the model numbers the longer sequence itself). Position ids, causal masks and
   RoPE are therefore those of the sequence *with* the inserted tokens;
2. (PreLayer) a forward pre-hook on each block replaces its input hidden states at the inserted
   positions by P[ℓ]. Only the keys/values computed from P[ℓ] reach the real tokens, so for a
   prefix this is exactly running the frozen model with a key/value cache built from P[ℓ]
   through each block's frozen (LayerNorm +) K/V projections (and RoPE at positions 0..l_p−1);
   tests check that equivalence against a hand-built ``DynamicCache``;
3. a forward hook on the model body (the parent of the block list: ``bert.encoder``,
   ``transformer``, ``model``) removes the inserted positions from ``last_hidden_state`` before
   the head, so logits/labels keep the caller's sequence length (a causal-LM loss is computed on
   the real tokens only; BERT's pooler and RoBERTa's classifier still read the first real token).
   ``output_hidden_states`` / attentions still include the inserted positions.

Generation: the first call (empty cache) inserts; later calls with a non-empty cache insert
nothing (the cache already holds the inserted positions) and only widen ``attention_mask`` /
shift ``position_ids`` by l_p + l_i.

Placement: the sequence becomes [PREFIX; x_{<a}; INFIX; x_{≥a}] with a = ``infix_after``
(default 1: the infix follows the first token — [CLS]/<s> for encoders, the first prompt token
for decoders). Li & Liang place the infix between source and target ([x; INFIX; y]); a
task-independent method cannot know that boundary, so it is a fixed offset here. For encoders the
prefix goes before [CLS], so real tokens' absolute positions shift by l_p (as Hugging Face does
with a key/value cache); the classifier still reads [CLS]'s output.

Initialisation (``init``): ``vocab`` (Li & Liang's "real words": PreEmbed copies the embeddings of
random vocabulary tokens, PreLayer takes the frozen model's block inputs for random tokens) or
``normal`` (N(0, init_std²)). Neither can merge into W0 (``merge`` raises ``MergeNotSupported``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lora_research.methods.base import Method, freeze, register_method, unfreeze_head
from lora_research.targets import FamilySpec, find_layers

INIT_CHOICES = ("vocab", "normal")


@dataclass
class PrefixEmbedConfig:
    """Hyper-parameters of PreEmbed (``method=prefix_embed``)."""

    name: str = "prefix_embed"
    prefix_len: int = 16  # l_p: trainable tokens before the input (GPT-3 Table: up to 256)
    infix_len: int = 0  # l_i: trainable tokens inserted after the first `infix_after` tokens
    infix_after: int = 1  # where the infix goes: after this many input tokens (1 = after [CLS]/first)
    init: str = "vocab"  # vocab (embeddings of random real tokens) | normal
    init_std: float = 0.02  # std for init=normal


@dataclass
class PrefixLayerConfig:
    """Hyper-parameters of PreLayer (``method=prefix_layer``)."""

    name: str = "prefix_layer"
    prefix_len: int = 8  # l_p: prefix positions whose activations are trained in every block
    infix_len: int = 0  # l_i: infix positions, inserted after the first `infix_after` tokens
    infix_after: int = 1  # where the infix goes: after this many input tokens
    init: str = "vocab"  # vocab (frozen model's activations of random real tokens) | normal
    init_std: float = 0.02  # std for init=normal


class PrefixParameters(nn.Module):
    """Holds the trainable tensor; attached to the model as ``model.prefix_tuning``."""

    def __init__(self, shape, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(*shape, device=device, dtype=dtype))


def _insert(t: torch.Tensor, a: int, pre: torch.Tensor, inf: torch.Tensor) -> torch.Tensor:
    """[pre; t[:, :a]; inf; t[:, a:]] along dim 1."""
    return torch.cat([pre, t[:, :a], inf, t[:, a:]], dim=1)


class _PrefixMethod(Method):
    """Shared insertion/strip machinery of PreEmbed and PreLayer."""

    attr = "prefix_tuning"
    token_wise = False  # inserts positions: batches cannot be packed (lora_research.unpadded)

    def _check(self) -> None:
        cfg = self.cfg
        for key in ("prefix_len", "infix_len", "infix_after"):
            v = getattr(cfg, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key}={v!r} impossible for method {self.name!r}; valid: integers >= 0")
        if cfg.init not in INIT_CHOICES:
            raise ValueError(f"unknown init {cfg.init!r}; valid choices: {list(INIT_CHOICES)}")

    @property
    def n_inserted(self) -> int:
        return self.cfg.prefix_len + self.cfg.infix_len

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        self._check()
        self.family = family
        freeze(model)
        layers_path, blocks = find_layers(model, family)
        self.n_layers = len(blocks)
        emb = model.get_input_embeddings()
        self.d_model = emb.weight.shape[1]
        params = PrefixParameters(self._shape(), device=emb.weight.device, dtype=emb.weight.dtype)
        if emb.weight.device.type != "meta" and self.n_inserted:
            with torch.no_grad():
                params.weight.copy_(self._init_values(model, emb))
        setattr(model, self.attr, params)  # registered: counted, saved, optimised
        # (l_p, a, l_i, inserted length) of the latest forward that inserted, None after a
        # continuation step. Kept after the forward: transformers 5 checkpoints a block's
        # ``forward`` (hooks stay outside and see already-replaced inputs), but a checkpoint around
        # ``__call__`` would re-run the block hooks during backward and needs the same state.
        self._state = None
        self._first_a = 0
        body_path = layers_path.rpartition(".")[0]
        body = model.get_submodule(body_path) if body_path else model
        self._handles = [
            model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True),
            body.register_forward_hook(self._strip_hook),
        ]
        self._register_block_hooks(blocks)
        unfreeze_head(model, family)
        return model

    # subclasses --------------------------------------------------------------------------------
    def _shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _init_values(self, model: nn.Module, emb: nn.Embedding) -> torch.Tensor:
        raise NotImplementedError

    def _inserted_embeddings(self, model, batch: int, like: torch.Tensor):
        """What goes into ``inputs_embeds`` at the prefix / infix positions."""
        raise NotImplementedError

    def _register_block_hooks(self, blocks) -> None:
        pass

    def _random_tokens(self, emb: nn.Embedding) -> torch.Tensor:
        return torch.randint(0, emb.weight.shape[0], (self.n_inserted,), device=emb.weight.device)

    # hooks -------------------------------------------------------------------------------------
    def _model_pre_hook(self, model, args, kwargs):
        if self.n_inserted == 0:
            return None
        kwargs = dict(kwargs)
        if args:  # Hugging Face forward: the first positional argument is input_ids
            kwargs["input_ids"], args = args[0], args[1:]
        l_p, l_i = self.cfg.prefix_len, self.cfg.infix_len
        # the key/value cache: ``cache`` since transformers 5.2x, ``past_key_values`` before
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        past_len = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError(f"{self.name}: only 2-D attention masks are supported, got shape {tuple(mask.shape)}")
        if past_len > 0:  # generation continues: the cache already holds the inserted positions
            self._state = None
            n = self.n_inserted
            if mask is not None and mask.shape[1] + n == past_len + self._query_len(kwargs):
                a = self._first_a
                mask = _insert(mask, a, mask.new_ones(mask.shape[0], l_p), mask.new_ones(mask.shape[0], l_i))
                kwargs["attention_mask"] = mask
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = kwargs["position_ids"] + n
            return args, kwargs
        ids = kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            if ids is None:
                raise ValueError(f"{self.name}: the model needs input_ids or inputs_embeds")
            embeds = model.get_input_embeddings()(ids)
        batch, length = embeds.shape[:2]
        a = min(self.cfg.infix_after, length)
        pre, inf = self._inserted_embeddings(model, batch, embeds)
        kwargs["inputs_embeds"] = _insert(embeds, a, pre, inf)
        kwargs["input_ids"] = None
        if mask is not None:
            kwargs["attention_mask"] = _insert(mask, a, mask.new_ones(batch, l_p), mask.new_ones(batch, l_i))
        tt = kwargs.get("token_type_ids")
        if tt is not None:
            kwargs["token_type_ids"] = _insert(tt, a, tt.new_zeros(batch, l_p), tt.new_zeros(batch, l_i))
        pos = kwargs.get("position_ids")
        if pos is not None:
            pos = pos.expand(batch, -1) if pos.shape[0] == 1 else pos
            before = pos[:, a - 1 : a] + 1 if a > 0 else pos.new_zeros(batch, 1)
            kwargs["position_ids"] = torch.cat(
                [
                    torch.arange(l_p, device=pos.device).expand(batch, -1).to(pos.dtype),
                    pos[:, :a] + l_p,
                    before + l_p + torch.arange(l_i, device=pos.device).to(pos.dtype),
                    pos[:, a:] + l_p + l_i,
                ],
                dim=1,
            )
        self._state = (l_p, a, l_i, length + l_p + l_i)
        self._first_a = a
        return args, kwargs

    @staticmethod
    def _query_len(kwargs) -> int:
        if kwargs.get("input_ids") is not None:
            return kwargs["input_ids"].shape[1]
        return kwargs["inputs_embeds"].shape[1]

    def _strip_hook(self, module, args, output):
        if self._state is None:
            return None
        l_p, a, l_i, total = self._state
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        if hidden.shape[1] != total:
            return None
        stripped = torch.cat([hidden[:, l_p : l_p + a], hidden[:, l_p + a + l_i :]], dim=1)
        if isinstance(output, tuple):
            return (stripped,) + tuple(output[1:])
        output.last_hidden_state = stripped
        return output

    def remove(self, model: nn.Module) -> None:
        """Detach the hooks and the parameters (the model is the base model again)."""
        for h in self._handles:
            h.remove()
        for h in getattr(self, "_block_handles", []):
            h.remove()
        if hasattr(model, self.attr):
            delattr(model, self.attr)


@register_method
class PrefixEmbedding(_PrefixMethod):
    """``method=prefix_embed`` (PreEmbed): trainable embeddings of l_p + l_i inserted tokens."""

    name = "prefix_embed"
    Config = PrefixEmbedConfig

    def _shape(self):
        return (self.n_inserted, self.d_model)

    def _init_values(self, model, emb):
        if self.cfg.init == "normal":
            return torch.randn(self._shape(), device=emb.weight.device) * self.cfg.init_std
        return emb.weight[self._random_tokens(emb)].detach()

    def _inserted_embeddings(self, model, batch, like):
        w = getattr(model, self.attr).weight.to(like.dtype)
        l_p = self.cfg.prefix_len
        return w[:l_p].expand(batch, -1, -1), w[l_p:].expand(batch, -1, -1)


@register_method
class PrefixLayer(_PrefixMethod):
    """``method=prefix_layer`` (PreLayer): trainable block inputs at the inserted positions."""

    name = "prefix_layer"
    Config = PrefixLayerConfig

    def _shape(self):
        return (self.n_layers, self.n_inserted, self.d_model)

    def _init_values(self, model, emb):
        if self.cfg.init == "normal":
            return torch.randn(self._shape(), device=emb.weight.device) * self.cfg.init_std
        # Li & Liang: activations of real words. Block inputs of the frozen model for random tokens.
        ids = self._random_tokens(emb)[None]
        inputs: list[torch.Tensor] = []
        _, blocks = find_layers(model, self.family)
        hooks = [
            b.register_forward_pre_hook(
                lambda m, args, kwargs: inputs.append(
                    (args[0] if args else kwargs["hidden_states"]).detach()
                ),
                with_kwargs=True,
            )
            for b in blocks
        ]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        return torch.stack([h[0] for h in inputs])

    def _inserted_embeddings(self, model, batch, like):
        # placeholders: the inputs of block 0 at these positions are replaced by P[0]
        d = like.shape[-1]
        return like.new_zeros(batch, self.cfg.prefix_len, d), like.new_zeros(batch, self.cfg.infix_len, d)

    def _register_block_hooks(self, blocks):
        self._block_handles = [
            b.register_forward_pre_hook(self._make_block_hook(i), with_kwargs=True) for i, b in enumerate(blocks)
        ]

    def _make_block_hook(self, layer: int):
        def hook(block, args, kwargs):
            if self._state is None:
                return None
            l_p, a, l_i, total = self._state
            hs = args[0] if args else kwargs["hidden_states"]
            if hs.shape[1] != total:
                return None
            p = self._params.weight[layer].to(hs.dtype)
            b = hs.shape[0]
            new = torch.cat(
                [
                    p[:l_p].expand(b, -1, -1),
                    hs[:, l_p : l_p + a],
                    p[l_p:].expand(b, -1, -1),
                    hs[:, l_p + a + l_i :],
                ],
                dim=1,
            )
            if args:
                return (new,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = new
            return args, kwargs

        return hook

    def apply(self, model, family):
        super().apply(model, family)
        self._params = getattr(model, self.attr)
        return model
