"""The adapter file's owner (lora_research/adapter_file.py): verification, base identity, format /1,
and the analysis refusing to compare ΔW of different base models (issue #9 item 5)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from _adapter_fixtures import write_adapter
from _fake_runs import fake_run
from lora_research import adapter_file
from lora_research.adapter_file import AdapterFileError, BaseIdentity, base_mismatch
from lora_research.analysis.__main__ import main as analysis_main
from lora_research.analysis.deltas import check_same_base, delta_w, load_adapter
from lora_research.targets import get_family

BERT = ["model=tiny_bert", "task=rte", "method.r=2"]
ROBERTA = ["model=tiny_roberta", "task=rte", "method.r=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter_file")
    return {"bert": fake_run(root / "bert", BERT, seed=0), "bert_b": fake_run(root / "bert_b", BERT, seed=0, noise=0.1),
            "bert_s1": fake_run(root / "bert_s1", BERT, seed=1), "roberta": fake_run(root / "roberta", ROBERTA, seed=0)}


def test_file_records_base_identity_and_verifies(runs):
    af = adapter_file.read(runs["bert"])
    assert af.metadata["format"] == adapter_file.FORMAT and af.version == 2
    b = af.base
    assert (b.name, b.family, b.model_type) == ("tiny_bert", "bert", "bert")
    assert len(b.architecture) == 64 and len(b.weights) == 64 and b.model["random_init"] is True
    assert b.head == "classification" and b.num_labels == 2 and b.seed == 0
    model = adapter_file.load_base(b)  # rebuilt with the run's seed, fingerprint checked
    assert adapter_file.fingerprint(model, get_family("bert"))[1] == b.weights


def test_corrupted_and_truncated_files_are_one_line_errors(runs, tmp_path):
    src = (runs["bert"] / "adapter.safetensors").read_bytes()
    flipped = bytearray(src)
    flipped[-5] ^= 0x10  # inside the last tensor's data
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(AdapterFileError, match=r"flip\.safetensors: tensor data does not match the file's checksum"):
        adapter_file.read(tmp_path / "flip.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(src[: len(src) // 2])
    with pytest.raises(AdapterFileError, match=r"cut\.safetensors: not a readable safetensors file .*truncated"):
        adapter_file.read(tmp_path / "cut.safetensors")
    for exc in (pytest.raises(AdapterFileError),):
        with exc as e:
            adapter_file.read(tmp_path / "cut.safetensors")
        assert "\n" not in str(e.value)


def test_inconsistent_index_is_never_written(tmp_path):
    index = [{"layer": 0, "matrix": "q", "module": "m", "A": "a", "B": "b", "r": 2, "base_shape": [4, 3],
              "out_slice": None}]
    with pytest.raises(AdapterFileError, match=r"A \(2, 3\) / B \(5, 2\) do not fit the base matrix \(4, 3\)"):
        write_adapter(tmp_path / "x.safetensors", {"a": torch.zeros(2, 3), "b": torch.zeros(5, 2)}, index)
    with pytest.raises(AdapterFileError, match=r"tensor 'b' \(B\) is not in the file"):
        write_adapter(tmp_path / "x.safetensors", {"a": torch.zeros(2, 3)}, index)
    assert not (tmp_path / "x.safetensors").exists()


def test_format_1_files_are_still_read(tmp_path):
    import json

    A, B = torch.randn(2, 3), torch.randn(4, 2)
    meta = {"format": "lora_research.adapter/1", "method": "lora", "base_model": "x", "model_family": "bert",
            "index": json.dumps([{"layer": 0, "matrix": "q", "module": "m", "A": "a", "B": "b", "r": 2,
                                  "alpha": 4.0, "scaling": 2.0, "out_slice": None, "base_shape": [4, 3]}])}
    save_file({"a": A, "b": B}, str(tmp_path / "adapter.safetensors"), metadata=meta)
    rec = load_adapter(tmp_path)
    assert torch.allclose(delta_w(rec.get(0, "q")), 2.0 * (B @ A).double())
    meta["format"] = "lora_research.adapter/9"
    save_file({"a": A, "b": B}, str(tmp_path / "adapter.safetensors"), metadata=meta)
    with pytest.raises(AdapterFileError, match=r"format 'lora_research.adapter/9'; this version reads"):
        load_adapter(tmp_path)


def test_base_mismatch_reasons():
    a = BaseIdentity(name_or_path="p", family="bert", architecture="a1", weights="w1")
    assert base_mismatch(a, a) is None
    assert "different architectures" in base_mismatch(a, BaseIdentity(family="roberta", architecture="a2", weights="w2"))
    assert "same architecture, different weights" in base_mismatch(a, BaseIdentity(architecture="a1", weights="w3"))
    legacy = BaseIdentity(name_or_path="p", family="bert")
    assert base_mismatch(a, legacy) is None  # no fingerprint: same name and family is all we can tell
    assert "different model families" in base_mismatch(legacy, BaseIdentity(name_or_path="p", family="roberta"))


def test_analysis_refuses_different_bases_unless_allowed(runs, tmp_path, capsys):
    """A BERT and a RoBERTa run of the same shape (the same name_or_path string) are not compared."""
    bert, roberta = load_adapter(runs["bert"]), load_adapter(runs["roberta"])
    assert bert.base_model == roberta.base_model  # the string alone cannot tell them apart
    with pytest.raises(ValueError, match="different architectures"):
        check_same_base([bert, roberta])
    rc = analysis_main(["figures", str(runs["bert"]), str(runs["roberta"]), "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert rc == 2 and "trained on different base models" in err and "--allow-different-bases" in err
    assert not (tmp_path / "f").exists()
    rc = analysis_main(["figures", str(runs["bert"]), str(runs["roberta"]), "--out", str(tmp_path / "f"),
                        "--allow-different-bases"])
    assert rc == 0 and "warning: comparing adapters of different base models" in capsys.readouterr().err
    # random-init bases drawn with another seed are other weights too; the same base compares fine
    with pytest.raises(ValueError, match="same architecture, different weights"):
        check_same_base([bert, load_adapter(runs["bert_s1"])])
    assert analysis_main(["phi", str(runs["bert"]), str(runs["bert_b"]), "--layer", "0", "--matrix", "q",
                          "--out", str(tmp_path / "p")]) == 0
