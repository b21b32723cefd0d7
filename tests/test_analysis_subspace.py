"""φ (LoRA paper Eq. 4), its grid, factor-based SVD, run comparisons and ΔW spectra."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lora_research.analysis import spectra, subspace
from _adapter_fixtures import synthetic_run
from lora_research.analysis.deltas import delta_w, load_adapter
from lora_research.analysis.subspace import (
    expected_random_phi, lowrank_svd, phi, phi_grid, phi_grid_from_bases, random_phi_grid,
    right_singular_basis)

FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orth(k, n, seed=0):
    return torch.linalg.qr(randn(k, n, seed=seed)).Q


# ---- φ: range, identity, invariances ----------------------------------------------------------

@FAST
@given(k=st.integers(2, 24), r1=st.integers(1, 8), r2=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_phi_grid_in_unit_interval(k, r1, r2, seed):
    g = phi_grid(randn(r1, k, seed=seed), randn(r2, k, seed=seed + 1))
    assert g.shape == (min(r1, k), min(r2, k))
    assert (g >= 0).all() and (g <= 1).all()


@FAST
@given(k=st.integers(2, 24), r=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_phi_self_is_one(k, r, seed):
    A = randn(r, k, seed=seed)
    U = right_singular_basis(A)
    for i in range(1, U.shape[1] + 1):
        assert phi(U, U, i, i) == pytest.approx(1.0, abs=1e-10)
    # φ(i, j) of a basis with itself = 1 for every i, j (nested subspaces)
    assert torch.allclose(phi_grid(A, A), torch.ones(U.shape[1], U.shape[1], dtype=torch.float64), atol=1e-10)


@FAST
@given(k=st.integers(3, 20), r=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_full_row_space_invariant_to_row_mixing(k, r, seed):
    """A → R A (R invertible r×r) keeps A's row space, hence φ(A, RA, r, r) = 1."""
    r = min(r, k)
    A = randn(r, k, seed=seed)
    R = randn(r, r, seed=seed + 1) + 3 * torch.eye(r, dtype=torch.float64)
    g = phi_grid(A, R @ A)
    assert g[-1, -1] == pytest.approx(1.0, abs=1e-8)
    # and against a third matrix, the full-rank φ is unchanged
    C = randn(4, k, seed=seed + 2)
    assert phi_grid(R @ A, C)[-1] == pytest.approx(phi_grid(A, C)[-1], abs=1e-8)


@FAST
@given(k=st.integers(3, 20), r=st.integers(1, 6), c=st.floats(0.01, 100), seed=st.integers(0, 10_000))
def test_phi_grid_invariant_to_scaling_and_orthogonal_row_rotation(k, r, c, seed):
    """Scaling A or rotating its rows (A → Q A, Q orthogonal) keeps its singular vectors: whole grid equal."""
    A, C = randn(r, k, seed=seed), randn(5, k, seed=seed + 1)
    Q = orth(r, r, seed=seed + 2)
    ref = phi_grid(A, C)
    assert torch.allclose(phi_grid(c * A, C), ref, atol=1e-8)
    assert torch.allclose(phi_grid(Q @ A, C), ref, atol=1e-8)


def test_phi_symmetric_in_arguments():
    U1, U2 = orth(10, 4, 1), orth(10, 6, 2)
    assert torch.allclose(phi_grid_from_bases(U1, U2).T, phi_grid_from_bases(U2, U1), atol=1e-12)


# ---- hand-computed examples ------------------------------------------------------------------

@pytest.mark.parametrize("theta", [0.0, 0.3, math.pi / 4, 1.2, math.pi / 2])
def test_lines_at_angle_give_cos_squared(theta):
    u1 = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    u2 = torch.tensor([[math.cos(theta)], [math.sin(theta)]], dtype=torch.float64)
    assert phi(u1, u2, 1, 1) == pytest.approx(math.cos(theta) ** 2, abs=1e-12)
    # same through A matrices (1 × 2 rows)
    assert float(phi_grid(u1.T, u2.T)[0, 0]) == pytest.approx(math.cos(theta) ** 2, abs=1e-12)


