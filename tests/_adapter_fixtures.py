"""Test-only writers of adapter files: synthetic run folders in the ``lora_research.adapter`` format.

Real runs are written by training through :mod:`lora_research.adapter_file`; these build small
folders with random factors (LoRA) or random ``W0 + noise`` (full FT) for analysis tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from lora_research import adapter_file


def write_adapter(path, tensors: Mapping[str, torch.Tensor], index: list, method: str = "lora",
                  base_model: str = "synthetic", model_family: str = "bert") -> Path:
    """Write tensors + index as an adapter file (no base fingerprint: a synthetic base)."""
    return adapter_file.save(path, dict(tensors), {"method": method, "base_model": base_model,
                                                   "model_family": model_family, "index": index})


def synthetic_run(run_dir, *, n_layers: int = 2, d: int = 16, k: Optional[int] = None,
                  r: int = 4, alpha: float = 8.0, seed: int = 0, matrices: Sequence[str] = ("q", "v"),
                  method: str = "lora", base: Optional[Mapping[str, torch.Tensor]] = None,
                  dtype=torch.float32) -> Path:
    """A BERT-style run folder with random factors (LoRA) or random ``W0 + noise`` (full FT: pass
    ``base``, module path → (out, in) pretrained weight). Returns the run folder."""
    k = d if k is None else k
    g = torch.Generator().manual_seed(seed)
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense"}
    tensors, index = {"classifier.weight": torch.zeros(2, d)}, []
    full = base is not None
    for layer in range(n_layers):
        for m in matrices:
            module = f"bert.encoder.layer.{layer}.{names.get(m, m)}"
            row = {"layer": layer, "matrix": m, "module": module, "out_slice": None, "base_shape": [d, k]}
            if full:
                w = base[module] + 0.01 * torch.randn(d, k, generator=g, dtype=base[module].dtype)
                tensors[f"{module}.weight"] = w.to(dtype)
                row.update(kind="full", W=f"{module}.weight", r=None, alpha=None, scaling=None)
            else:
                tensors[f"{module}.lora_A.{m}"] = torch.randn(r, k, generator=g).to(dtype)
                tensors[f"{module}.lora_B.{m}"] = (0.1 * torch.randn(d, r, generator=g)).to(dtype)
                row.update(kind="lowrank", A=f"{module}.lora_A.{m}", B=f"{module}.lora_B.{m}", r=r, alpha=alpha,
                           scaling=alpha / r)
            index.append(row)
    run_dir = Path(run_dir)
    write_adapter(run_dir / adapter_file.ADAPTER_FILE, tensors, index, method=method)
    import yaml

    cfg = {"model": {"name_or_path": "synthetic", "family": "bert"}, "seed": seed,
           "method": {"name": method, "r": None if full else r, "alpha": None if full else alpha},
           "task": {"name": "synthetic"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "summary.json").write_text(json.dumps({"synthetic": True}))
    return run_dir
