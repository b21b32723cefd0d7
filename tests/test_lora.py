"""LoRA (paper §4.1) against independent oracles: PEFT's LoRA, hand computations, §5.1 counts."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from lora_research.methods import LoRALinear, build_method, count_parameters
from lora_research.models import ModelConfig, load_model
from lora_research.targets import get_family

from _tiny_models import OVERRIDES

TINY_BERT = ModelConfig(name="tiny_bert", family="bert", random_init=True, config_overrides=OVERRIDES["bert"])
TINY_ROBERTA = ModelConfig(name="tiny_roberta", family="roberta", random_init=True, config_overrides=OVERRIDES["roberta"])


def _tiny(cfg, num_labels=3, seed=0):
    torch.manual_seed(seed)
    model = load_model(cfg, num_labels=num_labels)
    model.eval()
    return model


def _randomise_lora(model, seed=1):
    """Give B nonzero values so ΔW ≠ 0 (B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                for name in m.lora_A:
                    m.lora_A[name].copy_(torch.randn(m.lora_A[name].shape, generator=g) * 0.3)
                    m.lora_B[name].copy_(torch.randn(m.lora_B[name].shape, generator=g) * 0.3)


def _inputs(seed=0, vocab=100):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_cfg,hf_names", [(TINY_BERT, ["query", "value"]), (TINY_ROBERTA, ["query", "value"])])
@pytest.mark.parametrize("r,alpha", [(4, 8.0), (2, 16.0)])
def test_logits_equal_peft_lora_with_same_weights(model_cfg, hf_names, r, alpha):
    from peft import LoraConfig, get_peft_model

    base = _tiny(model_cfg)
    ours = copy.deepcopy(base)
    family = get_family(model_cfg.family)
    build_method({"name": "lora", "r": r, "alpha": alpha, "targets": ["q", "v"]}).apply(ours, family)
    _randomise_lora(ours)

    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=hf_names, lora_dropout=0.0)
    )
    matrix_of = {"query": "q", "value": "v"}
    ours_modules = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    copied = 0
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict) and "default" in module.lora_A:
                path = name.removeprefix("base_model.model.")
                mine = ours_modules[path]
                m = matrix_of[path.rsplit(".", 1)[-1]]
                module.lora_A["default"].weight.copy_(mine.lora_A[m])
                module.lora_B["default"].weight.copy_(mine.lora_B[m])
                copied += 1
    assert copied == 2 * model_cfg.config_overrides["num_hidden_layers"]
    peft_model.eval()
    x = _inputs()
    ref = peft_model(**x).logits
    out = ours(**x).logits
    assert not torch.allclose(base(**x).logits, out, atol=1e-4), "ΔW must change the output"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_merge_then_unmerge_restores_w0_exactly_and_merged_matches():
    model = _tiny(TINY_BERT)
    method = build_method({"name": "lora", "r": 4, "targets": ["q", "k", "v", "o", "mlp_in", "mlp_out"]})
    method.apply(model, get_family("bert"))
    _randomise_lora(model)
    w0 = {n: m.base.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    x = _inputs()
    unmerged = model(**x).logits
    method.merge(model)
    for n, m in model.named_modules():
        if isinstance(m, LoRALinear):
            # merged weight = W0 + (α/r)·B·A, by hand
            expected = w0[n] + (m.lora_B[next(iter(m.lora_B))] @ m.lora_A[next(iter(m.lora_A))]) * m.scaling[next(iter(m.scaling))]
            torch.testing.assert_close(m.base.weight, expected, atol=1e-6, rtol=0)
    merged = model(**x).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    method.unmerge(model)
    for n, m in model.named_modules():
        if isinstance(m, LoRALinear):
            assert torch.equal(m.base.weight, w0[n]), f"{n}: unmerge did not restore W0 bit for bit"
    torch.testing.assert_close(model(**x).logits, unmerged, atol=0, rtol=0)


def test_loralib_style_unmerge_is_close_but_subtractive():
    model = _tiny(TINY_BERT)
    method = build_method({"name": "lora", "r": 4, "exact_unmerge": False})
    method.apply(model, get_family("bert"))
    _randomise_lora(model)
    mod = next(m for m in model.modules() if isinstance(m, LoRALinear))
    w0 = mod.base.weight.detach().clone()
    method.merge(model)
    method.unmerge(model)
    torch.testing.assert_close(mod.base.weight, w0, atol=1e-6, rtol=0)


def test_merge_without_keeping_the_original_copies_nothing_and_unmerges_by_subtraction():
    """merge(keep_original=False), as decoding and prediction merge a model they drop afterwards: the same merged
    weights and logits, no W0 copy kept aside (exact_unmerge set or not), and unmerge subtracts ΔW."""
    model = _tiny(TINY_BERT)
    method = build_method({"name": "lora", "r": 4, "targets": ["q", "v"]})  # exact_unmerge: the default, true
    method.apply(model, get_family("bert"))
    _randomise_lora(model)
    mods = [m for m in model.modules() if isinstance(m, LoRALinear)]
    w0 = [m.base.weight.detach().clone() for m in mods]
    x = _inputs()
    unmerged = model(**x).logits
    method.merge(model, keep_original=False)
    assert all(m.merged and m._w0 is None for m in mods)
    for m, w in zip(mods, w0):
        (name,) = m.lora_A.keys()
        torch.testing.assert_close(m.base.weight, w + (m.lora_B[name] @ m.lora_A[name]) * m.scaling[name],
                                   atol=1e-6, rtol=0)
    torch.testing.assert_close(model(**x).logits, unmerged, atol=1e-5, rtol=0)
    method.unmerge(model)
    for m, w in zip(mods, w0):
        torch.testing.assert_close(m.base.weight, w, atol=1e-6, rtol=0)


def test_forward_equals_hand_computation_with_dropout_on_branch_input_only():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    layer = LoRALinear(lin, {"q": None}, {"q": 2}, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B["q"].normal_()
    x = torch.randn(4, 6)
    layer.eval()  # dropout off: h = W0x + b + (α/r)·B·A·x
    expected = x @ lin.weight.T + lin.bias + (x @ layer.lora_A["q"].T @ layer.lora_B["q"].T) * 2.0
    torch.testing.assert_close(layer(x), expected)
    layer.train()  # dropout on the LoRA branch input only: base path unaffected
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)
    xd = nn.functional.dropout(x, 0.5, training=True)
    expected = x @ lin.weight.T + lin.bias + (xd @ layer.lora_A["q"].T @ layer.lora_B["q"].T) * 2.0
    torch.testing.assert_close(y, expected)


def test_init_b_zero_so_output_unchanged_and_gaussian_a():
    base = _tiny(TINY_BERT)
    x = _inputs()
    ref = base(**x).logits
    for init in ("kaiming", "gaussian"):
        m = copy.deepcopy(base)
        build_method({"name": "lora", "r": 8, "init_a": init}).apply(m, get_family("bert"))
        torch.testing.assert_close(m(**x).logits, ref, atol=0, rtol=0)
    lin = nn.Linear(256, 256)
    torch.manual_seed(0)
    g = LoRALinear(lin, {"q": None}, {"q": 16}, alpha=16, init_a="gaussian")
    assert abs(g.lora_A["q"].std().item() - 1 / 16) < 0.005  # N(0, 1/r²)
    k = LoRALinear(lin, {"q": None}, {"q": 16}, alpha=16, init_a="kaiming")
    bound = 1 / 256**0.5  # kaiming_uniform(a=√5) on fan_in=256 → U(−1/√k, 1/√k)
    assert k.lora_A["q"].abs().max().item() <= bound + 1e-7


def test_only_lora_and_head_receive_gradients():
    model = _tiny(TINY_BERT)
    model.train()
    build_method({"name": "lora", "r": 2}).apply(model, get_family("bert"))
    out = model(**_inputs(), labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    for name, p in model.named_parameters():
        is_trainable = ".lora_" in name or name.startswith(("classifier.", "bert.pooler."))
        assert p.requires_grad == is_trainable, name
        assert (p.grad is not None) == is_trainable, name


def test_param_count_minilm_matches_paper_formula():
    """§5.1: |Θ| = 2·L̂·d·r; MiniLM (d=384, 6 layers), q,v (L̂ = 12), r = 8 → 73,728."""
    model = load_model(ModelConfig(), num_labels=2)
    build_method({"name": "lora", "r": 8, "targets": ["q", "v"]}).apply(model, get_family("bert"))
    counts = count_parameters(model, get_family("bert"))
    assert counts.trainable_params_without_head == 2 * 12 * 384 * 8 == 73_728
    head = 384 * 384 + 384 + 384 * 2 + 2  # pooler.dense + classifier
    assert counts.head_params == head
    assert counts.trainable_params == 73_728 + head


def test_param_count_roberta_base_config_matches_paper():
    """RoBERTa-base, r=8 on q,v: 2·(2·12)·768·8 = 294,912 (paper Table 2 "0.3M")."""
    from transformers import AutoModelForSequenceClassification, RobertaConfig

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(RobertaConfig(num_labels=2))
        build_method({"name": "lora", "r": 8, "targets": ["q", "v"]}).apply(model, get_family("roberta"))
    counts = count_parameters(model, get_family("roberta"))
    assert counts.trainable_params_without_head == 294_912
    assert counts.head_params == 768 * 768 + 768 + 768 * 2 + 2


def test_rank_pattern_per_matrix_and_rslora_scaling():
    model = _tiny(TINY_BERT)
    method = build_method(
        {"name": "lora", "r": 4, "alpha": 8, "targets": ["q", "v"], "rank_pattern": {"v": 2}, "scaling_rule": "rslora"}
    )
    method.apply(model, get_family("bert"))
    index = method.analysis_index(model)
    ranks = {(e["layer"], e["matrix"]): e["r"] for e in index}
    assert ranks == {(0, "q"): 4, (0, "v"): 2, (1, "q"): 4, (1, "v"): 2}
    scal = {e["matrix"]: e["scaling"] for e in index}
    assert scal["q"] == pytest.approx(8 / 4**0.5) and scal["v"] == pytest.approx(8 / 2**0.5)
    counts = count_parameters(model, get_family("bert"))
    assert counts.trainable_params_without_head == 2 * (2 * 32 * 4 + 2 * 32 * 2)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "lora", "r": 0}, r"impossible LoRA rank r=0 .* valid: integers 1\.\.32"),
        ({"name": "lora", "r": 33}, r"impossible LoRA rank r=33"),
        ({"name": "lora", "targets": ["q", "wq"]}, r"unknown target matrix 'wq' .* valid choices: \['q', 'k', 'v', 'o', 'mlp_in', 'mlp_out'\]"),
        ({"name": "lora", "layers": [5]}, r"layer index 5 out of range; the model has layers 0\.\.1"),
        ({"name": "lora", "rank_pattern": {"o": 2}}, r"rank_pattern names matrices \['o'\]"),
        ({"name": "lora", "init_a": "xavier"}, r"unknown init_a 'xavier'; valid choices"),
    ],
)
def test_bad_lora_settings_fail_with_value_and_choices(cfg, match):
    model = _tiny(TINY_BERT)
    with pytest.raises(ValueError, match=match):
        build_method(cfg).apply(model, get_family("bert"))


def test_unknown_method_and_option_name_valid_choices():
    with pytest.raises(ValueError, match=r"unknown method 'lorra'; valid choices: \[.*'lora'.*\]"):
        build_method({"name": "lorra"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rank'\] for method 'lora'; valid options"):
        build_method({"name": "lora", "rank": 8})
