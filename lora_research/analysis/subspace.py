"""Normalized subspace similarity φ (LoRA paper Eq. 4, Appendix G; Figures 3, 4, 6, 7).

    φ(A, B, i, j) = ‖U_A^{i⊤} U_B^j‖_F² / min(i, j)  ∈ [0, 1]

where U_A^i are the top-i singular vectors of A. The paper compares the LoRA ``A`` matrices (r × k)
through their *right*-singular (input-space, k-dim) vectors: the rows of ``Vh`` from ``svd(A)``,
transposed (:func:`right_singular_basis`). Footnote 7's alternative, ``B``'s left-singular vectors,
and ΔW's own singular vectors are available through ``source`` (see :func:`entry_basis`).

The whole i × j grid costs one small product M = U1ᵀU2 and two cumulative sums of M²
(:func:`phi_grid_from_bases`); ΔW's singular vectors come from its factors (:func:`lowrank_svd`),
never from a dense d × k SVD.
"""
from __future__ import annotations

from typing import Optional

import torch

from .deltas import AdapterEntry, AdapterRecord, BaseWeightLoader, delta_w, load_adapter

SOURCES = ("A", "B", "delta_in", "delta_out")


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def thin_svd(M: torch.Tensor):
    """Thin SVD ``(U, S, Vh)`` of a float64 copy of M, via QR of its long side first (r ≪ k: QR of
    the k × r transpose, then an r × r SVD), which is cheaper than LAPACK's SVD on a wide matrix."""
    M = _f64(M)
    if M.shape[0] < M.shape[1]:
        q, r = torch.linalg.qr(M.T)  # M = rᵀ qᵀ
        u, s, vh = torch.linalg.svd(r.T)
        return u, s, vh @ q.T
    q, r = torch.linalg.qr(M)
    u, s, vh = torch.linalg.svd(r)
    return q @ u, s, vh


def right_singular_basis(A: torch.Tensor) -> torch.Tensor:
    """(k, min(r, k)) orthonormal columns: A's right-singular vectors, σ descending (``Vh.T``)."""
    return thin_svd(A)[2].T


def left_singular_basis(B: torch.Tensor) -> torch.Tensor:
    """(d, min(d, r)) orthonormal columns: B's left-singular vectors, σ descending (``U``)."""
    return thin_svd(B)[0]


def lowrank_svd(B: torch.Tensor, A: torch.Tensor, scaling: float = 1.0):
    """Thin SVD of ΔW = scaling · B @ A from the factors: ``(U (d, r), S (r,), Vh (r, k))``.

    QR of B = Q_B R_B and of Aᵀ = Q_A R_A, then the SVD of the small core
    scaling · R_B R_Aᵀ = U_c S Vh_c gives U = Q_B U_c and Vh = Vh_c Q_Aᵀ.
    Cost O((d + k) r²) instead of O(d k min(d, k)); equal to the dense SVD up to column signs
    (and rotations within repeated singular values).
    """
    B, A = _f64(B), _f64(A)
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    uc, s, vhc = torch.linalg.svd(float(scaling) * (rb @ ra.T), full_matrices=False)
    return qb @ uc, s, vhc @ qa.T


def entry_svd(entry: AdapterEntry, base_loader: Optional[BaseWeightLoader] = None,
              include_scaling: bool = True):
    """Thin SVD ``(U, S, Vh)`` of one entry's ΔW: factor-based (:func:`lowrank_svd`) for LoRA,
    dense for full FT (W_ft − W0, needs ``base_loader``). ``include_scaling`` multiplies S by α/r
    for LoRA (default True, as :func:`~lora_research.analysis.deltas.delta_w`); U and Vh are unaffected.
    """
    if entry.is_lora:
        s = entry.scaling if (include_scaling and entry.scaling is not None) else 1.0
        return lowrank_svd(entry.B, entry.A, s)
    return torch.linalg.svd(delta_w(entry, base_loader), full_matrices=False)


def phi(U1: torch.Tensor, U2: torch.Tensor, i: int, j: int) -> float:
    """Eq. 4 for one (i, j): ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j); U1, U2 orthonormal columns."""
    if not (1 <= i <= U1.shape[1] and 1 <= j <= U2.shape[1]):
        raise ValueError(f"i={i}, j={j} outside 1..{U1.shape[1]}, 1..{U2.shape[1]}")
    m = _f64(U1)[:, :i].T @ _f64(U2)[:, :j]
    return float((m ** 2).sum() / min(i, j))


def phi_grid_from_bases(U1: torch.Tensor, U2: torch.Tensor, max_i: Optional[int] = None,
                        max_j: Optional[int] = None) -> torch.Tensor:
    """(max_i, max_j) grid with ``grid[i-1, j-1] = φ(i, j)`` for orthonormal bases U1, U2.

    M = U1ᵀU2 once; ‖U1^{i⊤}U2^j‖_F² is the (i, j) prefix sum of M², i.e. a 2-D cumulative sum.
    """
    U1, U2 = _f64(U1), _f64(U2)
    max_i = U1.shape[1] if max_i is None else min(max_i, U1.shape[1])
    max_j = U2.shape[1] if max_j is None else min(max_j, U2.shape[1])
    m2 = (U1[:, :max_i].T @ U2[:, :max_j]) ** 2
    sums = m2.cumsum(0).cumsum(1)
    ii = torch.arange(1, max_i + 1, dtype=torch.float64)[:, None]
    jj = torch.arange(1, max_j + 1, dtype=torch.float64)[None, :]
    return (sums / torch.minimum(ii, jj)).clamp_(0.0, 1.0)


