"""Batched generation for data-to-text tasks (E2E): beam search or greedy, KV cache, left padding.

:func:`generate` wraps ``model.generate`` (Hugging Face, KV cache on) and reproduces the decoding
of microsoft/LoRA's ``examples/NLG/src/gpt2_beam.py`` + ``gpt2_decode.py`` as closely as HF allows:

* **Prompts are left-padded** so that every row of a batch ends at the same position and the first
  new token of every row is predicted from its own last context token (decoder-only models).
* **Stopping**: a hypothesis ends at the tokenizer's EOS or at a blank line ``"\\n\\n"`` (the repo
  passes ``--eos_token_id 628``, GPT-2's ``"\\n\\n"`` token). Every vocabulary entry whose text
  contains ``"\\n\\n"`` is an extra EOS id (:func:`stop_token_ids`; GPT-2: 628 and the longer
  newline runs, SmolLM2: 1116, ...), and HF's ``StopStringCriteria`` also ends a hypothesis when
  ``"\\n\\n"`` is spelt by several tokens (SmolLM2 may emit ``"\\n"``, ``"\\n"`` = 198, 198). Both work
  per beam in beam search (HF marks a beam finished when a stopping criterion hits it).
* **Post-processing** (``gpt2_decode.py``): the output is cut at the first EOS/stop token and at
  the first ``"\\n\\n"``, stripped; any remaining single line break becomes a space so that each
  prediction fits on one line of ``predictions.txt`` (the scorer would do the same).
* **no_repeat_ngram_size** is applied to the *generated tokens only*
  (:class:`GeneratedNoRepeatNGram`), as in ``gpt2_beam.py`` (its n-gram history holds generated
  tokens only). HF's built-in ``no_repeat_ngram_size`` also bans n-grams of the prompt, which on
  E2E would forbid copying ``" 5 out of 5"`` from ``customer rating : 5 out of 5``; we therefore
  pass ``no_repeat_ngram_size=0`` to HF and use our processor.

Length penalty, HF vs the repo
------------------------------
``gpt2_beam.py`` scores a finished hypothesis as ``sum(log p) / len**length_penalty`` with
``len = history.shape[-1]`` = number of *generated* tokens including the final EOS token.
HF (transformers 5.x, ``_update_finished_beams``) divides by
``(cur_len + 1 - decoder_prompt_len) ** length_penalty``: also the number of generated tokens
including the EOS, the prompt excluded. So the definitions agree (older HF ``BeamHypotheses``
divided by the total length incl. the prompt; not the case here). Remaining differences:
(1) the repo decodes all ``eval_len`` steps and keeps the best finished hypothesis; HF stops a
batch row early when no running beam can beat the worst of its ``num_beams`` finished ones
(``early_stopping=False``, the HF heuristic); set ``early_stopping="never"`` for the exhaustive
variant; (2) hypotheses still running at ``max_new_tokens`` are scored with the same formula in
both. Greedy decoding is ``num_beams=1`` (no length penalty).

Engines: ``decode.engine=hf`` calls ``model.generate`` on batches in file order. ``fast`` (default)
gives the same tokens faster: beam search by :func:`lora_research.beam_search.beam_search`
(generate's algorithm) over the MRs in order of prompt length, each prompt run once for all its
beams, ``batch_size`` MRs in the model batch at a time, and an MR whose search has ended leaving
the batch for the next MR instead of waiting for the batch's longest MR. Greedy decoding
(``num_beams=1``) is ``model.generate`` on batches of similar prompt length.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .beam_search import beam_search, left_pad, repeated_ngram_bans  # noqa: F401 (left_pad: part of this module's API)
from .vocab_head import in_pieces

STOP_TEXT = "\n\n"
STRATEGIES = ("beam", "greedy")
ENGINES = ("fast", "hf")


@dataclass
class DecodeConfig:
    """Decoding settings (paper Table 11: beam 10, length penalty 0.9, no_repeat_ngram 4)."""

    strategy: str = "beam"  # beam | greedy (greedy = num_beams 1)
    num_beams: int = 10  # beam size (Table 11: 10)
    length_penalty: float = 0.9  # score = sum log p / len**lp; paper 0.9, repo README 0.8
    no_repeat_ngram_size: int = 4  # no n-gram of generated tokens repeats (0 = off)
    max_new_tokens: int = 64  # repo --eval_len 64
    batch_size: int = 8  # MRs decoded together (fast beam: in the model batch at once, refilled as MRs end)
    max_mrs: Optional[int] = None  # decode only the first N MRs of the eval split (CPU budgets)
    early_stopping: str = "false"  # HF beam early stopping: false (heuristic) | true | never (exhaustive, like the repo)
    # fast: prompts in order of length, each prompt's KV cache computed once and shared by its beams, an MR whose
    # beam search has ended leaves the model batch and the next MR takes its rows (lora_research.beam_search; same
    # outputs as hf) | hf: plain model.generate on batches in file order
    engine: str = "fast"


def check_decode_config(cfg: DecodeConfig) -> None:
    """Fail early on impossible decoding settings, naming the key and the valid values."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"decode.strategy={cfg.strategy!r} is not valid; valid choices: {list(STRATEGIES)}")
    if cfg.strategy == "beam" and cfg.num_beams < 1:
        raise ValueError(f"decode.num_beams must be >= 1 (got {cfg.num_beams})")
    for key in ("max_new_tokens", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"decode.{key} must be >= 1 (got {getattr(cfg, key)})")
    if cfg.no_repeat_ngram_size < 0:
        raise ValueError(f"decode.no_repeat_ngram_size must be >= 0 (got {cfg.no_repeat_ngram_size})")
    if cfg.max_mrs is not None and cfg.max_mrs < 1:
        raise ValueError(f"decode.max_mrs must be >= 1 or null (got {cfg.max_mrs})")
    if str(cfg.early_stopping).lower() not in ("false", "true", "never"):
        raise ValueError(f"decode.early_stopping={cfg.early_stopping!r}; valid choices: false, true, never")
    if cfg.engine not in ENGINES:
        raise ValueError(f"decode.engine={cfg.engine!r} is not valid; valid choices: {list(ENGINES)}")


