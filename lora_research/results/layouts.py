"""Paper layouts: our cells in the shape the paper prints them, each beside the paper's number.

A layout turns :func:`lora_research.results.store.cells` into a :class:`Layout`: a title, a header,
rows of (label cells, then for every paper column an "ours" cell and a "paper" cell), notes, and a
long-form table (one line per (row, column): ours, n, std, min, max, lr, paper) for the CSV. Our
cells read ``<aggregate> ±<std> (<n>)``; a paper cell is the published value from
:mod:`lora_research.paper_tables`, "–" where the paper has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lora_research import paper_tables as P
from lora_research.results.store import cells as make_cells
from lora_research.results.store import fmt_value

DASH = "–"


@dataclass
class Layout:
    study: str
    title: str
    label_header: list[str]
    columns: list[str]  # the paper's data columns; each becomes "<col>" (ours) and "paper"
    rows: list[dict] = field(default_factory=list)  # {"labels": [...], "cells": {col: (ours_cell|None, paper|None)}}
    notes: list[str] = field(default_factory=list)
    long: list[dict] = field(default_factory=list)  # CSV lines
    plot: dict = field(default_factory=dict)  # what plots.py draws
    paper_columns: bool = True  # False: no paper number exists for this layout (a learning-rate search)


def fmt_cell(c: dict | None, digits: int = 1) -> str:
    if c is None:
        return DASH
    return f"{c['value']:.{digits}f} ±{c['std']:.{digits}f} ({c['n']})"


def fmt_paper(v, digits: int = 1) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def _cell_dict(line) -> dict:
    keys = ("value", "std", "n", "min", "max", "agg", "lr", "params", "seeds", "runs")
    return {k: line[k] for k in keys}


def _add(layout: Layout, labels: list, per_col: dict, digits=1, extra: dict | None = None):
    """One row: per_col = {col: (ours cell dict | None, paper value | None)}."""
    layout.rows.append({"labels": labels, "cells": per_col, "digits": digits})
    for col, (ours, paper) in per_col.items():
        line = {"study": layout.study, **dict(zip(layout.label_header, labels)), "column": col,
                "ours": None if ours is None else ours["value"], "agg": None if ours is None else ours["agg"],
                "n": 0 if ours is None else ours["n"], "std": None if ours is None else ours["std"],
                "min": None if ours is None else ours["min"], "max": None if ours is None else ours["max"],
                "lr": None if ours is None else fmt_value(ours["lr"]),
                "params": None if ours is None else fmt_value(ours["params"]), "paper": paper}
        line.update(extra or {})
        layout.long.append(line)


def _targets_of(line) -> tuple:
    t = line.get("method.targets")
    return tuple(t) if t is not None else ()


def _agg_note(cells_df) -> str:
    if cells_df.empty:
        return "No completed runs."
    aggs = sorted(set(cells_df["agg"]))
    ns = sorted(set(cells_df["n"]))
    return (f"Ours: {'/'.join(aggs)} over seeds ±sample std (n seeds; n per cell: {', '.join(map(str, ns))}) of each "
            "run's best-epoch dev metric on the paper's scale.")


def _other_keys_note(cells_df, used: set) -> list[str]:
    """Row-key columns beyond the layout's own (alpha, lr, ...) that split rows: say so."""
    skip = {"row", "row_key", "row_id", "task", "metric", "value", "agg", "n", "std", "min", "max", "seeds", "lr",
            "params", "runs"} | used
    def values(frame, c) -> set:
        return {fmt_value(v) for v in frame[c] if v is not None and fmt_value(v) != "nan"}

    # An option of one method only (a prefix length, an adapter's init) is not a split between methods:
    # a key is named when it takes several values inside one method's rows.
    groups = ([g for _, g in cells_df.groupby("method.name", dropna=False)] if "method.name" in cells_df.columns
              else [cells_df])
    out = []
    for c in cells_df.columns:
        if c in skip:
            continue
        if any(len(values(g, c)) > 1 for g in groups):
            out.append(f"`{c}` differs between rows ({', '.join(sorted(values(cells_df, c)))}): "
                       "those runs are separate rows, never pooled.")
    return out


