"""Reading run folders (adapter.safetensors, format lora_research.adapter/1) and computing ΔW."""
import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from _adapter_fixtures import synthetic_run, write_adapter
from lora_research.analysis.deltas import (
    FORMAT, delta_w, dict_base_loader, load_adapter, load_base_weights, safetensors_base_loader)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


D = 6  # GPT-2 style hidden size of the fixture


@pytest.fixture
def gpt2_run(tmp_path):
    """A GPT-2-style LoRA run: q and v of the fused c_attn (out 3D), rsLoRA-like scaling on v."""
    tensors, index = {"score.weight": torch.zeros(2, D)}, []
    for layer in range(2):
        module = f"transformer.h.{layer}.attn.c_attn"
        for m, sl, r, alpha, scaling in [("q", [0, D], 2, 4.0, 2.0), ("v", [2 * D, 3 * D], 4, 8.0, 4.0)]:
            a, b = f"{module}.lora_A.{m}", f"{module}.lora_B.{m}"
            tensors[a] = randn(r, D, seed=layer * 10 + r)
            tensors[b] = randn(D, r, seed=layer * 10 + r + 1)
            index.append({"layer": layer, "matrix": m, "module": module, "A": a, "B": b, "r": r, "alpha": alpha,
                          "scaling": scaling, "out_slice": sl, "base_shape": [3 * D, D]})
    run = tmp_path / "gpt2_run"
    write_adapter(run / "adapter.safetensors", tensors, index, method="lora", base_model="gpt2",
                  model_family="gpt2")
    (run / "config.yaml").write_text("model:\n  name_or_path: gpt2\n  family: gpt2\nseed: 7\n"
                                     "method:\n  name: lora\n  r: 2\n  alpha: 4\ntask:\n  name: e2e\n")
    return run, tensors


def test_load_adapter_reads_index_and_config(gpt2_run):
    run, tensors = gpt2_run
    rec = load_adapter(run)
    assert rec.method == "lora" and rec.model_family == "gpt2" and rec.base_model == "gpt2"
    assert rec.metadata["format"] == FORMAT
    assert rec.seed == 7 and rec.config["task"]["name"] == "e2e"
    assert len(rec) == 4 and rec.layers == [0, 1] and rec.matrices == ["q", "v"] and rec.ranks == [2, 4]
    e = rec.get(1, "v")
    assert (e.layer, e.matrix, e.r, e.alpha, e.scaling) == (1, "v", 4, 8.0, 4.0)
    assert e.out_slice == (2 * D, 3 * D) and e.base_shape == (3 * D, D)
    assert e.is_lora and e.A.dtype == torch.float64 and e.shape == (D, D)
    assert torch.allclose(e.A, tensors["transformer.h.1.attn.c_attn.lora_A.v"].double())
    assert [x.key for x in rec.select(layers=[0])] == [(0, "q"), (0, "v")]
    with pytest.raises(KeyError):
        rec.get(5, "q")


def test_load_bare_adapter_file(gpt2_run):
    run, _ = gpt2_run
    rec = load_adapter(run / "adapter.safetensors")
    assert rec.run_dir is None and rec.config == {} and len(rec) == 4


