"""The projection onto the vocabulary in pieces of vocabulary rows, without gradients, on CPU (issue #13, speed).

The output embedding of a causal LM (``lm_head``: logits = h Wᵀ, W of shape [V, d]) is the largest single
matrix product of a decoding step or a dev-loss chunk. With V = 49,152 (SmolLM2) and d = 576, one product of
80 rows (a beam-10 step over 8 MRs) runs at ~113 GFLOPS on the 2-core CPU, while the transformer's own
matrices run at ~165; in pieces of :data:`PIECE` vocabulary rows, whose weight block stays in cache, the same
80 rows take 33.9 instead of 40.5 ms (8 rows: 11.6 vs 16.2 ms; 256 rows: 98 vs 108 ms; at 1,024 rows the
whole product is faster, hence :data:`MAX_ROWS`).

Every logit is the same dot product over d, computed by the same BLAS for a narrower output. On this
machine's MKL that is bitwise the one-product result for d >= 576 (SmolLM2, GPT-2: ``torch.equal`` on every
row count decoding and the dev loss use, ``tests/test_vocab_head.py``); for d <= 128 the kernel it picks for a
narrower output sums in another order and logits differ in the last bit (<= 1e-6). That is the same kind of
difference the stream beam search already has from running rows in other batch shapes than ``generate``; what
is checked is the outcome: the same decoded tokens as ``model.generate`` (tests, and ``benchmarks/bench_jobs.py``'s
decode section on 50 real dev MRs). It is used where no gradient flows: :func:`lora_research.lm_loss.completion_loss`'s
evaluation head (the dev loss), and :func:`in_pieces` around the fast beam search. With gradients, on another
device, or for a head that is not a plain ``nn.Linear``, the head runs as it is.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

PIECE = 2048  # vocabulary rows per product
MAX_ROWS = 256  # above this many rows one product is as fast or faster


def applies(head, hidden: torch.Tensor) -> bool:
    """Whether :func:`project` computes ``head(hidden)`` in pieces."""
    return (type(head) is torch.nn.Linear and not torch.is_grad_enabled() and hidden.device.type == "cpu"
            and head.weight.shape[0] > PIECE and hidden.numel() <= MAX_ROWS * hidden.shape[-1])


def _pieces(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    w, b = head.weight, head.bias
    return torch.cat([F.linear(hidden, w[i: i + PIECE], None if b is None else b[i: i + PIECE])
                      for i in range(0, w.shape[0], PIECE)], dim=-1)


def project(head, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)``, in pieces of :data:`PIECE` output rows where :func:`applies` (same values)."""
    return _pieces(head, hidden) if applies(head, hidden) else head(hidden)


@contextmanager
def in_pieces(model):
    """Within the block, ``model``'s output embedding projects through :func:`project` (same logits)."""
    head = getattr(model, "module", model).get_output_embeddings()
    if type(head) is not torch.nn.Linear or "forward" in vars(head):
        yield
        return

    def forward(hidden):  # not project(): its fallback, head(hidden), would call this forward again
        return _pieces(head, hidden) if applies(head, hidden) else torch.nn.Linear.forward(head, hidden)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward
