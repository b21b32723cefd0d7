"""VeRA (Kopiczko et al., ICLR 2024, arXiv:2310.11454): vector-based random matrix adaptation.

    h = W0 x + Λ_b B Λ_d A x                                            (VeRA Eq. 1)

A (r × k_max) and B (d_max × r) are frozen random matrices shared by every adapted matrix
(Kaiming-uniform from ``projection_seed``, so they are rebuilt, never saved); a matrix of shape
(d, k) uses the slices A[:, :k] and B[:d, :]. Only the scaling vectors are trained: Λ_d = diag(d),
d ∈ R^r, initialised to ``d_initial``, and Λ_b = diag(b), b ∈ R^d, initialised to 0 (ΔW = 0 at
the start, as LoRA's B = 0). Trainable parameters per adapted matrix: r + d (VeRA Table 1).
Shapes, initialisation and names of the settings follow PEFT's ``VeraConfig`` (``r``,
``projection_prng_key``, ``d_initial``, ``vera_dropout``), which is this module's test oracle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_research.methods.base import Method, freeze, register_method, unfreeze_head
from lora_research.targets import FamilySpec, is_conv1d, module_shape, resolve_targets, validate_matrices


@dataclass
class VeRAConfig:
    """``method=vera`` (conf/method/vera.yaml)."""

    name: str = "vera"
    r: int = 256  # rank of the shared random matrices (PEFT default; the paper uses 256–1024)
    targets: list = field(default_factory=lambda: ["q", "v"])  # q k v o mlp_in mlp_out (mlp_gate)
    layers: Optional[list] = None  # block indices to adapt; null = all
    d_initial: float = 0.1  # initial value of every entry of d
    projection_seed: int = 0  # seed of the shared A and B (PEFT: projection_prng_key)
    dropout: float = 0.0  # dropout on the input of the VeRA branch


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-b, b) with b = √3 · √2 / √fan_in, fan_in = shape[1] (PEFT's ``_kaiming_init``)."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRALinear(nn.Module):
    """A Linear / GPT-2 Conv1D plus Λ_b B Λ_d A x for each adapted matrix (a row slice of a fused
    projection such as GPT-2's c_attn, or the whole output)."""

    def __init__(self, base: nn.Module, slices: dict, A: torch.Tensor, B: torch.Tensor, d_initial: float,
                 dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.out_features, self.in_features = module_shape(base)
        self.fan_in_fan_out = is_conv1d(base)
        self.slices = {m: (s if s is not None else (0, self.out_features)) for m, s in slices.items()}
        self.register_buffer("vera_A", A, persistent=False)
        self.register_buffer("vera_B", B, persistent=False)
        r = A.shape[0]
        self.lambda_d = nn.ParameterDict({m: nn.Parameter(torch.full((r,), float(d_initial))) for m in slices})
        self.lambda_b = nn.ParameterDict({m: nn.Parameter(torch.zeros(e - s)) for m, (s, e) in self.slices.items()})
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta(self, matrix: str) -> torch.Tensor:
        """ΔW of ``matrix`` in (out, in) orientation: (b ⊙ B) (d ⊙ A)."""
        start, stop = self.slices[matrix]
        A = self.vera_A[:, : self.in_features]
        B = self.vera_B[: stop - start, :]
        return (self.lambda_b[matrix][:, None] * B) @ (self.lambda_d[matrix][:, None] * A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        h = self.dropout(x)
        A = self.vera_A[:, : self.in_features]
        for m, (start, stop) in self.slices.items():
            y = self.lambda_b[m] * F.linear(self.lambda_d[m] * F.linear(h, A), self.vera_B[: stop - start, :])
            out = out + (y if stop - start == self.out_features else F.pad(y, (start, self.out_features - stop)))
        return out

    @torch.no_grad()
    def _add_delta(self, sign: float) -> None:
        w = self.base.weight
        for m, (start, stop) in self.slices.items():
            d = sign * self.delta(m).to(w.dtype)
            if self.fan_in_fan_out:
                w[:, start:stop] += d.T
            else:
                w[start:stop] += d

    def merge(self) -> None:
        if not self.merged:
            self._add_delta(1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._add_delta(-1.0)
            self.merged = False


@register_method
class VeRA(Method):
    """``method=vera``: shared frozen random A, B; train the scaling vectors d and b."""

    name = "vera"
    Config = VeRAConfig
    can_merge = True

    def validate(self, family: FamilySpec) -> None:
        if self.cfg.r < 1:
            raise ValueError(f"method.r={self.cfg.r} is not valid for vera; it must be >= 1")
        if self.cfg.d_initial == 0:
            raise ValueError("method.d_initial=0 with b initialised to 0 makes every VeRA gradient zero: nothing "
                             "learns; valid: d_initial != 0 (e.g. 0.1)")
        validate_matrices(self.cfg.targets, family)

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        cfg = self.cfg
        self.validate(family)
        self.family = family
        targets = resolve_targets(model, family, cfg.targets, cfg.layers)
        freeze(model)
        g = torch.Generator(device="cpu").manual_seed(cfg.projection_seed)
        # A first, then B, from one generator: PEFT's order, so the same seed gives the same matrices.
        A = kaiming_uniform((cfg.r, max(t.in_features for t in targets)), g)
        B = kaiming_uniform((max(t.out_features for t in targets), cfg.r), g)
        by_module: dict[str, dict] = {}
        for t in targets:
            by_module.setdefault(t.module, {})[t.matrix] = t.out_slice
        for path, slices in by_module.items():
            base = model.get_submodule(path)
            w = base.weight
            wrapped = VeRALinear(base, slices, A.to(w.device, w.dtype), B.to(w.device, w.dtype), cfg.d_initial,
                                 cfg.dropout).to(w.device)
            model.set_submodule(path, wrapped)
        unfreeze_head(model, family)
        return model

    def _modules(self, model: nn.Module) -> list[VeRALinear]:
        return [m for m in model.modules() if isinstance(m, VeRALinear)]

    def merge(self, model: nn.Module, keep_original: bool = True) -> None:  # unmerge subtracts ΔW: nothing kept
        for m in self._modules(model):
            m.merge()

    def unmerge(self, model: nn.Module) -> None:
        for m in self._modules(model):
            m.unmerge()
