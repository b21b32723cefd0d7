"""Trainable-parameter counts of every method equal the paper's §5.1 formulas.

Models are RoBERTa-base and GPT-2 medium built from their configs on ``torch.device("meta")``:
no download and no allocation (a 355M model costs nothing), and the counts are exact because
method parameters depend only on d_model, L and the adapted shapes, never on the values.
(The vocabulary size only enters FT's count, which is checked against the known totals.)
"""
from __future__ import annotations

import pytest
import torch

from lora_research.methods import build_method, count_parameters
from lora_research.methods.adapters import adapter_formula
from lora_research.targets import get_family, is_head_parameter

ROBERTA = dict(family="roberta", d=768, L=12)
GPT2M = dict(family="gpt2", d=1024, L=24)


def meta_model(family: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    with torch.device("meta"):
        if family == "roberta":  # roberta-base: RobertaConfig() dims + its 514 positions, 1 token type
            return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
                "roberta", num_labels=2, max_position_embeddings=514, type_vocab_size=1))
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_embd=1024, n_layer=24, n_head=16))


def count(cfg: dict, family: str) -> int:
    model = meta_model(family)
    spec = get_family(family)
    build_method(cfg).apply(model, spec)
    return count_parameters(model, spec).trainable_params_without_head


def test_lora_paper_numbers():
    # 2·L̂·d·r with L̂ = number of adapted matrices
    assert count({"name": "lora", "r": 8, "targets": ["q", "v"]}, "roberta") == 2 * 24 * 768 * 8 == 294_912
    assert count({"name": "lora", "r": 4, "targets": ["q", "v"]}, "gpt2") == 2 * 48 * 1024 * 4 == 393_216


@pytest.mark.parametrize("setup", [ROBERTA, GPT2M], ids=["roberta-base", "gpt2-medium"])
def test_lora_variant_counts(setup):
    fam, d, L = setup["family"], setup["d"], setup["L"]
    n_mat = 2 * L  # q and v in every block
    lora = 2 * n_mat * d * 4
    assert count({"name": "lora", "r": 4, "scaling_rule": "rslora"}, fam) == lora
    # DoRA adds one magnitude entry per output row of every adapted matrix
    assert count({"name": "lora", "r": 4, "use_dora": True}, fam) == lora + n_mat * d
    # all six matrices: q,k,v,o (d×d) + mlp_in (4d×d) + mlp_out (d×4d): r·(in+out) each
    all6 = L * 4 * (4 * 2 * d + 2 * (d + 4 * d))
    assert count({"name": "lora", "r": 4, "targets": ["q", "k", "v", "o", "mlp_in", "mlp_out"]}, fam) == all6


@pytest.mark.parametrize("setup", [ROBERTA, GPT2M], ids=["roberta-base", "gpt2-medium"])
@pytest.mark.parametrize(
    "cfg, n_adpt, n_ln",
    [
        ({"name": "adapter_h", "r": 8}, lambda L: 2 * L, lambda L: 2 * L),
        ({"name": "adapter_h", "r": 64, "train_layer_norm": False}, lambda L: 2 * L, lambda L: 0),
        ({"name": "adapter_l", "r": 6}, lambda L: L, lambda L: L),
        ({"name": "adapter_p", "r": 16}, lambda L: L, lambda L: 0),
        ({"name": "adapter_drop", "r": 8, "drop_layers": 5}, lambda L: 2 * (L - 5), lambda L: 2 * (L - 5)),
    ],
    ids=["H", "H-noLN", "L", "P", "D"],
)
def test_adapter_formula(setup, cfg, n_adpt, n_ln):
    fam, d, L = setup["family"], setup["d"], setup["L"]
    expected = adapter_formula(n_adpt(L), n_ln(L), d, cfg["r"])
    assert expected == n_adpt(L) * (2 * d * cfg["r"] + cfg["r"] + d) + 2 * n_ln(L) * d
    assert count(cfg, fam) == expected


def test_adapter_table_numbers():
    # Table 3: GPT-2 M Adapter^L 0.37M (r=6) and 11.09M (r=224) follow the formula with L̂_LN = L
    assert round(count({"name": "adapter_l", "r": 6}, "gpt2") / 1e6, 2) == 0.37
    assert round(count({"name": "adapter_l", "r": 224}, "gpt2") / 1e6, 2) == 11.09


@pytest.mark.parametrize("setup", [ROBERTA, GPT2M], ids=["roberta-base", "gpt2-medium"])
def test_prefix_formulas(setup):
    fam, d, L = setup["family"], setup["d"], setup["L"]
    assert count({"name": "prefix_embed", "prefix_len": 16, "infix_len": 4}, fam) == d * (16 + 4)
    assert count({"name": "prefix_layer", "prefix_len": 8, "infix_len": 2}, fam) == L * d * (8 + 2)


def test_bitfit_counts():
    assert count({"name": "bitfit"}, "roberta") == 102_144  # 12·(7·768 + 3072) + 768 ≈ 0.1M (Table 2)
    assert count({"name": "bitfit"}, "gpt2") == 24 * (1024 * 4 + 3072 + 4096) + 1024 == 271_360
    for fam in ("roberta", "gpt2"):
        model = meta_model(fam)
        spec = get_family(fam)
        expected = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") and not is_head_parameter(n, spec))
        build_method({"name": "bitfit"}).apply(model, spec)
        assert count_parameters(model, spec).trainable_params_without_head == expected


def test_full_ft_counts():
    model = meta_model("gpt2")
    spec = get_family("gpt2")
    build_method({"name": "full_ft"}).apply(model, spec)
    assert count_parameters(model, spec).trainable_params_without_head == 354_823_168  # GPT-2 M (tied lm_head)
    model = meta_model("roberta")
    spec = get_family("roberta")
    build_method({"name": "full_ft"}).apply(model, spec)
    c = count_parameters(model, spec)
    assert c.trainable_params_without_head == c.total_params - c.head_params == 124_055_040
    # FT^Top2 (Table 3: 25.19M for GPT-2 M): the last two blocks
    per_block = 2 * 2048 + (1024 * 3072 + 3072) + (1024 * 1024 + 1024) + (1024 * 4096 + 4096) + (4096 * 1024 + 1024)
    assert count({"name": "ft_top2"}, "gpt2") == 2 * per_block == 25_192_448


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="drop_layers"):
        count({"name": "adapter_drop", "drop_layers": 12}, "roberta")
    with pytest.raises(ValueError, match="prefix_len"):
        count({"name": "prefix_layer", "prefix_len": -1}, "roberta")
    with pytest.raises(ValueError, match="init_a"):
        count({"name": "lora", "init_a": "svd"}, "roberta")