def _runs_of(c, method: str):
    """The cells of runs of ``method`` (the method a paper table studies), none if the column is absent."""
    return c[c["method.name"].eq(method)] if "method.name" in c.columns else c.iloc[0:0]


# --- Tables 5 and 6 -------------------------------------------------------------------------------

def table5(df, **kw) -> Layout:
    c = make_cells(df, **kw)
    c = _runs_of(c, P.RANK_STUDY_METHOD)
    lay = Layout("table5", "Table 5: which weight matrices to adapt, at a fixed parameter budget",
                 ["dataset", "source"], [P.targets_title(t) for t in P.TABLE5_COLUMNS])
    tasks = sorted(set(c["task"])) if not c.empty else []
    plot_rows = {}
    for task in tasks:
        sub = c[c["task"] == task]
        # one line per distinct identity apart from targets/r (e.g. two alphas -> two lines)
        groups: dict = {}
        for _, line in sub.iterrows():
            rest = tuple((k, v) for k, v in line["row_key"] if k not in ("method.targets", "method.r"))
            groups.setdefault(rest, []).append(line)
        for rest, lines in groups.items():
            per = {}
            for t in P.TABLE5_COLUMNS:
                match = [ln for ln in lines if _targets_of(ln) == t and ln["method.r"] == P.TABLE5_R[t]]
                per[P.targets_title(t)] = (_cell_dict(match[0]) if match else None, P.TABLE5[P.SECTION7_COUNTERPART][t])
            extra = "; ".join(f"{k.split('.')[-1]}={fmt_value(v)}" for k, v in rest if k not in ("model.name", "method.name")
                              and len({fmt_value(dict(ln['row_key']).get(k)) for ln in sub.to_dict('records')}) > 1)
            label = f"{task} (ours, {dict(rest).get('model.name')}" + (f"; {extra}" if extra else "") + ")"
            _add(lay, [label, f"vs paper {P.SECTION7_COUNTERPART} (GPT-3)"], per)
            plot_rows[label] = {col: v[0] for col, v in per.items()}
            params = sorted({fmt_value(ln["params"]) for ln in lines})
            lay.notes.append(f"{label}: trainable parameters without the head: {', '.join(params)}"
                             + (" (the same in every column: the fixed budget)" if len(params) == 1 else " (NOT one budget)"))
    _add(lay, ["WikiSQL", "paper only (GPT-3)"], {P.targets_title(t): (None, P.TABLE5["WikiSQL"][t]) for t in P.TABLE5_COLUMNS})
    lay.notes.insert(0, "r per column: " + ", ".join(f"{P.targets_title(t)} r={P.TABLE5_R[t]}" for t in P.TABLE5_COLUMNS)
                     + f". Paper: GPT-3 175B, {P.TABLE5_BUDGET} budget, validation accuracy.")
    lay.notes.append(_agg_note(c))
    lay.notes += _other_keys_note(c, {"method.name", "method.targets", "method.r", "model.name"})
    lay.plot = {"kind": "bars", "ours": plot_rows,
                "paper": {f"paper {k} (GPT-3)": {P.targets_title(t): v for t, v in vals.items()} for k, vals in P.TABLE5.items()}}
    return lay


