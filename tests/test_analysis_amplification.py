"""Table 7 / H.4 amplification factor and Figure 8 (φ between W and ΔW)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lora_research.analysis.amplification import (
    amplification, amplification_table, projection_norm, random_frames, weight_delta_phi_grid)
from _adapter_fixtures import synthetic_run
from lora_research.analysis.deltas import delta_w, dict_base_loader, load_adapter
from lora_research.analysis.subspace import lowrank_svd

FAST = settings(max_examples=20, deadline=None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@FAST
@given(d=st.integers(4, 30), k=st.integers(4, 30), r=st.integers(1, 4), c=st.floats(0.1, 10), seed=st.integers(0, 999))
def test_amplification_is_one_when_W_is_delta(d, k, r, c, seed):
    """W = ΔW: ‖U_rᵀ ΔW Vh_rᵀ‖_F = ‖σ‖ = ‖ΔW‖_F, so the factor is 1 (and projecting onto ΔW's or W's
    own directions agrees)."""
    B, A = randn(d, r, seed=seed), randn(r, k, seed=seed + 1)
    svd = lowrank_svd(B, A, c)
    dW = c * B @ A
    row = amplification(dW, svd)
    assert row["r"] == min(r, d, k)
    assert row["amplification"] == pytest.approx(1.0, rel=1e-8)
    assert row["proj_delta"] == pytest.approx(row["norm_delta"], rel=1e-8)
    assert row["proj_W"] == pytest.approx(row["proj_delta"], rel=1e-8)
    assert row["norm_W"] == pytest.approx(float(torch.linalg.matrix_norm(dW)), rel=1e-10)


def test_amplification_hand_example():
    """W = diag(10, 5, 1, 0.5); ΔW = 2·e3 e4ᵀ (a direction W barely has)."""
    W = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5], dtype=torch.float64))
    W[2, 3] = 0.2
    B = torch.tensor([[0.0], [0], [1], [0]], dtype=torch.float64)
    A = torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)
    row = amplification(W, lowrank_svd(B, A, 2.0), seed=1)
    assert row["r"] == 1
    assert row["norm_delta"] == pytest.approx(2.0)
    assert row["proj_delta"] == pytest.approx(0.2)  # e3ᵀ W e4
    assert row["amplification"] == pytest.approx(10.0)
    assert row["proj_W"] == pytest.approx(float(torch.linalg.svdvals(W)[0]))
    assert row["norm_W"] == pytest.approx(float(torch.linalg.matrix_norm(W)))


def test_projection_norm_and_W_subspace():
    W = randn(12, 9, seed=3)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    for r in (1, 3, 9):
        assert projection_norm(W, U[:, :r], Vh[:r]) == pytest.approx(float(S[:r].norm()))
    # Table 7's "W_q" column: projecting W onto its own top-r is the largest possible
    row = amplification(W, lowrank_svd(randn(12, 3, seed=4), randn(3, 9, seed=5)))
    assert row["proj_W"] == pytest.approx(float(S[:3].norm()))
    assert row["proj_W"] >= row["proj_delta"] and row["proj_W"] >= row["proj_random"]


def test_random_frames_orthonormal_and_random_projection_scale():
    d, k, r = 200, 150, 4
    U, Vh = random_frames(d, k, r, seed=0)
    assert U.shape == (d, r) and Vh.shape == (r, k)
    assert torch.allclose(U.T @ U, torch.eye(r, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Vh @ Vh.T, torch.eye(r, dtype=torch.float64), atol=1e-12)
    # E‖UᵀWV‖_F² = r² ‖W‖_F² / (d k) for Haar frames
    W = randn(d, k, seed=9)
    vals = [projection_norm(W, *random_frames(d, k, r, seed=s)) ** 2 for s in range(40)]
    expect = r * r * float(W.norm()) ** 2 / (d * k)
    assert sum(vals) / len(vals) == pytest.approx(expect, rel=0.25)


def test_amplification_table_on_run_scaling_choice(tmp_path):
    d = 16
    g = torch.Generator().manual_seed(0)
    base = {f"bert.encoder.layer.{l}.attention.self.{n}": torch.randn(d, d, generator=g, dtype=torch.float64)
            for l in range(2) for n in ("query", "value")}
    run = synthetic_run(tmp_path / "lora", n_layers=2, d=d, r=4, alpha=16)
    loader = dict_base_loader(base)
    rows = amplification_table(run, loader)
    assert [(r["layer"], r["matrix"]) for r in rows] == [(0, "q"), (0, "v"), (1, "q"), (1, "v")]
    e = load_adapter(run).get(1, "q")
    assert rows[2]["norm_delta"] == pytest.approx(float(torch.linalg.matrix_norm(delta_w(e))))
    assert rows[2]["r"] == 4
    unscaled = amplification_table(run, loader, include_scaling=False)
    # scaling α/r = 4 multiplies ‖ΔW‖_F and the factor, not the projections
    assert unscaled[2]["norm_delta"] * 4 == pytest.approx(rows[2]["norm_delta"])
    assert unscaled[2]["proj_delta"] == pytest.approx(rows[2]["proj_delta"])
    assert unscaled[2]["amplification"] * 4 == pytest.approx(rows[2]["amplification"])
    assert len(amplification_table(run, loader, layers=[0], matrices=["v"], r=2)) == 1
    assert amplification_table(run, loader, layers=[0], matrices=["v"], r=2)[0]["r"] == 2
    # full fine-tuning: ΔW = W_ft − W0, projections at ft_rank
    ft = synthetic_run(tmp_path / "ft", n_layers=2, d=d, method="full_ft", base=base, dtype=torch.float64)
    ft_rows = amplification_table(ft, loader, ft_rank=3)
    assert all(r["r"] == 3 and r["method"] == "full_ft" for r in ft_rows)
    assert ft_rows[0]["norm_delta"] == pytest.approx(float((load_adapter(ft).get(0, "q").W - base[
        "bert.encoder.layer.0.attention.self.query"]).norm()))


def test_weight_delta_phi_grid_fig8():
    d, k, r = 20, 15, 3
    W = randn(d, k, seed=1)
    Uw = torch.linalg.svd(W, full_matrices=False).U
    # ΔW living exactly in W's top-3 left directions: φ(i=3, j=3) = 1, φ(·, j = all) = 1
    g = weight_delta_phi_grid(W, Uw[:, :r])
    assert g.shape == (r, k)
    assert g[r - 1, r - 1] == pytest.approx(1.0)
    assert torch.allclose(g[:, -1], torch.ones(r, dtype=torch.float64))
    # ΔW orthogonal to W's column space: 0 everywhere
    perp = torch.linalg.svd(W, full_matrices=True).U[:, k:k + r]
    assert float(weight_delta_phi_grid(W, perp).abs().max()) < 1e-12
    rnd = weight_delta_phi_grid(W, Uw[:, :r], max_j=10, seed=0)
    assert rnd.shape == (r, 10) and (rnd >= 0).all() and (rnd <= 1).all()
    assert not torch.allclose(rnd, g[:, :10])


def test_paper_table7_arithmetic():
    """H.4: 6.91 / 0.32 ≈ 21.5 (r=4), 3.57 / 1.90 ≈ 1.9 (r=64)."""
    assert 6.91 / 0.32 == pytest.approx(21.5, abs=0.2)
    assert math.isclose(3.57 / 1.90, 1.88, abs_tol=0.01)
