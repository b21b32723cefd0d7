"""Generate conf/experiment/roberta_{base,large}_lora_<task>[_scripts].yaml from paper Table 9.

Run: python experiments/make_glue_presets.py   (the YAML files are committed; this keeps them honest)

Paper vs scripts (../shared/PAPER.md §2):
* RoBERTa-base: α = 8 in the paper, 16 in every script (microsoft/LoRA#37); weight decay 0.1 is
  the scripts' value (the paper states none) and is used by both presets.
* RoBERTa-large: the scripts differ on SST-2 (batch 8, seq 512), CoLA (lr 3e-4; #149) and
  STS-B (batch 4, 10 epochs, lr 3e-4, seq 128).
* MRPC, RTE and STS-B start from the best MNLI LoRA checkpoint (paper D.1, scripts --lora_path):
  set MNLI_LORA_RUN=<run folder of your MNLI run> (or init_from=...) to reproduce that.
"""
from pathlib import Path

TASKS = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]
BASE = {
    "batch": [16, 16, 16, 32, 32, 16, 32, 16],
    "epochs": [30, 60, 30, 80, 25, 25, 80, 40],
    "lr": [5e-4, 5e-4, 4e-4, 4e-4, 4e-4, 5e-4, 5e-4, 4e-4],
    "seq": [512] * 8,
}
LARGE = {
    "batch": [4, 4, 4, 4, 4, 4, 8, 8],
    "epochs": [10, 10, 20, 20, 10, 20, 20, 30],
    "lr": [3e-4, 4e-4, 3e-4, 2e-4, 2e-4, 3e-4, 4e-4, 2e-4],
    "seq": [128, 128, 512, 128, 512, 512, 512, 512],
}
LARGE_SCRIPTS = {"sst2": {"batch": 8, "seq": 512}, "cola": {"lr": 3e-4}, "stsb": {"batch": 4, "epochs": 10, "lr": 3e-4, "seq": 128}}
FROM_MNLI = {"mrpc", "rte", "stsb"}


def preset(model, task, batch, epochs, lr, seq, alpha, source, note):
    init = "${oc.env:MNLI_LORA_RUN,null}" if task in FROM_MNLI else "null"
    return f"""# @package _global_
# RoBERTa-{model.split('_')[1]} + LoRA on {task.upper()}: {source}.
# {note}
# Run: python -m lora_research.train experiment=<this file's name> [seed=0..4]
defaults:
  - override /model: {model}
  - override /task: {task}
  - override /method: lora

task:
  max_length: {seq}
method:
  r: 8
  alpha: {alpha}
  targets: [q, v]
trainer:
  batch_size: {batch}
  epochs: {epochs}
  lr: {lr}
  weight_decay: 0.1   # scripts' value; the paper states none
  warmup_ratio: 0.06
init_from: {init}   # paper D.1: {'start from the best MNLI LoRA (set MNLI_LORA_RUN)' if task in FROM_MNLI else 'from the pre-trained model'}
"""


def main():
    out = Path(__file__).resolve().parents[1] / "conf" / "experiment"
    out.mkdir(parents=True, exist_ok=True)
    for i, task in enumerate(TASKS):
        b = {k: v[i] for k, v in BASE.items()}
        (out / f"roberta_base_lora_{task}.yaml").write_text(
            preset("roberta_base", task, alpha=8, source="paper Table 9 (alpha=8 as the paper's text)",
                   note="Scripts use alpha=16 (microsoft/LoRA#37): see roberta_base_lora_%s_scripts." % task, **b))
        (out / f"roberta_base_lora_{task}_scripts.yaml").write_text(
            preset("roberta_base", task, alpha=16, source="microsoft/LoRA examples/NLU scripts (alpha=16)",
                   note="Scripts launch on several GPUs with this per-device batch: their global batch is larger.", **b))
        l = {k: v[i] for k, v in LARGE.items()}
        (out / f"roberta_large_lora_{task}.yaml").write_text(
            preset("roberta_large", task, alpha=16, source="paper Table 9", note="alpha=16, r=8 as the paper states.", **l))
        ls = dict(l, **LARGE_SCRIPTS.get(task, {}))
        (out / f"roberta_large_lora_{task}_scripts.yaml").write_text(
            preset("roberta_large", task, alpha=16, source="microsoft/LoRA examples/NLU scripts",
                   note="Differs from the paper where the scripts do (SST-2, CoLA, STS-B); see PAPER.md §2.", **ls))


if __name__ == "__main__":
    main()