def table6(df, **kw) -> Layout:
    c = make_cells(df, **kw)
    c = _runs_of(c, P.RANK_STUDY_METHOD)
    cols = [f"r={r}" for r in P.TABLE6_R]
    lay = Layout("table6", "Table 6: the effect of the rank r", ["dataset", "adapted"], cols)
    tasks = sorted(set(c["task"])) if not c.empty else []
    curves = {}
    for task in tasks:
        sub = c[c["task"] == task]
        sets = sorted({_targets_of(ln) for _, ln in sub.iterrows()}, key=lambda t: (P.TABLE6_SETS.index(t) if t in P.TABLE6_SETS else 9, t))
        for t in sets:
            lines = [ln for _, ln in sub.iterrows() if _targets_of(ln) == t]
            groups: dict = {}
            for ln in lines:
                rest = tuple((k, v) for k, v in ln["row_key"] if k not in ("method.r",))
                groups.setdefault(rest, []).append(ln)
            for rest, ls in groups.items():
                paper = P.TABLE6.get((P.SECTION7_COUNTERPART, t))
                per = {}
                for i, r in enumerate(P.TABLE6_R):
                    m = [ln for ln in ls if ln["method.r"] == r]
                    per[f"r={r}"] = (_cell_dict(m[0]) if m else None, paper[i] if paper else None)
                others = sorted({ln["method.r"] for ln in ls} - set(P.TABLE6_R))
                label = f"{task} (ours, {dict(rest).get('model.name')})"
                _add(lay, [label, P.targets_title(t)], per)
                curves[(label, P.targets_title(t))] = {ln["method.r"]: _cell_dict(ln) for ln in ls}
                if others:  # not a Table 6 column: in the CSV and the plot, not the table
                    lay.notes.append(f"{label} {P.targets_title(t)} also has r={others} (not a Table 6 column; in the CSV and plot).")
                    extra = Layout(lay.study, "", lay.label_header, [])
                    for ln in ls:
                        if ln["method.r"] in others:
                            _add(extra, [label, P.targets_title(t)], {f"r={ln['method.r']}": (_cell_dict(ln), None)})
                    lay.long += extra.long
    for ds in ("MNLI", "WikiSQL"):
        for t in P.TABLE6_SETS:
            if ds == P.SECTION7_COUNTERPART and tasks:
                continue
            _add(lay, [ds, P.targets_title(t) + " (paper only)"], {f"r={r}": (None, v) for r, v in zip(P.TABLE6_R, P.TABLE6[(ds, t)])})
    lay.notes.insert(0, f"Paper: GPT-3 175B validation accuracy (seed std: WikiSQL ±{P.TABLE6_STD['WikiSQL']}, "
                        f"MNLI ±{P.TABLE6_STD['MNLI']}); ours beside the paper's {P.SECTION7_COUNTERPART} row for the same targets.")
    lay.notes.append(_agg_note(c))
    lay.notes += _other_keys_note(c, {"method.name", "method.targets", "method.r", "model.name"})
    lay.plot = {"kind": "rank_curves", "ours": curves,
                "paper": {(f"paper {ds} (GPT-3)", P.targets_title(t)): dict(zip(P.TABLE6_R, P.TABLE6[(ds, t)]))
                          for ds in ("MNLI",) for t in P.TABLE6_SETS}}
    return lay


# --- Table 2 --------------------------------------------------------------------------------------

