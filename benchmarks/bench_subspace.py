"""Speed of the φ grids (LoRA paper Eq. 4, Fig. 3): factor-based vs dense, measured in one run.

Setting: an r=8 run vs an r=64 run of a 24-layer, d=1024 model (random factors), all layers x {q, v}.

* factor-based (lora_research.analysis.subspace):
  - "A" (the paper's choice): SVD of each r x k A, M = U1ᵀU2 once, grid by cumulative sums of M²;
  - "ΔW": ΔW's right singular vectors from the factors (lowrank_svd: QR + r x r SVD), same grid;
* dense baseline: ΔW = s·B@A materialised (d x d) and fully SVD'd (grid by cumulative sums), and,
  separately, Eq. 4 evaluated naively per (i, j) as Σσ²/min(i, j) over the singular values of
  U1^{i⊤}U2^j (one small SVD per cell, 8·64 per pair).

The dense and factor-based "ΔW" grids compute the same quantity; their max difference is printed.

    python benchmarks/bench_subspace.py [--layers 24] [--d 1024] [--dense-layers 24] [--naive-layers 2]

``--dense-layers`` / ``--naive-layers N`` time those baselines on N layers and extrapolate linearly to
all layers (stated in the output).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_research.analysis.subspace import (  # noqa: E402
    lowrank_svd, phi_grid_from_bases, right_singular_basis)


def make_factors(n_layers, d, r, seed):
    g = torch.Generator().manual_seed(seed)
    return {(l, m): (torch.randn(d, r, generator=g, dtype=torch.float64) * 0.01,
                     torch.randn(r, d, generator=g, dtype=torch.float64))
            for l in range(n_layers) for m in ("q", "v")}


def factor_grids_A(run1, run2):
    return {key: phi_grid_from_bases(right_singular_basis(run1[key][1]), right_singular_basis(run2[key][1]))
            for key in run1}


def factor_grids_delta(run1, run2, s1, s2):
    out = {}
    for key in run1:
        v1 = lowrank_svd(*run1[key], s1)[2].T
        v2 = lowrank_svd(*run2[key], s2)[2].T
        out[key] = phi_grid_from_bases(v1, v2)
    return out


def dense_bases(run1, run2, s1, s2, r1, r2, keys):
    out = {}
    for key in keys:
        v1 = torch.linalg.svd(s1 * run1[key][0] @ run1[key][1], full_matrices=False).Vh[:r1].T
        v2 = torch.linalg.svd(s2 * run2[key][0] @ run2[key][1], full_matrices=False).Vh[:r2].T
        out[key] = (v1, v2, phi_grid_from_bases(v1, v2))
    return out


def naive_grids(bases, keys):
    out = {}
    for key in keys:
        v1, v2, _ = bases[key]
        r1, r2 = v1.shape[1], v2.shape[1]
        grid = torch.empty(r1, r2, dtype=torch.float64)
        for i in range(1, r1 + 1):
            for j in range(1, r2 + 1):
                sig = torch.linalg.svdvals(v1[:, :i].T @ v2[:, :j])
                grid[i - 1, j - 1] = (sig ** 2).sum() / min(i, j)
        out[key] = grid
    return out


def timed(fn, *a, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn(*a)
        best = min(best, time.perf_counter() - t)
    return best, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--r1", type=int, default=8)
    p.add_argument("--r2", type=int, default=64)
    p.add_argument("--dense-layers", type=int, default=None, help="dense SVD on this many layers, extrapolate")
    p.add_argument("--naive-layers", type=int, default=2, help="per-(i,j) Eq. 4 on this many layers, extrapolate")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both methods (default 1: on a shared CPU, multi-threaded small "
                        "LAPACK calls can be 10-100x slower from contention)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, d, r1, r2 = args.layers, args.d, args.r1, args.r2
    run1, run2 = make_factors(n, d, r1, 1), make_factors(n, d, r2, 2)
    s1, s2 = 16 / r1, 16 / r2
    pairs = len(run1)
    print(f"{n} layers x {{q, v}} = {pairs} pairs, d = k = {d}, r = {r1} vs {r2}, torch threads = "
          f"{torch.get_num_threads()}")

    t_a, grids_a = timed(factor_grids_A, run1, run2, repeat=args.repeat)
    t_f, grids_f = timed(factor_grids_delta, run1, run2, s1, s2, repeat=args.repeat)
    dn = n if args.dense_layers is None else min(n, args.dense_layers)
    keys = [key for key in run1 if key[0] < dn]
    t_d, bases = timed(dense_bases, run1, run2, s1, s2, r1, r2, keys)
    t_d_all = t_d * pairs / len(keys)
    nkeys = [key for key in keys if key[0] < args.naive_layers]
    t_n, grids_n = timed(naive_grids, bases, nkeys)
    t_n_all = t_n * pairs / max(1, len(nkeys))
    err = max(float((grids_f[k] - bases[k][2]).abs().max()) for k in keys)
    err_n = max(float((grids_f[k] - grids_n[k]).abs().max()) for k in nkeys)

    print(f"factor-based, A (paper's choice):   {t_a:8.3f} s  ({1e3 * t_a / pairs:.2f} ms/pair, best of {args.repeat})")
    print(f"factor-based, ΔW via lowrank_svd:   {t_f:8.3f} s  ({1e3 * t_f / pairs:.2f} ms/pair, best of {args.repeat})")
    ext = lambda m: "" if m == pairs else f"  (measured on {m} pairs, extrapolated)"  # noqa: E731
    print(f"dense: d x d SVD of ΔW, cumsum grid:{t_d_all:8.3f} s  ({1e3 * t_d_all / pairs:.1f} ms/pair){ext(len(keys))}")
    print(f"naive: + one SVD per (i, j) cell:   {t_n_all:8.3f} s  ({1e3 * t_n_all / pairs:.1f} ms/pair){ext(len(nkeys))}")
    print(f"ratio dense SVD / factor-based (ΔW):      {t_d_all / t_f:8.1f}x")
    print(f"ratio dense SVD / factor-based (A):       {t_d_all / t_a:8.1f}x")
    print(f"ratio dense SVD + naive cells / factor (ΔW): {(t_d_all + t_n_all) / t_f:8.1f}x")
    print(f"max |φ_dense − φ_factor| over the ΔW grids: {err:.2e} (naive cells: {err_n:.2e})")
    ok = t_a < 1.0 and t_f < 1.0
    print(f"target factor-based full run < 1 s: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
