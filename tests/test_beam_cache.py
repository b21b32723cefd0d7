"""beam_cache.BeamCacheLayer holds exactly what transformers' DynamicLayer holds through the updates and
beam reorders (with rows leaving) of a beam search, also when a reorder copies only the positions where
beams differ, and refuses what it does not support."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from lora_research.beam_cache import BeamCacheLayer, beam_cache, reorder


def _kv_of(tokens: torch.Tensor, heads: int = 2, dim: int = 4) -> torch.Tensor:
    """Keys as a causal model makes them: position t is a function of tokens[:t + 1] only."""
    rows, length = tokens.shape
    out = torch.empty(rows, heads, length, dim)
    for i in range(rows):
        for t in range(length):
            g = torch.Generator().manual_seed(hash(tuple(tokens[i, : t + 1].tolist())) % (2 ** 31))
            out[i, :, t] = torch.randn(heads, dim, generator=g)
    return out


@pytest.mark.parametrize("with_first", [False, True])
def test_beam_cache_layer_matches_dynamic_layer_through_updates_and_reorders(with_first):
    """A simulated beam search over 3 prompts x 4 beams: beams fork from each other (sharing prefixes), then
    prompts leave (their rows go, later rows move up). With ``first`` (the first differing token) only the
    tails are copied; the cache must still equal DynamicLayer's full reorder at every step."""
    g = torch.Generator().manual_seed(0)
    k_beams, prompts = 4, 3
    tokens = torch.randint(0, 5, (prompts, 1, 5), generator=g).repeat(1, k_beams, 1).reshape(prompts * k_beams, 5)
    ref, mine = DynamicLayer(), BeamCacheLayer()
    fed = 0  # positions in the caches
    for step in range(9):
        kv = _kv_of(tokens)[:, :, fed:]
        for layer in (ref, mine):
            layer.update(kv, kv + 1)
        fed = tokens.shape[1]
        rows = tokens.shape[0]
        # the next running beams: each continues a beam of its own prompt (low vocabulary: shared prefixes)
        src = (torch.arange(rows) // k_beams) * k_beams + torch.randint(0, k_beams, (rows,), generator=g)
        new = torch.cat([tokens[src], torch.randint(0, 3, (rows, 1), generator=g)], dim=1)
        keep = torch.arange(rows // k_beams)
        if step in (3, 6) and keep.numel() > 1:  # the first prompt leaves: the others move to other rows
            keep = keep[1:]
        differs = new[:, :fed] != tokens[:, :fed]
        first = torch.where(differs.any(-1), differs.int().argmax(-1), fed).view(-1, k_beams)[keep]
        first = first.masked_fill((keep != torch.arange(keep.numel()))[:, None], 0).reshape(-1)
        rows_kept = (keep[:, None] * k_beams + torch.arange(k_beams)).reshape(-1)
        idx = src[rows_kept]
        ref.reorder_cache(idx)
        mine.reorder_cache(idx, first if with_first else None)
        tokens = new[rows_kept]
        assert torch.equal(ref.keys, mine.keys) and torch.equal(ref.values, mine.values)
        assert mine.get_seq_length() == ref.get_seq_length() == fed
    assert mine._k.shape[2] - mine.get_seq_length() <= BeamCacheLayer.grow  # not a preallocated maximum
    with pytest.raises(NotImplementedError):
        mine.crop(-1)


def test_a_tail_reorder_copies_only_the_tail():
    """Positions before ``first`` are not written: poisoning them in the source row does not reach the target."""
    layer = BeamCacheLayer()
    kv = torch.arange(2 * 1 * 6 * 1, dtype=torch.float).view(2, 1, 6, 1)
    layer.update(kv, kv.clone())
    layer._k[1, :, :4] = -1.0  # row 1's first 4 positions differ from row 0's (would be copied by a full reorder)
    reorder_idx, first = torch.tensor([1, 1]), torch.tensor([4, 6])
    layer.reorder_cache(reorder_idx, first)
    assert torch.equal(layer.keys[0, 0, :4, 0], kv[0, 0, :4, 0])  # kept its own prefix
    assert torch.equal(layer.keys[0, 0, 4:, 0], kv[1, 0, 4:, 0])  # took row 1's tail


def test_beam_cache_takes_over_the_prompt_cache():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    prompt = DynamicCache(config=model.config)
    ids = torch.randint(0, 50, (3, 4))
    with torch.no_grad():
        model(input_ids=ids, past_key_values=prompt, use_cache=True)
    keys = [layer.keys.clone() for layer in prompt.layers]
    cache = beam_cache(model, prompt)
    assert cache.get_seq_length() == 4 and prompt.get_seq_length() == 0  # moved, not duplicated
    assert all(torch.equal(k, layer.keys) for k, layer in zip(keys, cache.layers))
    with torch.no_grad():  # the model appends to it like to a DynamicCache
        out = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True, position_ids=torch.full((3, 1), 4))
    assert cache.get_seq_length() == 5 and out.logits.shape == (3, 1, 50)
    reorder(cache, torch.tensor([2, 0]))  # all layers, rows leaving
    assert all(layer.keys.shape[0] == 2 for layer in cache.layers)
