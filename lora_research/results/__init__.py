"""Results from run folders (never from the trainer): a store, the paper's layouts, plots.

    python -m lora_research.results <sweep dir or run folders...> [--layout table5] [--out results/cpu/table5.md]

* :func:`load_runs` (paths) -> pandas DataFrame, one row per run folder: flattened resolved config,
  every metric, parameter counts, runtime, peak memory, status and failure reason (see
  :mod:`lora_research.results.store`).
* :func:`cells` aggregates over seeds per (row, task), rows keyed on the full identity of what was
  trained (every method option, and any trainer/task/model setting that varies between runs of
  the same method on the same task): unlike runs are never pooled. The aggregate is the paper's:
  median over seeds for GLUE (D.1), mean for E2E (D.3), ``--agg`` to force one.
* ``--layout <study>`` (table2, table2_base, table2_large, table3, table5, table6, table18, lr_search)
  prints the paper's layout with the paper's number beside each of ours
  (:mod:`lora_research.paper_tables`); ``--out X.md`` also writes ``X.csv`` (one line per cell) and
  ``X.png`` (the plot). Without ``--layout``: a generic rows x tasks table (and its CSV).
Failed, diverged and unfinished runs are listed under every table, never silently dropped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_research.results.store import cells, failures, fmt_value, identity_columns, load_runs, read_run, row_key_columns

__all__ = ["load_runs", "read_run", "cells", "failures", "identity_columns", "row_key_columns", "generic_table",
           "generic_markdown", "main"]


def generic_table(df, agg: str | None = None):
    """Rows x tasks: ``(columns, rows)`` with one dict per row: row, params, lr, and per task a cell."""
    c = cells(df, agg=agg)
    tasks = list(dict.fromkeys(c["task"])) if not c.empty else []
    rows = []
    for row in dict.fromkeys(c["row"]) if not c.empty else []:
        sub = c[c["row"] == row]
        lrs = {t: fmt_value(l) for t, l in zip(sub["task"], sub["lr"])}
        out = {"row": row, "model": sub["model.name"].iloc[0],
               "params": ", ".join(sorted({fmt_value(p) for p in sub["params"]})),
               "lr": next(iter(set(lrs.values()))) if len(set(lrs.values())) == 1 else "; ".join(f"{k} {v}" for k, v in lrs.items()),
               "cells": {}}
        for _, ln in sub.iterrows():
            out["cells"][ln["task"]] = {k: ln[k] for k in ("value", "std", "n", "min", "max", "agg", "seeds")}
        rows.append(out)
    return tasks, rows, c


def generic_markdown(df, agg: str | None = None, command: str = "") -> str:
    tasks, rows, c = generic_table(df, agg)
    lines = [f"| model | row | params (w/o head) | lr | {' | '.join(tasks)} |", "|---|---|---|---|" + "---|" * len(tasks)]
    for r in rows:
        vals = []
        for t in tasks:
            x = r["cells"].get(t)
            vals.append("–" if x is None else f"{x['value']:.1f} ±{x['std']:.1f} ({x['n']})")
        lines.append(f"| {r['model']} | {r['row']} | {r['params']} | {r['lr']} | {' | '.join(vals)} |")
    aggs = sorted(set(c["agg"])) if not c.empty else []
    text = "\n".join(lines) + "\n\n"
    text += (f"Cells: {'/'.join(aggs) or 'median'} over seeds ±sample std (n seeds) of each run's best-epoch headline dev "
             "metric on the paper's scale. Rows are keyed on every method option and any setting that varies between "
             "runs of one method on one task; unlike runs are never pooled.\n")
    fails = failures(df)
    if len(fails):
        text += f"\nFailed, diverged or unfinished runs ({len(fails)}):\n\n"
        text += "".join(f"- `{f['run_dir']}`: {f['status']}: {f.get('reason')}\n" for _, f in fails.iterrows())
    if command:
        text += f"\nMade by: `{command}`\n"
    return text


def _write_csv(path: Path, records: list[dict]) -> None:
    import pandas as pd

    from lora_research.outputs import atomic_write_text

    atomic_write_text(path, pd.DataFrame.from_records(records).to_csv(index=False))


def main(argv=None) -> int:
    from lora_research.outputs import atomic_write_text
    from lora_research.results import layouts, plots

    ap = argparse.ArgumentParser(prog="python -m lora_research.results", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run folders, sweep folders, or folders containing them")
    ap.add_argument("--layout", choices=sorted(layouts.LAYOUTS), help="render the paper's layout of this study")
    ap.add_argument("--out", help="Markdown file to write; a .csv (and for a layout a .png) is written beside it")
    ap.add_argument("--agg", choices=["median", "mean"], help="force one aggregate (default: the paper's per task kind)")
    ap.add_argument("--runs-csv", help="also write the run-level store (one row per run folder) as CSV")
    args = ap.parse_args(argv)
    try:
        df = load_runs(args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"error: no run folders (summary.json / error.json / config.yaml) below {args.paths}", file=sys.stderr)
        return 2
    command = "python -m lora_research.results " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.layout:
        lay = layouts.render(args.layout, df, agg=args.agg)
        md = layouts.to_markdown(lay, failures(df), command)
        records = layouts.to_csv_rows(lay)
    else:
        md = generic_markdown(df, args.agg, command)
        _, _, c = generic_table(df, args.agg)
        records = c.drop(columns=["row_key"]).to_dict("records") if not c.empty else []
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, md)
        _write_csv(out.with_suffix(".csv"), records)
        written = [out, out.with_suffix(".csv")]
        if args.layout:
            png = plots.plot(lay, out.with_suffix(".png"))
            if png:
                written.append(png)
        print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    if args.runs_csv:
        _write_csv(Path(args.runs_csv), df.to_dict("records"))
    return 0
