"""Results tables aggregate run folders as the paper does (median over seeds of the best epoch)."""
from __future__ import annotations

import json

from lora_research.results import build_table, find_runs, main, to_markdown


def _run(root, name, task, seed, acc, method="lora", r=8, failed=False):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"method:\n  name: {method}\n  r: {r}\n  targets: [q, v]\n")
    if failed:
        (d / "error.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom"}))
        return
    (d / "summary.json").write_text(json.dumps({
        "task": task, "model": "minilm", "method": method, "seed": seed, "main_metric": "accuracy",
        "metrics": {"accuracy": acc}, "trainable_params_without_head": 73728,
    }))


def test_median_over_seeds_per_task_and_failures_listed(tmp_path):
    for i, acc in enumerate([0.60, 0.70, 0.66]):
        _run(tmp_path, f"rte{i}", "rte", i, acc)
    for i, acc in enumerate([0.90, 0.80]):
        _run(tmp_path, f"sst{i}", "sst2", i, acc)
    _run(tmp_path, "bad", "rte", 9, None, failed=True)
    summaries, failures = find_runs([tmp_path])
    assert len(summaries) == 5 and len(failures) == 1
    table = build_table(summaries)
    (row,) = table["rows"]
    assert row["method"] == "lora r=8 q,v" and row["params"] == 73728
    assert abs(row["cells"]["rte"]["value"] - 66.0) < 1e-9 and row["cells"]["rte"]["n"] == 3  # median(60,70,66)
    assert abs(row["cells"]["sst2"]["value"] - 85.0) < 1e-9  # median of two = their mean
    md = to_markdown(table, failures)
    assert "66.0" in md and "ValueError: boom" in md


def test_cli_writes_markdown_and_json(tmp_path):
    _run(tmp_path / "runs", "a", "rte", 0, 0.5)
    out = tmp_path / "results" / "t.md"
    main([str(tmp_path / "runs"), "--out", str(out)])
    assert "50.0" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["table"]["rows"][0]["cells"]["rte"]["value"] == 50.0
