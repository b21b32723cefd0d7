"""Paper layouts (``--layout``) against hand-built run folders: the paper's shape, our cell beside
the paper's published number ("–" where it has none), Markdown + CSV + plot, failures listed."""
from __future__ import annotations

import pandas as pd
import pytest

from _run_folders import make_run
from lora_research import paper_tables as P
from lora_research.results import layouts, load_runs, main

TABLE5 = {"q": 8, "k": 8, "v": 8, "o": 8, "qk": 4, "qv": 4, "qkvo": 2}


def _table5_runs(root, seeds=(0, 1, 2), base=0.80):
    for i, (t, r) in enumerate(TABLE5.items()):
        for s in seeds:
            make_run(root, f"{i}_{t}_s{s}", seed=s, value=base + 0.01 * i + 0.001 * s,
                     method_cfg={"targets": list(t), "r": r}, experiment_name=f"sst2-minilm-lora_{t}_r{r}")


def test_table5_layout_cells_beside_the_paper(tmp_path, capsys):
    _table5_runs(tmp_path / "runs")
    make_run(tmp_path / "runs", "broken", seed=9, status="failed",
             error={"status": "failed", "reason": "killed by the OOM killer", "overrides": ["experiment/cpu/table5=q", "seed=9"]})
    out = tmp_path / "res" / "table5.md"
    assert main([str(tmp_path / "runs"), "--layout", "table5", "--out", str(out)]) == 0
    md = out.read_text()
    head = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert head.count("| paper ") == 7 and "W_q,W_k,W_v,W_o" in head
    ours = next(line for line in md.splitlines() if line.startswith("| sst2 (ours"))
    assert "80.1 ±0.1 (3)" in ours and "| 91.0 |" in ours  # median of 80.0, 80.1, 80.2 beside the paper's MNLI W_q
    assert "86.1 ±0.1 (3) | 91.7" in ours  # all four at r=2
    assert "| WikiSQL |" in md and "73.7" in md
    assert "36864 (the same in every column: the fixed budget)" in md
    assert "killed by the OOM killer" in md and "experiment/cpu/table5=q seed=9" in md
    csv = pd.read_csv(out.with_suffix(".csv"))
    row = csv[(csv["column"] == "W_q,W_v") & (csv["dataset"].str.startswith("sst2"))].iloc[0]
    assert row["ours"] == pytest.approx(85.1) and row["n"] == 3 and row["paper"] == 91.3 and row["agg"] == "median"
    assert out.with_suffix(".png").stat().st_size > 1000


def test_table5_two_alphas_are_two_lines_not_one(tmp_path):
    _table5_runs(tmp_path, seeds=(0,))
    make_run(tmp_path, "alpha8", seed=0, value=0.5, method_cfg={"targets": ["q"], "r": 8, "alpha": 8.0})
    lay = layouts.render("table5", load_runs(tmp_path))
    ours = [r for r in lay.rows if r["labels"][0].startswith("sst2")]
    assert len(ours) == 2 and any("alpha=8" in r["labels"][0] for r in ours)


def test_table6_layout_rank_columns_and_paper_rows(tmp_path):
    for t in ("q", "qv", "qkvo"):
        for r in (1, 2, 4, 8, 64):
            make_run(tmp_path, f"{t}_{r}", value=0.7 + r / 1000, method_cfg={"targets": list(t), "r": r})
    lay = layouts.render("table6", load_runs(tmp_path))
    md = layouts.to_markdown(lay)
    line = next(x for x in md.splitlines() if "| W_q,W_v |" in x and x.startswith("| sst2"))
    assert "70.1 ±0.0 (1) | 91.3" in line and "76.4 ±0.0 (1) | 91.4" in line  # r=1 and r=64 beside MNLI
    assert "| WikiSQL | W_q (paper only) | – | 68.8" in md
    assert lay.plot["kind"] == "rank_curves" and len(lay.plot["ours"]) == 3


