"""Real pretrained MiniLM + LoRA on real GLUE data learns: it beats the majority class clearly."""
from __future__ import annotations

import pytest

from conftest import compose
from lora_research.tasks.glue_files import load_glue
from lora_research.train import run


@pytest.mark.slow
def test_minilm_lora_sst2_subset_beats_majority_baseline(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    dev = load_glue("sst2", str(glue_dir), splits=["validation"])["validation"]
    labels = list(dev["label"])
    majority = max(labels.count(0), labels.count(1)) / len(labels)  # 444/872 = 0.509
    assert majority == pytest.approx(444 / 872)

    cfg = compose([
        "experiment=quickstart",
        "logger=none",
        "trainer.device=cpu",
        "task.max_train_samples=640",
        "task.max_eval_samples=400",
        "task.max_length=48",
        "trainer.epochs=1",
        "trainer.batch_size=32",
    ])
    summary = run(cfg, tmp_path)
    acc = summary["metrics"]["accuracy"]
    assert summary["trainable_params_without_head"] == 73_728
    assert acc > majority + 0.15, f"dev accuracy {acc:.3f} vs majority {majority:.3f}"
