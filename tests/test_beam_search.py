"""lora_research.beam_search: for every prompt, token-for-token what HF ``model.generate`` beam search gives.

Tiny random GPT-2 and LLaMA (GQA) models built from configs (no download), weights scaled up so
that the next-token distributions are peaked and the beam search meets its EOS ids at different
steps for different prompts (prompts leave, the next ones take their rows). Every case compares
with ``model.generate`` on all the prompts in one left-padded batch, with the GenerationConfig that
``decoding.generate`` builds; ours runs them with at most ``batch_size`` in the model batch.
"""
from __future__ import annotations

import pytest
import torch
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from _byte_tokenizer import byte_tokenizer
from lora_research.beam_search import beam_search, repeated_ngram_bans
from lora_research.decoding import GeneratedNoRepeatNGram, left_pad, stop_token_ids
from lora_research.forward_signature import cache_keyword

VOCAB = 100
MAX_NEW = 15
PROMPT_LENS = (5, 9, 3, 12, 7)


def tiny_gpt2(vocab: int = VOCAB, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():  # peaked distributions: rows meet EOS early, few near-ties
        for p in model.parameters():
            p.mul_(5.0)
    return model


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" not in n:
                p.mul_(10.0)
    return model


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}
PAD = {"gpt2": 0, "llama": 1}  # pad id 0: HF fills finished rows with eos[0] instead (``pad or eos[0]``)
_CACHE: dict = {}


def model_and_prompts(name: str, lens=PROMPT_LENS, seed: int = 3):
    """(model, prompts, eos ids); EOS = the 2 tokens the model predicts most."""
    key = (name, tuple(lens), seed)
    if key not in _CACHE:
        model = MODELS[name]()
        g = torch.Generator().manual_seed(seed)
        prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lens]
        ids, mask = left_pad(prompts, PAD[name])
        with torch.no_grad():
            probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
        eos = probs.mean((0, 1)).topk(2).indices.tolist()
        _CACHE[key] = (model, prompts, eos)
    return _CACHE[key]


def hf_generate(model, prompts, *, num_beams, length_penalty, early_stopping, eos, pad, ngram=0, criteria=None,
                max_new_tokens=MAX_NEW) -> list[list[int]]:
    """``model.generate`` on all prompts in one left-padded batch, with the GenerationConfig of
    ``decoding.generate``; per prompt the tokens after the prompt (shorter hypotheses filled as HF fills)."""
    ids, mask = left_pad(prompts, pad)
    width = ids.shape[1]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                           length_penalty=length_penalty, early_stopping=early_stopping, no_repeat_ngram_size=0,
                           eos_token_id=eos, pad_token_id=pad, use_cache=True)
    procs = LogitsProcessorList([GeneratedNoRepeatNGram(ngram, width)] if ngram else [])
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, logits_processor=procs,
                         stopping_criteria=criteria if criteria is not None else StoppingCriteriaList())
    return out[:, width:].tolist()


def ours(model, prompts, *, num_beams, length_penalty, early_stopping, eos, pad, ngram=0, criteria=None,
         batch_size=None, max_new_tokens=MAX_NEW):
    """(outputs, info, cache lengths seen by the model)"""
    lengths: list[int] = []

    def hook(_module, args, kwargs):
        lengths.append(kwargs[cache_keyword(model)].get_seq_length())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out, info = beam_search(model, prompts, batch_size=batch_size or len(prompts), num_beams=num_beams,
                                max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                                early_stopping=early_stopping, eos_token_ids=eos, pad_token_id=pad,
                                no_repeat_ngram_size=ngram, stopping_criteria=criteria, return_info=True)
    finally:
        handle.remove()
    return out, info, lengths


def assert_same(ref: list[list[int]], mine: list[list[int]], pad: int, eos) -> None:
    """Ours, laid out as generate lays out its batch (every hypothesis filled with ``pad or eos[0]`` to the
    longest), equals generate's output exactly."""
    fill = pad or eos[0]
    width = max(map(len, mine))
    assert len(ref) == len(mine) and all(len(r) == width for r in ref), (ref, mine)
    assert [m + [fill] * (width - len(m)) for m in mine] == ref, (ref, mine)


SETTINGS = [(0.9, False), (1.5, False), (1.5, True), (0.9, "never"), (0.0, "never")]


@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize("ngram", [0, 3])
@pytest.mark.parametrize("length_penalty,early_stopping", SETTINGS)
@pytest.mark.parametrize("num_beams", [3, 10])
@pytest.mark.parametrize("name", list(MODELS))
def test_equals_hf_generate(name, num_beams, length_penalty, early_stopping, ngram, batch_size):
    """Same tokens as model.generate for every prompt, all prompts in the batch or 2 at a time."""
    model, prompts, eos = model_and_prompts(name)
    cfg = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping, eos=eos,
               pad=PAD[name], ngram=ngram)
    ref = hf_generate(model, prompts, **cfg)
    mine, info, _ = ours(model, prompts, batch_size=batch_size, **cfg)
    assert_same(ref, mine, cfg["pad"], cfg["eos"])
    assert info["beam_rows"] == sum(info["row_steps"]) * num_beams
    assert max(info["row_steps"]) <= MAX_NEW
    if batch_size == 2:
        assert info["prefills"] == 3  # prompts 0-1, 2-3, 4
        assert info["steps"] < sum(info["row_steps"])  # prompts shared steps