def phi_grid(A1: torch.Tensor, A2: torch.Tensor, max_i: Optional[int] = None,
             max_j: Optional[int] = None, side: str = "right") -> torch.Tensor:
    """φ grid between two matrices' singular vectors: ``side="right"`` (default, the paper's choice
    for the LoRA A matrices: input-space vectors) or ``"left"`` (e.g. for B, footnote 7)."""
    basis = right_singular_basis if side == "right" else left_singular_basis
    return phi_grid_from_bases(basis(A1), basis(A2), max_i, max_j)


def expected_random_phi(i: int, j: int, k: int) -> float:
    """E[φ(i, j)] for independent uniformly random i- and j-dim subspaces of R^k.

    E‖U_iᵀU_j‖_F² = i·j/k (each of the i·j entries has mean square 1/k), so E[φ] = max(i, j)/k.
    """
    return max(i, j) / k


def random_phi_grid(k: int, r1: int, r2: int, seed: int = 0) -> torch.Tensor:
    """Fig. 4 (right) control: φ grid between two random Gaussian (r1 × k) and (r2 × k) matrices."""
    g = torch.Generator().manual_seed(seed)
    a1 = torch.randn(r1, k, generator=g, dtype=torch.float64)
    a2 = torch.randn(r2, k, generator=g, dtype=torch.float64)
    return phi_grid(a1, a2)


def entry_basis(entry: AdapterEntry, source: str = "A", base_loader: Optional[BaseWeightLoader] = None,
                rank: Optional[int] = None) -> torch.Tensor:
    """Orthonormal singular vectors (columns, σ descending) of one adapted matrix.

    ``source``: ``"A"`` right-singular vectors of A (paper default, k-dim); ``"B"`` left-singular
    vectors of B (footnote 7, d-dim); ``"delta_in"`` / ``"delta_out"`` right / left singular vectors
    of ΔW (k-dim / d-dim; factor-based for LoRA, dense SVD of W_ft − W0 for full FT). ``rank``
    truncates to the top ``rank`` columns. The α/r scaling does not change any of these.
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r} not in {SOURCES}")
    if source in ("A", "B") and not entry.is_lora:
        raise ValueError(f"source {source!r} needs a LoRA entry; use delta_in/delta_out for full FT")
    if source == "A":
        u = right_singular_basis(entry.A)
    elif source == "B":
        u = left_singular_basis(entry.B)
    else:
        U, _, Vh = entry_svd(entry, base_loader)
        u = U if source == "delta_out" else Vh.T
    return u if rank is None else u[:, :rank]


def _record(run) -> AdapterRecord:
    return run if isinstance(run, AdapterRecord) else load_adapter(run)


def compare_runs(run_a, run_b, layers=None, matrices=None, source: str = "A",
                 max_i: Optional[int] = None, max_j: Optional[int] = None,
                 base_loader_a: Optional[BaseWeightLoader] = None,
                 base_loader_b: Optional[BaseWeightLoader] = None) -> dict:
    """φ grids for every (layer, matrix) adapted in both runs: ``{(layer, matrix): grid}``.

    ``grid[i-1, j-1]`` = φ(run_a's top-i, run_b's top-j). Runs are folders, files or records.
    """
    a, b = _record(run_a), _record(run_b)
    out = {}
    for ea in a.select(layers, matrices):
        try:
            eb = b.get(ea.layer, ea.matrix)
        except KeyError:
            continue
        dim = 1 if source in ("A", "delta_in") else 0
        if ea.shape[dim] != eb.shape[dim]:
            raise ValueError(f"layer {ea.layer} {ea.matrix}: ΔW shapes {ea.shape} vs {eb.shape} differ; "
                             "are both runs on the same base model?")
        u1 = entry_basis(ea, source, base_loader_a, rank=max_i)
        u2 = entry_basis(eb, source, base_loader_b, rank=max_j)
        out[ea.key] = phi_grid_from_bases(u1, u2)
    return out


def rank_vs_rank(run_a, run_b, layers=None, matrices=None, source: str = "A", **kw) -> dict:
    """Fig. 3 / 6: φ(A_{r small}, A_{r large}, i, j); the run with the smaller r is put on i (rows)."""
    a, b = _record(run_a), _record(run_b)
    if (a.ranks or [0])[0] > (b.ranks or [0])[0]:
        a, b = b, a
    return compare_runs(a, b, layers, matrices, source, **kw)


def seed_vs_seed(run_a, run_b, layers=None, matrices=None, source: str = "A", seed: int = 0, **kw):
    """Fig. 4 / 7: φ(A_{r}, A'_{r}, i, j) for two seeds, plus the random-Gaussian control.

    Returns ``(grids, controls)``, both ``{(layer, matrix): grid}``; each control compares two
    Gaussian matrices of the same shapes (:func:`random_phi_grid`).
    """
    a, b = _record(run_a), _record(run_b)
    grids = compare_runs(a, b, layers, matrices, source, **kw)
    controls = {}
    for n, key in enumerate(sorted(grids)):
        ea, eb = a.get(*key), b.get(*key)
        g = grids[key]
        if source in ("A", "delta_in"):
            dim = ea.shape[1]
        else:
            dim = ea.shape[0]
        r1 = ea.r if ea.r is not None else g.shape[0]
        r2 = eb.r if eb.r is not None else g.shape[1]
        controls[key] = random_phi_grid(dim, r1, r2, seed + n)[: g.shape[0], : g.shape[1]]
    return grids, controls
