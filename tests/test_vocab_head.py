"""The vocabulary projection in pieces (lora_research.vocab_head) against the head itself (one product).

At SmolLM2's width (d = 576) every shape that decoding and the dev loss send through the pieces (1 to
MAX_ROWS rows, 2-D and 3-D, with and without bias, a last piece shorter than PIECE, the 49,152-row head) must
give ``torch.equal`` logits. A tiny LLaMA (d = 32, where the BLAS sums narrower outputs in another order) gets
logits within 1e-6, and decodes the same tokens with the fast beam search (pieces) as with ``model.generate``.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lora_research import vocab_head
from lora_research.vocab_head import MAX_ROWS, PIECE, applies, in_pieces, project


def _head(vocab: int, d: int, bias: bool, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(d, vocab, bias=bias)
    with torch.no_grad():
        head.weight.normal_(0, 0.05)
    return head


def _count_linear(monkeypatch) -> list:
    calls = []
    real = F.linear

    def spy(x, w, b=None):
        calls.append(tuple(w.shape))
        return real(x, w, b)

    monkeypatch.setattr(vocab_head.F, "linear", spy)
    return calls


@pytest.mark.parametrize("rows", [1, 8, 64, 80, MAX_ROWS])
@pytest.mark.parametrize("bias", [False, True])
def test_pieces_give_bitwise_the_one_product_logits(rows, bias, monkeypatch):
    head = _head(3 * PIECE + 123, 576, bias)  # three whole pieces and a short one
    x = torch.randn(rows, 576)
    with torch.no_grad():
        want = head(x)
        calls = _count_linear(monkeypatch)
        assert applies(head, x)
        got = project(head, x)
    assert calls == [(PIECE, 576)] * 3 + [(123, 576)]  # it really ran in pieces
    assert got.shape == want.shape and torch.equal(got, want)


def test_smollm2_shape_and_3d_input_are_bitwise_equal():
    head = _head(49152, 576, bias=False)
    for shape in ((80, 1, 576), (8, 576), (1, 64, 576)):  # a beam step, a prefill's last rows, a dev-loss chunk
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(project(head, x), head(x))


def test_one_product_where_pieces_do_not_apply():
    head = _head(3 * PIECE, 32, bias=False)
    x = torch.randn(4, 32, requires_grad=True)
    assert not applies(head, x)  # gradients on: the head as it is (same graph as training)
    assert project(head, x).grad_fn is not None
    with torch.no_grad():
        assert not applies(head, torch.randn(MAX_ROWS + 1, 32))  # many rows: one product is faster
        assert not applies(_head(PIECE, 32, bias=False), torch.randn(4, 32))  # a single piece anyway
        assert not applies(torch.nn.Sequential(head), torch.randn(4, 32))  # not a plain Linear


def test_in_pieces_routes_the_models_head_and_restores_it(monkeypatch):
    from _tiny_models import OVERRIDES
    from lora_research.models import ModelConfig, load_model

    torch.manual_seed(0)
    overrides = dict(OVERRIDES["llama"], vocab_size=2 * PIECE + 7)
    model = load_model(ModelConfig(name="tiny-llama-big-vocab", family="llama", random_init=True,
                                   config_overrides=overrides), head="generation").eval()
    ids = torch.randint(3, 2 * PIECE, (2, 5))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        calls = _count_linear(monkeypatch)
        with in_pieces(model):
            got = model(input_ids=ids).logits
        assert [c[0] for c in calls if c[1] == 32 and c[0] not in (16, 32, 64)] == [PIECE, PIECE, 7]  # the head's products
        assert "forward" not in vars(model.get_output_embeddings())  # the head is itself again
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_fast_beam_search_with_pieces_decodes_generates_tokens():
    """The fast engine (vocabulary in pieces) against ``model.generate`` (one product) on a vocabulary of 3 pieces."""
    from _tiny_models import OVERRIDES
    from lora_research.decoding import DecodeConfig, generate
    from lora_research.models import ModelConfig, load_model
    from _byte_tokenizer import byte_tokenizer

    tok = byte_tokenizer(extra_tokens=2 * PIECE + 300)
    vocab = len(tok)
    torch.manual_seed(3)
    overrides = dict(OVERRIDES["llama"], vocab_size=vocab, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = load_model(ModelConfig(name="tiny-llama-big-vocab", family="llama", random_init=True,
                                   config_overrides=overrides), head="generation").eval()
    with torch.no_grad():  # sharpen the distribution so beam choices are far from ties (as tests/test_decoding.py)
        model.model.embed_tokens.weight.mul_(20.0)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab - 1, (n,), generator=g).tolist() for n in (4, 9, 6)]
    cfg = DecodeConfig(strategy="beam", num_beams=4, length_penalty=0.9, no_repeat_ngram_size=3,
                       max_new_tokens=10, batch_size=2, engine="fast")
    fast, _ = generate(model, tok, prompts, cfg)
    hf, _ = generate(model, tok, prompts, replace(cfg, engine="hf"))
    assert fast == hf and any(fast)