def test_plane_and_line_in_r3():
    """Plane z = 0 vs line at elevation θ: φ = cos²θ; plane vs z-axis: 0; two planes sharing x: (1 + cos²θ)/2."""
    th = 0.7
    plane = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=torch.float64).T
    line = torch.tensor([[math.cos(th)], [0.0], [math.sin(th)]], dtype=torch.float64)
    assert phi(plane, line, 2, 1) == pytest.approx(math.cos(th) ** 2)
    assert phi(plane, torch.tensor([[0.0], [0], [1]], dtype=torch.float64), 2, 1) == pytest.approx(0.0)
    tilted = torch.tensor([[1.0, 0, 0], [0, math.cos(th), math.sin(th)]], dtype=torch.float64).T
    assert phi(plane, tilted, 2, 2) == pytest.approx((1 + math.cos(th) ** 2) / 2)
    # φ(1, 2): x-axis is inside the tilted plane
    assert phi(plane, tilted, 1, 2) == pytest.approx(1.0)


def test_grid_uses_singular_vector_order():
    """A = diag(3, 2, 1): directions e1, e2, e3. A' = rows (5·e3, e1): directions e3, e1."""
    A = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    A2 = torch.tensor([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    g = phi_grid(A, A2)
    # i=1 (e1) vs e3: 0; vs {e3, e1}: 1/1.  i=2 {e1,e2} vs e3: 0; vs {e3,e1}: 1/2.  i=3: all of R³.
    expected = torch.tensor([[0.0, 1.0], [0.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(g, expected, atol=1e-12)


# ---- grid = per-cell φ; truncation -----------------------------------------------------------

@FAST
@given(k=st.integers(4, 30), r1=st.integers(1, 6), r2=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_grid_equals_per_cell_phi_and_sigma_form(k, r1, r2, seed):
    U1 = right_singular_basis(randn(r1, k, seed=seed))
    U2 = right_singular_basis(randn(r2, k, seed=seed + 1))
    g = phi_grid_from_bases(U1, U2)
    for i in range(1, U1.shape[1] + 1):
        for j in range(1, U2.shape[1] + 1):
            assert float(g[i - 1, j - 1]) == pytest.approx(phi(U1, U2, i, j), abs=1e-10)
            sig = torch.linalg.svdvals(U1[:, :i].T @ U2[:, :j])  # Eq. 4's Σσ²/p form
            assert float(g[i - 1, j - 1]) == pytest.approx(float((sig ** 2).sum()) / min(i, j), abs=1e-10)


def test_grid_max_i_max_j():
    A1, A2 = randn(8, 40, seed=1), randn(64, 40, seed=2)
    full = phi_grid(A1, A2)
    assert full.shape == (8, 40)  # min(64, k=40) directions
    assert torch.allclose(phi_grid(A1, A2, 3, 5), full[:3, :5], atol=1e-12)
    with pytest.raises(ValueError):
        phi(right_singular_basis(A1), right_singular_basis(A2), 9, 1)


# ---- random subspaces: E[φ] = max(i, j)/k ----------------------------------------------------

def test_expected_random_phi_formula():
    assert expected_random_phi(8, 64, 1024) == 64 / 1024
    assert expected_random_phi(3, 2, 12) == 3 / 12


@pytest.mark.parametrize("k,r1,r2", [(64, 4, 16), (200, 8, 32)])
def test_random_gaussian_phi_matches_expectation(k, r1, r2):
    n = 60
    grids = torch.stack([random_phi_grid(k, r1, r2, seed=s) for s in range(n)])
    mean = grids.mean(0)
    for i, j in [(1, 1), (1, r2), (r1, r1), (r1, r2), (2, 5)]:
        # ‖U_iᵀU_j‖² ~ i·j/k mean with variance ≲ 2ij/k²; φ's sample mean std ≲ sqrt(2ij)/(k p sqrt(n))
        p = min(i, j)
        tol = 4 * math.sqrt(2 * i * j) / (k * p * math.sqrt(n)) + 1e-3
        assert float(mean[i - 1, j - 1]) == pytest.approx(expected_random_phi(i, j, k), abs=tol)


def test_random_phi_grid_is_seeded():
    assert torch.equal(random_phi_grid(32, 4, 8, seed=3), random_phi_grid(32, 4, 8, seed=3))
    assert not torch.equal(random_phi_grid(32, 4, 8, seed=3), random_phi_grid(32, 4, 8, seed=4))


# ---- factor-based SVD of ΔW ------------------------------------------------------------------

def _align_signs(U, U_ref):
    s = torch.sign((U * U_ref).sum(0))
    return U * s


@FAST
@given(d=st.integers(4, 40), k=st.integers(4, 40), r=st.integers(1, 8), scaling=st.floats(0.05, 20),
       seed=st.integers(0, 10_000))
def test_lowrank_svd_equals_dense(d, k, r, scaling, seed):
    r = min(r, d, k)
    B, A = randn(d, r, seed=seed), randn(r, k, seed=seed + 1)
    dense = scaling * B @ A
    U, S, Vh = lowrank_svd(B, A, scaling)
    assert U.shape == (d, r) and S.shape == (r,) and Vh.shape == (r, k)
    Ud, Sd, Vhd = torch.linalg.svd(dense, full_matrices=False)
    assert torch.allclose(S, Sd[:r], rtol=1e-8, atol=1e-10)
    assert torch.allclose(U @ torch.diag(S) @ Vh, dense, atol=1e-8 * (1 + float(dense.abs().max())))
    # singular vectors equal up to sign (random Gaussian factors: distinct σ almost surely)
    gap = float((Sd[:r - 1] - Sd[1:r]).min() / Sd[0]) if r > 1 else 1.0
    if gap > 1e-4:
        assert torch.allclose(_align_signs(U, Ud[:, :r]), Ud[:, :r], atol=1e-6)
        assert torch.allclose(_align_signs(Vh.T, Vhd[:r].T), Vhd[:r].T, atol=1e-6)
    assert torch.allclose(U.T @ U, torch.eye(r, dtype=torch.float64), atol=1e-10)


def test_lowrank_svd_rank_above_dims():
    B, A = randn(3, 5, seed=1), randn(5, 4, seed=2)  # r = 5 > d = 3
    U, S, Vh = lowrank_svd(B, A)
    assert torch.allclose(U @ torch.diag(S) @ Vh, B @ A, atol=1e-10)


# ---- run folders -----------------------------------------------------------------------------

@pytest.fixture
def runs(tmp_path):
    return {name: synthetic_run(tmp_path / name, n_layers=3, d=20, r=r, seed=seed)
            for name, r, seed in [("r2", 2, 0), ("r8", 8, 1), ("r8b", 8, 2)]}


def test_compare_runs_matches_direct(runs):
    grids = subspace.compare_runs(runs["r2"], runs["r8"])
    assert sorted(grids) == [(l, m) for l in range(3) for m in ("q", "v")]
    a, b = load_adapter(runs["r2"]), load_adapter(runs["r8"])
    g = grids[(1, "v")]
    assert g.shape == (2, 8)
    assert torch.allclose(g, phi_grid(a.get(1, "v").A, b.get(1, "v").A))
    # layer / matrix selection and truncation
    some = subspace.compare_runs(runs["r2"], runs["r8"], layers=[2], matrices=["q"], max_j=4)
    assert list(some) == [(2, "q")] and some[(2, "q")].shape == (2, 4)


def test_compare_runs_rejects_different_models(runs, tmp_path):
    other = synthetic_run(tmp_path / "other", n_layers=3, d=12, r=2)
    with pytest.raises(ValueError, match="same base model"):
        subspace.compare_runs(runs["r2"], other)


def test_rank_vs_rank_orders_small_r_first(runs):
    g1 = subspace.rank_vs_rank(runs["r8"], runs["r2"], layers=[0])
    assert g1[(0, "q")].shape == (2, 8)


def test_seed_vs_seed_has_random_control(runs):
    grids, controls = subspace.seed_vs_seed(runs["r8"], runs["r8b"], layers=[1], seed=5)
    assert set(grids) == set(controls) == {(1, "q"), (1, "v")}
    assert controls[(1, "q")].shape == grids[(1, "q")].shape == (8, 8)


@pytest.mark.parametrize("source", subspace.SOURCES)
def test_entry_basis_sources(runs, source):
    e = load_adapter(runs["r8"]).get(0, "q")
    U = subspace.entry_basis(e, source)
    dim = 20
    assert U.shape == (dim, 8)
    assert torch.allclose(U.T @ U, torch.eye(8, dtype=torch.float64), atol=1e-10)
    dense = delta_w(e)
    Ud, _, Vhd = torch.linalg.svd(dense)
    if source == "delta_in":  # span of ΔW's row space = span of A's rows
        assert phi_grid_from_bases(U, Vhd[:8].T)[-1, -1] == pytest.approx(1.0)
    if source == "delta_out":
        assert phi_grid_from_bases(U, Ud[:, :8])[-1, -1] == pytest.approx(1.0)


def test_entry_basis_rejects_unknown_source(runs):
    with pytest.raises(ValueError):
        subspace.entry_basis(load_adapter(runs["r8"]).get(0, "q"), "C")


# ---- spectra ---------------------------------------------------------------------------------

def test_effective_rank_and_energy_rank():
    assert spectra.effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert spectra.effective_rank(torch.tensor([3.0, 0, 0])) == pytest.approx(1.0)
    assert spectra.effective_rank(torch.zeros(3)) == 0.0
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert spectra.energy_rank(s, 0.6) == 1
    assert spectra.energy_rank(s, 0.9) == 2  # 13/14 = 0.93
    assert spectra.energy_rank(s, 0.99) == 3
    assert spectra.energy_rank(torch.tensor([1.0, 1.0]), 0.5) == 1


@FAST
@given(n=st.integers(1, 30), seed=st.integers(0, 1000))
def test_effective_rank_bounds(n, seed):
    s = randn(n, seed=seed).abs() + 1e-3
    e = spectra.effective_rank(s)
    assert 1 - 1e-9 <= e <= n + 1e-9
    assert spectra.effective_rank(7 * s) == pytest.approx(e)


def test_spectra_table_and_ft_overlap(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {f"bert.encoder.layer.{l}.attention.self.{n}": torch.randn(12, 12, generator=g, dtype=torch.float64)
            for l in range(2) for n in ("query", "value")}
    from lora_research.analysis.deltas import dict_base_loader

    ft = synthetic_run(tmp_path / "ft", n_layers=2, d=12, method="full_ft", base=base, dtype=torch.float64)
    lo = synthetic_run(tmp_path / "lo", n_layers=2, d=12, r=3)
    rows = spectra.spectra_table(lo)
    assert len(rows) == 4 and all(len(r["sigma"]) == 3 and r["rank99"] <= 3 for r in rows)
    e = load_adapter(lo).get(0, "q")
    assert rows[0]["fro"] == pytest.approx(float(torch.linalg.matrix_norm(delta_w(e))))
    ft_rows = spectra.spectra_table(ft, dict_base_loader(base))
    assert len(ft_rows[0]["sigma"]) == 12 and ft_rows[0]["effective_rank"] > 3
    ov = spectra.ft_lora_overlap(ft, lo, 1, "v", dict_base_loader(base), max_i=5)
    assert ov.shape == (5, 3) and (ov >= 0).all() and (ov <= 1).all()
    # a LoRA run's ΔW vs itself, through the FT code path (delta directions): φ = 1 on the diagonal
    assert torch.allclose(phi_grid_from_bases(subspace.entry_basis(e, "delta_out"),
                                              subspace.entry_basis(e, "delta_out")).diagonal(),
                          torch.ones(3, dtype=torch.float64))


@FAST
@given(m=st.integers(1, 20), n=st.integers(1, 20), seed=st.integers(0, 1000))
def test_thin_svd_matches_torch_svd(m, n, seed):
    M = randn(m, n, seed=seed)
    U, S, Vh = subspace.thin_svd(M)
    p = min(m, n)
    assert U.shape == (m, p) and S.shape == (p,) and Vh.shape == (p, n)
    assert torch.allclose(S, torch.linalg.svdvals(M), atol=1e-10)
    assert torch.allclose(U @ torch.diag(S) @ Vh, M, atol=1e-10)
    assert torch.allclose(Vh @ Vh.T, torch.eye(p, dtype=torch.float64), atol=1e-10)
