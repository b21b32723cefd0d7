"""Causal-LM loss from the logits of the labelled positions only (issue #13, memory and speed).

A causal LM's loss (paper §5: the conditional language-modelling objective, max Σ log P(y_t | x, y_<t),
summed over the *completion* tokens only) needs the logits of the positions whose next token is
labelled, but ``model(**batch)`` projects every position onto the vocabulary. For E2E on
SmolLM2-135M (vocabulary 49,152) that [batch, length, vocabulary] tensor and the copies a
label-smoothed loss makes of it (``LabelSmoother``: shift, log-softmax, negation; the same again in
backward) are most of the memory of a step, and about half of those positions are the MR prompt,
whose labels are -100.

:func:`completion_loss` runs the model unchanged, but a forward pre-hook on the output embedding
(``lm_head``) keeps only the hidden states at positions t with ``labels[t + 1] != -100``, so the
head projects N ≈ (completion tokens) rows instead of batch × length. The loss is then what
Trainer computes — token-level cross entropy with label smoothing ε,
``(1 − ε)·NLL + ε·mean_v(−log p_v)`` (``LabelSmoother``; ``torch.nn.functional.cross_entropy``'s
``label_smoothing`` is the same formula), summed over the labelled tokens and divided by
``num_items_in_batch`` when Trainer passes it (gradient accumulation), else by their count — equal
to the full-logits loss up to float summation order (tests/test_lm_loss.py checks both, and the
gradients, on tiny GPT-2 and LLaMA models with LoRA and PreLayer).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .batch_split import length_pieces
from .forward_signature import cache_keyword, forward_takes
from .vocab_head import project


EVAL_CHUNK = 64  # positions whose logits exist at once in a loss without gradients
# shared_prompt_loss: the cost of one more forward of a batch's completions, in padded tokens. SmolLM2-135M on the
# 2-core CPU, no gradients: a forward costs ~44 ms plus ~0.9 ms per token, so ~50 tokens
EVAL_PIECE_TOKENS = 48


def labelled_positions(labels: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [batch, length] of positions whose *next* token is labelled, their target ids [N])."""
    nxt = labels[:, 1:]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = nxt.ne(ignore_index)
    return mask, nxt[nxt.ne(ignore_index)]


