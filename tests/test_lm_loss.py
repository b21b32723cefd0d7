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


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("eps,num_items", [(0.0, None), (0.1, 11)])
def test_without_gradients_the_head_runs_in_chunks_with_the_same_loss(family, method, eps, num_items, monkeypatch):
    """Evaluation (no grad): the head projects EVAL_CHUNK positions at a time, outside the model; same loss."""
    import lora_research.lm_loss as lm_loss

    model = _model(family, method).eval()
    batch = _batch(family)
    with torch.no_grad():
        ref = _full_logits_loss(model, batch, eps, num_items)
        monkeypatch.setattr(lm_loss, "EVAL_CHUNK", 3)  # 11 labelled positions: 4 chunks
        rows = []
        handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[-2]))
        ours = completion_loss(model, batch, label_smoothing=eps, num_items_in_batch=num_items)
        handle.remove()
    assert int(labelled_positions(batch["labels"])[1].numel()) == 11
    assert rows == [1, 3, 3, 3, 2]  # the model's own head call (one row), then the chunks
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (float(ours), float(ref))


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


# --- evaluation with shared prompts (lm_loss.shared_prompt_loss) ---------------------------------------

def _shared_batch(family: str) -> dict:
    """Six right-padded rows: rows 0-2 share a 5-token prompt, rows 3-4 a 3-token one, row 5 its own;
    completions of different lengths (E2E's dev pairs: one MR, several references)."""
    g = torch.Generator().manual_seed(7)
    pa, pb, pc = (torch.randint(3, 60, (n,), generator=g).tolist() for n in (5, 3, 4))
    rows = [(pa, 4), (pa, 2), (pa, 6), (pb, 3), (pb, 5), (pc, 2)]
    seqs = [(p, p + torch.randint(3, 60, (c,), generator=g).tolist()) for p, c in rows]
    width = max(len(s) for _, s in seqs)
    pad = 1 if family == "roberta" else 0
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100)
    for i, (p, s) in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        labels[i, len(p): len(s)] = torch.tensor(s[len(p):])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _tokens_run(model):
    """Hook on the input embedding counting the tokens every model call runs (rows x length)."""
    seen: list[int] = []

    def hook(_m, args, _out):
        seen.append(int(args[0].numel()))

    return seen, model.get_input_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_shared_prompt_loss_equals_the_full_forward(family, eps):
    from lora_research.lm_loss import shared_prompt_loss, shared_prompt_plan

    model = _model(family, "lora")
    batch = _shared_batch(family)
    plan = shared_prompt_plan(batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert plan["group"] == [0, 0, 0, 1, 1, 2] and plan["first"] == [5, 5, 5, 3, 3, 4]
    with torch.no_grad():
        ref = _full_logits_loss(model, batch, eps, None)
        full = completion_loss(model, batch, label_smoothing=eps)
        seen, handle = _tokens_run(model)
        try:
            ours = shared_prompt_loss(model, batch, label_smoothing=eps)
        finally:
            handle.remove()
    assert torch.allclose(full, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (float(ours), float(ref))
    # prompts once (3 rows x 4) + each row's last prompt token and completion (6 x 7) < 6 rows x 11
    assert seen == [3 * 4, 6 * 7] and sum(seen) < batch["input_ids"].numel()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shared_prompt_loss_in_length_pieces_equals_the_full_forward(family):
    """Pieces free of padding (piece_tokens=0): tails of 5, 3, 7, 4, 6, 3 tokens run as [3, 3], [4], [5], [6], [7],
    each piece reading only its prompts' cache columns; with and without Trainer's num_items_in_batch."""
    from lora_research.lm_loss import shared_prompt_loss

    model = _model(family, "lora")
    batch = _shared_batch(family)
    n_items = int(batch["labels"][:, 1:].ne(-100).sum())
    with torch.no_grad():
        ref = _full_logits_loss(model, batch, 0.1, None)
        seen, handle = _tokens_run(model)
        try:
            ours = shared_prompt_loss(model, batch, label_smoothing=0.1, piece_tokens=0)
            scaled = shared_prompt_loss(model, batch, label_smoothing=0.1, piece_tokens=0,
                                        num_items_in_batch=torch.tensor(2 * n_items))
        finally:
            handle.remove()
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (float(ours), float(ref))
    assert torch.allclose(2 * scaled, ref, rtol=1e-5, atol=1e-6), (float(scaled), float(ref))
    assert seen[:6] == [3 * 4, 2 * 3, 4, 5, 6, 7]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shared_prompt_loss_declines_what_it_cannot_share(family):
    from lora_research.lm_loss import shared_prompt_loss

    model = _model(family, "lora")
    batch = _shared_batch(family)
    with torch.no_grad():
        assert shared_prompt_loss(model, _batch(family)) is None  # every row a prompt of its own
        left = {k: v.flip(1) for k, v in batch.items()}  # left padded: not the collator's layout
        assert shared_prompt_loss(model, left) is None
        assert shared_prompt_loss(model, {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])}) is None
        no_prompt = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
        assert shared_prompt_loss(model, no_prompt) is None


def test_run_trainer_shares_prompts_in_evaluation_only():
    """RunTrainer.compute_loss: shared prompts in evaluation (no grad, eval mode), never in training, never
    for prefix tuning (its forward hook rewrites the inputs), and not when trainer.eval_shared_prompts is off."""
    from transformers import TrainingArguments

    from lora_research.training import RunTrainer

    batch = _shared_batch("llama")
    for method, shares in (("lora", True), ("prefix_layer", False)):
        model = _model("llama", method)
        trainer = RunTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True))
        for enabled in (True, False):
            trainer.eval_shared_prompts = enabled
            model.eval()
            seen, handle = _tokens_run(model)
            try:
                with torch.no_grad():  # Trainer's prediction_step passes the batch's label count
                    n_items = int(batch["labels"][:, 1:].ne(-100).sum())
                    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(n_items))
                model.train()
                trainer.compute_loss(model, batch)
            finally:
                handle.remove()
            ref = completion_loss(model.eval(), batch)
            assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
            full = batch["input_ids"].numel()
            assert seen == ([3 * 4, 6 * 7, full] if shares and enabled else [full, full]), (method, enabled, seen)
