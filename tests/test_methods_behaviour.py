"""Behaviour of every method on tiny random models of every family (bert, roberta, gpt2, llama):
outputs unchanged at init, exactly the intended parameters get gradients, merge/unmerge, and
prefix tuning against a hand-built key/value cache."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from _tiny_models import FAMILIES, logits_of, tiny_batch, tiny_model
from lora_research.methods import MergeNotSupported, build_method, count_parameters
from lora_research.methods.lora import LoRALinear
from lora_research.targets import find_layers, get_family, is_head_parameter

ALL4 = ["q", "k", "v", "o"]
IDENTITY_AT_INIT = {
    "lora": {"name": "lora", "r": 4, "targets": ALL4},
    "lora_gaussian": {"name": "lora", "r": 4, "init_a": "gaussian"},
    "rslora": {"name": "lora", "r": 4, "scaling_rule": "rslora"},
    "dora": {"name": "lora", "r": 4, "use_dora": True, "targets": ALL4 + ["mlp_in"]},
    "adapter_h": {"name": "adapter_h", "r": 4},
    "adapter_l": {"name": "adapter_l", "r": 4},
    "adapter_p": {"name": "adapter_p", "r": 4},
    "adapter_drop": {"name": "adapter_drop", "r": 4, "drop_layers": 1},
    "prefix_embed_len0": {"name": "prefix_embed", "prefix_len": 0, "infix_len": 0},
    "prefix_layer_len0": {"name": "prefix_layer", "prefix_len": 0, "infix_len": 0},
}


def _apply(cfg, family, **kw):
    model, spec = tiny_model(family, **kw)
    method = build_method(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.apply(model, spec)
    return model, spec, method


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", list(IDENTITY_AT_INIT))
def test_output_unchanged_at_init(family, key):
    base, _ = tiny_model(family)
    batch = tiny_batch(family)
    with torch.no_grad():
        ref = logits_of(base, batch)
        model, _, _ = _apply(IDENTITY_AT_INIT[key], family)
        out = logits_of(model, batch)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dora", [False, True])
def test_pissa_unchanged_after_residual_split(family, dora):
    base, _ = tiny_model(family)
    batch = tiny_batch(family)
    with torch.no_grad():
        ref = logits_of(base, batch)
        model, _, method = _apply({"name": "lora", "r": 4, "init_a": "pissa", "use_dora": dora, "targets": ALL4}, family)
        assert (logits_of(model, batch) - ref).abs().max().item() <= 1e-5
    # the base weight now holds the residual: W_res + s·BA = W0
    for path, mod in method.lora_modules(model).items():
        w0 = base.get_submodule(path).weight
        w0 = w0.T if mod.fan_in_fan_out else w0
        rebuilt = (mod.base.weight.T if mod.fan_in_fan_out else mod.base.weight) + mod.full_delta()
        assert torch.allclose(rebuilt, w0, atol=1e-5)
        assert not torch.allclose(mod.base.weight, base.get_submodule(path).weight)
    assert all(e["pissa"] is True for e in method.analysis_index(model))


# -- gradients: exactly the intended parameters ----------------------------------------------
def _intended(cfg: dict, family: str, n_layers: int):
    spec = get_family(family)
    lns = [spec.attn_layer_norm, spec.mlp_layer_norm]
    layers_prefix = {"bert": "bert.encoder.layer.", "roberta": "roberta.encoder.layer.",
                     "gpt2": "transformer.h.", "llama": "model.layers."}[family]

    def block_of(n):
        return int(n[len(layers_prefix):].split(".")[0]) if n.startswith(layers_prefix) else None

    def in_ln(n):
        i = block_of(n)
        return i is not None and any(n.startswith(f"{layers_prefix}{i}.{ln}.") for ln in lns)

    name = cfg["name"]
    if name == "lora":
        keys = ("lora_A", "lora_B") + (("lora_magnitude",) if cfg.get("use_dora") else ())
        return lambda n: any(f".{k}." in n for k in keys)
    if name == "bitfit":
        return lambda n: n.endswith("bias")
    if name in ("adapter_h", "adapter_drop"):
        k = cfg.get("drop_layers", 0)
        return lambda n: ".adapter." in n or (in_ln(n) and block_of(n) >= k)
    if name in ("adapter_l", "adapter_p"):
        return lambda n: ".adapter." in n
    if name.startswith("prefix"):
        return lambda n: n == "prefix_tuning.weight"
    if name == "full_ft":
        return lambda n: True
    if name == "ft_top2":
        top = cfg.get("top_layers", 2)
        return lambda n: block_of(n) is not None and block_of(n) >= n_layers - top
    raise AssertionError(name)


GRAD_CASES = {
    "lora": {"name": "lora", "r": 2, "targets": ["q", "v", "mlp_out"]},
    "dora": {"name": "lora", "r": 2, "use_dora": True},
    "pissa": {"name": "lora", "r": 2, "init_a": "pissa"},
    "bitfit": {"name": "bitfit"},
    "adapter_h": {"name": "adapter_h", "r": 2},
    "adapter_l": {"name": "adapter_l", "r": 2},
    "adapter_p": {"name": "adapter_p", "r": 2},
    "adapter_drop": {"name": "adapter_drop", "r": 2, "drop_layers": 1},
    "prefix_embed": {"name": "prefix_embed", "prefix_len": 2, "infix_len": 1},
    "prefix_layer": {"name": "prefix_layer", "prefix_len": 2, "infix_len": 1},
    "full_ft": {"name": "full_ft"},
    "ft_top2": {"name": "ft_top2", "top_layers": 1},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", list(GRAD_CASES))
def test_exactly_intended_parameters_get_gradients(family, key):
    cfg = GRAD_CASES[key]
    if family == "llama" and key == "bitfit":
        model, spec = tiny_model(family)
        with pytest.warns(UserWarning, match="no bias"):
            build_method(cfg).apply(model, spec)
        assert count_parameters(model, spec).trainable_params_without_head == 0
        return
    model, spec, _ = _apply(cfg, family)
    model.train()
    out = model(**tiny_batch(family))
    out.loss.backward()
    n_layers = len(find_layers(model, spec)[1])
    intended = _intended(cfg, family, n_layers)
    for n, p in model.named_parameters():
        want = intended(n) or is_head_parameter(n, spec)
        assert p.requires_grad == want, n
        assert (p.grad is not None) == want, n
    assert count_parameters(model, spec).trainable_params_without_head > 0


# -- merge -------------------------------------------------------------------------------------
MERGE_CASES = {
    "lora": {"name": "lora", "r": 3, "targets": ["q", "v", "mlp_in"]},
    "lora_inexact": {"name": "lora", "r": 3, "exact_unmerge": False},
    "dora": {"name": "lora", "r": 3, "use_dora": True, "targets": ["q", "k", "v", "o"]},
    "dora_inexact": {"name": "lora", "r": 3, "use_dora": True, "exact_unmerge": False},
    "pissa": {"name": "lora", "r": 3, "init_a": "pissa"},
    "pissa_dora": {"name": "lora", "r": 3, "init_a": "pissa", "use_dora": True},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", list(MERGE_CASES))
def test_merge_unmerge(family, key):
    cfg = MERGE_CASES[key]
    model, _, method = _apply(cfg, family)
    torch.manual_seed(5)
    with torch.no_grad():  # a "trained" state: B ≠ 0, magnitude ≠ ‖W0‖
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.add_(0.1 * torch.randn_like(p))
    batch = tiny_batch(family)
    weights = {n: m.base.weight.detach().clone() for n, m in method.lora_modules(model).items()}
    with torch.no_grad():
        before = logits_of(model, batch)
        method.merge(model)
        merged = logits_of(model, batch)
        changed = any(not torch.equal(m.base.weight, weights[n]) for n, m in method.lora_modules(model).items())
        method.unmerge(model)
        after = logits_of(model, batch)
    assert changed
    assert (merged - before).abs().max().item() <= 1e-5
    assert (after - before).abs().max().item() <= 1e-5
    for n, m in method.lora_modules(model).items():
        if cfg.get("exact_unmerge", True):
            assert torch.equal(m.base.weight, weights[n]), n  # bit-exact W0 (W_res for PiSSA)
        else:
            assert torch.allclose(m.base.weight, weights[n], atol=1e-5), n


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
@pytest.mark.parametrize(
    "cfg",
    [{"name": "adapter_h"}, {"name": "adapter_l"}, {"name": "adapter_p"}, {"name": "adapter_drop", "drop_layers": 1},
     {"name": "prefix_embed", "prefix_len": 2}, {"name": "prefix_layer", "prefix_len": 2}, {"name": "bitfit"}],
    ids=lambda c: c["name"],
)
def test_non_mergeable_methods_raise(family, cfg):
    model, _, method = _apply(cfg, family)
    assert not method.can_merge
    with pytest.raises(MergeNotSupported):
        method.merge(model)
    with pytest.raises(MergeNotSupported):
        method.unmerge(model)


def test_dora_analysis_index_keeps_lora_keys():
    model, _, method = _apply({"name": "lora", "r": 2, "use_dora": True}, "gpt2")
    state = method.trainable_state(model)
    for e in method.analysis_index(model):
        assert e["A"].endswith(f"lora_A.{e['matrix']}") and e["B"].endswith(f"lora_B.{e['matrix']}")
        assert e["dora"] is True and e["magnitude"] in state and e["A"] in state
        assert "pissa" not in e


# -- prefix tuning -----------------------------------------------------------------------------
def hand_cache(base, family, acts, batch):
    """Key/value cache of activations ``acts`` (L, n, d) at positions 0..n−1, computed through
    each block's frozen (LayerNorm +) K/V projections (+ RoPE for LLaMA)."""
    _, blocks = find_layers(base, get_family(family))
    cache = DynamicCache(config=base.config)
    n = acts.shape[1]
    for layer, blk in enumerate(blocks):
        p = acts[layer][None]
        if family == "gpt2":
            d = p.shape[-1]
            qkv = blk.attn.c_attn(blk.ln_1(p))
            k, v, hd = qkv[..., d : 2 * d], qkv[..., 2 * d :], blk.attn.head_dim
        elif family == "llama":
            a = blk.input_layernorm(p)
            k, v, hd = blk.self_attn.k_proj(a), blk.self_attn.v_proj(a), blk.self_attn.head_dim
        else:  # post-LN BERT/RoBERTa: the block input feeds K/V directly
            att = blk.attention.self
            k, v, hd = att.key(p), att.value(p), att.attention_head_size
        k = k.view(1, n, -1, hd).transpose(1, 2)
        v = v.view(1, n, -1, hd).transpose(1, 2)
        if family == "llama":
            cos, sin = base.model.rotary_emb(v, position_ids=torch.arange(n)[None])
            k, _ = apply_rotary_pos_emb(k, k, cos, sin)
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
    return cache


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_layer_equals_base_with_prefix_cache(family):
    base, _ = tiny_model(family)
    model = copy.deepcopy(base)
    build_method({"name": "prefix_layer", "prefix_len": 3, "init": "normal", "init_std": 1.0}).apply(
        model, get_family(family)
    )
    batch = tiny_batch(family)
    acts = model.prefix_tuning.weight.detach()
    assert acts.shape == (2, 3, 32)
    with torch.no_grad():
        out = logits_of(model, batch)
        mask = torch.cat([torch.ones(2, 3, dtype=torch.long), batch["attention_mask"]], 1)
        ref = base(input_ids=batch["input_ids"], attention_mask=mask, past_key_values=hand_cache(base, family, acts, 2)).logits
        plain = logits_of(base, batch)
    assert out.shape == plain.shape
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out - plain).abs().max().item() > 1e-3  # the prefix does something


