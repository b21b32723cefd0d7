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

    def keep_labelled(_module, args, kwargs):
        hidden = args[0] if args else kwargs["input"]
        if hidden.shape[:2] != mask.shape:  # e.g. a caller asked for logits_to_keep: not ours to change
            raise ValueError(f"completion_loss: hidden states {tuple(hidden.shape)} do not match labels {tuple(mask.shape)}")
        picked = hidden[mask].unsqueeze(0)  # [1, N, d]
        return ((picked,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "input": picked})

    handle = head.register_forward_pre_hook(keep_labelled, with_kwargs=True)
    try:
        logits = model(**inputs).logits[0]  # [N, vocabulary]
    finally:
        handle.remove()
    loss = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)
    if num_items_in_batch is None:
        denominator: Optional[Union[torch.Tensor, int]] = max(int(targets.numel()), 1)
    elif torch.is_tensor(num_items_in_batch):
        denominator = num_items_in_batch.to(loss.device)
    else:
        denominator = num_items_in_batch
    return loss / denominator