@pytest.mark.parametrize("name", list(MODELS))
def test_prompts_leave_and_the_next_take_their_rows(name):
    """Prompts end at three or more different steps; with 2 slots, each one that ends is replaced at once
    (the model batch stays full while prompts wait); still == HF."""
    model, prompts, eos = model_and_prompts(name)
    cfg = dict(num_beams=3, length_penalty=0.9, early_stopping=False, eos=eos, pad=PAD[name], ngram=3)
    ref = hf_generate(model, prompts, **cfg)
    mine, info, lengths = ours(model, prompts, batch_size=2, **cfg)
    assert_same(ref, mine, cfg["pad"], cfg["eos"])
    steps = info["row_steps"]
    assert len(set(steps)) >= 3, steps
    # while prompts wait, every step runs 2 prompts: the steps are at most those of the longest pairs
    assert info["steps"] <= sum(sorted(steps, reverse=True)[:3]), info
    assert info["beam_rows"] < info["steps"] * len(prompts) * 3  # HF runs every row at every step
    # the cache forgets positions no prompt reads: never longer than one prompt's whole history
    assert max(lengths) <= max(map(len, prompts)) + MAX_NEW


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_newcomers_longer_and_shorter_than_the_cache(order):
    """Prompts of 2..14 tokens one slot at a time and two at a time: a newcomer longer than the cache makes room
    at the left, a shorter one is masked before its start; == HF."""
    lens = (2, 14, 3, 11, 4, 13, 1, 9)
    model, prompts, eos = model_and_prompts("llama", lens=lens, seed=5)
    prompts = sorted(prompts, key=len, reverse=order == "descending")
    cfg = dict(num_beams=4, length_penalty=0.9, early_stopping=False, eos=eos, pad=PAD["llama"], ngram=3)
    ref = hf_generate(model, prompts, **cfg)
    for batch_size in (1, 2, 3):
        mine, info, _ = ours(model, prompts, batch_size=batch_size, **cfg)
        assert_same(ref, mine, cfg["pad"], cfg["eos"])


def test_a_long_newcomer_makes_room_at_the_left_of_a_shorter_cache(monkeypatch):
    """A 14-token prompt takes the rows of a prompt that ended while the cache held fewer positions: the cache
    grows at the left (zeros, masked) and the prompt still in the batch keeps its positions; == HF."""
    from lora_research.beam_cache import BeamCacheLayer

    grown = []
    extend = BeamCacheLayer.extend_left
    monkeypatch.setattr(BeamCacheLayer, "extend_left",
                        lambda self, n: (grown.append(self._k is not None), extend(self, n))[1])
    model, prompts, eos = model_and_prompts("llama", lens=(1, 2, 14, 13, 1, 12), seed=3)
    cfg = dict(num_beams=4, length_penalty=0.9, early_stopping=False, eos=eos, pad=PAD["llama"], ngram=3)
    ref = hf_generate(model, prompts, **cfg)
    mine, info, _ = ours(model, prompts, batch_size=2, **cfg)
    assert_same(ref, mine, cfg["pad"], cfg["eos"])
    assert any(grown), grown  # a cache already in use grew at the left


def test_freed_cache_buffers_go_back_to_the_system_when_the_cache_grows(monkeypatch):
    """Each time the cache moves into bigger buffers (every ``BeamCacheLayer.grow`` positions) the freed heap is
    handed back (``heap.trim``): once per move, not every step, and the outputs stay HF's."""
    from lora_research import beam_search as bs
    from lora_research.beam_cache import BeamCacheLayer

    monkeypatch.setattr(BeamCacheLayer, "grow", 2)
    trims, moves = [], []
    monkeypatch.setattr(bs.heap, "trim", lambda: trims.append(1))
    realloc = BeamCacheLayer._realloc
    monkeypatch.setattr(BeamCacheLayer, "_realloc", lambda self, *a, **k: (moves.append(1), realloc(self, *a, **k))[1])
    model, prompts, eos = model_and_prompts("llama")  # moves counted by hand: BeamCacheLayer.moves is what it reads
    cfg = dict(num_beams=3, length_penalty=1.0, early_stopping=False, eos=eos, pad=PAD["llama"])
    mine, info, _ = ours(model, prompts, batch_size=2, **cfg)
    assert_same(hf_generate(model, prompts, **cfg), mine, cfg["pad"], cfg["eos"])
    layers = model.config.num_hidden_layers
    assert 2 <= len(trims) < info["steps"]  # several moves, fewer than the steps
    assert len(trims) <= len(moves) // layers + 1


