"""Our LoRA variants against PEFT with the same weights copied in (tiny BERT/RoBERTa).

DoRA (``use_dora=True``), rsLoRA (``use_rslora=True``) and PiSSA (``init_lora_weights="pissa"``).
Name map: our ``<module>.lora_A.<m>`` / ``lora_B.<m>`` / ``lora_magnitude.<m>`` ↔ PEFT's
``base_model.model.<module>.lora_A.default.weight`` / ``lora_B.default.weight`` /
``lora_magnitude_vector.default.weight``. (Plain LoRA vs PEFT is the lead's test.)
"""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import logits_of, tiny_batch, tiny_model
from lora_research.methods import build_method

peft = pytest.importorskip("peft")

MODULES = {"q": "query", "v": "value", "k": "key", "o": "dense"}


def _pair(family, ours_cfg, peft_kwargs):
    base, spec = tiny_model(family)
    ours = copy.deepcopy(base)
    method = build_method(ours_cfg)
    method.apply(ours, spec)
    cfg = peft.LoraConfig(
        r=ours_cfg["r"], lora_alpha=ours_cfg["alpha"], lora_dropout=0.0,
        target_modules=[MODULES[m] for m in ours_cfg["targets"]], **peft_kwargs,
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    theirs.eval()
    return base, ours, method, theirs


def _copy_into_peft(method, ours, theirs):
    with torch.no_grad():
        for path, mod in method.lora_modules(ours).items():
            pm = theirs.base_model.model.get_submodule(path)
            (m,) = mod.slices
            pm.lora_A["default"].weight.copy_(mod.lora_A[m])
            pm.lora_B["default"].weight.copy_(mod.lora_B[m])
            if mod.use_dora:
                pm.lora_magnitude_vector["default"].weight.copy_(mod.lora_magnitude[m])


def _randomise(model):
    torch.manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize(
    "variant, ours_extra, peft_kwargs",
    [
        ("dora", {"use_dora": True}, {"use_dora": True}),
        ("rslora", {"scaling_rule": "rslora"}, {"use_rslora": True}),
        ("dora+rslora", {"use_dora": True, "scaling_rule": "rslora"}, {"use_dora": True, "use_rslora": True}),
    ],
)
def test_variant_matches_peft(family, variant, ours_extra, peft_kwargs):
    cfg = {"name": "lora", "r": 4, "alpha": 8.0, "targets": ["q", "v"], **ours_extra}
    _, ours, method, theirs = _pair(family, cfg, peft_kwargs)
    _randomise(ours)  # B ≠ 0 and m ≠ ‖W0‖_c, otherwise both are the base model
    _copy_into_peft(method, ours, theirs)
    # the classifier head of the PEFT copy is the same random init (both deep copies of base)
    batch = tiny_batch(family)
    with torch.no_grad():
        a, b = logits_of(ours, batch), logits_of(theirs, batch)
    assert (a - b).abs().max().item() <= 1e-5
    # and after merging both
    with torch.no_grad():
        method.merge(ours)
        merged_theirs = theirs.merge_and_unload()
        a2, b2 = logits_of(ours, batch), logits_of(merged_theirs, batch)
    assert (a2 - b2).abs().max().item() <= 1e-5


def test_dora_magnitude_init_matches_peft():
    cfg = {"name": "lora", "r": 4, "alpha": 8.0, "targets": ["q", "v"], "use_dora": True}
    _, ours, method, theirs = _pair("roberta", cfg, {"use_dora": True})
    for path, mod in method.lora_modules(ours).items():
        pm = theirs.base_model.model.get_submodule(path)
        assert torch.allclose(mod.lora_magnitude[next(iter(mod.slices))], pm.lora_magnitude_vector["default"].weight)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_pissa_init_matches_peft(family):
    """Same SVD split: A, B and the residual base weight as PEFT's init_lora_weights='pissa'."""
    cfg = {"name": "lora", "r": 4, "alpha": 8.0, "targets": ["q", "v"], "init_a": "pissa"}
    _, ours, method, theirs = _pair(family, cfg, {"init_lora_weights": "pissa"})
    for path, mod in method.lora_modules(ours).items():
        pm = theirs.base_model.model.get_submodule(path)
        (m,) = mod.slices
        # singular vectors are defined up to sign: compare the products and the residual
        assert torch.allclose(mod.lora_B[m] @ mod.lora_A[m], pm.lora_B["default"].weight @ pm.lora_A["default"].weight, atol=1e-5)
        assert torch.allclose(mod.base.weight, pm.base_layer.weight, atol=1e-5)
    batch = tiny_batch(family)
    with torch.no_grad():
        assert (logits_of(ours, batch) - logits_of(theirs, batch)).abs().max().item() <= 1e-5
