"""Singular-value spectra and effective rank of ΔW (LoRA paper §7, "is ΔW low rank?").

Supports the §7.2 question with numbers the paper argues for but does not tabulate: how many
directions ΔW uses, for LoRA at each r and for full fine-tuning, and how far full FT's top
directions overlap LoRA's (a φ grid, Eq. 4, between the two ΔW's).

* effective rank (Roy & Vetterli 2007): exp(H(p)), p_k = σ_k / Σσ, H the Shannon entropy;
* energy rank: the fewest σ holding 90% / 99% of ‖ΔW‖_F² = Σσ².

LoRA spectra come from the factors (``lowrank_svd``), full-FT spectra from the dense W_ft − W0.
σ include the α/r scaling by default (``include_scaling=True``); the effective and energy ranks do
not depend on it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .deltas import AdapterRecord, BaseWeightLoader, load_adapter
from .subspace import entry_basis, entry_svd, phi_grid_from_bases


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank exp(−Σ p_k log p_k), p_k = σ_k / ‖σ‖_1; 0 for ΔW = 0."""
    s = torch.as_tensor(s, dtype=torch.float64).abs()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(float(-(p * p.log()).sum())))


def energy_rank(s: torch.Tensor, fraction: float = 0.9) -> int:
    """Fewest leading σ whose squares sum to ≥ ``fraction`` of Σσ² (σ sorted descending)."""
    s = torch.sort(torch.as_tensor(s, dtype=torch.float64).abs(), descending=True).values
    e = s ** 2
    total = e.sum()
    if total <= 0:
        return 0
    cum = e.cumsum(0) / total
    return int(torch.searchsorted(cum, torch.tensor([fraction - 1e-12], dtype=torch.float64)).item()) + 1


def spectrum_summary(s: torch.Tensor) -> dict:
    """σ (list), ‖ΔW‖_F, effective rank and the 90% / 99% energy ranks of one spectrum."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return {"sigma": s.tolist(), "fro": float(torch.linalg.vector_norm(s)), "effective_rank": effective_rank(s),
            "rank90": energy_rank(s, 0.9), "rank99": energy_rank(s, 0.99)}


def spectra_table(run, base_loader: Optional[BaseWeightLoader] = None, layers=None, matrices=None,
                  include_scaling: bool = True, max_sigma: Optional[int] = 256) -> list:
    """Spectrum summary per (layer, matrix) of one run (LoRA: r values; full FT: up to ``max_sigma``
    kept in ``sigma``, ranks computed on the whole spectrum)."""
    rec = run if isinstance(run, AdapterRecord) else load_adapter(run)
    if base_loader is None and not rec.is_lora:
        from .deltas import load_base_weights

        base_loader = load_base_weights(rec.run_dir or rec.path)
    rows = []
    for e in rec.select(layers, matrices):
        s = entry_svd(e, base_loader, include_scaling)[1]
        row = spectrum_summary(s)
        if max_sigma is not None:
            row["sigma"] = row["sigma"][:max_sigma]
        rows.append({"layer": e.layer, "matrix": e.matrix, "method": rec.method, "r": e.r, **row})
    return rows


def ft_lora_overlap(ft_run, lora_run, layer: int, matrix: str, base_loader: Optional[BaseWeightLoader] = None,
                    side: str = "out", max_i: int = 64) -> torch.Tensor:
    """φ grid between full FT's top-i ΔW directions (rows, i ≤ ``max_i``) and LoRA's top-j (columns, j ≤ r).

    ``side="out"`` uses left singular vectors (d-dim), ``"in"`` right singular vectors (k-dim).
    """
    ft = ft_run if isinstance(ft_run, AdapterRecord) else load_adapter(ft_run)
    lo = lora_run if isinstance(lora_run, AdapterRecord) else load_adapter(lora_run)
    if base_loader is None:
        from .deltas import load_base_weights

        base_loader = load_base_weights(ft.run_dir or ft.path)
    source = "delta_out" if side == "out" else "delta_in"
    u_ft = entry_basis(ft.get(layer, matrix), source, base_loader, rank=max_i)
    u_lo = entry_basis(lo.get(layer, matrix), source)
    return phi_grid_from_bases(u_ft, u_lo)
