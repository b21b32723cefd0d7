"""Adapter baselines (LoRA paper §5.1): bottleneck modules inserted into every block.

An adapter maps the output x ∈ R^d of a sub-layer to x + up(act(down(x))), down: d→r, up: r→d,
both with biases. ``up`` starts at zero, so at initialisation the adapter is the identity and the
model's outputs are unchanged ("near-identity initialisation", Houlsby et al. 2019 §2.1). Adapters
are inserted by wrapping the output projection of a sub-layer (``family.attn_output``: BERT
``attention.output.dense``, GPT-2 ``attn.c_proj``, LLaMA ``self_attn.o_proj``; ``family.mlp_output``:
``output.dense`` / ``mlp.c_proj`` / ``mlp.down_proj``), i.e. *before* the residual connection
(and before BERT's post-LN), which is where Houlsby places them. Adapters add depth that
runs sequentially, so they cannot be merged into W0 (``merge`` raises ``MergeNotSupported``);
this is the extra inference latency of paper Table 1.

Variants (paper §5.1):

* ``adapter_h`` — Adapter^H, Houlsby et al. 2019: two adapters per block, after the attention
  output projection and after the MLP; the block's LayerNorms are also trained (Houlsby §2.1).
* ``adapter_l`` — Adapter^L, Lin et al. 2020: one adapter per block, after the MLP, with its own
  LayerNorm in front: x + up(act(down(LN(x)))).
* ``adapter_p`` — Adapter^P, Pfeiffer et al. 2021: one adapter per block after the MLP only.
* ``adapter_drop`` — Adapter^D, AdapterDrop (Rücklé et al. 2020): Houlsby-style adapters with the
  adapters of the lowest ``drop_layers`` blocks removed (those blocks' LayerNorms stay frozen).

Parameter count, paper §5.1:  |Θ| = L̂_Adpt·(2dr + r + d) + 2·L̂_LN·d, where one adapter has
d·r + r (down) + r·d + d (up) parameters and a LayerNorm γ, β has 2d. The definitions that make
this formula exact here (L = number of blocks):

==============  ==================  =============================================
variant         L̂_Adpt              L̂_LN (trained LayerNorms)
==============  ==================  =============================================
adapter_h       2L                  2L  (the block's two LayerNorms; 0 with train_layer_norm=false)
adapter_l       L                   L   (the adapter's own LayerNorm)
adapter_p       L                   0
adapter_drop    2(L − drop_layers)  2(L − drop_layers) (the kept blocks' LayerNorms)
==============  ==================  =============================================

LLaMA's RMSNorm has a gain γ only (d parameters, no β): for adapter_h/adapter_drop on LLaMA the
two RMSNorms of a block contribute 2d = 2·1·d, i.e. L̂_LN counts *pairs* of RMSNorms (L̂_LN = L
for adapter_h). The adapter_l LayerNorm is always a full LayerNorm (γ and β).
Note: the paper's Adpt^H (0.8M, RoBERTa-large, r=8) count matches the formula *without* the
LayerNorm term (48·(2·1024·8+8+1024) = 835,968; with 2·48·1024 more it would be 0.93M), so
``train_layer_norm`` is an option.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lora_research.methods.base import Method, freeze, register_method, unfreeze_head
from lora_research.targets import FamilySpec, find_layers, module_shape

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}


class Adapter(nn.Module):
    """Bottleneck adapter x ↦ x + up(act(down(LN(x)))) (LN only when ``layer_norm``)."""

    def __init__(
        self,
        d: int,
        r: int,
        activation: str = "relu",
        layer_norm: bool = False,
        init_std: float = 1e-2,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown adapter activation {activation!r}; valid choices: {sorted(ACTIVATIONS)}")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"impossible adapter bottleneck r={r!r}; valid: integers >= 1")
        kw = {"device": device, "dtype": dtype}
        self.layer_norm = nn.LayerNorm(d, **kw) if layer_norm else None
        self.down = nn.Linear(d, r, **kw)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(r, d, **kw)
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=init_std)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)  # near-identity: the adapter adds 0 at init
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(x) if self.layer_norm is not None else x
        return x + self.up(self.act(self.down(h)))


class AdaptedOutput(nn.Module):
    """A frozen output sub-module followed by an :class:`Adapter` on its output."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def forward(self, *args, **kwargs):
        return self.adapter(self.base(*args, **kwargs))


@dataclass
class AdapterHConfig:
    """Hyper-parameters of Adapter^H (``method=adapter_h``)."""

    name: str = "adapter_h"
    r: int = 8  # bottleneck size (Table 9: 8 for the 0.8M and 64 for the 6M RoBERTa-large runs)
    activation: str = "relu"  # nonlinearity between down and up: relu | gelu | tanh | swish
    init_std: float = 0.01  # std of the down-projection init (up-projection starts at zero)
    train_layer_norm: bool = True  # train the blocks' LayerNorms as Houlsby (L̂_LN = 2L)