def test_prefix_layer_infix_bert_equals_cache_with_position_gap():
    """[P; CLS; I; rest] on BERT ≡ cache of P and I, CLS at position l_p, rest after l_p + l_i."""
    base, spec = tiny_model("bert")
    model = copy.deepcopy(base)
    build_method({"name": "prefix_layer", "prefix_len": 2, "infix_len": 3, "init": "normal", "init_std": 1.0}).apply(model, spec)
    batch = tiny_batch("bert")
    acts = model.prefix_tuning.weight.detach()  # (L, l_p + l_i, d): prefix rows then infix rows
    T = batch["input_ids"].shape[1]
    pos = torch.cat([torch.tensor([2]), torch.arange(1, T) + 2 + 3])[None].expand(2, -1)
    with torch.no_grad():
        out = logits_of(model, batch)
        mask = torch.cat([torch.ones(2, 5, dtype=torch.long), batch["attention_mask"]], 1)
        ref = base(input_ids=batch["input_ids"], attention_mask=mask, position_ids=pos,
                   past_key_values=hand_cache(base, "bert", acts, 2)).logits
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["prefix_embed", "prefix_layer"])
def test_decoder_infix_is_causal(family, name):
    """Tokens before the infix do not see it; tokens after it do; output length is unchanged."""
    model, spec, method = _apply({"name": name, "prefix_len": 2, "infix_len": 2, "infix_after": 3}, family)
    batch = tiny_batch(family)
    with torch.no_grad():
        a = logits_of(model, batch)
        w = model.prefix_tuning.weight  # perturb the infix rows only (not by a constant: LN removes it)
        infix = w[2:] if name == "prefix_embed" else w[:, 2:]
        infix += torch.randn_like(infix)
        b = logits_of(model, batch)
    assert a.shape == (2, 7, 101)
    assert torch.equal(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["prefix_embed", "prefix_layer"])
