"""The causal-LM loss from the labelled positions' logits only (lora_research.lm_loss) against Trainer's
own loss on the full logits (transformers' LabelSmoother with shift_labels, and the model's loss for
ε = 0): same value and same gradients, for LoRA and PreLayer (whose hooks insert and strip positions)
on tiny GPT-2 and LLaMA models."""
from __future__ import annotations

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

from _tiny_models import tiny_batch, tiny_model
from lora_research.lm_loss import completion_loss, labelled_positions
from lora_research.methods import build_method

METHODS = {
    "lora": {"name": "lora", "r": 2, "targets": ["q", "v"]},
    "prefix_layer": {"name": "prefix_layer", "prefix_len": 3, "init": "normal", "init_std": 1.0},
}


def _batch(family: str) -> dict:
    b = tiny_batch(family, batch=3, length=9)
    b["labels"][:, :4] = -100  # a prompt: its labels are ignored, as E2E's MR tokens are
    b["labels"][0, :6] = -100  # rows with different prompt lengths
    return b


def _model(family: str, method: str):
    model, spec = tiny_model(family)
    build_method(dict(METHODS[method])).apply(model, spec)
    with torch.no_grad():  # LoRA's B starts at zero: give the update a value so gradients reach A
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.normal_(0, 0.1)
    return model


def _full_logits_loss(model, batch, eps, num_items):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if eps > 0:
        out = model(**inputs)
        return LabelSmoother(epsilon=eps)(out, batch["labels"], shift_labels=True, num_items_in_batch=num_items)
    kw = {} if num_items is None else {"num_items_in_batch": num_items}
    return model(**inputs, labels=batch["labels"], **kw).loss


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("eps,num_items", [(0.0, None), (0.1, None), (0.1, 11), (0.0, 11)])
def test_equals_trainer_loss_and_gradients(family, method, eps, num_items):
    model = _model(family, method)
    batch = _batch(family)
    params = [p for p in model.parameters() if p.requires_grad]

    ref = _full_logits_loss(model, batch, eps, num_items)
    ref_grads = torch.autograd.grad(ref, params)
    ours = completion_loss(model, batch, label_smoothing=eps, num_items_in_batch=num_items)
    our_grads = torch.autograd.grad(ours, params)

    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (float(ours), float(ref))
    for g, r in zip(our_grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6)
    assert "labels" in batch  # the caller's batch is not changed


def test_labelled_positions_by_hand():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 10]])
    mask, targets = labelled_positions(labels)
    # position t is kept when labels[t + 1] is a token: row 0 keeps 1, 2; row 1 keeps 0..3; never the last
    assert mask.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert targets.tolist() == [5, 6, 7, 8, 9, 10]


def test_head_projects_only_the_labelled_rows():
    model = _model("gpt2", "lora")
    batch = _batch("gpt2")
    seen = []
    h = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    completion_loss(model, batch)
    h.remove()
    n = int(labelled_positions(batch["labels"])[0].sum())
    assert seen == [(1, n, model.config.vocab_size)] and n < batch["labels"].numel() / 2


def test_refuses_a_model_without_an_lm_head():
    model, _ = tiny_model("bert")  # a sequence classifier
    with pytest.raises(ValueError, match="no output embedding"):
        completion_loss(model, tiny_batch("gpt2"))
