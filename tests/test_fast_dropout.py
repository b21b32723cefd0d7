"""trainer.fast_dropout (lora_research.fast_dropout): CPU dropout masks from numpy's SFC64, the same dropout.

Oracles: the definition of inverted dropout (each element kept with probability 1 - k/65536 and scaled by its
inverse; the gradient masked and scaled the same), by hand and by counting; transformers' own SDPA attention
(with every element kept, a model in training mode with fast masks computes what it computes in eval mode,
padding, causal masks and grouped-query heads included); torch's RNG state (same seed, same masks)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lora_research import fast_dropout, unpadded
from lora_research.methods import build_method

from _tiny_models import FAMILIES, logits_of, nudge_lora_b, tiny_batch, tiny_model


def test_keep_mask_drops_k_of_65536_levels_and_scales_by_the_inverse():
    torch.manual_seed(0)
    n = 1_000_000
    keep, scale = fast_dropout.keep_mask((1000, 1000), 0.1)
    assert keep.shape == (1000, 1000) and keep.dtype == torch.bool
    k = round(0.1 * 65536)
    assert scale == 65536 / (65536 - k)
    dropped = (~keep).sum().item()
    sd = math.sqrt(n * (k / 65536) * (1 - k / 65536))
    assert abs(dropped - n * k / 65536) < 5 * sd
    # the bits are uniform: each quarter of the 16-bit range is hit equally often at p = 0.25, 0.5, 0.75
    for p in (0.25, 0.5, 0.75):
        keep, _ = fast_dropout.keep_mask((n,), p)
        assert abs((~keep).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_masks_follow_torchs_generator():
    torch.manual_seed(5)
    a, _ = fast_dropout.keep_mask((64, 33), 0.1)
    b, _ = fast_dropout.keep_mask((64, 33), 0.1)
    torch.manual_seed(5)
    a2, _ = fast_dropout.keep_mask((64, 33), 0.1)
    assert torch.equal(a, a2) and not torch.equal(a, b)
    state = torch.get_rng_state()
    c, _ = fast_dropout.keep_mask((64, 33), 0.1)
    torch.set_rng_state(state)  # a checkpoint's saved RNG state gives the same next mask
    c2, _ = fast_dropout.keep_mask((64, 33), 0.1)
    assert torch.equal(c, c2)


def test_bad_probability_names_the_value_and_the_valid_range():
    with pytest.raises(ValueError, match=r"p=1.5 .*valid: 0 <= p < 1"):
        fast_dropout.keep_mask((4,), 1.5)
    x = torch.randn(8, 8)
    assert torch.equal(fast_dropout.dropout(x, 1.0), torch.zeros_like(x))  # torch's own, as F.dropout
    assert fast_dropout.dropout(x, 0.0) is x and fast_dropout.dropout(x, 0.3, training=False) is x


def test_dropout_forward_and_backward_by_hand(monkeypatch):
    drawn = []
    real = fast_dropout.keep_mask

    def spy(shape, p):
        drawn.append(real(shape, p))
        return drawn[-1]

    monkeypatch.setattr(fast_dropout, "keep_mask", spy)
    torch.manual_seed(0)
    x = torch.randn(7, 300, requires_grad=True)
    y = fast_dropout.dropout(x, 0.2)
    (keep, scale), = drawn
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(y, x.detach() * keep * scale, rtol=0, atol=0)
    g = torch.randn(7, 300)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * keep * scale, rtol=0, atol=0)


def test_expectation_is_the_input():
    torch.manual_seed(1)
    x = torch.rand(4000) + 0.5
    mean = torch.stack([fast_dropout.dropout(x, 0.1) for _ in range(400)]).mean(0)
    # per element: 400 draws of x·Bernoulli(0.9)/0.9, standard deviation x·sqrt(0.1/0.9/400) <= 0.025
    assert (mean - x).abs().max() < 6 * 1.5 * math.sqrt(0.1 / 0.9 / 400)
    assert abs((mean - x).mean()) < 6 * 1.5 * math.sqrt(0.1 / 0.9 / 400 / 4000)


def _all_kept(monkeypatch):
    calls = []

    def keep_all(shape, p):
        calls.append(tuple(shape))
        return torch.ones(shape, dtype=torch.bool), 1.0

    monkeypatch.setattr(fast_dropout, "keep_mask", keep_all)
    return calls


def test_attention_by_hand(monkeypatch):
    """softmax(q kᵀ/√d + mask) with a known keep-mask and scale, then · v; gradients as autograd's of that."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    keep = torch.rand(2, 3, 5, 5, generator=g) > 0.3
    monkeypatch.setattr(fast_dropout, "keep_mask", lambda shape, p: (keep, 1 / 0.7))
    out = fast_dropout.sdpa(q, k, v, attn_mask=mask, dropout_p=0.3)
    scores = (q @ k.transpose(-1, -2)) / 2.0
    scores = scores.masked_fill(~mask, float("-inf"))
    ref = (torch.softmax(scores, -1) * keep / 0.7) @ v
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_with_every_element_kept_is_torchs_sdpa(monkeypatch, causal):
    _all_kept(monkeypatch)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 6, 8, generator=g) for _ in range(3))
    mask = None if causal else (torch.rand(3, 1, 6, 6, generator=g) > 0.3) | torch.eye(6, dtype=torch.bool)
    out = fast_dropout.sdpa(q, k, v, attn_mask=mask, dropout_p=0.1, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def _with_dropout(family):
    """A tiny model with LoRA (branch dropout 0.1), attention dropout 0.1 and hidden dropout where the family
    has it; LLaMA gets attention dropout set (its config's default is 0)."""
    model, spec = tiny_model(family)
    build_method({"name": "lora", "r": 4, "alpha": 8, "targets": ["q", "v"], "dropout": 0.1}).apply(model, spec)
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.1
    nudge_lora_b(model)
    return model.eval(), spec


@pytest.mark.parametrize("family", FAMILIES)
def test_every_kept_training_forward_is_the_eval_forward(monkeypatch, family):
    """Fast masks in every dropout module and in attention: with every element kept, training mode computes the
    eval-mode (dropout-free, transformers' SDPA) logits: padding, causal masks and grouped-query heads as there."""
    model, _ = _with_dropout(family)
    batch = tiny_batch(family, batch=3, length=9)
    with torch.no_grad():
        ref = logits_of(model, batch)
    drops = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    hooks = fast_dropout.enable(model)
    assert all(type(m) is fast_dropout.Dropout for m in drops) and drops
    calls = _all_kept(monkeypatch)
    model.train()
    with torch.no_grad():
        out = logits_of(model, batch)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    attention_draws = [s for s in calls if len(s) == 4]
    assert len(attention_draws) == 2, f"{family}: the two layers' attention probabilities drew fast masks: {calls}"
    hooks.remove()
    assert all(type(m) is torch.nn.Dropout for m in drops)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_draws_are_seeded_and_remove_restores_torchs(family):
    model, _ = _with_dropout(family)
    batch = tiny_batch(family, batch=3, length=9)
    model.train()
    before = model.config._attn_implementation
    torch.manual_seed(0)
    with torch.no_grad():
        plain = logits_of(model, batch)
    hooks = fast_dropout.enable(model)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(logits_of(model, batch))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert not torch.equal(outs[0], plain)  # other draws than torch's
    hooks.remove()
    assert model.config._attn_implementation == before
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(logits_of(model, batch), plain)


def test_eval_mode_and_zero_dropout_take_the_models_own_attention(monkeypatch):
    model, _ = _with_dropout("bert")
    batch = tiny_batch("bert", batch=3, length=9)
    with torch.no_grad():
        ref = logits_of(model, batch)
    fast_dropout.enable(model)
    calls = _all_kept(monkeypatch)
    with torch.no_grad():
        assert torch.equal(logits_of(model, batch), ref)
    assert calls == []


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_unpadded_encoder_draws_its_attention_masks_fast(monkeypatch, family):
    """trainer.unpadded with trainer.fast_dropout: the packed attention draws fast masks too; with every element
    kept, training mode computes the padded eval-mode logits."""
    model, spec = _with_dropout(family)
    method = build_method({"name": "lora", "r": 4, "alpha": 8, "targets": ["q", "v"], "dropout": 0.1})
    batch = tiny_batch(family, batch=3, length=9)
    with torch.no_grad():
        ref = logits_of(model, batch)
    packed = copy.deepcopy(model)
    fast_dropout.enable(packed)
    hooks = unpadded.enable(packed, spec, method)
    calls = _all_kept(monkeypatch)
    packed.train()
    with torch.no_grad():
        out = logits_of(packed, batch)
    assert hooks.packed_calls == 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len([s for s in calls if len(s) == 4]) == 2  # both layers' packed attention
    assert any(len(s) == 2 for s in calls)  # hidden dropouts on the packed [N, hidden] tokens


def test_fast_dropout_is_a_boolean_trainer_option():
    from omegaconf import OmegaConf

    from lora_research.config import validate

    base = {"model": {"name": "tiny", "family": "bert", "random_init": True,
                      "config_overrides": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
                                           "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}},
            "task": {"name": "sst2", "kind": "glue"}, "method": {"name": "lora"},
            "trainer": {"fast_dropout": True}, "logger": {"name": "none"}}
    assert validate(OmegaConf.create(base)).trainer.fast_dropout is True
    base["trainer"]["fast_dropout"] = "often"
    with pytest.raises(Exception, match="fast_dropout"):
        validate(OmegaConf.create(base))
