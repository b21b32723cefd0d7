"""trainer.unpadded (lora_research.unpadded): an encoder computing a padded batch's real tokens only.

Oracle: the same model without it (transformers' own padded forward): logits and gradients equal to
float rounding on BERT and RoBERTa, under LoRA, an adapter and BitFit; prefix tuning and decoders refused."""
from __future__ import annotations

import copy

import pytest
import torch

from lora_research import unpadded
from lora_research.methods import build_method

from _tiny_models import tiny_model

METHODS = {
    "lora": {"name": "lora", "r": 4, "alpha": 8, "targets": ["q", "k", "v", "o"], "dropout": 0.0},
    "adapter_h": {"name": "adapter_h"},
    "bitfit": {"name": "bitfit"},
    "full_ft": {"name": "full_ft"},
}


def _batch(family, n=6, width=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width, (n,), generator=g)
    lengths[2] = width
    ids = torch.randint(3, 101, (n, width), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids[mask == 0] = 1 if family == "roberta" else 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}


def _adapted(family, method):
    model, spec = tiny_model(family)
    m = build_method(METHODS[method])
    m.apply(model, spec)
    with torch.no_grad():  # every trainable tensor away from its initial value (LoRA's B starts at zero)
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model, spec, m


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_outputs_and_gradients_equal_the_padded_model(family, method):
    plain, spec, m = _adapted(family, method)
    packed = copy.deepcopy(plain)
    hooks = unpadded.enable(packed, spec, m)
    batch = _batch(family)
    with torch.no_grad():
        a, b = plain(**batch).logits, packed(**batch).logits
    assert hooks.packed_calls == 1
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # training mode, dropout off: same loss, same gradient of every trainable tensor
    for model in (plain, packed):
        model.train()
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        model.zero_grad()
        model(**batch).loss.backward()
    assert hooks.packed_calls == 2
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(plain.named_parameters(), packed.parameters()) if p.requires_grad]
    assert grads and all(g is not None for _, g, _ in grads)
    for name, g_plain, g_packed in grads:
        torch.testing.assert_close(g_packed, g_plain, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_passes_the_packing_down():
    """Trainer's activation checkpointing wraps each layer's call: the packing keyword still reaches attention."""
    plain, spec, m = _adapted("bert", "lora")
    packed = copy.deepcopy(plain)
    hooks = unpadded.enable(packed, spec, m)
    batch = _batch("bert")
    for model in (plain, packed):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        model(**batch).loss.backward()
    assert hooks.packed_calls == 1
    for (name, p), q in zip(plain.named_parameters(), packed.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_unpadded_batches_and_requested_hidden_states_run_padded():
    model, spec, m = _adapted("bert", "lora")
    with torch.no_grad():
        ref = model(**_batch("bert")).logits
    hooks = unpadded.enable(model, spec, m)
    full = _batch("bert")
    full["attention_mask"][:] = 1
    with torch.no_grad():
        model(**full)
        out = model(**_batch("bert"), output_hidden_states=True)
    assert hooks.packed_calls == 0
    assert out.hidden_states[-1].shape[:2] == (6, 13)
    # run padded, the padding is still masked: transformers builds masks for the wrapper's name as for sdpa's
    # (unregistered names get none)
    torch.testing.assert_close(out.logits, ref, rtol=1e-5, atol=1e-6)


def test_remove_gives_the_model_back():
    model, spec, m = _adapted("roberta", "lora")
    before = model.config._attn_implementation
    batch = _batch("roberta")
    with torch.no_grad():
        ref = model(**batch).logits
    hooks = unpadded.enable(model, spec, m)
    assert model.config._attn_implementation == unpadded.attention_name(before)
    hooks.remove()
    assert model.config._attn_implementation == before
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref)
    assert hooks.packed_calls == 0


def test_what_cannot_be_packed_is_refused():
    model, spec = tiny_model("bert")
    prefix = build_method({"name": "prefix_layer", "prefix_len": 2, "infix_len": 0})
    prefix.apply(model, spec)
    with pytest.raises(ValueError, match="cannot pack method 'prefix_layer'.*unpadded=false"):
        unpadded.enable(model, spec, prefix)
    gpt2, gspec = tiny_model("gpt2")
    with pytest.raises(ValueError, match="'gpt2' is a decoder.*unpadded=false"):
        unpadded.enable(gpt2, gspec, build_method(METHODS["lora"]))


def test_the_option_is_validated():
    from conftest import compose
    from lora_research.config import validate

    with pytest.raises(ValueError, match="unpadded=true.*method 'prefix_embed' inserts positions.*unpadded=false"):
        validate(compose(["model=tiny_bert", "task=sst2", "logger=none", "method=prefix_embed",
                          "trainer.unpadded=true"]))
    with pytest.raises(ValueError, match="unpadded=true.*'gpt2' is a decoder.*unpadded=false"):
        validate(compose(["model=tiny_gpt2", "task=e2e", "logger=none", "trainer.unpadded=true"]))
    with pytest.raises(ValueError, match="trainer.unpadded='maybe' is not valid; valid choices: .true, false, auto"):
        validate(compose(["model=tiny_bert", "task=sst2", "logger=none", "trainer.unpadded=maybe"]))
    # the quickstart's auto: on for LoRA, off for prefix tuning
    assert validate(compose(["experiment=quickstart", "logger=none"])).trainer.unpadded is True
    assert validate(compose(["experiment=quickstart", "logger=none", "method=prefix_layer"])).trainer.unpadded is False