def test_no_padding_and_single_prompt():
    """Equal-length prompts (HF drops the all-ones mask) and a batch of one."""
    model, prompts, eos = model_and_prompts("llama", lens=(6, 6, 6))
    cfg = dict(num_beams=4, length_penalty=0.9, early_stopping=False, eos=eos, pad=1)
    assert_same(hf_generate(model, prompts, **cfg), ours(model, prompts, **cfg)[0], 1, eos)
    cfg = dict(num_beams=4, length_penalty=1.5, early_stopping=True, eos=eos, pad=1)
    assert_same(hf_generate(model, prompts[:1], **cfg), ours(model, prompts[:1], **cfg)[0], 1, eos)


class StopAfterToken(StoppingCriteria):
    """Per-row stop: the row's last token is ``token`` and the token before it is not ``avoid``."""

    def __init__(self, token: int, avoid: int):
        self.token, self.avoid = token, avoid

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, -1] == self.token) & (input_ids[:, -2] != self.avoid)


@pytest.mark.parametrize("name", list(MODELS))
def test_custom_stopping_criterion(name):
    """A row-wise StoppingCriteria (beyond EOS) ends candidates exactly as in HF beam search."""
    model, prompts, eos = model_and_prompts(name)
    ids, mask = left_pad(prompts, PAD[name])
    with torch.no_grad():  # the third most likely token stops a beam unless it follows the fourth
        probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1).mean((0, 1))
    third, fourth = probs.topk(4).indices.tolist()[2:]
    criteria = StoppingCriteriaList([StopAfterToken(third, fourth)])
    cfg = dict(num_beams=5, length_penalty=0.0, early_stopping=False, eos=eos[:1], pad=PAD[name], ngram=3,
               criteria=criteria)
    ref = hf_generate(model, prompts, **cfg)
    for batch_size in (None, 2):
        mine, info, _ = ours(model, prompts, batch_size=batch_size, **cfg)
        assert_same(ref, mine, cfg["pad"], cfg["eos"])
    assert any(m and m[-1] == third for m in mine)  # the criterion did end hypotheses
    assert min(info["row_steps"]) < max(info["row_steps"])


# --- "\n\n" spelt by two tokens: StopStringCriteria with a byte-level tokenizer, as decoding.generate uses it

def test_stop_string_criteria_like_decoding():
    """decoding.generate's setup: eos = stop_token_ids, StopStringCriteria("\\n\\n"), n-gram ban."""
    tok = byte_tokenizer(merge_blank_line=False)  # no "\n\n" token: the stop string spans two
    model = tiny_gpt2(vocab=len(tok), seed=2)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1

    def boost(_module, _args, output):  # makes "\n" frequent, for both engines alike
        output[..., newline[0]] += 6.0
        return output

    handle = model.lm_head.register_forward_hook(boost)
    texts = ["name : A | area : x", "b c", "name : Zed | food : y z", "near : Q", "x"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    eos = stop_token_ids(tok)
    assert eos == [tok.eos_token_id]
    criteria = StoppingCriteriaList([StopStringCriteria(tok, ["\n\n"])])
    cfg = dict(num_beams=4, length_penalty=0.9, early_stopping=False, eos=eos, pad=tok.pad_token_id, ngram=4,
               criteria=criteria, max_new_tokens=16)
    try:
        ref = hf_generate(model, prompts, **cfg)
        for batch_size in (None, 2):
            mine, info, _ = ours(model, prompts, batch_size=batch_size, **cfg)
            assert_same(ref, mine, cfg["pad"], cfg["eos"])
    finally:
        handle.remove()
    decoded = [tok.decode(m) for m in mine]
    assert sum("\n\n" in d for d in decoded) >= 3, decoded  # the stop string ended hypotheses
    assert len(set(info["row_steps"])) >= 3, info  # ... of different prompts at different steps


def test_repeated_ngram_bans_by_hand():
    assert repeated_ngram_bans([1, 2, 3, 1, 2], 3) == [3]  # "1 2" was followed by 3
    assert repeated_ngram_bans([1, 2, 1, 2, 1], 2) == [2, 2]
    assert repeated_ngram_bans([1, 2], 3) == [] and repeated_ngram_bans([5, 6, 7], 0) == []
    assert repeated_ngram_bans([4, 4], 1) == [4, 4]  # unigrams: every token seen


def test_bad_arguments():
    model, prompts, eos = model_and_prompts("gpt2")
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, prompts, batch_size=2, num_beams=1, max_new_tokens=4, eos_token_ids=eos)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(model, prompts, batch_size=2, num_beams=2, max_new_tokens=4, eos_token_ids=eos,
                    early_stopping="false")
    with pytest.raises(ValueError, match="batch_size"):
        beam_search(model, prompts, batch_size=0, num_beams=2, max_new_tokens=4, eos_token_ids=eos)
    with pytest.raises(ValueError, match="at least one token"):
        beam_search(model, [[5], []], batch_size=2, num_beams=2, max_new_tokens=4, eos_token_ids=eos)
    assert beam_search(model, [], batch_size=2, num_beams=2, max_new_tokens=4, eos_token_ids=eos) == []