def _table2(df, study: str, paper_rows: dict, paper_table: dict | None, **kw) -> Layout:
    c = make_cells(df, **kw)
    tasks_present = [t for t in P.GLUE_TASKS if not c.empty and t in set(c["task"])]
    cols = [P.GLUE_TASK_TITLES[t] for t in P.GLUE_TASKS] + ["Avg (our tasks)"]
    lay = Layout(study, {"table2_base": "Table 2 (RoBERTa-base half)", "table2_large": "Table 2 (RoBERTa-large half)",
                         "table2": "Table 2 (both halves' rows)"}[study],
                 ["method", "paper row", "params (ours)", "params (paper)", "lr"], cols)
    if c.empty:
        lay.notes.append("No completed runs.")
        return lay
    order = list(dict.fromkeys(paper_rows))
    rows = sorted(set(c["row"]), key=lambda r: (_order(c, r, order), r))
    heat = {}
    for row in rows:
        sub = c[c["row"] == row]
        row_id = sub["row_id"].iloc[0]
        ref = paper_rows.get(row_id, paper_rows.get(sub["method.name"].iloc[0]))
        if study == "table2":
            half, ref = ref if ref else (None, None)
            table = {"base": P.TABLE2_BASE, "large": P.TABLE2_LARGE}.get(half)
            ref_label = f"{ref} ({half})" if ref else DASH
        else:
            table, ref_label = paper_table, ref or DASH
        paper_params, paper_vals = (table[ref][0], table[ref][1]) if (table and ref in table) else (None, {})
        per, ours_vals = {}, {}
        for t in P.GLUE_TASKS:
            m = sub[sub["task"] == t]
            ours = _cell_dict(m.iloc[0]) if len(m) else None
            per[P.GLUE_TASK_TITLES[t]] = (ours, paper_vals.get(t))
            if ours:
                ours_vals[t] = ours["value"]
        avg_ours = P.table2_avg(ours_vals, tasks_present)
        avg_paper = P.table2_avg(paper_vals, tasks_present) if paper_vals else None
        per["Avg (our tasks)"] = ({"value": avg_ours, "std": 0.0, "n": 0, "min": None, "max": None, "agg": "mean",
                                   "lr": None, "params": None, "seeds": (), "runs": ()} if avg_ours is not None else None, avg_paper)
        params = sorted({_count(p) for p in sub["params"]})
        lrs = {t: fmt_value(l) for t, l in zip(sub["task"], sub["lr"])}
        lr = next(iter(set(lrs.values()))) if len(set(lrs.values())) == 1 else "; ".join(f"{k} {v}" for k, v in lrs.items())
        _add(lay, [row, ref_label, ", ".join(params), paper_params or DASH, lr], per)
        heat[row] = {P.GLUE_TASK_TITLES[t]: v for t, v in ours_vals.items()}
    lay.notes.insert(0, "Metrics (paper): MNLI matched acc, CoLA Matthews corr, STS-B Pearson, the rest acc; x100. "
                        "Paper rows marked * are numbers the paper quotes from prior work. Avg (our tasks) is the mean "
                        "over the tasks we ran, for ours and for the paper row (derived; the paper's Avg is over all 8).")
    lay.notes.append(_agg_note(c))
    lay.notes += _other_keys_note(c, {"method.name", "model.name"})
    lay.plot = {"kind": "heatmap", "ours": heat, "columns": [P.GLUE_TASK_TITLES[t] for t in tasks_present]}
    return lay


def _count(n) -> str:
    """A parameter count as the paper prints it (0.3M, 125.0M); exact below 100k."""
    try:
        n = float(n)
    except (TypeError, ValueError):
        return str(n)
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{int(n):,}"


def _order(c, row, order):
    sub = c[c["row"] == row]
    rid = sub["row_id"].iloc[0]
    for key in (rid, sub["method.name"].iloc[0]):
        if key in order:
            return order.index(key)
    return len(order)


def table2_base(df, **kw):
    return _table2(df, "table2_base", P.TABLE2_BASE_ROWS, P.TABLE2_BASE, **kw)


def table2_large(df, **kw):
    return _table2(df, "table2_large", P.TABLE2_LARGE_ROWS, P.TABLE2_LARGE, **kw)


def table2(df, **kw):
    return _table2(df, "table2", P.TABLE2_CPU_ROWS, None, **kw)


# --- Tables 3 and 18 (E2E) --------------------------------------------------------------------------

E2E_COLS = [f"final.{m}" for m in P.E2E_METRICS]


