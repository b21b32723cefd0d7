"""Full fine-tuning baselines (paper §5.1).

* ``full_ft`` (FT): every parameter is trained.
* ``ft_top2`` (FT^Top2, Li & Liang 2021): only the last two transformer blocks (and the head).

A run's ``adapter.safetensors`` keeps every trained parameter *whole* (all of them for FT, the top
blocks and the head for FT^Top2), so the fine-tuned model survives the run (``python -m
lora_research.export RUN --to merged`` writes it as a plain Hugging Face folder). Whole rather than
as a delta against the base: a dense delta is no smaller, and W_ft itself is exact, while
W0 + (W_ft − W0) is not in floating point. The analysis index names the weights of the matrices in
``analysis_targets``; ΔW = W_ft − W0 is taken against the pretrained weights (whose fingerprint the
file records) when needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from lora_research.methods.base import Method, freeze, register_method, unfreeze_head
from lora_research.targets import FamilySpec, find_layers, is_conv1d, module_shape, resolve_targets


@dataclass
class FullFTConfig:
    """Hyper-parameters of full fine-tuning (``method=full_ft``)."""

    name: str = "full_ft"
    analysis_targets: list = field(default_factory=lambda: ["q", "v"])  # matrices saved for ΔW analysis


@dataclass
class FTTop2Config:
    """Hyper-parameters of FT^Top2 (``method=ft_top2``)."""

    name: str = "ft_top2"
    top_layers: int = 2  # how many of the last blocks are trained
    analysis_targets: list = field(default_factory=lambda: ["q", "v"])  # matrices saved for ΔW analysis


@register_method
class FullFineTuning(Method):
    """FT: the paper's full fine-tuning baseline; every weight is updated."""

    name = "full_ft"
    Config = FullFTConfig

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        self.family = family
        for p in model.parameters():
            p.requires_grad_(True)
        self.targets = resolve_targets(model, family, self.cfg.analysis_targets)
        return model

    def analysis_index(self, model: nn.Module) -> list[dict]:
        return [
            {
                "layer": t.layer,
                "matrix": t.matrix,
                "module": t.module,
                "kind": "full",
                "W": f"{t.module}.weight",  # the trained parameter itself, as the model holds it
                "W_layout": "module",
                "r": None,
                "alpha": None,
                "scaling": None,
                "out_slice": None if t.out_slice is None else list(t.out_slice),
                "base_shape": list(module_shape(model.get_submodule(t.module))),
                "fan_in_fan_out": is_conv1d(model.get_submodule(t.module)),
            }
            for t in self.targets
        ]


@register_method
class FineTuneTop2(FullFineTuning):
    """FT^Top2: only the last ``top_layers`` blocks (and the head) are trained."""

    name = "ft_top2"
    Config = FTTop2Config

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        self.family = family
        freeze(model)
        _, blocks = find_layers(model, family)
        k = self.cfg.top_layers
        if not 1 <= k <= len(blocks):
            raise ValueError(f"top_layers={k} impossible; valid: 1..{len(blocks)} for this model")
        for block in list(blocks)[-k:]:
            for p in block.parameters():
                p.requires_grad_(True)
        unfreeze_head(model, family)
        self.targets = [
            t for t in resolve_targets(model, family, self.cfg.analysis_targets) if t.layer >= len(blocks) - k
        ]
        return model

