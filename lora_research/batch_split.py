"""One training batch, computed as length-sorted pieces: the same examples per optimizer step, less padding.

``DataCollatorWithPadding`` pads a shuffled batch to its longest row. On SST-2 (batches of 32, phrases
of 13 tokens on average, the longest of a batch ~45) two thirds of the tokens an encoder computes are
padding. ``trainer.train_batch_split=length`` keeps the batch the sampler drew (the paper's shuffled
batches: unlike ``train_sampling=group_by_length``, no example moves to another step) and computes it as
a few pieces of rows of similar length, each cut to its own longest row; their losses, weighted by
their share of the rows, add up to the batch's mean loss, and their gradients to the batch's gradient.

What changes: the dropout draws (the same distribution, drawn for fewer positions) and the order of
float additions, so a run's numbers move the way another seed's would; with dropout off, the gradient
equals the unsplit batch's to float rounding (``tests/test_batch_split.py``).

The pieces minimise ``Σ (piece_tokens + n_i · L_i)``: rows sorted by length, contiguous pieces, cost of
a piece its padded tokens ``n_i · L_i`` plus a fixed cost of one more forward and backward, in tokens
(``trainer.split_piece_tokens``; measured on the 2-core CPU with MiniLM: a step costs ~12 ms plus
~0.27 ms per token, so ~48 tokens). The partition is exact (dynamic programming over the sorted rows).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def row_extents(attention_mask: torch.Tensor) -> np.ndarray:
    """Per row, one past its last attended column (its length under right padding)."""
    mask = attention_mask.detach().to("cpu", torch.bool)
    width = mask.shape[1]
    last = width - torch.flip(mask, dims=[1]).to(torch.int8).argmax(dim=1)
    last[~mask.any(dim=1)] = 0
    return last.numpy().astype(np.int64)


def length_pieces(extents, piece_tokens: int) -> list[np.ndarray]:
    """The partition of a batch's rows into pieces minimising padded tokens plus ``piece_tokens`` per piece.

    Rows are sorted by extent; the optimal partition of the sorted rows into contiguous pieces is found
    by dynamic programming (cost of rows ``i..j-1``: ``piece_tokens + (j - i) * extent[j - 1]``). Each
    piece lists the rows' positions in the batch, ascending. One piece means: compute the batch as is.
    """
    extents = np.asarray(extents, dtype=np.int64)
    n = len(extents)
    if n <= 1:
        return [np.arange(n)]
    order = np.argsort(extents, kind="stable")
    sorted_ext = extents[order]
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        starts = np.arange(j)
        costs = best[:j] + piece_tokens + (j - starts) * sorted_ext[j - 1]
        i = int(np.argmin(costs))  # ties: the fewest, longest pieces (argmin takes the first start)
        best[j], cut[j] = costs[i], i
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    return [np.sort(order[i:j]) for i, j in reversed(bounds)]


def take_piece(inputs: dict[str, Any], rows: np.ndarray, n: int, width: int, extent: int) -> dict[str, Any]:
    """The piece's rows of every batch tensor, the [n, width] ones cut to the piece's ``extent`` columns.

    Only trailing columns are cut: every row of the piece is padding there, and positions count from
    the left, so each real token keeps its position.
    """
    index = torch.as_tensor(rows)
    piece = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            value = value.index_select(0, index.to(value.device))
            if value.dim() >= 2 and value.shape[1] == width:
                value = value[:, :extent]
        piece[key] = value
    return piece


def split_batch(inputs: dict[str, Any], piece_tokens: int) -> list[tuple[dict[str, Any], float]]:
    """``(piece inputs, share of the batch's rows)`` per piece; ``[(inputs, 1.0)]`` where nothing is gained."""
    mask = inputs.get("attention_mask")
    labels = inputs.get("labels")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not isinstance(labels, torch.Tensor):
        return [(inputs, 1.0)]
    n, width = mask.shape
    if labels.dim() == 0 or labels.shape[0] != n:
        return [(inputs, 1.0)]
    extents = row_extents(mask)
    pieces = length_pieces(extents, piece_tokens)
    if len(pieces) == 1 and extents.max(initial=0) == width:
        return [(inputs, 1.0)]
    return [(take_piece(inputs, rows, n, width, int(extents[rows].max(initial=1))), len(rows) / n)
            for rows in pieces]
