"""BitFit: train only the bias terms (Ben Zaken et al. 2021; LoRA paper §5.1 baseline).

"Bias-only or BitFit is a baseline where we only train the bias vectors while freezing everything
else" (LoRA paper §5.1). Every parameter whose name ends in ``bias`` is trained: the biases of
the attention and MLP projections *and* of the LayerNorms (BitFit trains "all bias terms"); the
task head (``family.head_modules``) is trainable as with every method and counted apart.

|Θ| = number of bias entries outside the head. RoBERTa-base: 12 × (4·768 [q,k,v,o] + 3072
[intermediate] + 768 [output] + 2·768 [LayerNorms]) + 768 [embedding LayerNorm] = 102,144 ≈ 0.1M
(Table 2).

LLaMA-style models have no biases at all (bias-free projections, RMSNorm without β): BitFit then
trains nothing but the head — a warning says so; for causal LMs without a separate head that means
no trainable parameters at all.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch.nn as nn

from lora_research.methods.base import Method, freeze, register_method, unfreeze_head
from lora_research.targets import FamilySpec, is_head_parameter


@dataclass
class BitFitConfig:
    """Hyper-parameters of BitFit (``method=bitfit``)."""

    name: str = "bitfit"
    include_layer_norm: bool = True  # also train LayerNorm biases β (BitFit trains all bias terms)


@register_method
class BitFit(Method):
    """``method=bitfit``: biases (and the head) are trainable, everything else frozen."""

    name = "bitfit"
    Config = BitFitConfig

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        self.family = family
        freeze(model)
        norm_biases = set()
        if not self.cfg.include_layer_norm:
            for mname, mod in model.named_modules():
                if isinstance(mod, nn.LayerNorm) and mod.bias is not None:
                    norm_biases.add(f"{mname}.bias")
        n = 0
        for pname, p in model.named_parameters():
            if pname.split(".")[-1] == "bias" and pname not in norm_biases and not is_head_parameter(pname, family):
                p.requires_grad_(True)
                n += p.numel()
        if n == 0:
            warnings.warn(
                f"BitFit on a {family.name} model: it has no bias parameters (e.g. LLaMA-style "
                "bias-free projections and RMSNorm), so only the task head is trained",
                stacklevel=2,
            )
        unfreeze_head(model, family)
        return model
