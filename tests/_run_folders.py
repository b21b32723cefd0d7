"""Hand-built run folders (config.yaml + summary.json / error.json) as the trainer writes them."""
from __future__ import annotations

import json
from pathlib import Path

import yaml


def make_run(root: Path, name: str, *, task="sst2", kind="glue", model="minilm", method="lora", seed=0, value=0.8,
             metric="accuracy", method_cfg=None, trainer=None, task_cfg=None, experiment_name=None, params=36864,
             status="completed", error=None, final=None, train_loss=0.4, loss=0.5, run_dir_extra=None) -> Path:
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    mcfg = {"name": method, **({"r": 8, "alpha": 16.0, "targets": ["q", "v"], "rank_pattern": {}, "layers": None,
                                "init_a": "kaiming", "scaling_rule": "standard", "use_dora": False}
                               if method == "lora" else {})}
    mcfg.update(method_cfg or {})
    cfg = {
        "model": {"name": model, "name_or_path": f"pip:{model}", "max_length": 64},
        "task": {"name": task, "kind": kind, "data_dir": f"/data/{seed}", "max_train_samples": 1600, **(task_cfg or {})},
        "method": mcfg,
        "trainer": {"device": "cpu", "lr": 1e-3, "batch_size": 32, "epochs": 1, "threads": seed, **(trainer or {})},
        "logger": {"name": "none"},
        "seed": seed,
        "init_from": None,
        "experiment_name": experiment_name or f"{task}-{model}-{method}",
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    if status == "completed":
        if kind == "e2e":
            head = {"name": "BLEU", "value": (final or {}).get("BLEU")}
        else:
            head = {"name": metric, "value": None if value is None else 100.0 * value}
        summary = {"status": "completed", "task": task, "model": model, "method": method, "seed": seed,
                   "main_metric": metric, "headline_metric": head,
                   "metrics": {"loss": loss, metric: value}, "final_evaluation": final or {},
                   "trainable_params": params + 770, "trainable_params_without_head": params,
                   "train_runtime_s": 12.5, "peak_rss_mb": 900.0, "train_loss": train_loss, "train_steps": 50,
                   "command": f"python -m lora_research.train task={task} seed={seed}"}
        (d / "summary.json").write_text(json.dumps(summary))
    else:
        (d / "error.json").write_text(json.dumps(error if error is not None else {"status": status, "error": "ValueError: boom"}))
    return d