def table3(df, **kw) -> Layout:
    c = make_cells(df, metrics=E2E_COLS, **kw)
    cols = [P.E2E_TITLES[m] for m in P.E2E_METRICS]
    lay = Layout("table3", "Table 3: E2E NLG (GPT-2 M rows of the paper)",
                 ["method", "paper row", "params (ours)", "params (paper)", "lr"], cols)
    if c.empty:
        lay.notes.append("No completed runs with E2E scores.")
        return lay
    order = list(dict.fromkeys(P.TABLE3_ROWS))
    bars = {}
    for row in sorted(set(c["row"]), key=lambda r: (_order(c, r, order), r)):
        sub = c[c["row"] == row]
        rid = sub["row_id"].iloc[0]
        ref = P.TABLE3_ROWS.get(rid, P.TABLE3_ROWS.get(sub["method.name"].iloc[0]))
        paper_params, paper_vals = P.TABLE3.get(ref, (None, {}))
        per = {}
        for m in P.E2E_METRICS:
            ln = sub[sub["metric"] == f"final.{m}"]
            per[P.E2E_TITLES[m]] = (_cell_dict(ln.iloc[0]) if len(ln) else None, paper_vals.get(m))
        params = sorted({_count(p) for p in sub["params"]})
        lr = ", ".join(sorted({fmt_value(l) for l in sub["lr"]}))
        _add(lay, [row, f"GPT-2 M {ref}" if ref else DASH, ", ".join(params), paper_params or DASH, lr], per, digits=2)
        bars[row] = per["BLEU"][0]["value"] if per["BLEU"][0] else None
    lay.notes.insert(0, "Scale (paper): BLEU, METEOR, ROUGE-L x100; NIST, CIDEr raw. Paper rows marked * are quoted from "
                        "prior work; the paper has no PreEmbed row for GPT-2 (only GPT-3, Table 4).")
    lay.notes.append(_agg_note(c))
    lay.notes += _other_keys_note(c, {"method.name", "model.name"})
    lay.plot = {"kind": "e2e_bars", "ours": bars,
                "paper": {row: P.TABLE3.get(P.TABLE3_ROWS.get(c[c['row'] == row]['row_id'].iloc[0], ''), (None, {}))[1].get("BLEU")
                          for row in bars}}
    return lay


