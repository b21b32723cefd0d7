"""beam_cache.SpareSlotLayer holds exactly what transformers' DynamicLayer holds through the updates and
beam reorders (with rows leaving) of a beam search, and refuses what it does not support."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from lora_research.beam_cache import SpareSlotLayer, spare_slot_cache


def test_spare_slot_layer_matches_dynamic_layer_through_updates_and_reorders():
    g = torch.Generator().manual_seed(0)
    ref, mine = DynamicLayer(), SpareSlotLayer()
    rows = 6
    for step, n in enumerate([5, 1, 1, 2, 1, 1, 1]):  # a prompt, single tokens, one 2-token update
        k, v = torch.randn(rows, 2, n, 4, generator=g), torch.randn(rows, 2, n, 4, generator=g)
        rk, rv = ref.update(k, v)
        mk, mv = mine.update(k, v)
        assert torch.equal(rk, mk) and torch.equal(rv, mv) and mine.get_seq_length() == ref.get_seq_length()
        keep = rows - (1 if step in (2, 4) else 0)  # rows leave, as finished MRs do
        idx = torch.randint(0, rows, (keep,), generator=g)
        ref.reorder_cache(idx)
        mine.reorder_cache(idx)
        rows = keep
        assert torch.equal(ref.keys, mine.keys) and torch.equal(ref.values, mine.values)
    assert mine._k.shape[2] == mine.get_seq_length() + 1  # one spare slot, not a preallocated maximum
    with pytest.raises(NotImplementedError):
        mine.crop(-1)


def test_spare_slot_cache_takes_over_the_prompt_cache():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    prompt = DynamicCache(config=model.config)
    ids = torch.randint(0, 50, (3, 4))
    with torch.no_grad():
        model(input_ids=ids, past_key_values=prompt, use_cache=True)
    keys = [layer.keys.clone() for layer in prompt.layers]
    cache = spare_slot_cache(model, prompt)
    assert cache.get_seq_length() == 4 and prompt.get_seq_length() == 0  # moved, not duplicated
    assert all(torch.equal(k, layer.keys) for k, layer in zip(keys, cache.layers))
    with torch.no_grad():  # the model appends to it like to a DynamicCache
        out = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True, position_ids=torch.full((3, 1), 4))
    assert cache.get_seq_length() == 5 and out.logits.shape == (3, 1, 50)
