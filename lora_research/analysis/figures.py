"""Section 7 figures in the paper's style (LoRA paper Figures 3, 4, 6, 7, 8; Table 7; ΔW spectra).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend
switch, so the library works headless and inside notebooks alike). :func:`save_figure` writes PNG and
PDF atomically (temporary file in the target folder, then ``os.replace``).

φ heatmaps follow Fig. 3/4: viridis, i on the y axis (top = 1), j on the x axis, one colour scale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lora_research.outputs import atomic_write

MATRIX_LABEL = {"q": "W_q", "k": "W_k", "v": "W_v", "o": "W_o", "mlp_in": "W_{in}", "mlp_out": "W_{out}"}


def _dw(matrix: str) -> str:
    return rf"$\Delta {MATRIX_LABEL.get(matrix, matrix)}$"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: "str | Path", formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list:
    """Write ``stem.png`` and ``stem.pdf`` atomically; returns the paths."""
    out = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=dpi))
        out.append(path)
    return out


def _np(grid) -> np.ndarray:
    return grid.detach().cpu().numpy() if hasattr(grid, "detach") else np.asarray(grid)


def phi_heatmap(ax, grid, title: str = "", xlabel: str = "j", ylabel: str = "i",
                vmin: float = 0.0, vmax: Optional[float] = 1.0):
    """One φ heatmap: cell (i, j) centred on integer coordinates, i = 1 at the top."""
    g = _np(grid)
    ni, nj = g.shape
    im = ax.imshow(g, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest",
                   extent=(0.5, nj + 0.5, ni + 0.5, 0.5))
    for n, axis in ((nj, ax.xaxis), (ni, ax.yaxis)):
        step = max(1, int(np.ceil(n / 8)))
        axis.set_ticks([1] + list(range(step, n + 1, step))[(1 if step == 1 else 0):])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return im


def phi_panels(panels: Sequence, suptitle: str = "", vmax: Optional[float] = 1.0, panel_width: float = 3.0) -> Figure:
    """A row of φ heatmaps with one colour bar; ``panels`` = [(title, grid) or (title, grid, xlabel, ylabel)]."""
    fig = new_figure(panel_width * len(panels) + 0.8, 2.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, p in zip(axes, panels):
        title, grid, *labels = p
        im = phi_heatmap(ax, grid, title, *labels, vmax=vmax)
    fig.colorbar(im, ax=list(axes), shrink=0.9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def rank_vs_rank_figure(grids: Mapping[str, object], r_i: int, r_j: int, zoom: int = 8, layer=None) -> Figure:
    """Fig. 3 / 6 layout: φ(A_{r=r_i}, A_{r=r_j}, i, j) for each matrix, then the same zoomed to
    i, j ≤ ``zoom`` (``grids``: {matrix: (r_i × r_j) grid})."""
    full = [(f"{_dw(m)}", g) for m, g in grids.items()]
    zoomed = [(f"{_dw(m)} (zoom)", _np(g)[:zoom, :zoom]) for m, g in grids.items()]
    where = f", layer {layer}" if layer is not None else ""
    return phi_panels(full + zoomed, rf"$\phi(A_{{r={r_i}}}, A_{{r={r_j}}}, i, j)${where}")


def seed_vs_seed_figure(grids: Mapping[str, object], control, r: int, layer=None) -> Figure:
    """Fig. 4 / 7 layout: φ(A_{r}, A'_{r}, i, j) for each matrix (two seeds) + random Gaussian control."""
    panels = [(_dw(m), g) for m, g in grids.items()] + [("Random Gaussian", control)]
    where = f", layer {layer}" if layer is not None else ""
    return phi_panels(panels, rf"$\phi(A_{{r={r}}}, A'_{{r={r}}}, i, j)${where}")


def weight_delta_figure(grids: Mapping[str, object], matrix: str = "q", layer=None) -> Figure:
    """Fig. 8 layout: φ(ΔW top-i, W top-j) per label (e.g. "r=4", "r=64", "random")."""
    panels = [(label, g, f"j (singular directions of ${MATRIX_LABEL.get(matrix, matrix)}$)", r"i (of $\Delta W$)")
              for label, g in grids.items()]
    where = f", layer {layer}" if layer is not None else ""
    return phi_panels(panels, rf"$\phi$ between {_dw(matrix)} and ${MATRIX_LABEL.get(matrix, matrix)}${where}",
                      vmax=None, panel_width=3.6)


def spectra_figure(spectra: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """Singular values of ΔW (log scale) and cumulative energy, one line per label."""
    fig = new_figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    for label, s in spectra.items():
        s = np.sort(np.abs(_np(s)))[::-1]
        k = np.arange(1, len(s) + 1)
        ax1.semilogy(k, np.maximum(s, 1e-300), marker="." if len(s) <= 64 else None, label=label)
        e = np.cumsum(s ** 2)
        ax2.plot(k, e / e[-1] if e[-1] > 0 else e, label=label)
    ax1.set(xlabel="k", ylabel=r"$\sigma_k(\Delta W)$", title="singular values")
    ax2.set(xlabel="k", ylabel="cumulative energy", xscale="log", title="share of ‖ΔW‖_F² in the top k σ")
    for y in (0.9, 0.99):
        ax2.axhline(y, color="grey", lw=0.6, ls="--")
    ax1.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def amplification_figure(rows: Sequence[Mapping], title: str = "") -> Figure:
    """Table 7 as bars: ‖U_rᵀWVh_rᵀ‖_F for U, V of ΔW / W / random (log scale), ‖ΔW‖_F, and the
    amplification factor ‖ΔW‖_F / ‖U_rᵀWVh_rᵀ‖_F (right panel), one group per (layer, matrix, r)."""
    fig = new_figure(max(6.0, 0.55 * len(rows) + 4.0), 3.6)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    labels = [f"L{r['layer']} {r['matrix']} r={r['r']}" for r in rows]
    x = np.arange(len(rows))
    keys = [("proj_delta", r"$\Delta W$"), ("proj_W", "$W$"), ("proj_random", "random"), ("norm_delta", r"$\|\Delta W\|_F$")]
    w = 0.8 / len(keys)
    for n, (key, lab) in enumerate(keys):
        ax1.bar(x + (n - 1.5) * w, [r[key] for r in rows], w, label=lab)
    ax1.set_yscale("log")
    ax1.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax1.set(ylabel=r"$\|U_r^\top W V_r\|_F$", title="projection of W onto r-dim subspaces")
    ax1.legend(fontsize=7)
    ax2.plot(x, [r["amplification"] for r in rows], marker="o")
    ax2.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax2.set(ylabel="amplification factor", title=r"$\|\Delta W\|_F / \|U^\top W V\|_F$")
    if title:
        fig.suptitle(title)
    return fig
