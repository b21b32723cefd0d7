"""Key/value cache for beam search: appends in place, and a beam reorder copies only where beams differ (issue #13).

Each step of beam search appends one position to every layer's keys and values and then reorders the
beams: new beam row ``i`` continues old row ``beam_idx[i]``. ``DynamicCache`` does both by building new
tensors: ``torch.cat`` of the whole cache, then ``index_select`` of all of it. Here:

* the layer's keys and values are views of buffers with room for a few more positions
  (:attr:`BeamCacheLayer.grow`), so an append is a write into that room, and the buffers are
  reallocated once every ``grow`` positions instead of at every step. The buffers are memory mapped straight
  from the system (:func:`lora_research.heap.zeros_off_heap`), so a replaced one is handed back at once (from the
  heap, glibc kept replaced ones as free heap between trims: an E2E decoding, SmolLM2, 8 MRs x 10 beams, 50 dev MRs,
  peaked at 1,539 MB RSS with 203 MB of free heap; now 1,461 MB, the same time and tokens);
* the reorder copies, for each row that changes, only the positions at and after ``first[i]``: the first
  position whose token differs between old row ``i`` and old row ``beam_idx[i]``. Positions before it
  already hold the same keys and values, because they were computed from the same tokens at the same
  positions (beams of one prompt share its cache and their common prefix). On E2E beams (SmolLM2, beam
  10) the positions that differ are ~14% of the cache, ~28% counting each step's longest tail, which is
  what is copied. Without ``first`` (or where a row moves to another prompt's rows) all positions are
  copied, as ``DynamicCache`` does.

Rows are copied through a small temporary (a new row may read an old row that another new row
overwrites), so the result is exactly ``DynamicCache``'s ``index_select``: the beam search that uses it is
checked token for token against ``model.generate`` in ``tests/test_beam_search.py``. Memory is
``DynamicCache``'s plus up to ``grow`` positions.

Only what :func:`lora_research.beam_search.beam_search` needs is supported: ``update``,
``get_seq_length`` and ``reorder_cache`` (which may also drop rows, as finished MRs leave the batch).
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from . import heap


class BeamCacheLayer(DynamicLayer):
    """One attention layer's keys/values as views ``[:rows, :, start:length]`` of buffers with spare positions.

    Besides a ``DynamicLayer``'s ``update`` and ``reorder_cache`` it lets a beam search that streams prompts
    through its rows (:func:`lora_research.beam_search.beam_search`) :meth:`place` a new prompt's keys and
    values into some rows, make room at the left (:meth:`extend_left`, zeros: masked positions) and forget
    positions no row reads any more (:meth:`trim_left`). Positions are relative to ``start``."""

    is_croppable = False
    grow = 8  # spare positions allocated with the buffers (16: 39 MB more at the peak of an E2E decoding)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._k = self._v = None
        self.rows = self.start = self.length = 0
        self.moves = 0  # times the keys and values moved into new buffers (the old ones are free then)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _view(self) -> None:
        if self._k is not None:
            self.keys = self._k[: self.rows, :, self.start: self.length]
            self.values = self._v[: self.rows, :, self.start: self.length]

    def _realloc(self, like: torch.Tensor, rows: int, left: int = 0, extra: int = 0) -> None:
        """New buffers of ``rows`` rows holding the current positions after ``left`` zero positions, with
        ``extra`` + :attr:`grow` spare positions; new rows are zeros (and, before the first buffers, the positions
        that :meth:`extend_left` made)."""
        n = self.length - self.start
        shape = (rows, like.shape[1], left + n + extra + self.grow, like.shape[-1])
        bufs = []
        for old, src in ((self._k, like), (self._v, like if self._v is None else self._v)):
            new = heap.zeros_off_heap(shape, src.dtype, src.device)  # the old buffer goes back to the system when freed
            if old is not None and n:
                r = min(rows, old.shape[0])
                new[:r, :, left: left + n] = old[:r, :, self.start: self.length]
            bufs.append(new)
        self._k, self._v = bufs
        self.start, self.length = 0, left + n
        self.moves += 1

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows, n = key_states.shape[0], key_states.shape[-2]
        if self._k is not None and self.length - self.start and rows != self.rows:
            raise ValueError(f"update with {rows} rows on a cache of {self.rows}")
        if self._k is None or self._k.shape[0] < rows or self._k.shape[2] < self.length + n:
            self._realloc(key_states, max(rows, self.rows), extra=n)
        self._k[:rows, :, self.length: self.length + n] = key_states
        self._v[:rows, :, self.length: self.length + n] = value_states
        self.rows, self.length = rows, self.length + n
        self._view()
        return self.keys, self.values

    def place(self, row0: int, row1: int, keys: Optional[torch.Tensor], values: Optional[torch.Tensor]) -> None:
        """Rows ``row0:row1`` get ``keys``/``values`` (``[1 or rows, heads, n, dim]``) at the last ``n`` positions;
        the cache grows to ``row1`` rows if it has fewer. ``None``: a one-token prompt (nothing to place)."""
        if keys is not None:
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            n = keys.shape[-2]
            if n > self.length - self.start:
                raise ValueError(f"{n} positions do not fit in a cache of {self.length - self.start} (extend_left)")
            if self._k is None or self._k.shape[0] < row1:
                self._realloc(keys, row1)
            self._k[row0:row1, :, self.length - n: self.length] = keys
            self._v[row0:row1, :, self.length - n: self.length] = values
        elif self._k is not None and self._k.shape[0] < row1:
            self._realloc(self._k, row1)
        self.rows = max(self.rows, row1)
        self._view()

    def extend_left(self, n: int) -> None:
        """``n`` more positions at the left (zeros), for a prompt longer than the cache."""
        if self._k is None:
            self.length += n
        elif self.start >= n:
            self.start -= n
            self._k[:, :, self.start: self.start + n] = 0
            self._v[:, :, self.start: self.start + n] = 0
        else:
            self._realloc(self._k, self._k.shape[0], left=n)
        self._view()

    def trim_left(self, n: int) -> None:
        """Forget the first ``n`` positions."""
        self.start += n
        self._view()

    def get_seq_length(self) -> int:
        return self.length - self.start if self.is_initialized else 0

    def reorder_cache(self, beam_idx: torch.LongTensor, first: Optional[torch.LongTensor] = None) -> None:
        """New row ``i`` = old row ``beam_idx[i]`` (``len(beam_idx) <= rows``: rows may leave).

        ``first[i]``: positions before it are already equal in old rows ``i`` and ``beam_idx[i]`` and are
        not copied; ``None`` copies every position."""
        if self._k is None or not self.get_seq_length():
            self.rows = beam_idx.shape[0]
            return
        beam_idx = beam_idx.to(self.device)
        m, n = beam_idx.shape[0], self.get_seq_length()
        moved = beam_idx != torch.arange(m, device=self.device)
        if first is not None:
            moved &= first.to(self.device) < n
        dst = moved.nonzero()[:, 0]
        if dst.numel():
            begin = self.start + (0 if first is None else int(first.to(self.device)[dst].min()))
            src = beam_idx[dst]
            for buf in (self._k, self._v):
                part = buf[:, :, begin: self.length]
                part.index_copy_(0, dst, part.index_select(0, src))
        self.rows = m
        self._view()

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("BeamCacheLayer supports update, get_seq_length, reorder_cache, place, "
                                  "extend_left and trim_left only")

    crop = batch_repeat_interleave = batch_select_indices = _unsupported


def beam_cache(model, prompt_cache: DynamicCache | None = None) -> DynamicCache:
    """A ``DynamicCache`` whose layers are :class:`BeamCacheLayer` s, for a model of full-attention layers.

    ``prompt_cache``'s keys and values are moved in: each of its layers is emptied once copied, so the
    two never both hold the whole prompt.
    """
    config = model.config.get_text_config(decoder=True)
    cache = DynamicCache(config=config)
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        raise ValueError(f"{type(model).__name__} has sliding-window attention layers; beam_cache supports "
                         "full attention only (use a DynamicCache)")
    cache.layers = [BeamCacheLayer() for _ in range(config.num_hidden_layers)]
    cache.layer_class_to_replicate = None
    if prompt_cache is not None:
        for mine, src in zip(cache.layers, prompt_cache.layers):
            if src.get_seq_length() > 0:
                mine.update(src.keys, src.values)
            src.keys = src.values = None
            src.is_initialized = False
    return cache


def reorder(cache: DynamicCache, beam_idx: torch.LongTensor, first: Optional[torch.LongTensor] = None) -> None:
    """:meth:`BeamCacheLayer.reorder_cache` on every layer of ``cache``."""
    for layer in cache.layers:
        layer.reorder_cache(beam_idx, first)