def completion_loss(
    model,
    inputs: dict,
    *,
    label_smoothing: float = 0.0,
    num_items_in_batch: Union[torch.Tensor, int, None] = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean (or ``/ num_items_in_batch``) next-token cross entropy over the labelled positions of
    ``inputs["labels"]``, from logits of those positions only. ``model`` is a Hugging Face causal LM
    (possibly wrapped, e.g. DDP: the hook goes on the unwrapped model's output embedding)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    mask, targets = labelled_positions(labels, ignore_index)
    inner = getattr(model, "module", model)
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embedding: completion_loss needs a causal LM")

    # without gradients (evaluation) the head runs here, EVAL_CHUNK positions at a time, instead of inside the
    # model: the [N, vocabulary] logits and their log-softmax (SmolLM2 dev batch of 16: ~90 MB each) never exist
    # whole. Only for heads whose output the model does not transform further (no logit soft-capping / scaling)
    chunked = not torch.is_grad_enabled() and all(
        getattr(inner.config, key, None) in (None, 1.0) for key in ("final_logit_softcapping", "logit_scale"))
    kept: dict = {}

    def keep_labelled(_module, args, kwargs):
        hidden = args[0] if args else kwargs["input"]
        if hidden.shape[:2] != mask.shape:  # e.g. a caller asked for logits_to_keep: not ours to change
            raise ValueError(f"completion_loss: hidden states {tuple(hidden.shape)} do not match labels {tuple(mask.shape)}")
        picked = hidden[mask].unsqueeze(0)  # [1, N, d]
        if chunked:
            kept["hidden"], picked = picked[0], picked[:, :1]  # the model's own head call projects one row
        return ((picked,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "input": picked})

    handle = head.register_forward_pre_hook(keep_labelled, with_kwargs=True)
    try:
        logits = model(**inputs).logits[0]  # [N, vocabulary] ([1, vocabulary] when chunked)
    finally:
        handle.remove()
    if chunked:
        hidden = kept["hidden"]
        loss = sum(F.cross_entropy(project(head, hidden[i: i + EVAL_CHUNK]).float(), targets[i: i + EVAL_CHUNK],
                                   reduction="sum", label_smoothing=label_smoothing)
                   for i in range(0, max(hidden.shape[0], 1), EVAL_CHUNK))
    else:
        loss = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)
    if num_items_in_batch is None:
        denominator: Optional[Union[torch.Tensor, int]] = max(int(targets.numel()), 1)
    elif torch.is_tensor(num_items_in_batch):
        denominator = num_items_in_batch.to(loss.device)
    else:
        denominator = num_items_in_batch
    return loss / denominator


def shared_prompt_plan(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       ignore_index: int = -100) -> Optional[dict]:
    """How :func:`shared_prompt_loss` would split a batch, or ``None`` where it does not apply.

    The shared part of row i is its prompt minus its last token, ``input_ids[i, :p_i - 1]`` (p_i = the
    first labelled position). Rows with the same shared part form a group. ``None`` when no two rows
    share one, when a row has no label or a prompt shorter than 2 tokens, or when the batch is not right
    padded (real tokens first, as the E2E collator pads).
    """
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lens = attention_mask.sum(dim=1)
    if not torch.equal(attention_mask.bool(), torch.arange(length, device=input_ids.device)[None, :] < lens[:, None]):
        return None
    lab = labels.ne(ignore_index)
    if not bool(lab.any(dim=1).all()):
        return None
    first = lab.int().argmax(dim=1)  # p_i
    if bool((first < 2).any()):
        return None
    keys: dict = {}
    group = [keys.setdefault(tuple(input_ids[i, : int(first[i]) - 1].tolist()), len(keys)) for i in range(batch)]
    if len(keys) == batch:
        return None
    return {"prompts": list(keys), "group": group, "first": first.tolist(), "lens": lens.tolist()}


def shared_prompt_loss(
    model,
    inputs: dict,
    *,
    label_smoothing: float = 0.0,
    num_items_in_batch: Union[torch.Tensor, int, None] = None,
    ignore_index: int = -100,
    piece_tokens: int = EVAL_PIECE_TOKENS,
) -> Optional[torch.Tensor]:
    """:func:`completion_loss` of an evaluation batch, each distinct prompt run once (``None``: not applicable).

    E2E's dev set pairs every MR with all its references (8.5 on average, adjacent in the file), so a
    batch of 16 dev pairs holds 2-3 distinct MRs; the full forward runs each MR prompt once per
    reference. Here (no gradients) the shared part of every distinct prompt (:func:`shared_prompt_plan`)
    is run once into a key/value cache, the cache rows are copied to the rows of that prompt, and each
    row then runs only its last prompt token and its completion, at its own positions, with the
    prompt's padding masked out. The completions of a batch differ in length (E2E references: 10 to 60
    tokens), so the rows run in pieces of similar tail length (:func:`lora_research.batch_split.length_pieces`,
    ``piece_tokens`` the cost of one more forward): on the 425 pairs of 50 dev MRs, 12.9k padded tail
    tokens become 11.3k. Each piece's loss is its summed token losses over the batch's count
    (``num_items_in_batch`` when given), so the pieces add up to the batch's loss. Causal attention
    makes every position see exactly what it saw in the full forward, so the loss is
    :func:`completion_loss`'s up to float rounding (matrix products of other shapes); the batches, and
    so the dev loss as a mean of per-batch token means, are unchanged.
    Only for models whose forward takes a cache and explicit positions (Hugging Face causal LMs).
    """
    from transformers import DynamicCache

    ids, labels = inputs["input_ids"], inputs["labels"]
    plan = shared_prompt_plan(ids, labels, inputs.get("attention_mask"), ignore_index)
    if plan is None or set(inputs) - {"input_ids", "attention_mask", "labels"}:
        return None
    inner = getattr(model, "module", model)
    device, fill = ids.device, int(ids[0, 0])
    prompts, group = plan["prompts"], torch.tensor(plan["group"], device=device)
    width = max(len(p) for p in prompts)
    p_ids = torch.full((len(prompts), width), fill, dtype=ids.dtype, device=device)
    p_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for g, p in enumerate(prompts):
        p_ids[g, : len(p)] = torch.tensor(p, dtype=ids.dtype, device=device)
        p_mask[g, : len(p)] = 1
    positions = torch.arange(width, device=device).expand(len(prompts), -1)
    kw = cache_keyword(inner)
    cache = DynamicCache(config=inner.config.get_text_config(decoder=True))
    model(input_ids=p_ids, attention_mask=p_mask, position_ids=positions, use_cache=True, **{kw: cache},
          **({"logits_to_keep": 1} if forward_takes(inner, "logits_to_keep") else {}))
    starts = [f - 1 for f in plan["first"]]
    tails = [n - s for n, s in zip(plan["lens"], starts)]
    if num_items_in_batch is None:  # the batch's labelled tokens, over all pieces (completion_loss's count)
        num_items_in_batch = max(int(labels[:, 1:].ne(ignore_index).sum()), 1)
    loss = None
    for rows in length_pieces(tails, piece_tokens):
        rows_t = torch.as_tensor(rows, device=device)
        g = group[rows_t]
        p_width = max(len(prompts[k]) for k in set(g.tolist()))
        piece_cache = DynamicCache(ddp_cache_data=[(layer.keys[g, :, :p_width], layer.values[g, :, :p_width])
                                                   for layer in cache.layers],
                                   config=inner.config.get_text_config(decoder=True))  # row i reads its prompt's rows
        tail = max(tails[i] for i in rows)
        t_ids = torch.full((len(rows), tail), fill, dtype=ids.dtype, device=device)
        t_labels = torch.full((len(rows), tail), ignore_index, dtype=labels.dtype, device=device)
        t_mask = torch.zeros((len(rows), tail), dtype=torch.long, device=device)
        for j, i in enumerate(rows.tolist()):
            s, n = starts[i], plan["lens"][i]
            t_ids[j, : n - s], t_labels[j, : n - s], t_mask[j, : n - s] = ids[i, s:n], labels[i, s:n], 1
        t_pos = torch.tensor([starts[i] for i in rows], device=device)[:, None] + torch.arange(tail, device=device)[None, :]
        tail_inputs = {"input_ids": t_ids, "attention_mask": torch.cat([p_mask[g, :p_width], t_mask], dim=1),
                       "position_ids": t_pos, "labels": t_labels, "use_cache": True, kw: piece_cache}
        part = completion_loss(model, tail_inputs, label_smoothing=label_smoothing,
                               num_items_in_batch=num_items_in_batch, ignore_index=ignore_index)
        loss = part if loss is None else loss + part
    return loss
