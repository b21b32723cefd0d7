"""trainer.lean_activations (lora_research.lean_activations): fewer saved activations, bitwise the same numbers.

Oracles: the plain computation (torch's dropout, transformers' MLP forward) run on a copy of the model with the
same seed: loss, every gradient and the RNG state after the step must be *equal*, not close; and a hand count of
the bytes autograd keeps (per adapted module, a float noise and a float dropped-out input become a boolean mask and
the shared input; per gated MLP, one [tokens, intermediate] float tensor fewer)."""
from __future__ import annotations

import copy

import pytest
import torch

from lora_research import fast_dropout, lean_activations
from lora_research.methods import build_method

from _tiny_models import FAMILIES, nudge_lora_b, tiny_batch, tiny_model


def _model(family, targets=("q", "v"), method="lora"):
    model, spec = tiny_model(family)
    if method == "lora":
        build_method({"name": "lora", "r": 4, "alpha": 8, "targets": list(targets), "dropout": 0.1}).apply(model, spec)
        nudge_lora_b(model)
    return model.train(), spec


def _step(model, batch, seed=7):
    """One forward and backward from ``seed``: the loss, the gradients and the RNG state after."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()


CASES = [(f, ("q", "v"), False) for f in FAMILIES] + [
    ("llama", ("q", "v"), True),  # fast_dropout's masks
    ("gpt2", ("q", "v"), True),
    ("llama", ("q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out"), False),  # LoRA inside the gated MLP too
    ("bert", ("q", "k", "v", "o", "mlp_in", "mlp_out"), False),
]


@pytest.mark.parametrize("family,targets,fast", CASES)
def test_same_loss_gradients_and_random_stream_bitwise(family, targets, fast):
    plain, _ = _model(family, targets)
    lean = copy.deepcopy(plain)
    if fast:
        fast_dropout.enable(plain)
        fast_dropout.enable(lean)
    handle = lean_activations.enable(lean)
    assert handle.branches, "LoRA modules take the lean path"
    assert bool(handle.mlps) == (family == "llama")
    batch = tiny_batch(family, batch=3, length=11)
    for seed in (7, 8):
        loss_p, grads_p, rng_p = _step(plain, batch, seed)
        loss_l, grads_l, rng_l = _step(lean, batch, seed)
        assert torch.equal(loss_l, loss_p)
        assert grads_l.keys() == grads_p.keys() and any("lora_A" in n for n in grads_p)
        for n in grads_p:
            assert torch.equal(grads_l[n], grads_p[n]), n
        assert torch.equal(rng_l, rng_p)  # the masks came from the same draws


def test_full_fine_tuning_of_a_gated_mlp_is_bitwise_the_same():
    plain, _ = _model("llama", method=None)
    lean = copy.deepcopy(plain)
    assert len(lean_activations.enable(lean).mlps) == 2
    batch = tiny_batch("llama", batch=3, length=11)
    loss_p, grads_p, _ = _step(plain, batch)
    loss_l, grads_l, _ = _step(lean, batch)
    assert torch.equal(loss_l, loss_p) and grads_l.keys() == grads_p.keys()
    assert all(torch.equal(grads_l[n], grads_p[n]) for n in grads_p)


def _saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    return sum(seen.values())


def test_kept_bytes_by_hand_and_remove_restores():
    """LLaMA, LoRA on q and v: the plain path keeps dropout(x) and the float noise for each branch, and silu(gate)
    for the MLP product; the lean path keeps x once per layer and a boolean mask per branch."""
    plain, _ = _model("llama")
    batch = tiny_batch("llama", batch=3, length=11)
    cfg = plain.config
    tokens, d, inter, layers = 3 * 11, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    before = _saved_bytes(plain, batch)
    handle = lean_activations.enable(plain)
    after = _saved_bytes(plain, batch)
    floats = 4 * tokens * d
    # plain: dropout(x) for q and v, and their float noise where x requires grad (not in layer 0: the embeddings are
    # frozen); lean: x (shared by q and v) and two boolean masks; plain also keeps silu(gate) per layer
    plain_branch = 2 * floats * layers + 2 * floats * (layers - 1)
    lean_branch = (floats + 2 * tokens * d) * layers
    assert before - after == plain_branch - lean_branch + 4 * tokens * inter * layers
    handle.remove()
    assert _saved_bytes(plain, batch) == before
    assert not any("forward" in vars(m) for m in plain.modules())
    assert not any(getattr(m, "lean_input", False) for m in plain.modules())


def test_eval_and_no_grad_take_the_plain_path():
    model, _ = _model("llama")
    ref = copy.deepcopy(model).eval()
    lean_activations.enable(model)
    batch = tiny_batch("llama", batch=3, length=11)
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, ref(**batch).logits)
        torch.manual_seed(1)
        train_nograd = model.train()(**batch).logits
        torch.manual_seed(1)
        assert torch.equal(train_nograd, ref.train()(**batch).logits)


def test_gated_mlp_needs_silu():
    model, _ = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    assert lean_activations.is_gated_silu_mlp(mlp)
    mlp.act_fn = torch.nn.GELU()
    assert not lean_activations.is_gated_silu_mlp(mlp)
    assert mlp not in lean_activations.enable(model).mlps


def test_lean_activations_is_a_boolean_trainer_option_on_by_default():
    from omegaconf import OmegaConf

    from lora_research.config import validate

    base = {"model": {"name": "tiny", "family": "bert", "random_init": True,
                      "config_overrides": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
                                           "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}},
            "task": {"name": "sst2", "kind": "glue"}, "method": {"name": "lora"}, "trainer": {}, "logger": {"name": "none"}}
    assert validate(OmegaConf.create(base)).trainer.lean_activations is True
    base["trainer"] = {"lean_activations": "sometimes"}
    with pytest.raises(Exception, match="lean_activations"):
        validate(OmegaConf.create(base))


def test_with_gradient_checkpointing_the_recomputed_layers_are_bitwise_the_same():
    """trainer.gradient_checkpointing (non-reentrant) recomputes each layer in backward, the masks redrawn from the
    restored RNG state: lean and plain still agree bit for bit."""
    plain, _ = _model("llama")
    lean = copy.deepcopy(plain)
    lean_activations.enable(lean)
    for m in (plain, lean):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = tiny_batch("llama", batch=3, length=11)
    loss_p, grads_p, rng_p = _step(plain, batch)
    loss_l, grads_l, rng_l = _step(lean, batch)
    assert torch.equal(loss_l, loss_p) and torch.equal(rng_l, rng_p)
    assert all(torch.equal(grads_l[n], grads_p[n]) for n in grads_p) and grads_l.keys() == grads_p.keys()


def test_training_turns_it_on_and_trains_the_same_adapter(glue_dir, tmp_path, monkeypatch):
    """A real (tiny) run with LoRA dropout 0.1: ``trainer.lean_activations`` reaches the model, and the trained
    adapter and every logged loss are the same with it off; so neither the run folder nor the results store
    tells the two settings apart."""
    from safetensors.torch import load_file

    from conftest import compose
    from lora_research import outputs
    from lora_research.train import run

    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    enabled, real_enable = [], lean_activations.enable

    def spy(model):
        handle = real_enable(model)
        enabled.append((handle, len(handle.branches)))
        return handle

    monkeypatch.setattr(lean_activations, "enable", spy)
    base = ["model=tiny_roberta", "task=rte", "logger=none", "task.max_train_samples=48", "task.max_eval_samples=16",
            "task.max_length=32", "trainer.device=cpu", "trainer.batch_size=8", "trainer.epochs=1", "trainer.lr=5e-3",
            "trainer.logging_steps=2", "trainer.threads=1", "method.dropout=0.1", "method.r=4"]
    for lean in (True, False):
        run(compose(base + [f"trainer.lean_activations={str(lean).lower()}"]), tmp_path / str(lean))
    assert [n for _, n in enabled] == [4]  # 2 layers x (q, v), only with the option on
    assert not enabled[0][0].branches  # removed after training
    a, b = (load_file(str(tmp_path / str(lean) / "adapter.safetensors")) for lean in (True, False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("runtime", "samples_per_second", "steps_per_second")}
                        for r in rs]
    assert strip(outputs.read_metrics(tmp_path / "True")) == strip(outputs.read_metrics(tmp_path / "False"))

    # the same numbers either way, so the option is not part of the run: the other setting into the completed
    # run's folder is that run (a no-op), and the results store keys the two runs as one table row
    again = run(compose(base + ["trainer.lean_activations=false"]), tmp_path / "True")
    assert again.get("already_completed") is True
    from lora_research.results.store import load_runs, row_key_columns

    df = load_runs([tmp_path / "True", tmp_path / "False"])
    assert set(df["trainer.lean_activations"]) == {True, False}
    keys = row_key_columns(df)
    assert "trainer.lean_activations" not in keys and len(df[keys].drop_duplicates()) == 1
