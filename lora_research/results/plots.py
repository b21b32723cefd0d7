"""Plots of a paper layout (matplotlib, Agg): ours beside the paper, one figure per study.

Table 5: bars per target set; Tables 6 and 18: the metric against r per target set (log2 r);
Table 2: a method x task heatmap; Table 3: BLEU bars per method. Ours (left) and the paper (right)
get their own panels: the models differ, so the shapes are to be compared, not the heights.
"""
from __future__ import annotations

import math
from pathlib import Path

from lora_research.results.layouts import Layout


def plot(lay: Layout, path: Path | str) -> Path | None:
    """Write ``path`` (.png) for ``lay``; None when the layout has nothing to draw."""
    kind = lay.plot.get("kind")
    if not kind:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = {"bars": _bars, "rank_curves": _curves, "heatmap": _heatmap, "e2e_bars": _e2e_bars}[kind](plt, lay)
    if fig is None:
        return None
    from lora_research.outputs import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _bars(plt, lay):
    ours, paper = lay.plot["ours"], lay.plot["paper"]
    cols = lay.columns
    fig, axes = plt.subplots(1, 1 + len(paper), figsize=(5.5 * (1 + len(paper)), 4))
    width = 0.8 / max(1, len(ours))
    for i, (label, vals) in enumerate(ours.items()):
        xs = [j + i * width for j in range(len(cols))]
        ys = [vals[c]["value"] if vals.get(c) else math.nan for c in cols]
        err = [vals[c]["std"] if vals.get(c) else 0 for c in cols]
        axes[0].bar(xs, ys, width, yerr=err, capsize=3, label=label)
    _zoom(axes[0], [v["value"] + s * v["std"] for vals in ours.values() for v in vals.values() if v for s in (-1, 1)])
    axes[0].set_title("ours (median ±std over seeds)")
    for ax, (label, vals) in zip(axes[1:], paper.items()):
        ax.bar(range(len(cols)), [vals[c] for c in cols], 0.6, color="gray")
        _zoom(ax, list(vals.values()))
        ax.set_title(label)
    for ax in axes:
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    fig.suptitle(lay.title)
    return fig


def _zoom(ax, values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = max(1.0, (hi - lo) * 0.5)
        ax.set_ylim(lo - pad, hi + pad)


def _curves(plt, lay):
    ours, paper = lay.plot["ours"], lay.plot["paper"]
    metric = lay.plot.get("metric", "accuracy")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (label, targets), by_r in ours.items():
        rs = sorted(r for r, c in by_r.items() if c)
        if not rs:
            continue
        axes[0].errorbar(rs, [by_r[r]["value"] for r in rs], yerr=[by_r[r]["std"] for r in rs], marker="o", capsize=3,
                         label=f"{targets}: {label}")
    axes[0].set_title("ours (aggregate ±std over seeds)")
    for (label, targets), by_r in paper.items():
        rs = sorted(by_r)
        axes[1].plot(rs, [by_r[r] for r in rs], marker="s", label=f"{targets}: {label}")
    axes[1].set_title("paper")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(lay.title)
    return fig


def _heatmap(plt, lay):
    ours, cols = lay.plot["ours"], lay.plot["columns"]
    if not ours or not cols:
        return None
    rows = list(ours)
    import numpy as np

    data = np.array([[ours[r].get(c, np.nan) for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 3, 0.45 * len(rows) + 1.5))
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title(f"{lay.title}: ours (method x task)")
    return fig


def _e2e_bars(plt, lay):
    ours, paper = lay.plot["ours"], lay.plot["paper"]
    rows = list(ours)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].bar(range(len(rows)), [ours[r] if ours[r] is not None else math.nan for r in rows])
    axes[0].set_title("ours: BLEU")
    axes[1].bar(range(len(rows)), [paper[r] if paper.get(r) is not None else math.nan for r in rows], color="gray")
    axes[1].set_title("paper (GPT-2 M): BLEU")
    for ax in axes:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, rotation=30, ha="right", fontsize=8)
    fig.suptitle(lay.title)
    return fig