def settings_dict(cfg: DecodeConfig) -> dict:
    """The decoding settings as recorded in summaries (greedy drops beam-only keys)."""
    out = {
        "strategy": cfg.strategy,
        "num_beams": cfg.num_beams if cfg.strategy == "beam" else 1,
        "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
        "no_repeat_ngram_scope": "generated tokens",
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size,
        "stop": ["eos", STOP_TEXT],
        "engine": cfg.engine,
    }
    if cfg.strategy == "beam":
        out["length_penalty"] = cfg.length_penalty
        out["early_stopping"] = str(cfg.early_stopping).lower()
    return out


_STOP_ID_CACHE: dict = {}


def stop_token_ids(tokenizer, text: str = STOP_TEXT) -> list[int]:
    """EOS plus every vocabulary id whose decoded text contains ``text`` (GPT-2: 628 ``"\\n\\n"``...)."""
    key = (id(tokenizer), len(tokenizer), text)
    if key not in _STOP_ID_CACHE:
        n = len(tokenizer)
        pieces = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
        ids = [i for i, p in enumerate(pieces) if text in p]
        eos = tokenizer.eos_token_id
        _STOP_ID_CACHE[key] = ([eos] if eos is not None else []) + [i for i in ids if i != eos]
    return list(_STOP_ID_CACHE[key])


class GeneratedNoRepeatNGram:
    """Logits processor: ban tokens that would repeat an n-gram of the *generated* tokens.

    Same rule as fairseq / ``gpt2_beam.py`` (``_calc_banned_ngram_tokens``): the n-gram history
    is the generated part of the row only (positions ``>= prompt_len``), unlike HF's
    ``NoRepeatNGramLogitsProcessor`` which also counts prompt n-grams.
    """

    def __init__(self, ngram_size: int, prompt_len: int):
        self.n = int(ngram_size)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        gen = input_ids[:, self.prompt_len:]
        if self.n <= 0 or gen.shape[1] + 1 < self.n:
            return scores
        for b, toks in enumerate(gen.tolist()):
            banned = repeated_ngram_bans(toks, self.n)
            if banned:
                scores[b, banned] = -float("inf")
        return scores


