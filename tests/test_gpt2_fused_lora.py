"""LoRA on GPT-2's fused ``attn.c_attn`` (Conv1D, q|k|v) against a hand-built reference.

Conv1D stores its weight as (in, out) and computes ``y = x @ W + b``; in the (out, in) view the
rows [0,d) are q, [d,2d) k, [2d,3d) v. LoRA on q and v (loralib ``MergedLinear`` with
``enable_lora=[True, False, True]``) must give ``y_q += s·B_q A_q x``, ``y_v += s·B_v A_v x`` and
leave ``y_k`` untouched.
"""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lora_research.methods import LoRA, LoRAConfig, LoRALinear, count_parameters
from lora_research.targets import get_family

D, L, R, ALPHA = 16, 3, 2, 8.0


def _tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50, n_embd=D, n_layer=L, n_head=2, n_positions=32,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # GPT-2 init has zero biases; make them nonzero so the bias path is tested
        for block in model.transformer.h:
            block.attn.c_attn.bias.normal_()
    return model


def _apply(model, targets=("q", "v")) -> LoRA:
    method = LoRA(LoRAConfig(r=R, alpha=ALPHA, targets=list(targets)))
    method.apply(model, get_family("gpt2"))
    return method


def _set_nonzero_b(module: LoRALinear, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.lora_B:
            module.lora_B[m].copy_(torch.randn(module.lora_B[m].shape, generator=g))
            module.lora_A[m].copy_(torch.randn(module.lora_A[m].shape, generator=g))


def test_fused_qv_matches_hand_built_reference():
    model = _tiny_gpt2()
    w0 = model.transformer.h[0].attn.c_attn.weight.detach().clone()  # (in=D, out=3D)
    b0 = model.transformer.h[0].attn.c_attn.bias.detach().clone()
    _apply(model)
    mod = model.transformer.h[0].attn.c_attn
    assert isinstance(mod, LoRALinear)
    assert mod.fan_in_fan_out and mod.slices == {"q": (0, D), "v": (2 * D, 3 * D)}
    _set_nonzero_b(mod)
    s = ALPHA / R
    x = torch.randn(2, 5, D)

    a_q, b_q = mod.lora_A["q"].detach(), mod.lora_B["q"].detach()
    a_v, b_v = mod.lora_A["v"].detach(), mod.lora_B["v"].detach()
    base = x @ w0 + b0
    expected = base.clone()
    expected[..., 0:D] += s * (x @ a_q.T @ b_q.T)
    expected[..., 2 * D:3 * D] += s * (x @ a_v.T @ b_v.T)

    with torch.no_grad():
        y = mod(x)
        base_module_out = mod.base(x)  # the frozen Conv1D itself (addmm; rounding differs from x @ w0 + b0)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_module_out, base, rtol=1e-5, atol=1e-5)
    assert torch.equal(y[..., D:2 * D], base_module_out[..., D:2 * D])  # k: exactly unchanged
    assert not torch.allclose(y[..., 0:D], base[..., 0:D])
    assert not torch.allclose(y[..., 2 * D:], base[..., 2 * D:])

    # ΔW in the (out, in) view: zero on k rows, s·B A on q and v rows.
    delta = mod.full_delta()
    torch.testing.assert_close(delta[0:D], s * b_q @ a_q)
    torch.testing.assert_close(delta[2 * D:], s * b_v @ a_v)
    assert torch.count_nonzero(delta[D:2 * D]) == 0


def test_merge_unmerge_exact_on_whole_model():
    model = _tiny_gpt2()
    method = _apply(model)
    for block in model.transformer.h:
        _set_nonzero_b(block.attn.c_attn, seed=len(block.attn.c_attn.lora_B))
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        unmerged = model(ids).logits
    originals = [b.attn.c_attn.base.weight.detach().clone() for b in model.transformer.h]
    method.merge(model)
    for block, w0 in zip(model.transformer.h, originals):
        w = block.attn.c_attn.base.weight
        assert block.attn.c_attn.merged
        assert torch.equal(w[:, D:2 * D], w0[:, D:2 * D])  # k columns of the (in, out) weight untouched
        assert not torch.equal(w[:, :D], w0[:, :D])
        torch.testing.assert_close(w - w0, block.attn.c_attn.full_delta().T)
    with torch.no_grad():
        merged = model(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    method.unmerge(model)
    for block, w0 in zip(model.transformer.h, originals):
        assert torch.equal(block.attn.c_attn.base.weight, w0)  # bit-exact
    with torch.no_grad():
        assert torch.equal(model(ids).logits, unmerged)


def test_zero_b_is_identity_and_parameter_count():
    model = _tiny_gpt2()
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        before = model(ids).logits
    _apply(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    counts = count_parameters(model, get_family("gpt2"))
    # Paper §4.2/§5: |Θ| = 2 · L̂ · d_model · r, L̂ = number of adapted matrices = 2 per block (q, v).
    assert counts.trainable_params == 2 * (2 * L) * D * R
    assert counts.head_params == 0
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(names) == 4 * L and all(".attn.c_attn.lora_" in n for n in names)


def test_gradients_reach_only_q_and_v_factors():
    model = _tiny_gpt2()
    _apply(model)
    for block in model.transformer.h:
        _set_nonzero_b(block.attn.c_attn)
    model.train()
    ids = torch.randint(0, 50, (2, 6))
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, n
        else:
            assert p.grad is None, n
