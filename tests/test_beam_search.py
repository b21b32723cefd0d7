"""lora_research.beam_search: token-for-token equal to HF ``model.generate`` beam search.

Tiny random GPT-2 and LLaMA (GQA) models built from configs (no download), weights scaled up so
that the next-token distributions are peaked and the beam search meets its EOS ids at different
steps in different rows (the row-dropping path). Every case compares with ``model.generate`` run
with the GenerationConfig that ``decoding.generate`` builds.
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
from lora_research.beam_search import beam_search
from lora_research.decoding import GeneratedNoRepeatNGram, _shared_prompt_cache, cache_keyword, left_pad, stop_token_ids

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


def model_and_prompts(name: str, lens=PROMPT_LENS):
    """(model, ids, mask, eos ids): left-padded prompts; EOS = the 2 tokens the model predicts most."""
    key = (name, tuple(lens))
    if key not in _CACHE:
        model = MODELS[name]()
        g = torch.Generator().manual_seed(3)
        prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lens]
        ids, mask = left_pad(prompts, PAD[name])
        with torch.no_grad():
            probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
        eos = probs.mean((0, 1)).topk(2).indices.tolist()
        _CACHE[key] = (model, ids, mask, eos)
    return _CACHE[key]


def hf_generate(model, ids, mask, *, num_beams, length_penalty, early_stopping, eos, pad, processors=None,
                criteria=None, cache=None, max_new_tokens=MAX_NEW):
    """``model.generate`` with the GenerationConfig of ``decoding.generate``."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                           length_penalty=length_penalty, early_stopping=early_stopping, no_repeat_ngram_size=0,
                           eos_token_id=eos, pad_token_id=pad, use_cache=True)
    extra = {cache_keyword(model): cache} if cache is not None else {}
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                          logits_processor=processors if processors is not None else LogitsProcessorList(),
                          stopping_criteria=criteria if criteria is not None else StoppingCriteriaList(), **extra)


def record_batch_sizes(model):
    """Forward pre-hook recording the batch size (rows*beams) of every model call."""
    sizes: list[int] = []

    def hook(_module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        sizes.append(int(x.shape[0]))

    return sizes, model.register_forward_pre_hook(hook, with_kwargs=True)


def both(model, ids, mask, *, num_beams, length_penalty, early_stopping, eos, pad, ngram=0, shared_cache=False,
         criteria=None, max_new_tokens=MAX_NEW):
    """(HF output, ours, info, our model batch sizes) for the same settings."""
    prompt_len = ids.shape[1]

    def procs():
        return LogitsProcessorList([GeneratedNoRepeatNGram(ngram, prompt_len)] if ngram else [])

    def cache():
        return _shared_prompt_cache(model, ids, mask, num_beams) if shared_cache else None

    ref = hf_generate(model, ids, mask, num_beams=num_beams, length_penalty=length_penalty,
                      early_stopping=early_stopping, eos=eos, pad=pad, processors=procs(), criteria=criteria,
                      cache=cache(), max_new_tokens=max_new_tokens)
    prompt_cache = cache()
    sizes, handle = record_batch_sizes(model)
    try:
        ours, info = beam_search(model, ids, mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 length_penalty=length_penalty, early_stopping=early_stopping, eos_token_ids=eos,
                                 pad_token_id=pad, logits_processor=procs(), stopping_criteria=criteria,
                                 prompt_cache=prompt_cache, return_info=True)
    finally:
        handle.remove()
    return ref, ours, info, sizes


def assert_same(ref: torch.Tensor, ours: torch.Tensor) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, (ours.shape, ref.shape)
    assert torch.equal(ours, ref), (ours.tolist(), ref.tolist())


SETTINGS = [(0.9, False), (1.5, False), (1.5, True), (0.9, "never"), (0.0, "never")]
VARIANTS = {"plain": dict(ngram=0, shared_cache=False), "ngram": dict(ngram=3, shared_cache=False),
            "cache": dict(ngram=0, shared_cache=True), "ngram+cache": dict(ngram=3, shared_cache=True)}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("length_penalty,early_stopping", SETTINGS)
@pytest.mark.parametrize("num_beams", [3, 10])
@pytest.mark.parametrize("name", list(MODELS))
def test_equals_hf_generate(name, num_beams, length_penalty, early_stopping, variant):
    """Same tokens as model.generate (shape, prompt, fill after the end); the model batch only shrinks."""
    model, ids, mask, eos = model_and_prompts(name)
    ref, ours, info, sizes = both(model, ids, mask, num_beams=num_beams, length_penalty=length_penalty,
                                  early_stopping=early_stopping, eos=eos, pad=PAD[name], **VARIANTS[variant])
    assert_same(ref, ours)
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == ids.shape[0] * num_beams
    assert info["steps"] == len(sizes) and info["beam_rows"] == sum(sizes)
    if early_stopping is True or length_penalty == 0.0:  # with these seeds: rows end at different steps
        assert min(info["row_steps"]) < info["steps"], info  # some row left the batch before the last step


@pytest.mark.parametrize("name", list(MODELS))
def test_rows_leave_the_batch_at_different_steps(name):
    """Rows end at three or more different steps; the model batch shrinks in as many stages; still == HF."""
    model, ids, mask, eos = model_and_prompts(name)
    ref, ours, info, sizes = both(model, ids, mask, num_beams=3, length_penalty=0.9, early_stopping=False,
                                  eos=eos, pad=PAD[name], ngram=3, shared_cache=True)
    assert_same(ref, ours)
    steps = info["row_steps"]
    assert len(set(steps)) >= 3, steps
    assert sorted(set(sizes), reverse=True)[:2] == [ids.shape[0] * 3, (ids.shape[0] - 1) * 3]
    assert info["beam_rows"] < info["steps"] * ids.shape[0] * 3  # HF runs every row at every step
    # rows that finished early carry the fill value after their end, as HF's output
    fill = PAD[name] or eos[0]
    ends = [(row[ids.shape[1]:] == fill).nonzero() for row in ours]
    assert any(len(e) for e in ends)


def test_no_padding_and_single_row():
    """Equal-length prompts (HF drops the all-ones mask) and a batch of one."""
    model, ids, mask, eos = model_and_prompts("llama", lens=(6, 6, 6))
    assert bool(mask.all())
    ref, ours, _, _ = both(model, ids, mask, num_beams=4, length_penalty=0.9, early_stopping=False, eos=eos, pad=1)
    assert_same(ref, ours)
    ref, ours, _, _ = both(model, ids[:1], mask[:1], num_beams=4, length_penalty=1.5, early_stopping=True,
                           eos=eos, pad=1, shared_cache=True)
    assert_same(ref, ours)


class StopAfterToken(StoppingCriteria):
    """Per-row stop: the row's last token is ``token`` and the token before it is not ``avoid``."""

    def __init__(self, token: int, avoid: int):
        self.token, self.avoid = token, avoid

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, -1] == self.token) & (input_ids[:, -2] != self.avoid)


