"""Results tables from run folders (never from the trainer): the paper's Table 2/3 layout.

    python -m lora_research.results outputs/multirun/2026-... [more run dirs or parents] \
        --out results/glue_minilm.md [--agg median|mean]

Every ``summary.json`` found below the given paths is one run. Runs are grouped by
(model, method, rank, targets) into rows and by task into columns; a cell is the aggregate over
seeds of the task's main metric ×100 (GLUE: median over seeds of each run's best epoch, as paper
Table 2 / D.1; E2E: mean, as D.3) with ±std and the number of seeds. The parameter column is
``trainable_params_without_head`` (the paper does not count the classifier). Failed runs
(``error.json`` without ``summary.json``) are listed below the table, not silently dropped.
The Markdown and a JSON twin are written atomically.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from lora_research.outputs import ERROR_FILE, SUMMARY_FILE, atomic_write_json, atomic_write_text


def find_runs(paths) -> tuple[list[dict], list[dict]]:
    """(summaries, failures) of every run folder below ``paths``."""
    summaries, failures = [], []
    for root in map(Path, paths):
        for s in sorted(root.rglob(SUMMARY_FILE)):
            d = json.loads(s.read_text(encoding="utf-8"))
            d.setdefault("run_dir", str(s.parent))
            summaries.append(d)
        for e in sorted(root.rglob(ERROR_FILE)):
            if not (e.parent / SUMMARY_FILE).exists():
                failures.append({"run_dir": str(e.parent), **json.loads(e.read_text(encoding="utf-8"))})
    return summaries, failures


def _row_key(summary: dict) -> tuple:
    cfg = _method_config(summary)
    r = cfg.get("r")
    targets = cfg.get("targets")
    label = summary["method"] + (f" r={r}" if r is not None else "")
    if targets:
        label += " " + ",".join(targets)
    return summary["model"], label


def _method_config(summary: dict) -> dict:
    run_dir = Path(summary.get("run_dir", ""))
    cfg_file = run_dir / "config.yaml"
    if cfg_file.exists():
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(cfg_file)).get("method", {})
    return {}


def main_value(summary: dict):
    """The task's headline number on the paper's scale (×100 for 0–1 metrics)."""
    if summary.get("final_evaluation", {}).get("BLEU") is not None:  # E2E: BLEU on paper scale
        return float(summary["final_evaluation"]["BLEU"])
    v = summary.get("metrics", {}).get(summary.get("main_metric"))
    return None if v is None else 100.0 * float(v)


def build_table(summaries: list[dict], agg: str = "median") -> dict:
    cells: dict = defaultdict(lambda: defaultdict(list))
    params: dict = {}
    tasks: list[str] = []
    for s in summaries:
        key = _row_key(s)
        v = main_value(s)
        if v is None:
            continue
        cells[key][s["task"]].append(v)
        params[key] = s.get("trainable_params_without_head")
        if s["task"] not in tasks:
            tasks.append(s["task"])
    fn = statistics.median if agg == "median" else statistics.mean
    rows = []
    for key in sorted(cells):
        row = {"model": key[0], "method": key[1], "params": params[key], "cells": {}}
        for t in tasks:
            vals = cells[key].get(t, [])
            if vals:
                row["cells"][t] = {
                    "value": fn(vals),
                    "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                }
        rows.append(row)
    return {"tasks": tasks, "rows": rows, "aggregate": agg}


def to_markdown(table: dict, failures: list[dict], command: str = "") -> str:
    tasks = table["tasks"]
    lines = [
        f"| model | method | params (w/o head) | {' | '.join(tasks)} |",
        "|---|---|---|" + "---|" * len(tasks),
    ]
    for row in table["rows"]:
        cells = []
        for t in tasks:
            c = row["cells"].get(t)
            cells.append("–" if c is None else f"{c['value']:.1f}±{c['std']:.1f} (n={c['n']})")
        p = f"{row['params']:,}" if row["params"] is not None else "?"
        lines.append(f"| {row['model']} | {row['method']} | {p} | {' | '.join(cells)} |")
    text = "\n".join(lines) + "\n"
    text += f"\nCells: {table['aggregate']} over seeds of each run's best-epoch main dev metric ×100.\n"
    if failures:
        text += "\nFailed runs:\n" + "".join(f"- {f['run_dir']}: {f.get('error', '?')}\n" for f in failures)
    if command:
        text += f"\nMade by: `{command}`\n"
    return text


def main(argv=None) -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run folders or folders containing them")
    ap.add_argument("--out", help="Markdown file to write (a .json twin is written beside it)")
    ap.add_argument("--agg", choices=["median", "mean"], default="median")
    args = ap.parse_args(argv)
    summaries, failures = find_runs(args.paths)
    if not summaries and not failures:
        raise SystemExit(f"error: no summary.json below {args.paths}")
    table = build_table(summaries, args.agg)
    command = "python -m lora_research.results " + " ".join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(table, failures, command)
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, md)
        atomic_write_json(out.with_suffix(".json"), {"table": table, "failures": failures, "command": command})


if __name__ == "__main__":
    main()
