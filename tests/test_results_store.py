"""The results store (issue #8): one row per run folder, rows keyed on the full identity of what
was trained, the paper's aggregate, failures listed; and analysis/sweeps.ipynb on a real sweep."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from _run_folders import make_run
from conftest import REPO
from lora_research.results import cells, failures, load_runs, main


def test_one_row_per_run_folder_with_config_metrics_counts_and_status(tmp_path):
    make_run(tmp_path, "a", seed=0, value=0.81)
    make_run(tmp_path, "b", seed=1, value=0.79)
    make_run(tmp_path, "c", seed=2, status="failed",
             error={"status": "failed", "reason": "OOM at step 3", "overrides": ["seed=2", "method.r=8"], "error": "RuntimeError"})
    make_run(tmp_path, "d", seed=3, status="failed", error={"error": "ValueError: old file without status"})
    (tmp_path / "a" / ".hydra").mkdir()
    (tmp_path / "a" / ".hydra" / "config.yaml").write_text("x: 1\n")  # Hydra's copy: not a run
    df = load_runs(tmp_path)
    assert len(df) == 4
    a = df[df["run_dir"].str.endswith("/a")].iloc[0]
    assert a["method.r"] == 8 and a["method.targets"] == ("q", "v") and a["trainer.lr"] == 1e-3
    assert a["metrics.accuracy"] == 0.81 and a["value"] == pytest.approx(81.0) and a["value_name"] == "accuracy"
    assert a["trainable_params_without_head"] == 36864 and a["train_runtime_s"] == 12.5 and a["peak_rss_mb"] == 900.0
    assert a["status"] == "completed"
    c = df[df["run_dir"].str.endswith("/c")].iloc[0]
    assert c["status"] == "failed" and c["reason"] == "OOM at step 3" and c["overrides"] == ("seed=2", "method.r=8")
    d = df[df["run_dir"].str.endswith("/d")].iloc[0]
    assert d["status"] == "failed" and d["reason"] == "ValueError: old file without status"  # fields absent: tolerated
    assert d["method.r"] == 8  # the config of a failed run is still there
    assert set(failures(df)["run_dir"].str[-1]) == {"c", "d"}


@pytest.mark.parametrize("option,values", [("alpha", (8.0, 16.0)), ("use_dora", (False, True)), ("init_a", ("kaiming", "gaussian")),
                                           ("scaling_rule", ("standard", "rslora")), ("layers", (None, [4, 5])),
                                           ("rank_pattern", ({}, {"q": 4}))])
def test_runs_differing_in_one_method_option_are_two_rows(tmp_path, option, values):
    for i, v in enumerate(values):
        for seed in (0, 1):
            make_run(tmp_path, f"{i}_{seed}", seed=seed, value=0.7 + 0.1 * i, method_cfg={option: v})
    c = cells(load_runs(tmp_path))
    assert len(c) == 2, c[["row", "value", "n"]]
    assert sorted(c["n"]) == [2, 2]
    assert len(set(c["row"])) == 2, "two rows need two labels"
    assert any(option in r for r in c["row"]), list(c["row"])


def test_cli_alpha_two_rows(tmp_path, capsys):
    """``python -m lora_research.results`` on two runs that differ only in method.alpha: two rows."""
    make_run(tmp_path, "a8", method_cfg={"alpha": 8.0}, value=0.8)
    make_run(tmp_path, "a16", method_cfg={"alpha": 16.0}, value=0.7)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| minilm |")]
    assert len(rows) == 2 and any("alpha=8" in r for r in rows) and any("alpha=16" in r for r in rows), out


def test_lr_varying_within_a_task_splits_rows_but_a_per_task_lr_does_not(tmp_path):
    # one method, two lrs on one task: two rows
    make_run(tmp_path / "s1", "a", trainer={"lr": 1e-3})
    make_run(tmp_path / "s1", "b", trainer={"lr": 3e-3})
    assert len(cells(load_runs(tmp_path / "s1"))) == 2
    # Table 9 style: lr per task, one per task: one row over two tasks
    make_run(tmp_path / "s2", "a", task="sst2", trainer={"lr": 5e-4})
    make_run(tmp_path / "s2", "b", task="rte", trainer={"lr": 4e-4})
    c = cells(load_runs(tmp_path / "s2"))
    assert len(set(c["row"])) == 1 and sorted(c["lr"]) == [4e-4, 5e-4]


def test_settings_that_cannot_change_training_do_not_split(tmp_path):
    # data_dir, threads (and device, logger, eval batch) differ by seed in make_run: still one cell
    for seed in range(3):
        make_run(tmp_path, f"s{seed}", seed=seed, value=0.7 + 0.01 * seed,
                 trainer={"eval_batch_size": 64 + seed, "logging_steps": seed + 1})
    c = cells(load_runs(tmp_path))
    assert len(c) == 1 and c.iloc[0]["n"] == 3


def test_paper_aggregates_median_for_glue_mean_for_e2e_with_spread(tmp_path):
    for i, v in enumerate([0.60, 0.70, 0.66, 0.90, 0.20]):
        make_run(tmp_path, f"g{i}", task="rte", seed=i, value=v)
    for i, b in enumerate([40.0, 50.0, 30.0]):
        make_run(tmp_path, f"e{i}", task="e2e", kind="e2e", model="smollm2", seed=i, metric="loss", value=1.2,
                 final={"BLEU": b, "NIST": 5.0})
    c = cells(load_runs(tmp_path))
    rte = c[c["task"] == "rte"].iloc[0]
    assert rte["agg"] == "median" and rte["value"] == pytest.approx(66.0) and rte["n"] == 5
    assert rte["min"] == pytest.approx(20.0) and rte["max"] == pytest.approx(90.0) and rte["std"] > 0
    e2e = c[c["task"] == "e2e"].iloc[0]
    assert e2e["agg"] == "mean" and e2e["value"] == pytest.approx(40.0) and e2e["n"] == 3
    assert cells(load_runs(tmp_path), agg="mean").query("task == 'rte'").iloc[0]["value"] == pytest.approx(61.2)


def test_diverged_runs_are_listed_not_aggregated(tmp_path):
    make_run(tmp_path, "ok", value=0.8)
    make_run(tmp_path, "nan", seed=1, value=0.5, train_loss=float("nan"))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text("method: {name: lora}\n")
    df = load_runs(tmp_path)
    st = dict(zip(df["run_dir"].str.rsplit("/", n=1).str[-1], df["status"]))
    assert st == {"ok": "completed", "nan": "diverged", "bare": "incomplete"}
    c = cells(df)
    assert len(c) == 1 and c.iloc[0]["n"] == 1
    assert "train_loss" in failures(df).set_index("status").loc["diverged", "reason"]


def test_cli_writes_markdown_and_csv_and_lists_failures(tmp_path, capsys):
    make_run(tmp_path / "runs", "a", value=0.5)
    make_run(tmp_path / "runs", "bad", seed=1, status="failed")
    out = tmp_path / "results" / "t.md"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--runs-csv", str(tmp_path / "runs.csv")]) == 0
    md = out.read_text()
    assert "50.0 ±0.0 (1)" in md and "ValueError: boom" in md and "Made by:" in md
    import pandas as pd

    csv = pd.read_csv(out.with_suffix(".csv"))
    assert csv.loc[0, "value"] == 50.0 and csv.loc[0, "n"] == 1
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 2


def test_missing_path_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


# --- analysis/sweeps.ipynb on a small real sweep -----------------------------------------------------

NOTEBOOK = REPO / "analysis" / "sweeps.ipynb"


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, glue_dir):
    """A real sweep through the CLI: cpu/table5 (MiniLM, SST-2), 3 columns x 2 seeds, 2 steps each."""
    import os

    sweep = tmp_path_factory.mktemp("sweep") / "table5"
    env = dict(os.environ, GLUE_DIR=str(glue_dir), PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "lora_research.train", "-m", "experiment=cpu/table5", "experiment/cpu/table5=q,v,qv",
           "seed=0,1", "trainer.max_steps=2", "task.max_train_samples=64", "task.max_eval_samples=32", "logger=none",
           "trainer.threads=1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_real_sweep_loads_one_row_per_job(real_sweep):
    df = load_runs(real_sweep)
    assert len(df) == 6 and set(df["status"]) == {"completed"}
    c = cells(df)
    assert len(c) == 3 and set(c["n"]) == {2}
    assert set(df["trainable_params_without_head"]) == {36864}


@pytest.mark.slow
def test_sweeps_notebook_runs_on_a_real_sweep(real_sweep, monkeypatch):
    """analysis/sweeps.ipynb top to bottom (nbclient) with LORA_SWEEP pointing at the sweep."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LORA_SWEEP", str(real_sweep))
    monkeypatch.setenv("LORA_NOTEBOOK_REQUIRE_REAL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    html = "".join(json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "REAL SWEEP:" in text and "6 run folders" in text, text
    assert "DEMO" not in text
    assert images >= 1 and "W_q,W_v" in html + text


def test_sweeps_notebook_refuses_demo_when_real_is_required(tmp_path, monkeypatch, capsys):
    import nbformat

    first = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"][0].source
    monkeypatch.setenv("LORA_SWEEP", str(tmp_path / "missing"))
    monkeypatch.delenv("LORA_NOTEBOOK_REQUIRE_REAL", raising=False)
    scope: dict = {}
    exec(compile(first, "sweeps.ipynb", "exec"), scope)
    assert scope["DEMO"] is True and "DEMO DATA" in capsys.readouterr().err
    monkeypatch.setenv("LORA_NOTEBOOK_REQUIRE_REAL", "1")
    with pytest.raises(FileNotFoundError, match="missing"):
        exec(compile(first, "sweeps.ipynb", "exec"), {})
    assert math.isfinite(1.0)
