"""Beam search that drops finished batch rows from the model batch (same outputs as HF ``generate``).

:func:`beam_search` implements the beam search of transformers 5.x
(``GenerationMixin._beam_search`` with ``_get_top_k_continuations``,
``_get_running_beams_for_next_iteration``, ``_update_finished_beams``,
``_check_early_stop_heuristic`` and ``_beam_search_has_unfinished_sequences``), for decoder-only
models with a ``DynamicCache``, greedy selection (``do_sample=False``) and one returned sequence
per prompt. Its output is token-for-token that of ``model.generate(num_beams=..., ...)`` with the
same settings.

The one difference: HF runs the model on every row of the batch until the *last* row is done, so a
row whose beam search has ended (HF's own per-row condition, below) still costs a forward pass of
its ``num_beams`` beams at every step. Here such a row leaves the model batch: its rows of the KV
cache, attention mask, positions and running beams are dropped and its best finished hypothesis is
kept. On E2E batches (rows end after 15-40 tokens of a 64-token budget) this saves a large part of
the decoding compute (speed: issue #13).

When is a row done, and why dropping it cannot change any output
-----------------------------------------------------------------
HF keeps, per row, ``num_beams`` finished hypotheses (``beam_scores``) and a flag
``is_early_stop_heuristic_unsatisfied`` (AND-accumulated: once false, false for good). A row is
dropped when all its ``num_beams`` finished slots hold real hypotheses and either (a) that flag is
false (``early_stopping`` False / "never": no running beam can beat the worst finished one), or
(b) ``early_stopping is True`` and the row is full. From then on HF adds ``-1e9`` to every new
candidate of that row in ``_update_finished_beams``, so no candidate can enter its finished set
(the real finished scores are > -5e8; a candidate would need a score above +5e8), and its
best hypothesis -- the only one returned -- never changes. The loop-wide stopping rule is
evaluated as HF evaluates it over the whole batch, a dropped row counting as finished and (flag)
as it was when it left.

Assumptions (all true for :mod:`lora_research.decoding`): logits processors and stopping criteria
work row by row (the row of a beam depends on its own sequence only; ``GeneratedNoRepeatNGram``,
``StopStringCriteria``, EOS, max length do) and processors do not add scores of the order of
1e8; the model's rows do not interact (no batch statistics). Per-row results must also not depend
on the batch size of the forward pass to the last bit, which holds for CPU matmuls in practice
(tests compare against ``model.generate``). Theoretical corner case: HF also stops the whole loop
when every candidate of every row hits a stopping criterion at the same step before the maximum
length; a dropped row is assumed not to (it would need all its ``(1 + #eos) * num_beams``
candidates to end at once).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .beam_cache import spare_slot_cache
from .forward_signature import cache_keyword, forward_takes

__all__ = ["beam_search"]

_NEG = -1.0e9  # HF's "impossible" score offset


def _gather_beams(tensor: torch.Tensor, beam_indices: torch.Tensor) -> torch.Tensor:
    """HF ``_gather_beams``: ``tensor[b, beam_indices[b, j], ...]``."""
    while beam_indices.dim() < tensor.dim():
        beam_indices = beam_indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, beam_indices, dim=1)


@torch.no_grad()
def beam_search(
    model,
    input_ids: torch.LongTensor,
    attention_mask: Optional[torch.Tensor],
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: Union[bool, str] = False,
    eos_token_ids: Union[int, Sequence[int], None] = None,
    pad_token_id: Optional[int] = None,
    logits_processor=None,
    stopping_criteria=None,
    prompt_cache=None,
    return_info: bool = False,
):
    """Beam search with ``model.generate``'s results; finished rows leave the model batch.

    Arguments mirror ``GenerationConfig`` / ``generate``: ``input_ids`` and ``attention_mask``
    ``[batch, prompt_len]`` (left padded; ``attention_mask=None`` means no padding),
    ``num_beams`` (>= 2; ``generate`` uses greedy search for 1), ``max_new_tokens``, ``length_penalty``, ``early_stopping`` (False, True
    or "never"), ``eos_token_ids`` (an id or a list: every one ends a beam), ``pad_token_id``
    (fills the output after a row's end; HF rule: ``pad or eos[0]``, so pad id 0 -> ``eos[0]``),
    ``logits_processor`` (called as HF does in beam search: on the *log-softmaxed* scores of the
    running beams, ``input_ids`` = running sequences incl. prompt ``[rows*num_beams, cur_len]``,
    before the beam scores are added), ``stopping_criteria`` (called on the candidate
    continuations ``[rows*K, cur_len+1]`` with ``scores=None``, K = ``max(2, 1+#eos)*num_beams``;
    a hit marks that candidate finished; EOS and max length are added internally as HF does).

    ``prompt_cache``: optional ``DynamicCache`` of the first ``prompt_len - c`` prompt positions,
    already repeated ``num_beams`` times per row (``decoding._shared_prompt_cache`` gives
    ``prompt_len - 1``); only the remaining prompt tokens are then run, as ``generate`` does when
    given a cache. Its tensors move into the beam cache (it is left empty). Without it the expanded
    prompt is run like HF does.

    Returns ``sequences`` ``[batch, prompt_len + n]`` exactly as ``model.generate`` returns them
    (``n`` = longest best hypothesis of the batch, shorter rows filled as above). With
    ``return_info=True`` returns ``(sequences, info)``: ``info["row_steps"]`` = forward passes each
    row took part in, ``info["steps"]`` = forward passes in all, ``info["beam_rows"]`` = sum over
    passes of the rows*beams run (HF would run ``steps * batch * num_beams``).
    """
    if num_beams < 2:
        raise ValueError(f"num_beams must be >= 2 (got {num_beams}); generate decodes num_beams=1 greedily")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if early_stopping not in (False, True, "never"):
        raise ValueError(f"early_stopping must be False, True or 'never' (got {early_stopping!r})")
    device = input_ids.device
    batch, prompt_len = input_ids.shape
    k = num_beams
    max_length = prompt_len + max_new_tokens

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
    n_eos = eos.shape[0] if eos is not None else 0
    beams_to_keep = max(2, 1 + n_eos) * k
    top_num_beam_mask = torch.zeros(beams_to_keep, dtype=torch.bool, device=device)
    top_num_beam_mask[:k] = True

    # attention mask / positions as generate: positions from the mask (padding -> 0), mask dropped
    # altogether when it is all ones
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids = position_ids.masked_fill(attention_mask == 0, 0)
    use_mask = not bool((attention_mask == 1).all())
    ids_e = input_ids.repeat_interleave(k, dim=0)
    pos_e = position_ids.repeat_interleave(k, dim=0)
    full_mask = torch.ones((batch * k, max_length), dtype=attention_mask.dtype, device=device)
    full_mask[:, :prompt_len] = attention_mask.repeat_interleave(k, dim=0)
    last_pos = pos_e[:, -1]  # position of the last prompt token; step t runs position last_pos + t

    cache_kw = cache_keyword(model)
    keep_kw = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    past = 0 if prompt_cache is None else prompt_cache.get_seq_length()
    if not 0 <= past < prompt_len:
        raise ValueError(f"prompt_cache holds {past} positions; it must hold fewer than the prompt's {prompt_len}")
    # appends into a spare slot instead of torch.cat-ing the whole cache each step (beam_cache); the prompt
    # cache's tensors move into it
    cache = spare_slot_cache(model, prompt_cache)

    # HF state, for the rows still in the model batch ("active"), in HF's [rows, beams, ...] layout
    running_sequences = torch.full((batch, k, max_length), fill, dtype=torch.int64, device=device)
    running_sequences[:, :, :prompt_len] = ids_e.view(batch, k, prompt_len)
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((batch, k), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = _NEG
    beam_scores = torch.full((batch, k), _NEG, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((batch, k), dtype=torch.bool, device=device)
    heuristic_unsatisfied = torch.ones((batch, 1), dtype=torch.bool, device=device)
    finished_len = torch.zeros((batch, k), dtype=torch.long, device=device)  # generated tokens of each finished slot

    active = torch.arange(batch, device=device)  # original row of each active row
    out_seq = torch.full((batch, max_length), fill, dtype=torch.int64, device=device)
    out_len = torch.zeros(batch, dtype=torch.long, device=device)
    dropped_heuristic_unsatisfied = False  # stale flags of the rows that left (early_stopping=True only)
    row_steps = [0] * batch
    steps = beam_rows = 0

    def retire(rows: torch.Tensor) -> None:
        """Keep the best finished hypothesis of active rows ``rows`` (positions in the active arrays)."""
        orig = active[rows]
        out_seq[orig] = sequences[rows, 0]
        out_len[orig] = finished_len[rows, 0]

    cur_len = prompt_len
    while True:
        a = active.shape[0]
        if cur_len == prompt_len:  # prefill: the prompt tokens the cache does not hold yet
            x = ids_e[:, past:]
            pos = pos_e[:, past:]
        else:
            x = running_sequences[:, :, cur_len - 1].reshape(a * k, 1)
            pos = (last_pos + (cur_len - prompt_len)).unsqueeze(-1)
        outputs = model(input_ids=x, attention_mask=full_mask[:, :cur_len] if use_mask else None, position_ids=pos,
                        use_cache=True, return_dict=True, **{cache_kw: cache}, **keep_kw)
        steps += 1
        beam_rows += a * k
        for r in active.tolist():
            row_steps[r] += 1
        # HF copies the last logits (``.to(copy=True)``); log_softmax below makes a new tensor anyway, so the
        # fresh [rows*beams, vocab] copy per step (15 MB at 80 beams) is skipped: ~1-2% of decoding here
        logits = outputs.logits[:, -1, :].float()
        del outputs

        # b. log probs -> processors -> + running beam scores
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        if logits_processor is not None:
            log_probs = logits_processor(running_sequences[:, :, :cur_len].reshape(a * k, cur_len), log_probs)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(a, k, vocab) + running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(a, k * vocab)

        # c. top-K continuations (_get_top_k_continuations)
        topk_log_probs, topk_indices = torch.topk(log_probs, k=beams_to_keep)
        topk_src = topk_indices // vocab
        topk_sequences = _gather_beams(running_sequences, topk_src)
        topk_sequences[:, :, cur_len] = topk_indices % vocab

        # d. which candidates hit a stopping criterion (max length, EOS, custom)
        cand = topk_sequences[:, :, : cur_len + 1].reshape(a * beams_to_keep, cur_len + 1)
        hits = torch.full((a * beams_to_keep,), cur_len + 1 >= max_length, dtype=torch.bool, device=device)
        if eos is not None:
            hits = hits | torch.isin(cand[:, -1:], eos).any(dim=-1)
        if stopping_criteria is not None:
            for criterion in stopping_criteria:
                hits = hits | criterion(cand, None)
        hits = hits.view(a, beams_to_keep)

        # e. running beams of the next step (_get_running_beams_for_next_iteration)
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * _NEG
        next_topk = torch.topk(topk_running_log_probs, k=k)[1]
        running_sequences = _gather_beams(topk_sequences, next_topk)
        running_beam_scores = _gather_beams(topk_running_log_probs, next_topk)
        next_src = _gather_beams(topk_src, next_topk)  # beam (within its row) each new running beam extends

        # f. finished hypotheses (_update_finished_beams)
        just_finished = hits & top_num_beam_mask[None, :]
        scores = topk_log_probs / ((cur_len + 1 - prompt_len) ** length_penalty)
        rows_full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        scores += rows_full.to(torch.float32) * _NEG
        scores += (~heuristic_unsatisfied).to(torch.float32) * _NEG
        scores += (~just_finished) * _NEG
        merged_scores = torch.cat((beam_scores, scores), dim=1)
        best = torch.topk(merged_scores, k=k)[1]
        sequences = _gather_beams(torch.cat((sequences, topk_sequences), dim=1), best)
        beam_scores = _gather_beams(merged_scores, best)
        finished_len = _gather_beams(
            torch.cat((finished_len, torch.full_like(hits, cur_len + 1 - prompt_len, dtype=torch.long)), dim=1), best)
        is_sent_finished = _gather_beams(torch.cat((is_sent_finished, just_finished), dim=1), best)

        # g. stopping rule (_check_early_stop_heuristic, _beam_search_has_unfinished_sequences)
        cur_len += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_hypothetical_length = max_length - prompt_len
        else:
            best_hypothetical_length = cur_len - prompt_len
        best_possible = running_beam_scores[:, :1] / (best_hypothetical_length ** length_penalty)
        worst_finished = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], _NEG)
        heuristic_unsatisfied = heuristic_unsatisfied & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        # dropped rows are full (all slots finished) and keep their flag as it was when they left
        improvement_possible = bool(heuristic_unsatisfied.any()) or dropped_heuristic_unsatisfied
        exists_open_beam = not (bool(is_sent_finished.all()) and early_stopping is True)
        valid_continuations = not bool(hits.all()) or a < batch
        if cur_len >= max_length or not (improvement_possible and exists_open_beam and valid_continuations):
            break

        # rows whose finished set can no longer change leave the batch
        full = is_sent_finished.all(dim=-1) & (beam_scores.min(dim=-1)[0] > 0.5 * _NEG)
        done = full & (~heuristic_unsatisfied[:, 0] | (early_stopping is True))
        keep = torch.arange(a, device=device)
        if bool(done.any()):
            retire(done.nonzero()[:, 0])
            if early_stopping is True:
                dropped_heuristic_unsatisfied |= bool(heuristic_unsatisfied[done].any())
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                active = keep
                break
            active = active[keep]
            running_sequences, sequences = running_sequences[keep], sequences[keep]
            running_beam_scores, beam_scores = running_beam_scores[keep], beam_scores[keep]
            is_sent_finished, finished_len = is_sent_finished[keep], finished_len[keep]
            heuristic_unsatisfied, next_src = heuristic_unsatisfied[keep], next_src[keep]
            beam_keep = (keep[:, None] * k + torch.arange(k, device=device)).reshape(-1)
            full_mask, last_pos = full_mask[beam_keep], last_pos[beam_keep]
        # reorder (and shrink) the cache: new beam j of kept row i reads old beam next_src[i, j] of that row
        cache.reorder_cache((keep[:, None] * k + next_src).reshape(-1))

    if active.numel():
        retire(torch.arange(active.shape[0], device=device))
    out = out_seq[:, : prompt_len + int(out_len.max())]
    if return_info:
        return out, {"row_steps": row_steps, "steps": steps, "beam_rows": beam_rows}
    return out