@dataclass
class AdapterLConfig:
    """Hyper-parameters of Adapter^L (``method=adapter_l``)."""

    name: str = "adapter_l"
    r: int = 8  # bottleneck size
    activation: str = "relu"  # relu | gelu | tanh | swish
    init_std: float = 0.01  # std of the down-projection init (up-projection starts at zero)


@dataclass
class AdapterPConfig:
    """Hyper-parameters of Adapter^P (``method=adapter_p``)."""

    name: str = "adapter_p"
    r: int = 16  # bottleneck size (Table 9: 16 for 0.8M, 64 for 3M on RoBERTa-large)
    activation: str = "relu"  # relu | gelu | tanh | swish
    init_std: float = 0.01  # std of the down-projection init (up-projection starts at zero)


@dataclass
class AdapterDropConfig:
    """Hyper-parameters of AdapterDrop (``method=adapter_drop``)."""

    name: str = "adapter_drop"
    r: int = 8  # bottleneck size
    drop_layers: int = 5  # adapters removed from the lowest this-many blocks (Rücklé et al.: 5 of 12)
    activation: str = "relu"  # relu | gelu | tanh | swish
    init_std: float = 0.01  # std of the down-projection init (up-projection starts at zero)
    train_layer_norm: bool = True  # train the LayerNorms of the blocks that keep adapters


class _AdapterMethod(Method):
    """Shared machinery: which sub-layers get adapters, in which blocks, and which LNs train."""

    places: tuple[str, ...] = ("attn", "mlp")
    adapter_layer_norm: bool = False

    def _train_block_ln(self) -> bool:
        return bool(getattr(self.cfg, "train_layer_norm", False))

    def _skipped(self, n_layers: int) -> int:
        return 0

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        self.family = family
        outputs = {"attn": family.attn_output, "mlp": family.mlp_output}
        missing = [p for p in self.places if outputs[p] is None]
        if missing:
            raise ValueError(f"model family {family.name!r} defines no output module for {missing}")
        prefix, blocks = find_layers(model, family)
        skip = self._skipped(len(blocks))
        freeze(model)
        self.adapted_paths: list[str] = []
        for i in range(skip, len(blocks)):
            for place in self.places:
                path = f"{prefix}.{i}.{outputs[place]}"
                base = model.get_submodule(path)
                d = module_shape(base)[0]
                w = base.weight
                adapter = Adapter(
                    d,
                    self.cfg.r,
                    activation=self.cfg.activation,
                    layer_norm=self.adapter_layer_norm,
                    init_std=self.cfg.init_std,
                    device=w.device,
                    dtype=w.dtype,
                )
                model.set_submodule(path, AdaptedOutput(base, adapter), strict=True)
                self.adapted_paths.append(path)
            if self._train_block_ln():
                for ln in (family.attn_layer_norm, family.mlp_layer_norm):
                    if ln is not None:
                        for p in blocks[i].get_submodule(ln).parameters():
                            p.requires_grad_(True)
        unfreeze_head(model, family)
        return model


@register_method
class AdapterH(_AdapterMethod):
    """Adapter^H (Houlsby 2019): adapters after attention and MLP; block LayerNorms trained."""

    name = "adapter_h"
    Config = AdapterHConfig
    places = ("attn", "mlp")


@register_method
class AdapterL(_AdapterMethod):
    """Adapter^L (Lin et al. 2020): one adapter with its own LayerNorm after the MLP."""

    name = "adapter_l"
    Config = AdapterLConfig
    places = ("mlp",)
    adapter_layer_norm = True


@register_method
class AdapterP(_AdapterMethod):
    """Adapter^P (Pfeiffer et al. 2021): one adapter after the MLP."""

    name = "adapter_p"
    Config = AdapterPConfig
    places = ("mlp",)


@register_method
class AdapterDrop(_AdapterMethod):
    """Adapter^D (AdapterDrop, Rücklé et al. 2020): Houlsby adapters minus the lowest blocks'."""

    name = "adapter_drop"
    Config = AdapterDropConfig
    places = ("attn", "mlp")

    def _skipped(self, n_layers: int) -> int:
        k = self.cfg.drop_layers
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < n_layers:
            raise ValueError(f"drop_layers={k!r} impossible; valid: 0..{n_layers - 1} for this model")
        return k


def adapter_formula(n_adapters: int, n_layer_norms: int, d: int, r: int) -> int:
    """Paper §5.1: |Θ| = L̂_Adpt·(2dr + r + d) + 2·L̂_LN·d."""
    return n_adapters * (2 * d * r + r + d) + 2 * n_layer_norms * d
