"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685, §4.1).

For a frozen pretrained matrix W0 ∈ R^{d×k} the update is constrained to a low-rank product

    h = W0 x + ΔW x = W0 x + (α / r) · B A x,        B ∈ R^{d×r},  A ∈ R^{r×k},  r ≪ min(d, k)

(paper Eq. 3; the α/r scaling is §4.1 "we then scale ΔWx by α/r"). A and B are trained, W0 is
not. B starts at zero so ΔW = 0 at initialisation; A starts random: loralib's code uses
``kaiming_uniform_(a=√5)`` (``init_a=kaiming``, the default here as in loralib/PEFT), the paper's
text says "random Gaussian" (``init_a=gaussian``, N(0, 1/r²) as PEFT's ``init_lora_weights="gaussian"``).
Dropout is applied to the input of the LoRA branch only (loralib ``lora_dropout``).

Merging (§4.1 "No Additional Inference Latency"): W = W0 + (α/r)·BA is written into the base
weight; unmerging restores W0. With ``exact_unmerge`` (default) W0 is kept aside while merged,
so unmerge restores it bit for bit (W0 + Δ − Δ is not exact in floating point).

GPT-2's fused ``c_attn`` (q|k|v in one Conv1D, weight stored (in, out)) is adapted per *slice*
(loralib ``MergedLinear`` with ``enable_lora=[True, False, True]``): each adapted matrix owns its
own A and B and only its output rows change.

Variants (options of ``method=lora``; all keep ``lora_A.<matrix>``/``lora_B.<matrix>``):

* ``scaling_rule=rslora`` uses α/√r (rsLoRA, Kalajdzievski 2023, arXiv:2312.03732).
* ``use_dora=true`` (DoRA, Liu et al. 2024, arXiv:2402.09353, Eq. 5): the adapted weight is
  decomposed into magnitude and direction,

      W' = m · (W0 + ΔW) / ‖W0 + ΔW‖_c,        ΔW = s·B A,

  with ‖·‖_c the norm PEFT calls "column-wise": for the (out, in) weight of ``nn.Linear`` it is the
  L2 norm of each *output row* over the input dimension (``torch.linalg.norm(W, dim=1)``), so
  ``m`` has one entry per output feature. ``m`` (``lora_magnitude.<matrix>``) is trained and
  initialised to ‖W0 + ΔW_init‖_c = ‖W0‖_c (ΔW_init = 0), so the output is unchanged at init. As
  in the DoRA paper §4.3 and PEFT, the norm is detached from the gradient graph (treated as a
  constant in backprop). Computed as in PEFT: y = W0x + b + (m/‖·‖ − 1)·W0x + (m/‖·‖)·s·BAx.
  Mergeable: W ← (m/‖W0 + ΔW‖_c)·(W0 + ΔW). Because the norm is per output row, DoRA works on
  each slice of GPT-2's fused ``c_attn`` independently (one magnitude vector per slice).
* ``init_a=pissa`` (PiSSA, Meng et al. 2024, arXiv:2404.02948): A and B are the top-r singular
  components of W0 = U S Vᵀ: B = U_r √(S_r/s), A = √(S_r/s) V_rᵀ (PEFT's ``init_lora_weights="pissa"``,
  s the LoRA scaling), and the frozen base weight is *replaced by the residual*
  W_res = W0 − s·B A, so the output is unchanged at init (up to float32 round-off of the SVD).
  Merging gives W_res + s·BA. The base weights of the model are therefore modified: the analysis
  index marks such entries with ``"pissa": true`` (ΔW relative to the pretrained W0 is
  s·(B A − B0 A0), not s·B A; ``extra_state`` saves B0, A0 as ``lora_B0.<m>``/``lora_A0.<m>``,
  named by the index keys ``"A0"``/``"B0"``, and the run's ``adapter.safetensors`` holds them).
  On fused GPT-2 slices the SVD is taken per slice.

The ΔW of every variant, as the adapter file computes it: :func:`lora_research.adapter_file.delta`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_research import lean_activations
from lora_research.methods.base import Method, freeze, register_method, unfreeze_head
from lora_research.targets import FamilySpec, Target, is_conv1d, module_shape, resolve_targets, validate_matrices

INIT_A_CHOICES = ("kaiming", "gaussian", "pissa")
SCALING_RULES = ("standard", "rslora")


@dataclass
class LoRAConfig:
    """Hyper-parameters of LoRA (``method=lora``)."""

    name: str = "lora"
    r: int = 8  # rank of every adapted matrix (paper r; Table 9: 8 for RoBERTa, 4 for GPT-2)
    alpha: float = 16.0  # α; ΔW is scaled by α/r. Paper text: 8 (RoBERTa-base); scripts: 16
    dropout: float = 0.0  # dropout on the LoRA branch input (Table 11: 0.1 for GPT-2 E2E)
    targets: list = field(default_factory=lambda: ["q", "v"])  # matrices: q k v o mlp_in mlp_out
    rank_pattern: dict = field(default_factory=dict)  # per-matrix rank, e.g. {q: 4, v: 8}
    layers: Optional[list] = None  # block indices to adapt (default: all)
    init_a: str = "kaiming"  # kaiming (loralib/PEFT code) | gaussian (paper text) | pissa (PiSSA SVD init)
    scaling_rule: str = "standard"  # standard: α/r | rslora: α/√r
    exact_unmerge: bool = True  # keep W0 aside while merged so unmerge is bit-exact
    train_bias: bool = False  # loralib bias="none"; True trains the adapted modules' biases
    use_dora: bool = False  # DoRA: W' = m·(W0+ΔW)/‖W0+ΔW‖_c, trainable magnitude m per output row


def lora_scaling(alpha: float, r: int, rule: str = "standard") -> float:
    """α/r (paper §4.1) or α/√r (rsLoRA)."""
    if rule == "standard":
        return alpha / r
    if rule == "rslora":
        return alpha / math.sqrt(r)
    raise ValueError(f"unknown scaling_rule {rule!r}; valid choices: {list(SCALING_RULES)}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` or GPT-2 ``Conv1D`` plus one low-rank update per output slice.

    ``slices`` maps a matrix name to the rows ``(start, stop)`` of the (out, in) weight it owns
    (``None`` = all rows). Parameters: ``lora_A[name]`` (r, in), ``lora_B[name]`` (rows, r).
    """

    lean_input = False  # set by lora_research.lean_activations.enable: backward keeps x and a boolean mask

    def __init__(
        self,
        base: nn.Module,
        slices: dict[str, Optional[tuple[int, int]]],
        ranks: dict[str, int],
        alpha: float,
        dropout: float = 0.0,
        init_a: str = "kaiming",
        scaling_rule: str = "standard",
        exact_unmerge: bool = True,
        use_dora: bool = False,
    ):
        super().__init__()
        if init_a not in INIT_A_CHOICES:
            raise ValueError(f"unknown init_a {init_a!r}; valid choices: {list(INIT_A_CHOICES)}")
        self.base = base
        self.fan_in_fan_out = is_conv1d(base)
        self.out_features, self.in_features = module_shape(base)
        self.slices = {m: (s if s is not None else (0, self.out_features)) for m, s in slices.items()}
        self.ranks = dict(ranks)
        self.alpha = float(alpha)
        self.scaling = {m: lora_scaling(alpha, ranks[m], scaling_rule) for m in slices}
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.exact_unmerge = exact_unmerge
        self.use_dora = bool(use_dora)
        self.pissa = init_a == "pissa"
        self.merged = False
        self._dora_norms: dict[str, torch.Tensor] = {}
        self.pissa_init_AB: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._w0: Optional[torch.Tensor] = None
        w = base.weight
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for m, (start, stop) in self.slices.items():
            r = ranks[m]
            self.lora_A[m] = nn.Parameter(w.new_empty(r, self.in_features))
            self.lora_B[m] = nn.Parameter(w.new_zeros(stop - start, r))
            if init_a == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A[m], a=math.sqrt(5))
            elif init_a == "gaussian":
                nn.init.normal_(self.lora_A[m], std=1.0 / r)
            else:
                self._pissa_init(m)
        if self.use_dora:
            # m = ‖W0 + ΔW‖_c at init (= ‖W0‖_c for zero-B inits; after a PiSSA split it is
            # ‖W_res + s·B0A0‖_c = ‖W0‖_c as well), so the output is unchanged.
            self.lora_magnitude = nn.ParameterDict(
                {m: nn.Parameter(self._dora_norm(m).detach().clone()) for m in self.slices}
            )

    # -- helpers on the (rows, in) view of one slice of the base weight -------------------------
    def _weight_rows(self, matrix: str) -> torch.Tensor:
        """The slice's rows of W0 in (rows, in) orientation (a view of the base weight)."""
        start, stop = self.slices[matrix]
        w = self.base.weight
        return w[:, start:stop].T if self.fan_in_fan_out else w[start:stop]

    def _dora_norm(self, matrix: str) -> torch.Tensor:
        """‖W0 + ΔW‖_c per output row of the slice, ΔW detached (DoRA §4.3, as PEFT)."""
        w = self._weight_rows(matrix)
        lora_w = (self.lora_B[matrix] @ self.lora_A[matrix]).detach() * self.scaling[matrix]
        return torch.linalg.norm(w + lora_w.to(w.dtype), dim=1).to(w.dtype)

    @torch.no_grad()
    def _pissa_init(self, matrix: str) -> None:
        """PiSSA: A, B from the top-r SVD of W0 (per slice); the base keeps W0 − s·BA."""
        r, s = self.ranks[matrix], self.scaling[matrix]
        w_rows = self._weight_rows(matrix)
        u, sv, vh = torch.linalg.svd(w_rows.to(torch.float32), full_matrices=False)
        sr = sv[:r] / s
        a = torch.diag(torch.sqrt(sr)) @ vh[:r]
        b = u[:, :r] @ torch.diag(torch.sqrt(sr))
        self.lora_A[matrix].copy_(a.to(self.lora_A[matrix].dtype))
        self.lora_B[matrix].copy_(b.to(self.lora_B[matrix].dtype))
        # kept (not in the state dict) for the analysis: ΔW vs the pretrained W0 is s·(BA − B0A0)
        self.pissa_init_AB[matrix] = (self.lora_A[matrix].detach().clone(), self.lora_B[matrix].detach().clone())
        residual = w_rows.to(torch.float32) - s * (b @ a)
        w_rows.copy_(residual.to(w_rows.dtype))  # writes through the view into base.weight

    @property
    def weight(self) -> torch.Tensor:  # models that read ``.weight`` of a projection keep working
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def delta_weight(self, matrix: str) -> torch.Tensor:
        """ΔW of one matrix, (rows of its slice, in): (α/r)·B·A."""
        return (self.lora_B[matrix] @ self.lora_A[matrix]) * self.scaling[matrix]

    def full_delta(self) -> torch.Tensor:
        """ΔW of the whole module in its (out, in) orientation, zero outside adapted slices."""
        w = self.base.weight
        delta = torch.zeros(self.out_features, self.in_features, dtype=w.dtype, device=w.device)
        for m, (start, stop) in self.slices.items():
            delta[start:stop] += self.delta_weight(m).to(w.dtype)
        return delta

    def _dora_update(self, matrix: str, x: torch.Tensor, xd: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DoRA's addition to the base output on one slice (PEFT ``DoraLinearLayer.forward``)."""
        start, stop = self.slices[matrix]
        scale = self.lora_magnitude[matrix] / self._dora_norm(matrix).detach()
        lora = F.linear(F.linear(xd, self.lora_A[matrix]), self.lora_B[matrix]) * self.scaling[matrix]
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base_out = y[..., start:stop]
            bias = self.base.bias
            if bias is not None:
                base_out = base_out - bias[start:stop]
        else:  # PEFT recomputes W0·x on the dropped-out input when LoRA dropout is active
            base_out = F.linear(xd, self._weight_rows(matrix))
        return ((scale - 1) * base_out + scale * lora.to(scale.dtype)).to(y.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        if self.use_dora:
            xd = self.dropout(x)
            parts = [
                F.pad(self._dora_update(m, x, xd, y), (start, self.out_features - stop))
                for m, (start, stop) in self.slices.items()
            ]
            return y + (parts[0] if len(parts) == 1 else torch.stack(parts).sum(0))
        xas = self._down(x)
        if len(self.slices) == 1:
            (m, (start, stop)), = self.slices.items()
            xa = xas[m]
            if start == 0 and stop == self.out_features and self.lora_B[m].dtype == y.dtype:
                # y + s·(x Aᵀ) Bᵀ as one addmm: 2 kernels instead of 4, forward and backward
                xa = xa.to(y.dtype)
                return torch.addmm(
                    y.reshape(-1, y.shape[-1]), xa.reshape(-1, xa.shape[-1]), self.lora_B[m].t(), alpha=self.scaling[m]
                ).view(y.shape)
            update = F.linear(xa, self.lora_B[m]) * self.scaling[m]
            return y + F.pad(update.to(y.dtype), (start, self.out_features - stop))
        parts = [
            F.pad(
                (F.linear(xas[m], self.lora_B[m]) * self.scaling[m]).to(y.dtype),
                (start, self.out_features - stop),
            )
            for m, (start, stop) in self.slices.items()
        ]
        return y + torch.stack(parts).sum(0)

    def _down(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``A_m · dropout(x)`` for each matrix (one dropout mask for the module). With ``lean_input``
        (``trainer.lean_activations``) backward keeps x and a boolean mask instead of the float noise and the
        dropped-out x (:func:`lora_research.lean_activations.dropped_linears`): the same numbers."""
        weights = [self.lora_A[m] for m in self.slices]
        if self.lean_input:
            xas = lean_activations.dropped_linears(x, self.dropout, weights)
        else:
            xd = self.dropout(x)
            xas = [F.linear(xd, w) for w in weights]
        return dict(zip(self.slices, xas))

    @torch.no_grad()
    def merge(self, keep_original: bool = True) -> None:
        """W ← W0 + ΔW. Forward then uses the base path only (no extra latency). W0 is kept aside for a bit-exact
        unmerge when ``exact_unmerge`` and ``keep_original``; otherwise unmerge subtracts ΔW (as loralib)."""
        if self.merged:
            return
        w = self.base.weight
        if self.exact_unmerge and keep_original:
            self._w0 = w.detach().clone()
        if self.use_dora:
            # W' = (m / ‖W0 + ΔW‖_c) · (W0 + ΔW) on each slice; rows outside slices unchanged.
            for m in self.slices:
                rows = self._weight_rows(m)
                norm = self._dora_norm(m)
                self._dora_norms[m] = norm
                factor = (self.lora_magnitude[m] / norm).to(rows.dtype)
                rows.copy_(factor[:, None] * (rows + self.delta_weight(m).to(rows.dtype)))
            self.merged = True
            return
        for m in self.slices:  # W0 rows += s·B A in place, one kernel per slice (no dense temporaries)
            rows = self._weight_rows(m)
            rows.addmm_(self.lora_B[m].to(rows.dtype), self.lora_A[m].to(rows.dtype), alpha=self.scaling[m])
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W0 (bit-exact with ``exact_unmerge``; else W − ΔW as loralib does)."""
        if not self.merged:
            return
        w = self.base.weight
        if self._w0 is not None:
            w.copy_(self._w0)
            self._w0 = None
            self._dora_norms.clear()
        elif self.use_dora:  # W0 = W' / factor − ΔW (PEFT's inexact inverse)
            for m in self.slices:
                rows = self._weight_rows(m)
                factor = (self.lora_magnitude[m] / self._dora_norms.pop(m)).to(rows.dtype)
                rows.copy_(rows / factor[:, None] - self.delta_weight(m).to(rows.dtype))
        else:
            delta = self.full_delta()
            w.sub_(delta.T if self.fan_in_fan_out else delta)
        self.merged = False

    def extra_repr(self) -> str:
        extra = (", dora=True" if self.use_dora else "") + (", pissa=True" if self.pissa else "")
        return f"slices={self.slices}, ranks={self.ranks}, alpha={self.alpha}{extra}"


def check_rank(target: Target, r: int) -> None:
    """Impossible ranks fail early: 1 ≤ r ≤ min(d, k) of the matrix."""
    limit = min(target.out_features, target.in_features)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1 or r > limit:
        raise ValueError(
            f"impossible LoRA rank r={r!r} for matrix {target.matrix!r} ({target.module}, "
            f"{target.out_features}x{target.in_features}); valid: integers 1..{limit}"
        )


@register_method
class LoRA(Method):
    """``method=lora``: adapt the chosen matrices with :class:`LoRALinear`, freeze the rest."""

    name = "lora"
    Config = LoRAConfig
    can_merge = True

    def rank_of(self, matrix: str) -> int:
        return int(self.cfg.rank_pattern.get(matrix, self.cfg.r))

    def validate(self, family: FamilySpec) -> None:
        cfg = self.cfg
        if cfg.scaling_rule not in SCALING_RULES:
            raise ValueError(f"unknown scaling_rule {cfg.scaling_rule!r}; valid choices: {list(SCALING_RULES)}")
        unknown = set(cfg.rank_pattern) - set(cfg.targets)
        if unknown:
            raise ValueError(
                f"rank_pattern names matrices {sorted(unknown)} that are not targets {list(cfg.targets)}"
            )
        validate_matrices(cfg.targets, family)

    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        cfg = self.cfg
        self.validate(family)
        self.family = family
        targets = resolve_targets(model, family, cfg.targets, cfg.layers)
        for t in targets:
            check_rank(t, self.rank_of(t.matrix))
        freeze(model)
        by_module: dict[str, list[Target]] = {}
        for t in targets:
            by_module.setdefault(t.module, []).append(t)
        for path, ts in by_module.items():
            wrapped = LoRALinear(
                model.get_submodule(path),
                slices={t.matrix: t.out_slice for t in ts},
                ranks={t.matrix: self.rank_of(t.matrix) for t in ts},
                alpha=cfg.alpha,
                dropout=cfg.dropout,
                init_a=cfg.init_a,
                scaling_rule=cfg.scaling_rule,
                exact_unmerge=cfg.exact_unmerge,
                use_dora=cfg.use_dora,
            )
            if cfg.train_bias and wrapped.base.bias is not None:
                wrapped.base.bias.requires_grad_(True)
            model.set_submodule(path, wrapped, strict=True)
        self.targets = targets
        unfreeze_head(model, family)
        return model

    def lora_modules(self, model: nn.Module) -> dict[str, LoRALinear]:
        return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}

    def merge(self, model: nn.Module, keep_original: bool = True) -> None:
        for m in self.lora_modules(model).values():
            m.merge(keep_original)

    def unmerge(self, model: nn.Module) -> None:
        for m in self.lora_modules(model).values():
            m.unmerge()

    def analysis_index(self, model: nn.Module) -> list[dict]:
        modules = self.lora_modules(model)
        index = []
        for t in self.targets:
            mod = modules[t.module]
            start, stop = mod.slices[t.matrix]
            index.append(
                {
                    "layer": t.layer,
                    "matrix": t.matrix,
                    "module": t.module,
                    "kind": "lowrank",
                    "A": f"{t.module}.lora_A.{t.matrix}",
                    "B": f"{t.module}.lora_B.{t.matrix}",
                    "r": mod.ranks[t.matrix],
                    "alpha": mod.alpha,
                    "scaling": mod.scaling[t.matrix],
                    "out_slice": None if t.out_slice is None else [start, stop],
                    "base_shape": [mod.out_features, mod.in_features],
                    "fan_in_fan_out": mod.fan_in_fan_out,
                }
            )
            if mod.use_dora:  # extra keys only for the variants; plain LoRA entries are unchanged
                index[-1]["dora"] = True
                index[-1]["magnitude"] = f"{t.module}.lora_magnitude.{t.matrix}"
            if mod.pissa:  # the base weight holds W_res = W0 − s·B0A0, not the pretrained W0
                index[-1]["pissa"] = True
                index[-1]["A0"] = f"{t.module}.lora_A0.{t.matrix}"  # in extra_state
                index[-1]["B0"] = f"{t.module}.lora_B0.{t.matrix}"
        return index

    def extra_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """PiSSA only: the initial A0, B0 (ΔW w.r.t. the pretrained W0 = s·(BA − B0A0))."""
        state = {}
        for path, mod in self.lora_modules(model).items():
            for m, (a0, b0) in mod.pissa_init_AB.items():
                state[f"{path}.lora_A0.{m}"] = a0.cpu().contiguous()
                state[f"{path}.lora_B0.{m}"] = b0.cpu().contiguous()
        return state