def table18(df, **kw) -> Layout:
    c = make_cells(df, metrics=["metrics.loss"] + E2E_COLS, **kw)
    cols = ["val loss", "BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    keys = ["val_loss", "BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    lay = Layout("table18", "Table 18: GPT-2 M + LoRA on E2E, varying r", ["r", "adapted", "model"], cols)
    curves = {}
    if c.empty:
        lay.notes.append("No completed runs.")
    else:
        c = _runs_of(c, P.RANK_STUDY_METHOD)
        groups: dict = {}
        for _, ln in c.iterrows():
            rest = tuple((k, v) for k, v in ln["row_key"] if k != "method.r")
            groups.setdefault(rest, {}).setdefault(ln["method.r"], {})[ln["metric"]] = ln
        for rest, by_r in groups.items():
            model = dict(rest).get("model.name")
            targets = P.targets_title(dict(rest).get("method.targets") or ())
            for r in sorted(by_r):
                paper = P.table18(r)
                per = {}
                for col, k in zip(cols, keys):
                    m = "metrics.loss" if k == "val_loss" else f"final.{k}"
                    ln = by_r[r].get(m)
                    per[col] = (_cell_dict(ln) if ln is not None else None, paper.get(k))
                _add(lay, [str(r), targets, model], per, digits=2)
                curves.setdefault((model, targets), {})[r] = per["BLEU"][0]
    lay.notes.insert(0, "Scale: BLEU, METEOR, ROUGE-L x100 (the paper prints METEOR/ROUGE-L as fractions: shown x100); "
                        "NIST, CIDEr raw; val loss = the dev loss of the best epoch (ours: label-smoothed if the run used "
                        "label smoothing). Paper: one GPT-2 M run per r after 26,000 steps, hyperparameters tuned at r=4.")
    lay.notes.append(_agg_note(c))
    lay.plot = {"kind": "rank_curves", "ours": {(f"{m} (ours)", t): v for (m, t), v in curves.items()},
                "paper": {("paper GPT-2 M", "W_q,W_v"): {r: P.table18(r)["BLEU"] for r in P.TABLE18}}, "metric": "BLEU"}
    return lay


# --- a learning-rate search -------------------------------------------------------------------------

def lr_search(df, **kw) -> Layout:
    """Each row family (identity without trainer.lr) with its lr grid; the best is 'chosen'."""
    import re

    metric = "final.BLEU" if "final.BLEU" in df.columns and df["final.BLEU"].notna().any() else "value"
    c = make_cells(df, metrics=[metric], **kw)
    lay = Layout("lr_search", "Learning-rate search", ["row", "lr"], ["score"], paper_columns=False)
    if c.empty:
        lay.notes.append("No completed runs.")
        return lay
    c = c.copy()
    c["family"] = [re.sub(r"_lr[^_]*$", "", str(rid)) for rid in c["row_id"]]
    loss = {}  # tie-break: equal scores (e.g. BLEU 0 at every lr) go to the lowest dev loss
    if "metrics.loss" in df.columns and df["metrics.loss"].notna().any():
        lc = make_cells(df, metrics=["metrics.loss"], **kw)
        loss = dict(zip(lc["row_id"], lc["value"]))
    for fam in dict.fromkeys(c["family"]):
        sub = c[c["family"] == fam].sort_values("lr")
        top = sub[sub["value"] == sub["value"].max()]
        best = min(top.index, key=lambda i: loss.get(top.loc[i, "row_id"], float("inf")))
        for i, ln in sub.iterrows():
            chosen = "yes" if i == best else ""
            _add(lay, [fam, fmt_value(ln["lr"])], {"score": (_cell_dict(ln), None)}, digits=2,
                 extra={"row": fam, "chosen": chosen, "task": ln["task"]})
            lay.rows[-1]["labels"][1] += "  **chosen**" if chosen else ""
    lay.notes.append(f"Score: {metric} ({'BLEU of the decoded dev MRs' if metric == 'final.BLEU' else 'the headline dev metric'}); "
                     "the highest is chosen (a tie: the lowest dev loss). Chosen on the dev set the tables report, as the paper's tuning was.")
    lay.notes.append(_agg_note(c))
    lay.plot = {}
    return lay


LAYOUTS = {"table2": table2, "table2_base": table2_base, "table2_large": table2_large, "table3": table3,
           "table5": table5, "table6": table6, "table18": table18, "lr_search": lr_search}


def render(study: str, df, **kw) -> Layout:
    if study not in LAYOUTS:
        raise ValueError(f"unknown layout {study!r}; valid: {sorted(LAYOUTS)}")
    return LAYOUTS[study](df, **kw)


def to_markdown(lay: Layout, fails=None, command: str = "") -> str:
    head = lay.label_header + [h for col in lay.columns for h in ((col, "paper") if lay.paper_columns else (col,))]
    lines = [f"## {lay.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in lay.rows:
        d = row["digits"]
        vals = list(row["labels"])
        for col in lay.columns:
            ours, paper = row["cells"].get(col, (None, None))
            if ours is not None and ours.get("n") == 0:  # a derived average
                vals.append(f"{ours['value']:.{d}f}")
            else:
                vals.append(fmt_cell(ours, d))
            if lay.paper_columns:
                vals.append(fmt_paper(paper, d))
        lines.append("| " + " | ".join(vals) + " |")
    text = "\n".join(lines) + "\n\n" + "".join(f"- {n}\n" for n in lay.notes)
    if fails is not None and len(fails):
        text += f"\nFailed, diverged or unfinished runs ({len(fails)}; not in the table):\n\n"
        for _, f in fails.iterrows():
            ov = f.get("overrides")
            ov = " ".join(ov) if isinstance(ov, tuple) else ""
            text += f"- `{f['run_dir']}`: {f['status']}: {f.get('reason')}" + (f" (overrides: `{ov}`)" if ov else "") + "\n"
    if command:
        text += f"\nMade by: `{command}`\n"
    return text


def to_csv_rows(lay: Layout) -> list[dict]:
    return lay.long
