"""Beam search with ``model.generate``'s outputs, run as a stream: a finished prompt's rows take the next prompt.

:func:`beam_search` implements the beam search of transformers 5.x
(``GenerationMixin._beam_search`` with ``_get_top_k_continuations``,
``_get_running_beams_for_next_iteration``, ``_update_finished_beams``,
``_check_early_stop_heuristic`` and ``_beam_search_has_unfinished_sequences``), for decoder-only
models, greedy selection (``do_sample=False``) and one returned sequence per prompt. For every prompt
its output is token-for-token that of ``model.generate(num_beams=..., ...)`` with the same settings.

What differs is how the work is scheduled (speed: issue #13). ``generate`` runs a batch of prompts
until its *last* prompt is done: a prompt whose beam search has ended still costs a forward pass of
its ``num_beams`` beams at every step, and the next batch waits. Here at most ``batch_size`` prompts
are in the model batch at once; when one is done it leaves, and the next prompt takes its rows at the
next step (continuous batching). Each step costs a fixed ~70 ms on CPU for SmolLM2 (reading the
weights, per-op overhead) plus ~1.3 ms per beam row, so keeping the batch full takes fewer steps.
Each prompt's key/value cache is computed once for all its beams, in groups of ``batch_size``
prompts (``generate`` runs the prompt once per beam). The cache's buffers are memory mapped from the system,
so those it outgrows go back at once (:mod:`lora_research.beam_cache`); and each time the cache moves into bigger
buffers, the heap that the steps since freed is handed back too (:func:`lora_research.heap.trim`), which glibc
would otherwise keep. On an E2E decoding alone (SmolLM2, 8 MRs x 10 beams, 50 dev MRs; 2026-12-07, the cache then
growing by 16 positions) the peak RSS was 1,461 MB with both, 1,535 MB without the trim, 1,539 MB with the cache on
the heap (and the trim), at the same speed. Later figures, whole jobs included: ``results/benchmarks/README.md``.

Every prompt is a row of its own: its own prompt length, positions (``0 .. len - 1``, then one per
new token, as ``generate`` computes them from the attention mask), number of generated tokens, length
penalty, and attention mask over the shared key/value cache (a prompt that joins later has its cache
right-aligned with the others, the positions before it masked).

When is a prompt done, and why dropping it cannot change any output
-------------------------------------------------------------------
HF keeps, per row, ``num_beams`` finished hypotheses (``beam_scores``) and a flag
``is_early_stop_heuristic_unsatisfied`` (AND-accumulated: once false, false for good). A row is
done when all its ``num_beams`` finished slots hold real hypotheses and either (a) that flag is
false (``early_stopping`` False / "never": no running beam can beat the worst finished one), or
(b) ``early_stopping is True``; or when it has ``max_new_tokens`` tokens. From then on HF adds
``-1e9`` to every new candidate of that row in ``_update_finished_beams``, so no candidate can enter
its finished set (the real finished scores are > -5e8), and its best hypothesis -- the only one
returned -- never changes; HF's loop ends when every row of its batch is done.

Assumptions (all true for :mod:`lora_research.decoding`): the n-gram ban looks at a beam's generated
tokens only (``no_repeat_ngram_size``, as ``decoding.GeneratedNoRepeatNGram``); stopping criteria
look at the end of a candidate only (they are called on its last ``criteria_window`` tokens, prompt
included, left-filled with the pad id like ``generate``'s left padding; ``StopStringCriteria`` looks at
its ``maximum_token_len``), work row by row and return a bool per row; the model's rows do not interact
(no batch statistics). Per-row results must also not depend on the batch composition or on masked
cache positions to the last bit, which holds for CPU matmuls and SDPA in practice (tests compare
against ``model.generate``). Theoretical corner case: HF also stops a whole batch when every candidate
of every row hits a stopping criterion at the same step before the maximum length; a prompt here is
assumed not to (it would need all its ``(1 + #eos) * num_beams`` candidates to end at once).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from . import heap
from .beam_cache import beam_cache, reorder
from .forward_signature import cache_keyword, forward_takes

__all__ = ["beam_search", "repeated_ngram_bans"]

_NEG = -1.0e9  # HF's "impossible" score offset


def repeated_ngram_bans(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in ``tokens`` (fairseq / ``gpt2_beam.py``'s rule)."""
    length = len(tokens)
    if n <= 0 or length + 1 < n:
        return []
    prefix = tuple(tokens[length - n + 1:]) if n > 1 else ()
    return [tokens[i + n - 1] for i in range(length - n + 1) if tuple(tokens[i:i + n - 1]) == prefix]