def test_load_adapter_rejects_other_format(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "adapter.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="format"):
        load_adapter(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_adapter(tmp_path / "missing")


def test_delta_w_lora_with_and_without_scaling(gpt2_run):
    run, tensors = gpt2_run
    e = load_adapter(run).get(0, "v")
    B, A = tensors["transformer.h.0.attn.c_attn.lora_B.v"].double(), tensors["transformer.h.0.attn.c_attn.lora_A.v"].double()
    assert torch.allclose(delta_w(e), 4.0 * B @ A)  # default: scaling included
    assert torch.allclose(delta_w(e, include_scaling=False), B @ A)
    # φ-type quantities do not care, ‖ΔW‖_F does
    assert float(torch.linalg.matrix_norm(delta_w(e))) == pytest.approx(4 * float(torch.linalg.matrix_norm(B @ A)))


def test_delta_w_full_ft_uses_base_loader_and_out_slice(tmp_path):
    W0 = randn(3 * D, D, seed=1).double()
    module = "transformer.h.0.attn.c_attn"
    Wq = W0[:D] + 0.5
    Wv = W0[2 * D:] - 0.25
    index = [{"layer": 0, "matrix": "q", "module": module, "W": "wq", "r": None, "alpha": None, "scaling": None,
              "out_slice": [0, D], "base_shape": [3 * D, D]},
             {"layer": 0, "matrix": "v", "module": module, "W": "wv", "r": None, "alpha": None, "scaling": None,
              "out_slice": [2 * D, 3 * D], "base_shape": [3 * D, D]}]
    write_adapter(tmp_path / "adapter.safetensors", {"wq": Wq, "wv": Wv}, index, method="full_ft", model_family="gpt2")
    rec = load_adapter(tmp_path)
    assert not rec.is_lora and rec.method == "full_ft"
    loader = dict_base_loader({module: W0})
    assert torch.allclose(delta_w(rec.get(0, "q"), loader), torch.full((D, D), 0.5, dtype=torch.float64))
    assert torch.allclose(delta_w(rec.get(0, "v"), loader), torch.full((D, D), -0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="base_loader"):
        delta_w(rec.get(0, "q"))
    bad = dict_base_loader({module: W0[:, :3]})
    with pytest.raises(ValueError, match="shape"):
        delta_w(rec.get(0, "q"), bad)


def _fake_models(monkeypatch, model, calls):
    mod = types.ModuleType("lora_research.models")

    def load_base_model(cfg):
        calls.append(dict(cfg))
        return model
    mod.load_base_model = load_base_model
    monkeypatch.setitem(sys.modules, "lora_research.models", mod)


def test_load_base_weights_transposes_conv1d_and_slices(gpt2_run, monkeypatch):
    from transformers.pytorch_utils import Conv1D

    run, _ = gpt2_run
    conv = Conv1D(3 * D, D)  # weight stored (in, out) = (D, 3D)
    with torch.no_grad():
        conv.weight.copy_(randn(D, 3 * D, seed=3))
    model = torch.nn.Module()
    model.transformer = torch.nn.Module()
    model.transformer.h = torch.nn.ModuleList([torch.nn.Module()])
    model.transformer.h[0].attn = torch.nn.Module()
    model.transformer.h[0].attn.c_attn = conv
    calls = []
    _fake_models(monkeypatch, model, calls)
    loader = load_base_weights(run)
    w_v = loader("transformer.h.0.attn.c_attn", [2 * D, 3 * D])
    assert torch.equal(w_v, conv.weight.detach().T[2 * D:])
    loader("transformer.h.0.attn.c_attn", None)
    assert calls == [{"name_or_path": "gpt2", "family": "gpt2"}]  # loaded once, config from config.yaml


def test_load_base_weights_linear_and_metadata_fallback(gpt2_run, monkeypatch):
    run, _ = gpt2_run
    lin = torch.nn.Linear(D, 4)
    model = torch.nn.Module()
    model.proj = lin
    calls = []
    _fake_models(monkeypatch, model, calls)
    loader = load_base_weights(run / "adapter.safetensors")  # no config.yaml: from metadata
    assert torch.equal(loader("proj", [1, 3]), lin.weight.detach()[1:3])
    assert calls == [{"name_or_path": "gpt2", "family": "gpt2"}]


def test_safetensors_base_loader_strips_prefix_and_transposes(tmp_path):
    w = randn(D, 3 * D, seed=4)  # hub GPT-2 layout: (in, out), keys without "transformer."
    save_file({"h.0.attn.c_attn.weight": w}, str(tmp_path / "model.safetensors"))
    load = safetensors_base_loader(tmp_path / "model.safetensors", family="gpt2")
    assert torch.equal(load("transformer.h.0.attn.c_attn", [0, D]), w.T[:D])
    with pytest.raises(KeyError):
        load("transformer.h.1.attn.c_attn", None)
    save_file({"bert.encoder.layer.0.attention.self.query.weight": w}, str(tmp_path / "bert.safetensors"))
    load = safetensors_base_loader(tmp_path / "bert.safetensors", family="bert")
    assert torch.equal(load("bert.encoder.layer.0.attention.self.query", None), w)


def test_synthetic_run_roundtrip(tmp_path):
    run = synthetic_run(tmp_path / "run", n_layers=2, d=8, r=2, alpha=4, seed=3, matrices=("q", "k", "v"))
    rec = load_adapter(run)
    assert rec.matrices == ["q", "k", "v"] and rec.seed == 3 and rec.config["method"]["r"] == 2
    assert all(e.scaling == 2.0 for e in rec)
    assert json.loads((run / "summary.json").read_text())
    assert "classifier.weight" not in rec.metadata["index"]  # head tensors are not indexed