def test_table2_layout_maps_rows_to_the_paper_and_dashes_missing(tmp_path):
    for task, v in (("sst2", 0.9), ("rte", 0.6)):
        for s in (0, 1, 2):
            make_run(tmp_path, f"lora_{task}_{s}", task=task, seed=s, value=v)
            make_run(tmp_path, f"bitfit_{task}_{s}", task=task, seed=s, value=v - 0.05, method="bitfit",
                     trainer={"lr": 3e-3}, params=25728)
            make_run(tmp_path, f"top2_{task}_{s}", task=task, seed=s, value=v - 0.1, method="ft_top2",
                     trainer={"lr": 2e-4}, params=3548928)
    lay = layouts.render("table2", load_runs(tmp_path))
    md = layouts.to_markdown(lay)
    lora = next(x for x in md.splitlines() if x.startswith("| lora"))
    assert "LoRA (base)" in lora and "90.0 ±0.0 (3) | 95.1" in lora and "60.0 ±0.0 (3) | 86.6" in lora
    assert "| 75.0 | 90.8 |" in lora  # Avg over our tasks (SST-2, RTE), ours and the paper's (derived)
    assert "– | 87.5" in lora  # MNLI: not run here, the paper's number still beside
    bitfit = next(x for x in md.splitlines() if x.startswith("| bitfit"))
    assert "BitFit* (base)" in bitfit and "| 0.003 |" in bitfit
    top2 = next(x for x in md.splitlines() if x.startswith("| ft_top2"))
    assert "| – |" in top2 and "80.0 ±0.0 (3) | –" in top2  # no such paper row: a clear dash
    assert lay.plot["kind"] == "heatmap"


def test_table2_base_per_task_lr_is_one_row(tmp_path):
    make_run(tmp_path, "mnli", task="mnli", trainer={"lr": 5e-4})
    make_run(tmp_path, "mrpc", task="mrpc", trainer={"lr": 4e-4})
    lay = layouts.render("table2_base", load_runs(tmp_path))
    (row,) = lay.rows
    assert row["labels"][1] == "LoRA" and "mnli 0.0005" in row["labels"][4] and "mrpc 0.0004" in row["labels"][4]


def test_table3_and_table18_e2e_layouts(tmp_path):
    final = {"BLEU": 60.0, "NIST": 7.5, "METEOR": 40.0, "ROUGE_L": 65.0, "CIDEr": 2.0}
    for s in (0, 1):
        make_run(tmp_path / "t3", f"lora{s}", task="e2e", kind="e2e", model="smollm2", seed=s, metric="loss", value=1.3,
                 method_cfg={"r": 4, "alpha": 32}, final={k: v + s for k, v in final.items()})
        make_run(tmp_path / "t3", f"pe{s}", task="e2e", kind="e2e", model="smollm2", seed=s, metric="loss", value=1.5,
                 method="prefix_embed", final=final)
    md = layouts.to_markdown(layouts.render("table3", load_runs(tmp_path / "t3")))
    lora = next(x for x in md.splitlines() if x.startswith("| lora"))
    assert "GPT-2 M LoRA" in lora and "60.50 ±0.71 (2) | 70.40" in lora  # mean of 60 and 61 (E2E: mean, D.3)
    pe = next(x for x in md.splitlines() if x.startswith("| prefix_embed"))
    assert "60.00 ±0.00 (2) | –" in pe
    for r in (2, 4, 32):
        make_run(tmp_path / "t18", f"r{r}", task="e2e", kind="e2e", model="smollm2", metric="loss", value=1.2 + 1 / r,
                 method_cfg={"r": r, "alpha": 32}, final=final)
    lay = layouts.render("table18", load_runs(tmp_path / "t18"))
    md = layouts.to_markdown(lay)
    r4 = next(x for x in md.splitlines() if x.startswith("| 4 |"))
    assert "1.45 ±0.00 (1) | 1.18" in r4 and "60.00 ±0.00 (1) | 70.38" in r4 and "| 46.89 |" in r4  # METEOR x100
    assert lay.plot["kind"] == "rank_curves"