def postprocess(tokenizer, generated: Sequence[int], stop_ids: Sequence[int]) -> tuple[str, int]:
    """Cut at the first stop id and at the first ``"\\n\\n"``; strip; one line. Returns (text, n_tokens)."""
    toks = list(generated)
    stops = set(stop_ids)
    for i, t in enumerate(toks):
        if t in stops:
            toks = toks[: i + 1]  # keep a "\n\n"-containing token: text before the blank line counts
            break
    text = tokenizer.decode(toks, skip_special_tokens=True)
    text = text.split(STOP_TEXT, 1)[0]
    text = " ".join(text.replace("\r", "\n").split("\n")).strip()
    return text, len(toks)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    device: Union[str, torch.device, None] = None,
    progress=None,
) -> tuple[list[str], dict]:
    """Decode one completion per prompt (token-id lists). Returns ``(texts, stats)``.

    ``stats``: ``generated_tokens`` (up to and including the stop token), ``seconds``,
    ``tokens_per_s``, ``num_prompts``. The model is put in eval mode for the call and restored.
    """
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList, StopStringCriteria

    check_decode_config(cfg)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = stop_token_ids(tokenizer)
    stop_on_text = StopStringCriteria(tokenizer, [STOP_TEXT])  # "\n\n" spelt by several tokens ("\n", "\n")
    beam = cfg.strategy == "beam" and cfg.num_beams > 1
    early = {"false": False, "true": True, "never": "never"}[str(cfg.early_stopping).lower()]
    fast = cfg.engine == "fast"
    # fast: batches of prompts of similar length (less left padding); outputs go back to input order
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if fast else list(range(len(prompts)))
    texts: list[Optional[str]] = [None] * len(prompts)
    done_count = 0
    n_tokens = 0
    start = time.perf_counter()
    try:
        if fast and beam:  # generate's beam search as a stream: a finished MR's rows take the next MR (same tokens)
            def one_done(_i: int) -> None:
                nonlocal done_count
                done_count += 1
                if progress is not None:
                    progress(done_count, len(prompts))

            with in_pieces(model):  # the vocabulary projection in cache-sized pieces: same logits, faster
                outs = beam_search(
                    model, [prompts[i] for i in order], batch_size=cfg.batch_size, num_beams=cfg.num_beams,
                    max_new_tokens=cfg.max_new_tokens, length_penalty=cfg.length_penalty, early_stopping=early,
                    eos_token_ids=stop_ids, pad_token_id=pad_id, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                    stopping_criteria=StoppingCriteriaList([stop_on_text]), on_done=one_done,
                )
            for i, row in zip(order, outs):
                texts[i], n = postprocess(tokenizer, row, stop_ids)
                n_tokens += n
        else:
            for b in range(0, len(prompts), cfg.batch_size):
                rows = order[b: b + cfg.batch_size]
                batch = [prompts[i] for i in rows]
                ids, mask = left_pad(batch, pad_id)
                ids, mask = ids.to(device), mask.to(device)
                prompt_len = ids.shape[1]
                gen_cfg = GenerationConfig(
                    max_new_tokens=cfg.max_new_tokens,
                    do_sample=False,
                    num_beams=cfg.num_beams if beam else 1,
                    length_penalty=cfg.length_penalty if beam else 1.0,
                    early_stopping=early if beam else False,
                    no_repeat_ngram_size=0,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                )
                processors = LogitsProcessorList()
                if cfg.no_repeat_ngram_size > 0:
                    processors.append(GeneratedNoRepeatNGram(cfg.no_repeat_ngram_size, prompt_len))
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=gen_cfg,
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([stop_on_text]),
                )
                for i, row in zip(rows, out[:, prompt_len:].tolist()):
                    text, n = postprocess(tokenizer, row, stop_ids)
                    texts[i] = text
                    n_tokens += n
                done_count += len(rows)
                if progress is not None:
                    progress(done_count, len(prompts))
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    stats = {
        "generated_tokens": n_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens / seconds, 2) if seconds > 0 else None,
        "num_prompts": len(prompts),
    }
    return texts, stats
