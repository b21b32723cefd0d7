"""How ΔW relates to W: LoRA paper §7.3, Table 7, Appendix H.4 (amplification) and Figure 8.

Table 7 projects the pretrained W onto an r-dimensional subspace and reports ‖U_rᵀ W Vh_rᵀ‖_F,
with U_r (d × r) / Vh_r (r × k) the top-r left / right singular vectors of (i) ΔW, (ii) W itself,
(iii) a random matrix; beside ‖ΔW‖_F and ‖W‖_F. (The paper writes ``UᵀWVᵀ``; for the shapes to
work "Vᵀ" is the r × k factor ``Vh[:r]``, so the product is ``U_r.T @ W @ Vh_r.T``.)

Amplification factor (H.4) = ‖ΔW‖_F / ‖U_rᵀ W Vh_rᵀ‖_F with U, V from ΔW: how much ΔW amplifies
the directions of W it lives in (paper: 6.91 / 0.32 ≈ 21.5 at r = 4, "around 2" at r = 64).

**Scaling.** ‖ΔW‖_F, hence the amplification factor, includes the α/r LoRA scaling by default
(``include_scaling=True``: ΔW is the update merged into W, see ``deltas``). The paper does not say
which it used. The three projection norms do not depend on it (they only use ΔW's directions).

Figure 8: φ between the top singular directions of W and of ΔW (left singular vectors, as the paper
compares U of W_q with U of ΔW_q), with a random baseline (:func:`weight_delta_phi_grid`).
"""
from __future__ import annotations

from typing import Optional

import torch

from .deltas import AdapterRecord, BaseWeightLoader, base_weight, load_adapter
from .subspace import entry_svd, phi_grid_from_bases


def projection_norm(W: torch.Tensor, U_r: torch.Tensor, Vh_r: torch.Tensor) -> float:
    """‖U_rᵀ W Vh_rᵀ‖_F for U_r (d × r), Vh_r (r × k), W (d × k)."""
    return float(torch.linalg.matrix_norm(U_r.T @ W.to(U_r.dtype) @ Vh_r.T))


def random_frames(d: int, k: int, r: int, seed: int = 0):
    """Top-r singular vectors of a random Gaussian d × k matrix, in distribution: ``(U (d, r), Vh (r, k))``.

    A Gaussian matrix's singular vector frames are independent and Haar-distributed (rotation
    invariance), so QR of Gaussian d × r and k × r matrices gives the same law without a d × k SVD.
    """
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, r, generator=g, dtype=torch.float64))
    return u, v.T


def amplification(W: torch.Tensor, delta_svd, r: Optional[int] = None, seed: int = 0,
                  W_svd=None) -> dict:
    """One Table 7 row for pretrained ``W`` (d × k) and ΔW given by its thin SVD ``(U, S, Vh)``.

    Returns ``r``, ``proj_delta`` / ``proj_W`` / ``proj_random`` (‖U_rᵀ W Vh_rᵀ‖_F with the top-r
    singular vectors of ΔW / W / a random matrix), ``norm_delta`` = ‖ΔW‖_F (= ‖S‖, with whatever
    scaling ``delta_svd`` carries), ``norm_W`` = ‖W‖_F and ``amplification`` = norm_delta / proj_delta.
    ``r`` defaults to the number of singular values given (the LoRA rank for factor-based SVDs).
    """
    W = W.detach().to(torch.float64)
    U, S, Vh = delta_svd
    r = len(S) if r is None else int(r)
    d, k = W.shape
    sw = torch.linalg.svdvals(W) if W_svd is None else W_svd[1]
    # U_Wᵀ W V_W = diag(σ_W), so the projection onto W's own top-r directions is ‖σ_W[:r]‖.
    proj_w = float(torch.linalg.vector_norm(sw[:r]))
    ru, rvh = random_frames(d, k, r, seed)
    proj_delta = projection_norm(W, U[:, :r], Vh[:r])
    norm_delta = float(torch.linalg.vector_norm(S))
    return {"r": r, "proj_delta": proj_delta, "proj_W": proj_w, "proj_random": projection_norm(W, ru, rvh),
            "norm_delta": norm_delta, "norm_W": float(torch.linalg.matrix_norm(W)),
            "amplification": norm_delta / proj_delta if proj_delta > 0 else float("inf")}


def amplification_table(run, base_loader: Optional[BaseWeightLoader] = None, layers=None, matrices=None,
                        r: Optional[int] = None, ft_rank: int = 8, include_scaling: bool = True,
                        seed: int = 0) -> list:
    """Table 7 for every (layer, matrix) of a run: list of dicts (``layer``, ``matrix`` + :func:`amplification`).

    ``base_loader`` defaults to :func:`~lora_research.analysis.deltas.load_base_weights` of the run.
    ``r`` overrides the subspace size; LoRA entries default to their rank, full-FT entries to ``ft_rank``.
    ``include_scaling`` (default True) keeps α/r in ‖ΔW‖_F and the amplification factor.
    """
    rec = run if isinstance(run, AdapterRecord) else load_adapter(run)
    if base_loader is None:
        from .deltas import load_base_weights

        base_loader = load_base_weights(rec.run_dir or rec.path)
    rows = []
    for n, e in enumerate(rec.select(layers, matrices)):
        W = base_weight(e, base_loader)
        svd = entry_svd(e, base_loader, include_scaling)
        rr = r if r is not None else (e.r if e.is_lora else ft_rank)
        # ‖ΔW‖_F is over ΔW's whole spectrum; the projections use its top-rr directions
        row = amplification(W, svd, min(rr, len(svd[1])), seed + n)
        rows.append({"layer": e.layer, "matrix": e.matrix, "method": rec.method, **row})
    return rows


def weight_delta_phi_grid(W: torch.Tensor, U_delta: torch.Tensor, max_j: Optional[int] = None,
                          seed: Optional[int] = None) -> torch.Tensor:
    """Figure 8: ``grid[i-1, j-1]`` = φ(top-i left singular vectors of ΔW, top-j of W).

    Rows (i) run over ΔW's r directions, columns (j) over W's (up to ``max_j``), so the heatmap has
    the short axis vertical like Fig. 3. With ``seed`` given, ΔW's frame is replaced by a random
    (Haar) d × r frame: the paper's random baseline.
    """
    W = W.detach().to(torch.float64)
    uw = torch.linalg.svd(W, full_matrices=False).U
    if seed is not None:
        U_delta, _ = random_frames(W.shape[0], 1, U_delta.shape[1], seed)
    return phi_grid_from_bases(U_delta, uw, None, max_j)
