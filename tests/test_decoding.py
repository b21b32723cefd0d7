"""Decoding (lora_research.decoding): stop at "\\n\\n"/EOS, greedy vs beam, batched vs one-by-one.

Uses an offline byte-level BPE tokenizer (tests/_byte_tokenizer.py: 256 byte tokens, optionally the merge
"\\n"+"\\n" → one token as GPT-2's 628) and tiny GPT-2 models, one of them rigged so that the
token it emits depends only on the position (W_out · LayerNorm(one-hot position)).
"""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lora_research.decoding import (
    DecodeConfig,
    GeneratedNoRepeatNGram,
    generate,
    left_pad,
    postprocess,
    stop_token_ids,
)

from _byte_tokenizer import byte_tokenizer


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def rigged_model(tok, emit_after: dict[int, int], n_positions: int = 48) -> GPT2LMHeadModel:
    """A GPT-2 whose next token after position p is ``emit_after[p]`` whatever the input."""
    d = n_positions
    cfg = GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=1, n_head=1, n_positions=n_positions,
                     tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for block in model.transformer.h:  # blocks add nothing to the residual stream
            for lin in (block.attn.c_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.copy_(torch.eye(n_positions) * 10)
        model.lm_head.weight.zero_()
        for p, t in emit_after.items():
            model.lm_head.weight[t, p] += 10.0
    return model


def test_stops_at_blank_line_token_and_cuts_output():
    tok = byte_tokenizer(merge_blank_line=True)
    blank = ids(tok, "\n\n")
    assert len(blank) == 1 and blank[0] in stop_token_ids(tok)
    prompt = ids(tok, "MR:") + [tok.eos_token_id]  # 4 tokens, positions 0..3
    wanted = ids(tok, "Hi there") + blank + ids(tok, "JUNK JUNK")
    model = rigged_model(tok, {3 + i: t for i, t in enumerate(wanted)})
    cfg = DecodeConfig(strategy="greedy", no_repeat_ngram_size=0, max_new_tokens=20)
    texts, stats = generate(model, tok, [prompt], cfg)
    assert texts == ["Hi there"]
    assert stats["generated_tokens"] == len(ids(tok, "Hi there")) + 1  # stopped right at "\n\n"
    beam = DecodeConfig(strategy="beam", num_beams=3, no_repeat_ngram_size=0, max_new_tokens=20)
    assert generate(model, tok, [prompt], beam)[0] == ["Hi there"]


def test_stops_at_blank_line_spelt_as_two_tokens():
    tok = byte_tokenizer(merge_blank_line=False)
    assert stop_token_ids(tok) == [tok.eos_token_id]  # no single token holds "\n\n"
    prompt = ids(tok, "MR:") + [tok.eos_token_id]
    wanted = ids(tok, "Ok.\n\nJUNK JUNK JUNK")
    model = rigged_model(tok, {3 + i: t for i, t in enumerate(wanted)})
    cfg = DecodeConfig(strategy="greedy", no_repeat_ngram_size=0, max_new_tokens=20)
    texts, stats = generate(model, tok, [prompt], cfg)
    assert texts == ["Ok."]
    assert stats["generated_tokens"] <= len(ids(tok, "Ok.\n\n")) + 1  # the stop string ended it, no junk decoded
    beam = DecodeConfig(strategy="beam", num_beams=2, no_repeat_ngram_size=0, max_new_tokens=20)
    assert generate(model, tok, [prompt], beam)[0] == ["Ok."]


def test_stops_at_eos_and_postprocess():
    tok = byte_tokenizer()
    prompt = ids(tok, "x") + [tok.eos_token_id]
    wanted = ids(tok, " Done") + [tok.eos_token_id] + ids(tok, "JUNK")
    model = rigged_model(tok, {1 + i: t for i, t in enumerate(wanted)})
    texts, _ = generate(model, tok, [prompt], DecodeConfig(strategy="greedy", no_repeat_ngram_size=0))
    assert texts == ["Done"]
    stops = stop_token_ids(tok)
    assert postprocess(tok, ids(tok, " a\nb\n\nc"), stops)[0] == "a b"
    assert postprocess(tok, ids(tok, " a b ") + [tok.eos_token_id] + ids(tok, "zz"), stops) == ("a b", 6)  # 5 byte tokens + EOS


def test_no_repeat_ngram_unit():
    # n-grams of the prompt do not count; n-grams of the generated part do
    proc = GeneratedNoRepeatNGram(2, prompt_len=3)
    x = torch.tensor([[5, 6, 5, 6, 7, 6]])  # generated part: 6 7 6 -> bigram (6, 7) seen, last token 6
    scores = proc(x, torch.zeros(1, 10))
    assert scores[0, 7] == -float("inf") and torch.isfinite(scores[0, 6]) and torch.isfinite(scores[0, 5])
    x = torch.tensor([[5, 6, 9, 5]])  # prompt (5, 6) must not ban 6 after 5
    assert torch.isfinite(GeneratedNoRepeatNGram(2, prompt_len=2)(x, torch.zeros(1, 10))).all()


def _random_lm(tok, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # sharpen the distribution so greedy/beam choices are far from ties
        model.lm_head.weight.mul_(1.0)
        model.transformer.wte.weight.mul_(20.0)
    return model


def _manual_greedy(model, prompt, max_new, stops):
    seq = list(prompt)
    for _ in range(max_new):
        with torch.no_grad():
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
        seq.append(nxt)
        if nxt in stops:
            break
    return seq[len(prompt):]


def test_greedy_equals_beam1_manual_and_batched_equals_single():
    tok = byte_tokenizer()
    model = _random_lm(tok)
    prompts = [ids(tok, t) + [tok.eos_token_id] for t in ("name : A | area : x", "b", "name : Zed | food : y z")]
    cfg = DecodeConfig(strategy="greedy", no_repeat_ngram_size=0, max_new_tokens=12, batch_size=8)
    batched, _ = generate(model, tok, prompts, cfg)
    single = [generate(model, tok, [p], cfg)[0][0] for p in prompts]
    assert batched == single
    stops = stop_token_ids(tok)
    manual = [postprocess(tok, _manual_greedy(model, p, 12, stops), stops)[0] for p in prompts]
    assert batched == manual  # KV cache + left padding == plain argmax on the unpadded prompt
    beam1 = DecodeConfig(strategy="beam", num_beams=1, no_repeat_ngram_size=0, max_new_tokens=12, batch_size=8)
    assert generate(model, tok, prompts, beam1)[0] == batched


def test_beam_batched_equals_one_by_one():
    tok = byte_tokenizer()
    model = _random_lm(tok, seed=1)
    prompts = [ids(tok, t) + [tok.eos_token_id] for t in ("short", "a much longer prompt here", "mid size")]
    cfg = DecodeConfig(strategy="beam", num_beams=3, length_penalty=0.9, no_repeat_ngram_size=3,
                       max_new_tokens=8, batch_size=3)
    batched, _ = generate(model, tok, prompts, cfg)
    single = [generate(model, tok, [p], cfg)[0][0] for p in prompts]
    assert batched == single


def test_left_pad():
    ids_, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids_.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