def test_lr_search_layout_marks_the_best_and_the_generator_reads_it(tmp_path):
    for lr, v in ((1e-3, 0.70), (3e-3, 0.78), (1e-2, 0.75)):
        make_run(tmp_path / "runs", f"lr{lr}", value=v, trainer={"lr": lr}, experiment_name=f"sst2-minilm-lora_qv_r4_lr{lr}")
    out = tmp_path / "lr_search_rank.md"
    assert main([str(tmp_path / "runs"), "--layout", "lr_search", "--out", str(out)]) == 0
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("msp", str(P.__file__).replace("lora_research/paper_tables.py",
                                                                                 "experiments/make_study_presets.py"))
    sys.path.insert(0, str(out.parent))
    msp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(msp)
    assert msp.read_chosen_lr(out.with_suffix(".csv")) == {"lora_qv_r4": 3e-3}
    assert "**chosen**" in out.read_text()


def test_lr_search_tie_goes_to_the_lowest_dev_loss(tmp_path):
    """Every lr scoring the same (a method that decoded nothing: BLEU 0) is no reason to take the first lr."""
    for lr, loss in ((1e-3, 4.8), (3e-3, 4.5), (1e-2, 4.2)):
        make_run(tmp_path, f"lr{lr}", value=0.0, loss=loss, trainer={"lr": lr}, experiment_name=f"sst2-minilm-prefix_lr{lr}")
    lay = layouts.lr_search(load_runs(tmp_path))
    assert [r["labels"][1] for r in lay.rows] == ["0.001", "0.003", "0.01  **chosen**"], lay.rows


def test_paper_tables_match_paper_md():
    assert P.TABLE2_BASE["LoRA"][1]["rte"] == 86.6 and P.TABLE2_BASE["LoRA"][2] == 87.2
    assert P.TABLE2_LARGE["Adpt^H† 0.8M"][1]["rte"] == 72.9
    assert P.TABLE3["LoRA"][1]["BLEU"] == 70.4 and P.TABLE3["PreEmbed"][1]["BLEU"] is None
    assert P.TABLE5["MNLI"][("q", "k", "v", "o")] == 91.7 and P.TABLE5["WikiSQL"][("q",)] == 70.4
    assert P.TABLE6[("MNLI", ("q",))] == [90.7, 90.9, 91.1, 90.7, 90.7]
    assert P.table18(4) == {"val_loss": 1.18, "BLEU": 70.38, "NIST": 8.8439, "METEOR": 46.89, "ROUGE_L": 71.86, "CIDEr": 2.5349}
    for name, table in (("base", P.TABLE2_BASE), ("large", P.TABLE2_LARGE)):
        for row, (_, vals, avg) in table.items():
            assert abs(sum(vals.values()) / 8 - avg) < 0.06, (name, row)  # the paper's Avg column is its mean


def test_table2_names_only_keys_that_split_one_methods_rows(tmp_path):
    """A method-only option (prefix length) is no split between methods; two alphas of LoRA are, and say so.
    Parameter counts print as the paper's (0.03M) or exactly below 100k."""
    make_run(tmp_path, "lora", value=0.9, params=73728)
    make_run(tmp_path, "prefix", value=0.8, method="prefix_layer", method_cfg={"prefix_len": 8}, params=18432)
    md = layouts.to_markdown(layouts.render("table2", load_runs(tmp_path)))
    assert "never pooled" not in md
    assert "| 73,728 |" in md and "| 18,432 |" in md
    make_run(tmp_path, "lora_a8", value=0.7, method_cfg={"alpha": 8.0}, params=150000)
    md = layouts.to_markdown(layouts.render("table2", load_runs(tmp_path)))
    notes = [x for x in md.splitlines() if "never pooled" in x]
    assert len(notes) == 1 and notes[0].startswith("- `method.alpha` differs between rows (16, 8)"), notes
    assert "| 0.15M |" in md