@pytest.mark.parametrize("name", list(MODELS))
def test_custom_stopping_criterion(name):
    """A row-wise StoppingCriteria (beyond EOS) ends candidates exactly as in HF beam search."""
    model, ids, mask, eos = model_and_prompts(name)
    with torch.no_grad():  # the third most likely token stops a beam unless it follows the fourth
        probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1).mean((0, 1))
    third, fourth = probs.topk(4).indices.tolist()[2:]
    criteria = StoppingCriteriaList([StopAfterToken(third, fourth)])
    ref, ours, info, _ = both(model, ids, mask, num_beams=5, length_penalty=0.0, early_stopping=False,
                              eos=eos[:1], pad=PAD[name], ngram=3, shared_cache=True, criteria=criteria)
    assert_same(ref, ours)
    assert any(third in row[ids.shape[1]:].tolist() for row in ours)  # the criterion did end hypotheses
    assert min(info["row_steps"]) < info["steps"]


# --- "\n\n" spelt by two tokens: StopStringCriteria with a byte-level tokenizer, as decoding.generate uses it

class Boost:
    """Logits processor adding ``value`` to the log-probability of ``token`` (makes "\\n" frequent)."""

    def __init__(self, token: int, value: float):
        self.token, self.value = token, value

    def __call__(self, input_ids, scores):
        scores[:, self.token] += self.value
        return scores


def test_stop_string_criteria_like_decoding():
    """decoding.generate's setup: eos = stop_token_ids, StopStringCriteria("\\n\\n"), n-gram ban, shared cache."""
    tok = byte_tokenizer(merge_blank_line=False)  # no "\n\n" token: the stop string spans two
    model = tiny_gpt2(vocab=len(tok), seed=2)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    texts = ["name : A | area : x", "b c", "name : Zed | food : y z", "near : Q", "x"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    pad = tok.pad_token_id
    ids, mask = left_pad(prompts, pad)
    eos = stop_token_ids(tok)
    assert eos == [tok.eos_token_id]
    prompt_len, k = ids.shape[1], 4

    def procs():
        return LogitsProcessorList([GeneratedNoRepeatNGram(4, prompt_len), Boost(newline[0], 6.0)])

    criteria = StoppingCriteriaList([StopStringCriteria(tok, ["\n\n"])])
    cfg = dict(num_beams=k, length_penalty=0.9, early_stopping=False, eos=eos, pad=pad, max_new_tokens=16)
    ref = hf_generate(model, ids, mask, processors=procs(), criteria=criteria,
                      cache=_shared_prompt_cache(model, ids, mask, k), **cfg)
    ours, info = beam_search(model, ids, mask, num_beams=k, max_new_tokens=16, length_penalty=0.9,
                             early_stopping=False, eos_token_ids=eos, pad_token_id=pad, logits_processor=procs(),
                             stopping_criteria=criteria, prompt_cache=_shared_prompt_cache(model, ids, mask, k),
                             return_info=True)
    assert_same(ref, ours)
    decoded = [tok.decode(row[prompt_len:].tolist()) for row in ours]
    assert sum("\n\n" in d for d in decoded) >= 3, decoded  # the stop string ended hypotheses
    assert len(set(info["row_steps"])) >= 3, info  # ... of different rows at different steps


def test_bad_arguments():
    model, ids, mask, eos = model_and_prompts("gpt2")
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, ids, mask, num_beams=1, max_new_tokens=4, eos_token_ids=eos)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(model, ids, mask, num_beams=2, max_new_tokens=4, eos_token_ids=eos, early_stopping="false")