def _gather_beams(tensor: torch.Tensor, beam_indices: torch.Tensor) -> torch.Tensor:
    """HF ``_gather_beams``: ``tensor[b, beam_indices[b, j], ...]``."""
    while beam_indices.dim() < tensor.dim():
        beam_indices = beam_indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, beam_indices, dim=1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists into ``(input_ids, attention_mask)``."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


def _prefill(model, prompts: list[list[int]], pad_id: int, device) -> list[Optional[list]]:
    """Per prompt, its key/value cache of every token but the last (``[(keys, values)] * layers`` of shape
    ``[1, heads, len - 1, dim]``), computed in one left-padded forward pass, positions from the mask as
    ``generate`` takes them; ``None`` for a one-token prompt."""
    from transformers import DynamicCache

    heads = [p[:-1] for p in prompts]
    out: list[Optional[list]] = [None] * len(prompts)
    if not any(heads):
        return out
    ids, mask = (t.to(device) for t in left_pad(heads, pad_id))
    width = ids.shape[1]
    mask[:, -1] = 1  # a one-token prompt's row: one masked-in pad token, its output unused (no all-masked row)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_keyword(model): cache},
          **({"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}))
    for i, h in enumerate(heads):
        if h:
            out[i] = [(layer.keys[i: i + 1, :, width - len(h):], layer.values[i: i + 1, :, width - len(h):])
                      for layer in cache.layers]
    return out


@torch.no_grad()
def beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: Union[bool, str] = False,
    eos_token_ids: Union[int, Sequence[int], None] = None,
    pad_token_id: Optional[int] = None,
    no_repeat_ngram_size: int = 0,
    stopping_criteria=None,
    criteria_window: int = 8,
    on_done: Optional[Callable[[int], None]] = None,
    return_info: bool = False,
):
    """Beam search of every prompt (token-id lists) with ``model.generate``'s results, at most ``batch_size``
    prompts in the model batch at once, in the given order.

    Settings mirror ``GenerationConfig`` / ``generate``: ``num_beams`` (>= 2; ``generate`` uses greedy
    search for 1), ``max_new_tokens``, ``length_penalty``, ``early_stopping`` (False, True or "never"),
    ``eos_token_ids`` (an id or a list: every one ends a beam), ``pad_token_id``; ``no_repeat_ngram_size``:
    no n-gram of a beam's *generated* tokens repeats; ``stopping_criteria`` (HF ``StoppingCriteria``; see
    the module docstring: they see each candidate's last ``criteria_window`` tokens, or their
    ``maximum_token_len`` if longer; a hit marks the candidate finished; EOS and max length are added
    internally as HF does). ``on_done(i)`` is called when prompt ``i`` is done.

    Returns, per prompt, its best hypothesis: the generated tokens, up to and including the one that ended
    it (what ``generate`` returns after the prompt, without the fill). With ``return_info=True`` returns
    ``(outputs, info)``: ``info["row_steps"]`` = forward passes each prompt took part in, ``info["steps"]`` =
    forward passes in all (prefills not counted), ``info["beam_rows"]`` = sum over passes of the beam rows
    run, ``info["prefills"]`` = prompt forward passes.
    """
    if num_beams < 2:
        raise ValueError(f"num_beams must be >= 2 (got {num_beams}); generate decodes num_beams=1 greedily")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if early_stopping not in (False, True, "never"):
        raise ValueError(f"early_stopping must be False, True or 'never' (got {early_stopping!r})")
    prompts = [list(p) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if not prompts:
        return ([], {"row_steps": [], "steps": 0, "beam_rows": 0, "prefills": 0}) if return_info else []
    device = next(model.parameters()).device
    k, max_new = num_beams, max_new_tokens

    # special tokens as in GenerationMixin._prepare_special_tokens / _beam_search
    if isinstance(eos_token_ids, int):
        eos_token_ids = [eos_token_ids]
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device) if eos_token_ids else None
    if pad_token_id is None and eos is not None:
        pad_token_id = int(eos[0])
    if eos is None:
        fill = -1  # HF: ``pad_token_id or eos_token_id[0] if eos_token_id is not None else -1``
    else:
        fill = pad_token_id if pad_token_id else int(eos[0])
    pad_id = pad_token_id if pad_token_id is not None else 0
    n_eos = eos.shape[0] if eos is not None else 0
    beams_to_keep = max(2, 1 + n_eos) * k
    top_num_beam_mask = torch.zeros(beams_to_keep, dtype=torch.bool, device=device)
    top_num_beam_mask[:k] = True
    criteria = list(stopping_criteria or [])
    window = max([criteria_window] + [int(getattr(c, "maximum_token_len", 0)) for c in criteria])
    cache_kw = cache_keyword(model)
    keep_kw = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    cache = beam_cache(model)

    # state of the prompts in the model batch ("slots"), in HF's [slots, beams, ...] layout; filled by admit()
    a = min(batch_size, len(prompts))
    who = torch.zeros(a, dtype=torch.long, device=device)  # prompt index of each slot
    plen = torch.zeros(a, dtype=torch.long, device=device)  # its prompt length
    gen = torch.zeros(a, dtype=torch.long, device=device)  # tokens it has generated
    first_pos = torch.zeros(a, dtype=torch.long, device=device)  # its first cache position (earlier: masked)
    run_gen = torch.zeros((a, k, max_new), dtype=torch.long, device=device)  # running beams' generated tokens
    tail = torch.zeros((a, k, window), dtype=torch.long, device=device)  # running beams' last tokens
    run_scores = torch.zeros((a, k), device=device)
    fin_gen = torch.zeros((a, k, max_new), dtype=torch.long, device=device)  # finished hypotheses
    fin_scores = torch.zeros((a, k), device=device)
    fin_len = torch.zeros((a, k), dtype=torch.long, device=device)
    is_fin = torch.zeros((a, k), dtype=torch.bool, device=device)
    heuristic_unsatisfied = torch.zeros((a, 1), dtype=torch.bool, device=device)

    outputs: list[Optional[list[int]]] = [None] * len(prompts)
    row_steps = [0] * len(prompts)
    steps = beam_rows = prefills = 0
    queued, ready = 0, []  # next prompt to prefill; prefilled prompts waiting for a slot: (index, kv)

    def admit(slots: list[int]) -> None:
        """The next prompts take slots ``slots`` (positions in the state arrays; their rows are overwritten)."""
        nonlocal queued, prefills
        while len(ready) < len(slots) and queued < len(prompts):
            group = list(range(queued, min(queued + batch_size, len(prompts))))
            ready.extend(zip(group, _prefill(model, [prompts[i] for i in group], pad_id, device)))
            queued += len(group)
            prefills += 1
        length = cache.get_seq_length()
        need = max(len(prompts[i]) - 1 for i, _ in ready[: len(slots)])
        if need > length:  # the cache is shorter than a newcomer's prompt: room at the left, masked for the others
            for layer in cache.layers:
                layer.extend_left(need - length)
            first_pos.add_(need - length)
            length = need
        for s in slots:
            i, kv = ready.pop(0)
            p = prompts[i]
            n = len(p) - 1
            for layer_id, layer in enumerate(cache.layers):
                layer.place(s * k, (s + 1) * k, *(kv[layer_id] if kv is not None else (None, None)))
            who[s], plen[s], gen[s], first_pos[s] = i, len(p), 0, length - n
            run_gen[s], fin_gen[s], fin_len[s], is_fin[s], heuristic_unsatisfied[s] = fill, fill, 0, False, True
            run_scores[s], fin_scores[s] = _NEG, _NEG
            run_scores[s, 0] = 0.0
            t = p[-window:]
            tail[s] = torch.tensor([pad_id] * (window - len(t)) + t, dtype=torch.long, device=device)

    admit(list(range(a)))
    moves = cache.layers[0].moves  # glibc keeps freed heap; handed back each time the cache moves
    while a:
        length = cache.get_seq_length()
        rows_first = first_pos.repeat_interleave(k)
        mask = (torch.arange(length + 1, device=device)[None, :] >= rows_first[:, None]).long()
        x = tail[:, :, -1].reshape(a * k, 1)
        pos = (plen - 1 + gen).repeat_interleave(k).unsqueeze(-1)
        out = model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True, return_dict=True,
                    **{cache_kw: cache}, **keep_kw)
        if cache.layers[0].moves != moves:  # the cache grew into new buffers: the old ones are free now
            moves = cache.layers[0].moves
            heap.trim()
        steps += 1
        beam_rows += a * k
        for i in who.tolist():
            row_steps[i] += 1
        # HF copies the last logits (``.to(copy=True)``); log_softmax below makes a new tensor anyway
        logits = out.logits[:, -1, :].float()
        del out

        # b. log probs -> n-gram ban -> + running beam scores
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        if no_repeat_ngram_size > 0:
            n_gen = gen.tolist()
            for s in range(a):
                if n_gen[s] + 1 < no_repeat_ngram_size:
                    continue
                for j, toks in enumerate(run_gen[s, :, : n_gen[s]].tolist()):
                    banned = repeated_ngram_bans(toks, no_repeat_ngram_size)
                    if banned:
                        log_probs[s * k + j, banned] = -float("inf")
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.view(a, k, vocab) + run_scores[:, :, None]).reshape(a, k * vocab)

        # c. top-K continuations (_get_top_k_continuations)
        topk_log_probs, topk_indices = torch.topk(log_probs, k=beams_to_keep)
        topk_src = topk_indices // vocab
        new_tokens = topk_indices % vocab
        topk_gen = _gather_beams(run_gen, topk_src)
        topk_gen.scatter_(2, gen[:, None, None].expand(a, beams_to_keep, 1), new_tokens[:, :, None])
        topk_tail = torch.cat([_gather_beams(tail, topk_src)[:, :, 1:], new_tokens[:, :, None]], dim=2)

        # d. which candidates hit a stopping criterion (max length, EOS, custom)
        hits = (gen + 1 >= max_new)[:, None].expand(a, beams_to_keep)
        if eos is not None:
            hits = hits | torch.isin(new_tokens, eos)
        if criteria:
            cand = topk_tail.reshape(a * beams_to_keep, window)
            for criterion in criteria:
                hits = hits | criterion(cand, None).view(a, beams_to_keep)

        # e. running beams of the next step (_get_running_beams_for_next_iteration)
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * _NEG
        next_topk = torch.topk(topk_running_log_probs, k=k)[1]
        old_gen = run_gen
        run_gen = _gather_beams(topk_gen, next_topk)
        tail = _gather_beams(topk_tail, next_topk)
        run_scores = _gather_beams(topk_running_log_probs, next_topk)
        next_src = _gather_beams(topk_src, next_topk)  # beam (within its slot) each new running beam extends

        # f. finished hypotheses (_update_finished_beams); HF divides by a Python float, the same float32 here
        just_finished = hits & top_num_beam_mask[None, :]
        scores = topk_log_probs / ((gen + 1).double() ** length_penalty).float()[:, None]
        rows_full = torch.all(is_fin, dim=-1, keepdim=True) & (early_stopping is True)
        scores += rows_full.to(torch.float32) * _NEG
        scores += (~heuristic_unsatisfied).to(torch.float32) * _NEG
        scores += (~just_finished) * _NEG
        merged_scores = torch.cat((fin_scores, scores), dim=1)
        best = torch.topk(merged_scores, k=k)[1]
        fin_gen = _gather_beams(torch.cat((fin_gen, topk_gen), dim=1), best)
        fin_scores = _gather_beams(merged_scores, best)
        fin_len = _gather_beams(torch.cat((fin_len, (gen + 1)[:, None].expand(a, beams_to_keep)), dim=1), best)
        is_fin = _gather_beams(torch.cat((is_fin, just_finished), dim=1), best)

        # g. early-stop heuristic (_check_early_stop_heuristic), per prompt
        gen = gen + 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_hypothetical_length = torch.full_like(gen, max_new)
        else:
            best_hypothetical_length = gen
        best_possible = run_scores[:, :1] / (best_hypothetical_length.double() ** length_penalty).float()[:, None]
        worst_finished = torch.where(is_fin, torch.min(fin_scores, dim=1, keepdim=True)[0], _NEG)
        heuristic_unsatisfied = heuristic_unsatisfied & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)

        # first cached position where each new running beam's tokens differ from those of the beam whose cache
        # row it takes over (generated token t of a slot is cached at first_pos + plen + t); earlier ones: no copy
        differs = run_gen != old_gen
        in_cache = torch.arange(max_new, device=device)[None, None, :] < (gen - 1)[:, None, None]
        differs &= in_cache
        first = first_pos[:, None] + plen[:, None] + torch.where(differs.any(-1), differs.int().argmax(-1),
                                                                 (gen - 1)[:, None])

        # prompts that are done leave; the next prompts take their slots, or the slots go
        full = is_fin.all(dim=-1) & (fin_scores.min(dim=-1)[0] > 0.5 * _NEG)
        done = (full & (~heuristic_unsatisfied[:, 0] | (early_stopping is True))) | (gen >= max_new)
        keep = torch.arange(a, device=device)
        refill: list[int] = []
        if bool(done.any()):
            done_slots = done.nonzero()[:, 0].tolist()
            for s in done_slots:
                i = int(who[s])
                outputs[i] = fin_gen[s, 0, : int(fin_len[s, 0])].tolist()
                if on_done is not None:
                    on_done(i)
            waiting = len(ready) + len(prompts) - queued
            refill, gone = done_slots[:waiting], done_slots[waiting:]
            if gone:
                keep = torch.tensor([s for s in range(a) if s not in set(gone)], dtype=torch.long, device=device)
                if keep.numel() == 0:
                    break
                who, plen, gen, first_pos = who[keep], plen[keep], gen[keep], first_pos[keep]
                run_gen, tail, run_scores, next_src = run_gen[keep], tail[keep], run_scores[keep], next_src[keep]
                fin_gen, fin_scores, fin_len, is_fin = fin_gen[keep], fin_scores[keep], fin_len[keep], is_fin[keep]
                heuristic_unsatisfied = heuristic_unsatisfied[keep]
                moved = keep != torch.arange(keep.numel(), device=device)
                first = first[keep].masked_fill(moved[:, None], 0)  # a slot moved to another's rows: all positions
                refill = [int((keep == s).nonzero()[0, 0]) for s in refill]
                a = keep.numel()
        if refill:  # their rows are overwritten below: nothing to copy
            first[refill] = cache.get_seq_length()
        # reorder (and shrink) the cache: new beam j of slot i reads old beam next_src[i, j] of that slot
        reorder(cache, (keep[:, None] * k + next_src).reshape(-1), first.reshape(-1))
        if refill:
            admit(refill)
        # cache positions no slot reads any more
        unused = int(first_pos.min())
        if unused:
            for layer in cache.layers:
                layer.trim_left(unused)
            first_pos = first_pos - unused

    if return_info:
        return outputs, {"row_steps": row_steps, "steps": steps, "beam_rows": beam_rows, "prefills": prefills}
    return outputs
