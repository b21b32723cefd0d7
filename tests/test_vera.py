"""VeRA against PEFT's VeraConfig (the oracle): same shared matrices, same logits, same trainable
count; ΔW = 0 at init; merge folds ΔW into W; a short training run end to end."""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import logits_of, tiny_batch, tiny_model
from lora_research.methods import build_method, count_parameters


def _peft_vera(model, r, targets, seed=0, d_initial=0.1):
    from peft import VeraConfig, get_peft_model

    cfg = VeraConfig(r=r, target_modules=targets, projection_prng_key=seed, d_initial=d_initial,
                     modules_to_save=["classifier"], init_weights=True)
    return get_peft_model(copy.deepcopy(model), cfg)


def _ours(model, family, **cfg):
    model = copy.deepcopy(model)
    method = build_method({"name": "vera", **cfg})
    method.apply(model, family)
    return model, method


def test_matches_peft_vera_logits_and_shared_matrices():
    base, family = tiny_model("bert")
    peft_model = _peft_vera(base, r=8, targets=["query", "value"], seed=3)
    ours, _ = _ours(base, family, r=8, targets=["q", "v"], projection_seed=3)
    layer = ours.bert.encoder.layer[1].attention.self.query
    peft_layer = peft_model.base_model.model.bert.encoder.layer[1].attention.self.query
    assert torch.equal(layer.vera_A, peft_layer.vera_A["default"]) and torch.equal(layer.vera_B, peft_layer.vera_B["default"])
    batch = tiny_batch("bert")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random trained-looking vectors, copied into both
        for name, mod in ours.named_modules():
            if hasattr(mod, "lambda_d"):
                theirs = peft_model.base_model.model.get_submodule(name)
                for p, q in ((mod.lambda_d["q" if "query" in name else "v"], theirs.vera_lambda_d["default"]),
                             (mod.lambda_b["q" if "query" in name else "v"], theirs.vera_lambda_b["default"])):
                    p.copy_(torch.randn(p.shape, generator=g))
                    q.copy_(p)
    ours.eval(), peft_model.eval()
    torch.testing.assert_close(logits_of(ours, batch), logits_of(peft_model, batch), rtol=1e-5, atol=1e-6)


def test_trainable_count_matches_peft_and_the_formula():
    base, family = tiny_model("bert")
    ours, _ = _ours(base, family, r=16, targets=["q", "v"])
    peft_model = _peft_vera(base, r=16, targets=["query", "value"])
    peft_vera = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "vera_lambda" in n)
    without_head = count_parameters(ours, family).trainable_params_without_head
    assert without_head == peft_vera == 2 * 2 * (16 + 32)  # 2 layers × {q, v} × (r + d)


def test_starts_as_the_base_model_and_merge_folds_the_update():
    base, family = tiny_model("gpt2")
    batch = tiny_batch("gpt2")
    ours, method = _ours(base, family, r=4, targets=["q", "v", "mlp_out"])
    torch.testing.assert_close(logits_of(ours, batch), logits_of(base, batch))  # b = 0: ΔW = 0
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lambda_b" in n:
                p.normal_()
    adapted = logits_of(ours, batch)
    assert not torch.allclose(adapted, logits_of(base, batch))
    w = ours.transformer.h[0].attn.c_attn.base.weight.clone()
    method.merge(ours)
    torch.testing.assert_close(logits_of(ours, batch), adapted, rtol=1e-4, atol=1e-5)
    method.unmerge(ours)
    torch.testing.assert_close(ours.transformer.h[0].attn.c_attn.base.weight, w, rtol=0, atol=1e-6)


def test_bad_settings_fail_at_validation():
    from conftest import compose
    from lora_research.config import validate

    with pytest.raises(ValueError, match=r"method.r=0 is not valid for vera"):
        validate(compose(["method=vera", "method.r=0", "logger=none"]))
    with pytest.raises(ValueError, match=r"unknown target matrix 'mlp_gate'"):
        validate(compose(["method=vera", "method.targets=[mlp_gate]", "logger=none"]))


def test_trains_end_to_end_and_restores(glue_dir, monkeypatch, tmp_path):
    from conftest import compose
    from lora_research import outputs
    from lora_research.train import run

    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    summary = run(compose(["model=tiny_roberta", "task=rte", "method=vera", "method.r=8", "logger=none",
                           "task.max_train_samples=32", "task.max_eval_samples=16", "task.max_length=32",
                           "trainer.device=cpu", "trainer.threads=1", "trainer.max_steps=2", "trainer.lr=1e-2"]), tmp_path)
    assert summary["method"] == "vera" and summary["method_label"] == "vera r=8 q,v"
    assert summary["trainable_params_without_head"] == 2 * 2 * (8 + 32)
    tensors, meta = outputs.load_adapter_file(tmp_path)
    assert meta["method"] == "vera" and not any("vera_A" in k for k in tensors)  # A, B come from the seed
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lambda_b" in k), "b trained away from 0"