def test_prefix_generation_matches_full_forward(family, name):
    """generate() with its cache (left-padded) scores like full forwards without a cache."""
    model, _, _ = _apply({"name": name, "prefix_len": 3, "infix_len": 2, "init": "normal", "init_std": 0.5}, family)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 101, (2, 5), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                             pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        cur, cm = ids, mask
        for step in range(3):
            pos = (cm.cumsum(-1) - 1).masked_fill(cm == 0, 0)  # what generate() passes
            logits = model(input_ids=cur, attention_mask=cm, position_ids=pos, use_cache=False).logits[:, -1]
            assert torch.allclose(logits, gen.scores[step], atol=1e-4)
            nxt = gen.sequences[:, 5 + step : 6 + step]
            cur, cm = torch.cat([cur, nxt], 1), torch.cat([cm, torch.ones_like(nxt)], 1)


def test_bitfit_llama_warns_head_only():
    model, spec = tiny_model("llama")
    with pytest.warns(UserWarning, match="only the task head"):
        build_method({"name": "bitfit"}).apply(model, spec)
    assert not any(p.requires_grad for p in model.parameters())


def test_dora_on_fused_gpt2_slices_only_touches_adapted_rows():
    base, spec = tiny_model("gpt2")
    model = copy.deepcopy(base)
    method = build_method({"name": "lora", "r": 2, "use_dora": True, "targets": ["q", "v"]})
    method.apply(model, spec)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.add_(0.2 * torch.randn_like(p))
        method.merge(model)
    for i in range(2):
        w = model.transformer.h[i].attn.c_attn.base.weight
        w0 = base.transformer.h[i].attn.c_attn.weight
        assert torch.equal(w[:, 32:64], w0[:, 32:64])  # k slice untouched
        assert not torch.equal(w[:, :32], w0[:, :32]) and not torch.equal(w[:, 64:], w0[:, 64:])
    assert isinstance(model.transformer.h[0].attn.c_attn, LoRALinear)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_prefix_layer_gradients_with_activation_checkpointing(family):
    """Checkpointed blocks recompute during backward: the replacement must happen there too."""
    cfg = {"name": "prefix_layer", "prefix_len": 2, "infix_len": 1, "init": "normal", "init_std": 1.0}
    grads = []
    for ckpt in (False, True):
        model, _, _ = _apply(cfg, family)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        for m in model.modules():  # dropout off so both runs are deterministic
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model(**tiny_batch(family)).loss.backward()
        grads.append(model.prefix_tuning.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_pissa_extra_state_recovers_pretrained_delta():
    base, spec = tiny_model("gpt2")
    model = copy.deepcopy(base)
    method = build_method({"name": "lora", "r": 2, "init_a": "pissa", "targets": ["q", "v"]})
    method.apply(model, spec)
    extra, state = method.extra_state(model), method.trainable_state(model)
    for e in method.analysis_index(model):
        assert e["pissa"] is True and e["A0"] in extra and e["B0"] in extra
        # at init ΔW w.r.t. W0 is zero: s·(BA − B0A0) = 0
        delta = e["scaling"] * (state[e["B"]] @ state[e["A"]] - extra[e["B0"]] @ extra[e["A0"]])
        assert delta.abs().max() == 0
