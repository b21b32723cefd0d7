"""Section 7 analysis CLI (LoRA paper §7: Figures 3, 4, 6–8, Table 7, ΔW spectra) on run folders.

    python -m lora_research.analysis figures RUN_A RUN_B [--out DIR] [--layer N[,M..]] [--matrices q,v]
    python -m lora_research.analysis phi RUN_A RUN_B --layer N --matrix q [--i 8 --j 64]
    python -m lora_research.analysis amplification RUN [--layer N] [--r R] [--no-scaling]
    python -m lora_research.analysis spectra RUN [RUN ...] [--layer N]

``figures`` picks the layout: runs of different r → Fig. 3/6 (r vs r, zoomed panels); same r →
Fig. 4/7 (seed vs seed, random Gaussian control). Every command writes JSON (and CSV for tables)
plus PNG/PDF figures atomically into ``--out`` and prints each path. Commands needing W0
(``amplification``, full-FT runs) load the run's base model, or ``--base-weights FILE.safetensors``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from . import amplification as amp
from . import figures as figs
from . import spectra as spec
from . import subspace as sub
from lora_research.outputs import atomic_write_text

from .deltas import AdapterRecord, check_same_base, load_adapter, load_base_weights, safetensors_base_loader


def _ints(text):
    return None if text is None else [int(t) for t in str(text).split(",") if t != ""]


def _strs(text):
    return None if text is None else [t for t in str(text).split(",") if t]


def _layers(rec: AdapterRecord, requested):
    if requested:
        return requested
    layers = rec.layers
    return [layers[len(layers) // 2]]  # the paper's layer 48 of 96: the middle one


def _loader(args, rec: AdapterRecord):
    if getattr(args, "base_weights", None):
        return safetensors_base_loader(args.base_weights, rec.model_family)
    return load_base_weights(rec.run_dir or rec.path)


def _grid_json(grid):
    return [[round(float(x), 6) for x in row] for row in grid.tolist()]


class _Writer:
    def __init__(self, out):
        self.out = Path(out)
        self.written = []

    def json(self, name, obj):
        self.written.append(atomic_write_text(self.out / name, json.dumps(obj, indent=1) + "\n"))

    def csv(self, name, rows, fields):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        self.written.append(atomic_write_text(self.out / name, buf.getvalue()))

    def figure(self, stem, fig):
        self.written.extend(figs.save_figure(fig, self.out / stem))

    def report(self):
        for p in self.written:
            print(f"wrote {p}")


def _run_info(rec: AdapterRecord):
    return {"path": str(rec.run_dir or rec.path), "method": rec.method, "r": rec.ranks, "seed": rec.seed,
            "base_model": rec.base_model}


def _check_lora(source, *recs):
    for rec in recs:
        if source in ("A", "B") and not rec.is_lora:
            raise SystemExit(f"{rec.path}: the ΔW of this {rec.method} run is not s·B·A (full FT, DoRA or PiSSA), so "
                             "A/B alone do not describe it; use --source delta_in|delta_out")


def _check_bases(args, *recs):
    """ΔW of adapters trained on different base models are not comparable (unless --allow-different-bases)."""
    why = check_same_base(list(recs), allow=args.allow_different_bases)
    if why:
        print(f"warning: comparing adapters of different base models ({why})", file=sys.stderr)


def cmd_figures(args) -> int:
    a, b = load_adapter(args.run_a), load_adapter(args.run_b)
    _check_bases(args, a, b)
    _check_lora(args.source, a, b)
    ra, rb = (a.ranks or [0])[0], (b.ranks or [0])[0]
    kind = "rank" if ra != rb else "seed"
    if kind == "rank" and ra > rb:
        a, b, ra, rb = b, a, rb, ra
    wr = _Writer(args.out)
    mats = _strs(args.matrices)
    for layer in _layers(a, _ints(args.layer)):
        if kind == "rank":
            grids = sub.compare_runs(a, b, [layer], mats, args.source)
            controls = {}
        else:
            grids, controls = sub.seed_vs_seed(a, b, [layer], mats, args.source, seed=args.seed)
        if not grids:
            raise SystemExit(f"layer {layer}: no matrix adapted in both runs")
        by_m = {m: g for (_, m), g in grids.items()}
        wr.json(f"phi_{kind}_layer{layer}.json", {
            "figure": "Fig. 3/6 (r vs r)" if kind == "rank" else "Fig. 4/7 (seed vs seed)", "layer": layer,
            "source": args.source, "run_i": _run_info(a), "run_j": _run_info(b),
            "phi": {m: _grid_json(g) for m, g in by_m.items()},
            "random_control": {m: _grid_json(g) for (_, m), g in controls.items()}})
        if kind == "rank":
            fig = figs.rank_vs_rank_figure(by_m, ra, rb, zoom=args.zoom, layer=layer)
        else:
            fig = figs.seed_vs_seed_figure(by_m, next(iter(controls.values())), ra, layer=layer)
        wr.figure(f"phi_{kind}_layer{layer}", fig)
    wr.report()
    return 0


def cmd_phi(args) -> int:
    a, b = load_adapter(args.run_a), load_adapter(args.run_b)
    _check_bases(args, a, b)
    _check_lora(args.source, a, b)
    grids = sub.compare_runs(a, b, [args.layer], [args.matrix], args.source)
    if not grids:
        raise SystemExit(f"layer {args.layer} matrix {args.matrix}: not adapted in both runs")
    grid = grids[(args.layer, args.matrix)]
    i = grid.shape[0] if args.i is None else args.i
    j = grid.shape[1] if args.j is None else args.j
    if not (1 <= i <= grid.shape[0] and 1 <= j <= grid.shape[1]):
        raise SystemExit(f"i={i}, j={j} outside the grid 1..{grid.shape[0]} x 1..{grid.shape[1]}")
    value = float(grid[i - 1, j - 1])
    print(f"phi(layer {args.layer}, {args.matrix}, i={i}, j={j}) = {value:.6f}")
    wr = _Writer(args.out)
    stem = f"phi_layer{args.layer}_{args.matrix}"
    wr.json(stem + ".json", {"layer": args.layer, "matrix": args.matrix, "i": i, "j": j, "phi": value,
                             "source": args.source, "run_i": _run_info(a), "run_j": _run_info(b),
                             "grid": _grid_json(grid)})
    wr.figure(stem, figs.phi_panels([(figs._dw(args.matrix), grid)], f"layer {args.layer}"))
    wr.report()
    return 0


AMP_FIELDS = ["layer", "matrix", "method", "r", "proj_delta", "proj_W", "proj_random", "norm_delta", "norm_W",
              "amplification"]


def cmd_amplification(args) -> int:
    rec = load_adapter(args.run)
    loader = _loader(args, rec)
    layers = _ints(args.layer)
    mats = _strs(args.matrices)
    rows = amp.amplification_table(rec, loader, layers, mats, r=args.r, ft_rank=args.ft_rank,
                                   include_scaling=not args.no_scaling, seed=args.seed)
    wr = _Writer(args.out)
    meta = {"run": _run_info(rec), "include_scaling": not args.no_scaling,
            "note": "proj_* = ||U_r^T W Vh_r^T||_F with U_r, Vh_r top-r singular vectors of dW / W / random"}
    wr.json("amplification.json", {**meta, "rows": rows})
    wr.csv("amplification.csv", rows, AMP_FIELDS)
    wr.figure("amplification", figs.amplification_figure(rows, f"Table 7: {Path(meta['run']['path']).name}"))
    # Figure 8 at one layer (the middle one unless --layer): φ(ΔW top-i, W top-j) and a random baseline
    fig8_layer = _layers(rec, layers)[0]
    fig8 = {}
    for e in rec.select([fig8_layer], mats):
        from .deltas import base_weight

        W = base_weight(e, loader)
        u_d = sub.entry_basis(e, "delta_out", loader, rank=e.r or args.ft_rank)
        grids = {f"r={u_d.shape[1]}": amp.weight_delta_phi_grid(W, u_d, args.fig8_j),
                 "random": amp.weight_delta_phi_grid(W, u_d, args.fig8_j, seed=args.seed)}
        fig8[e.matrix] = {k: _grid_json(g) for k, g in grids.items()}
        wr.figure(f"fig8_layer{fig8_layer}_{e.matrix}", figs.weight_delta_figure(grids, e.matrix, fig8_layer))
    wr.json(f"fig8_layer{fig8_layer}.json", {**meta, "layer": fig8_layer, "phi_delta_W": fig8})
    for row in rows:
        print(f"L{row['layer']:>3} {row['matrix']:>7} r={row['r']:<4} |U'WV'| dW={row['proj_delta']:.4g} "
              f"W={row['proj_W']:.4g} rand={row['proj_random']:.4g}  |dW|={row['norm_delta']:.4g} "
              f"|W|={row['norm_W']:.4g}  amp={row['amplification']:.4g}")
    wr.report()
    return 0


SPEC_FIELDS = ["run", "layer", "matrix", "method", "r", "fro", "effective_rank", "rank90", "rank99"]


def cmd_spectra(args) -> int:
    recs = [load_adapter(p) for p in args.runs]
    _check_bases(args, *recs)
    layers, mats = _ints(args.layer), _strs(args.matrices)
    rows, loaders = [], {}
    for rec in recs:
        loader = None if rec.is_lora else _loader(args, rec)
        loaders[id(rec)] = loader
        for row in spec.spectra_table(rec, loader, layers, mats, include_scaling=not args.no_scaling):
            rows.append({"run": str(rec.run_dir or rec.path), **row})
    wr = _Writer(args.out)
    wr.json("spectra.json", {"include_scaling": not args.no_scaling, "runs": [_run_info(r) for r in recs],
                             "rows": rows})
    wr.csv("spectra.csv", rows, SPEC_FIELDS)
    layer = _layers(recs[0], layers)[0]
    for m in mats or recs[0].matrices:
        lines = {}
        for rec, row in ((rec, row) for rec in recs for row in rows
                         if row["run"] == str(rec.run_dir or rec.path) and row["layer"] == layer and row["matrix"] == m):
            name = Path(row["run"]).name
            lines[f"{name} ({rec.method}{', r=' + str(row['r']) if row['r'] else ''})"] = row["sigma"]
        if lines:
            wr.figure(f"spectra_layer{layer}_{m}", figs.spectra_figure(lines, f"ΔW spectra, layer {layer}, {m}"))
    fts = [r for r in recs if not r.is_lora]
    loras = [r for r in recs if r.is_lora]
    if fts and loras:
        ft = fts[0]
        overlap = {}
        for m in mats or ft.matrices:
            panels = []
            for lo in loras:
                g = spec.ft_lora_overlap(ft, lo, layer, m, loaders[id(ft)], side=args.side, max_i=args.max_i)
                overlap.setdefault(m, {})[str(lo.run_dir or lo.path)] = _grid_json(g)
                panels.append((f"LoRA r={lo.ranks[0] if lo.ranks else '?'}", g, "j (LoRA ΔW)", "i (full FT ΔW)"))
            wr.figure(f"overlap_ft_lora_layer{layer}_{m}",
                      figs.phi_panels(panels, f"φ(full-FT ΔW, LoRA ΔW), layer {layer}, {m}"))
        wr.json(f"overlap_ft_lora_layer{layer}.json", {"ft_run": _run_info(ft), "side": args.side, "layer": layer,
                                                       "phi": overlap})
    for row in rows:
        print(f"{Path(row['run']).name}: L{row['layer']} {row['matrix']} |dW|={row['fro']:.4g} "
              f"erank={row['effective_rank']:.3g} r90={row['rank90']} r99={row['rank99']}")
    wr.report()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_research.analysis", description=__doc__.split("\n\n")[0])
    subs = p.add_subparsers(dest="command", required=True)

    def common(sp, out):
        sp.add_argument("--out", default=f"results/section7/{out}", help="output folder (default: %(default)s)")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random controls")
        sp.add_argument("--allow-different-bases", action="store_true",
                        help="compare adapters whose base models differ (refused by default: their ΔW are not comparable)")

    f = subs.add_parser("figures", help="Fig. 3/6 (different r) or Fig. 4/7 (same r, two seeds) φ heatmaps")
    f.add_argument("run_a"), f.add_argument("run_b")
    f.add_argument("--layer", help="layer(s), comma separated (default: the middle layer)")
    f.add_argument("--matrices", default="q,v")
    f.add_argument("--source", default="A", choices=sub.SOURCES)
    f.add_argument("--zoom", type=int, default=8)
    common(f, "figures")
    f.set_defaults(func=cmd_figures)

    ph = subs.add_parser("phi", help="φ(i, j) (Eq. 4) for one layer and matrix")
    ph.add_argument("run_a"), ph.add_argument("run_b")
    ph.add_argument("--layer", type=int, required=True)
    ph.add_argument("--matrix", required=True)
    ph.add_argument("--i", type=int), ph.add_argument("--j", type=int)
    ph.add_argument("--source", default="A", choices=sub.SOURCES)
    common(ph, "phi")
    ph.set_defaults(func=cmd_phi)

    a = subs.add_parser("amplification", help="Table 7 / H.4 amplification and Fig. 8")
    a.add_argument("run")
    a.add_argument("--layer", help="layer(s), comma separated (default: all; Fig. 8 at the middle one)")
    a.add_argument("--matrices")
    a.add_argument("--r", type=int, help="subspace size (default: the LoRA rank)")
    a.add_argument("--ft-rank", type=int, default=8, help="subspace size for full-FT runs")
    a.add_argument("--fig8-j", type=int, default=None, help="how many of W's directions Fig. 8 shows")
    a.add_argument("--no-scaling", action="store_true", help="leave α/r out of ΔW")
    a.add_argument("--base-weights", help="pretrained weights .safetensors (default: load the run's base model)")
    common(a, "amplification")
    a.set_defaults(func=cmd_amplification)

    s = subs.add_parser("spectra", help="ΔW singular values, effective rank; full-FT vs LoRA overlap")
    s.add_argument("runs", nargs="+")
    s.add_argument("--layer", help="layer(s) (default: all; figures at the middle one)")
    s.add_argument("--matrices")
    s.add_argument("--no-scaling", action="store_true")
    s.add_argument("--side", default="out", choices=("out", "in"), help="singular vectors for the overlap")
    s.add_argument("--max-i", type=int, default=64, help="full-FT directions in the overlap grid")
    s.add_argument("--base-weights", help="pretrained weights .safetensors (for full-FT runs)")
    common(s, "spectra")
    s.set_defaults(func=cmd_spectra)
    return p


def main(argv=None) -> int:
    """Exit 0 done; 2 bad argument or input (one line naming it); 1 internal error (one line;
    ``LORA_RESEARCH_TRACEBACK=1`` prints the traceback)."""
    import os
    import traceback

    from lora_research.outputs import error_message, one_line, verify_adapter

    parser = build_parser()

    def one_line_error(message):  # argparse: one line, not usage + message
        parser.exit(2, f"error: {one_line(message)} (see --help)\n")

    for sp in [parser, *next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.values()]:
        sp.error = one_line_error
    args = parser.parse_args(argv)
    try:
        for opt in ("layer", "matrices"):
            value = getattr(args, opt, None)
            if opt == "layer" and isinstance(value, str):
                try:
                    _ints(value)
                except ValueError:
                    raise ValueError(f"--layer {value!r} is not valid; valid: layer indices, comma separated (e.g. 3 or 0,5)") from None
        for run in [getattr(args, k) for k in ("run_a", "run_b", "run") if getattr(args, k, None)] + list(getattr(args, "runs", None) or []):
            from pathlib import Path as _P

            if not _P(run).exists():
                raise FileNotFoundError(f"no adapter file or run folder at {run}")
            if not (_P(run).is_dir() and (_P(run) / "adapter_model.safetensors").exists()):  # PEFT folders: their reader
                verify_adapter(run)  # not finished / truncated / checksum mismatch: one line before any work
        return args.func(args)
    except (ValueError, LookupError, OSError, TypeError) as exc:  # bad input: one line, exit 2
        print(f"error: {error_message(exc)}", file=sys.stderr)
        if os.environ.get("LORA_RESEARCH_TRACEBACK"):
            traceback.print_exc()
        return 2
    except Exception as exc:  # noqa: BLE001 - never a traceback on the terminal unless asked
        print(f"error: internal error {type(exc).__name__}: {one_line(exc)} "
              "(LORA_RESEARCH_TRACEBACK=1 prints the traceback)", file=sys.stderr)
        if os.environ.get("LORA_RESEARCH_TRACEBACK"):
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
