"""trainer.train_batch_split=length (lora_research.batch_split): a batch computed as length-sorted pieces.

Oracles: the partition against brute force over every contiguous partition of the sorted rows; one
RunTrainer step on pieces against the same step on the whole batch (dropout off): same loss, same
gradients, for a classification and a regression head on BERT and RoBERTa."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from lora_research.batch_split import length_pieces, row_extents, split_batch
from lora_research.methods import build_method
from lora_research.training import RunTrainer

from lora_research.models import ModelConfig, load_model
from lora_research.targets import get_family

from _tiny_models import OVERRIDES


def _brute_force(extents, piece_tokens):
    s = sorted(extents)
    best = None
    for k in range(len(s)):
        for cuts in itertools.combinations(range(1, len(s)), k):
            bounds = [0, *cuts, len(s)]
            cost = sum(piece_tokens + (b - a) * s[b - 1] for a, b in zip(bounds, bounds[1:]))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("piece_tokens", [0, 5, 20, 1000])
def test_pieces_are_the_cheapest_partition(seed, piece_tokens):
    rng = np.random.default_rng(seed)
    extents = rng.integers(1, 40, size=int(rng.integers(1, 9)))
    pieces = length_pieces(extents, piece_tokens)
    rows = np.concatenate(pieces)
    assert sorted(rows.tolist()) == list(range(len(extents)))  # every row once
    cost = sum(piece_tokens + len(p) * extents[p].max() for p in pieces)
    assert cost == _brute_force(extents.tolist(), piece_tokens)
    if piece_tokens >= 1000:
        assert len(pieces) == 1


def test_row_extents_and_trimming():
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    assert row_extents(mask).tolist() == [3, 6, 1, 2]
    inputs = {"input_ids": torch.arange(24).view(4, 6), "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 0])}
    pieces = split_batch(inputs, piece_tokens=0)
    assert sum(share for _, share in pieces) == pytest.approx(1.0)
    seen = []
    for piece, share in pieces:
        width = int(piece["attention_mask"].sum(1).max())
        assert piece["input_ids"].shape[1] == piece["attention_mask"].shape[1] == width  # cut to its longest row
        assert share == len(piece["labels"]) / 4
        seen += piece["input_ids"][:, 0].tolist()
    assert sorted(seen) == [0, 6, 12, 18]
    # no labels, or one piece at full width: the batch as it is
    assert split_batch({"input_ids": inputs["input_ids"], "attention_mask": mask}, 0)[0][0]["input_ids"].shape == (4, 6)
    assert split_batch(inputs, piece_tokens=10_000) == [(inputs, 1.0)]


def _batch(family, n=12, width=20, seed=0, regression=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    lengths[0] = width
    ids = torch.randint(3, 101, (n, width), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids[mask == 0] = 1 if family == "roberta" else 0
    labels = torch.randn(n, generator=g) if regression else torch.randint(0, 3, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,regression", [("bert", False), ("roberta", False), ("bert", True)])
def test_a_step_on_pieces_equals_the_step_on_the_batch(tmp_path, family, regression):
    torch.manual_seed(0)
    model = load_model(ModelConfig(name=f"tiny-{family}", family=family, random_init=True,
                                   config_overrides=OVERRIDES[family]),
                       head="regression" if regression else "classification", num_labels=1 if regression else 3,
                       problem_type="regression" if regression else None)
    spec = get_family(family)
    build_method({"name": "lora", "r": 4, "alpha": 8, "targets": ["q", "v"], "dropout": 0.0}).apply(model, spec)
    for m in model.modules():  # dropout off: the two computations are the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.accepts_loss_kwargs = False  # as distributed.mean_loss_per_batch sets for classification heads
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=12,
                             gradient_accumulation_steps=2)
    trainer = RunTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 2
    batch = _batch(family, regression=regression)

    model.zero_grad()
    whole = trainer.training_step(model, dict(batch))
    g_whole = _grads(model)
    trainer.split_piece_tokens = 4
    assert len(split_batch(batch, 4)) > 1
    model.zero_grad()
    pieces = trainer.training_step(model, dict(batch))
    g_pieces = _grads(model)
    assert float(pieces) == pytest.approx(float(whole), rel=1e-5)
    assert g_whole.keys() == g_pieces.keys() and len(g_whole) > 0
    for name in g_whole:
        torch.testing.assert_close(g_pieces[name], g_whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_option_is_validated():
    from conftest import compose
    from lora_research.config import validate

    with pytest.raises(ValueError, match="train_batch_split='halves'.*'none', 'length'"):
        validate(compose(["model=tiny_bert", "task=sst2", "logger=none", "trainer.train_batch_split=halves"]))
    with pytest.raises(ValueError, match="split_piece_tokens=-1"):
        validate(compose(["model=tiny_bert", "task=sst2", "logger=none", "trainer.split_piece_tokens=-1"]))
    with pytest.raises(ValueError, match="train_batch_split=length is for tasks.*e2e.*generation.*=none"):
        validate(compose(["model=tiny_gpt2", "task=e2e", "logger=none", "trainer.train_batch_split=length"]))
    run = validate(compose(["experiment=quickstart", "logger=none"]))
    assert run.trainer.train_batch_split == "length"
