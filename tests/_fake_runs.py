"""Run folders without training, for export / import / predict tests: the real config, base identity
and adapter writer of a run (``lora_research.adapter_file.save_run_adapter``), with the trainable
tensors moved away from their initial values so that every adapted matrix and the head matter."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import set_seed

from conftest import compose
from lora_research import adapter_file, outputs
from lora_research.config import validate
from lora_research.methods import get_method_class
from lora_research.models import load_model, resolve_family
from lora_research.tasks import build_task


def fake_run(run_dir, overrides: list, seed: int = 0, noise: float = 0.05) -> Path:
    cfg = compose(list(overrides) + [f"seed={seed}", "logger=none"])
    run = validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / outputs.CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    family = resolve_family(run.model)
    task = build_task(run.task)
    set_seed(run.seed)
    model = load_model(run.model, head=task.head, num_labels=task.num_labels, problem_type=task.problem_type)
    base = adapter_file.identify_base(model, family, run.model, head=task.head, num_labels=task.num_labels,
                                      problem_type=task.problem_type, seed=run.seed)
    method = get_method_class(run.method.name)(run.method)
    method.apply(model, family)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(noise * torch.randn(p.shape, generator=g).to(p.dtype))
    meta = {"method": method.name, "base": base, "base_model": run.model.name_or_path, "model_family": family.name,
            "task": task.name, "seed": run.seed, "config": asdict(run.method), "index": method.analysis_index(model),
            "r": getattr(run.method, "r", None), "alpha": getattr(run.method, "alpha", None)}
    adapter_file.save_run_adapter(run_dir / outputs.ADAPTER_FILE, method, model, meta)
    return run_dir
