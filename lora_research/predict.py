"""Predict with a trained run or an exported folder.

    python -m lora_research.predict SOURCE --input FILE|- [--output FILE] [--batch-size N] [--device auto]

``SOURCE``: a run folder, a folder written by ``python -m lora_research.export`` (``--to merged`` or
``--to peft``), or a PEFT LoRA folder trained elsewhere (then ``--task NAME`` says which task, e.g.
``sst2`` or ``e2e``). ``--input``: a ``.jsonl`` file (one JSON object a line), a ``.tsv`` with a header
(the GLUE files work as they are), an E2E ``.csv`` (column ``mr``), or ``-`` for standard input
(JSON lines, or one example a line: tab-separated texts for sentence pairs, or an E2E MR).

GLUE tasks: one JSON line per example with ``label`` (name), ``label_id`` and ``scores`` (softmax
probabilities); STS-B: ``score``. E2E: ``prediction``, generated with the run's decoding settings
(beam size, length penalty, no-repeat n-grams, ...; ``task.decode`` of its config). Texts are the
task's columns (``sentence``; ``sentence1``/``sentence2``; ``question``/``sentence``; ``premise``/
``hypothesis``; E2E ``mr`` as in the CSV, ``name[The Eagle], eatType[coffee shop]``, or ``context``
already linearised). Batched, on CPU or GPU, with a progress bar (stderr) on long inputs.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from lora_research import adapter_file, console


@dataclass
class Predictor:
    model: Any
    tokenizer: Any
    task: Any
    device: torch.device
    source: str


def _task_from_name(name: str):
    """The task of ``conf/task/<name>.yaml`` as Hydra composes it (its schema base, ``GLUE_DIR``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import lora_research.config  # noqa: F401  the schema/ bases of conf/
    from lora_research.tasks import build_task

    conf = Path(__file__).resolve().parents[1] / "conf"
    choices = sorted(p.stem for p in (conf / "task").glob("*.yaml"))
    if name not in choices:
        raise ValueError(f"--task {name!r} is not a task; valid choices: {choices}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={name}", "logger=none"])
    GlobalHydra.instance().clear()
    return build_task(OmegaConf.to_container(cfg.task, resolve=True))


def load_predictor(source, *, device: str = "auto", task: Optional[str] = None) -> Predictor:
    """The model, tokenizer and task of a run folder, an exported folder or a PEFT folder."""
    from lora_research.models import pick_device

    source = Path(source)
    dev = pick_device(device)
    if (source / "config.yaml").is_file() and (source / adapter_file.ADAPTER_FILE).is_file():
        from lora_research.training import restore_run

        _, model, tokenizer, method, t = restore_run(source, device="cpu")
        method.merge_for_inference(model)  # the update folded into W: the base model's cost per example
        return Predictor(model.to(dev).eval(), tokenizer, t, dev, "run")
    info_path = source / adapter_file.EXPORT_INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    if info:
        from lora_research.tasks import build_task

        t = build_task(info["task"]) if task is None else _task_from_name(task)
    elif task is not None:
        t = _task_from_name(task)
    else:
        raise ValueError(f"{source}: not a run folder or an export of this repo; for a PEFT folder trained "
                         "elsewhere pass --task NAME")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto = AutoModelForCausalLM if t.head == "generation" else AutoModelForSequenceClassification
    if (source / adapter_file.PEFT_CONFIG_FILE).is_file():
        from peft import PeftModel

        cfg = json.loads((source / adapter_file.PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
        base_path = cfg.get("base_model_name_or_path")
        if not base_path:
            raise ValueError(f"{source}/{adapter_file.PEFT_CONFIG_FILE} names no base_model_name_or_path")
        kw = {"num_labels": t.num_labels} if t.head != "generation" and t.num_labels else {}
        model = PeftModel.from_pretrained(auto.from_pretrained(base_path, **kw), str(source)).merge_and_unload()
        tok_path = source if (source / "tokenizer_config.json").is_file() else base_path
    else:
        model = auto.from_pretrained(str(source))
        tok_path = source
    tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Predictor(model.to(dev).eval(), tokenizer, t, dev, "export" if info else "peft")


# ---------------------------------------------------------------------------------------------
# inputs


def read_examples(path: str, stdin=None) -> list[dict]:
    """Examples as dicts from a .jsonl / .tsv / .csv file or ``-`` (JSON lines or plain lines)."""
    if path == "-":
        text = (stdin or sys.stdin).read()
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and lines[0].lstrip().startswith("{"):
            return [_json_line(line, "<stdin>", i + 1) for i, line in enumerate(lines)]
        return [{"_fields": line.split("\t")} for line in lines]
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix in (".jsonl", ".json"):
        return [_json_line(line, p, i + 1) for i, line in enumerate(text.splitlines()) if line.strip()]
    if p.suffix in (".tsv", ".csv"):
        if p.suffix == ".tsv":
            reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(io.StringIO(text))
        return [dict(r) for r in reader]
    return [{"_fields": line.split("\t")} for line in text.splitlines() if line.strip()]


def _json_line(line: str, where, n: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: line {n}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: line {n}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _texts(task, ex: dict, n: int) -> list[str]:
    """The task's text columns of one example (GLUE hub names, or the GLUE files' own names)."""
    from lora_research.tasks.glue_files import _tsv_format

    cols = list(task.spec.text_columns)
    if "_fields" in ex:
        if len(ex["_fields"]) != len(cols):
            raise ValueError(f"input line {n}: expected {len(cols)} tab-separated text(s) {cols}, "
                             f"got {len(ex['_fields'])}")
        return ex["_fields"]
    file_cols = _tsv_format(task.name, "test").columns
    out = []
    for c in cols:
        v = ex.get(c)
        if v is None and isinstance(file_cols.get(c), str):  # e.g. MNLI's sentence1 for premise
            v = ex.get(file_cols[c])
        if v is None:
            raise ValueError(f"input example {n}: no {c!r} field (task {task.name} reads {cols}); it has "
                             f"{sorted(k for k in ex if not k.startswith('_'))}")
        out.append(str(v))
    return out


def _context(task, ex: dict, n: int) -> str:
    from lora_research.tasks.e2e import linearise_mr

    if "context" in ex:
        return str(ex["context"])
    mr = ex.get("mr", ex.get("meaning_representation"))
    if mr is None and "_fields" in ex:
        mr = ex["_fields"][0]
    if mr is None:
        raise ValueError(f"input example {n}: no 'mr' (or 'context') field; it has {sorted(ex)}")
    return linearise_mr(str(mr), task.cfg.mr_style, where=f"input example {n}")


def _progress(total: int, unit: str):
    return console.progress_bar(total, unit, min_total=64)


# ---------------------------------------------------------------------------------------------
# predicting


@torch.no_grad()
def predict(pred: Predictor, examples: list[dict], batch_size: int = 32) -> list[dict]:
    """One output record per example (see the module docstring)."""
    task, tok, model = pred.task, pred.tokenizer, pred.model
    keep = lambda ex: {k: ex[k] for k in ("id", "idx", "index") if k in ex}  # noqa: E731
    if task.head == "generation":
        from lora_research.decoding import generate
        from lora_research.tasks.e2e import encode_context

        contexts = [_context(task, ex, i + 1) for i, ex in enumerate(examples)]
        bar = _progress(len(contexts), "MR")
        texts, _ = generate(model, tok, [encode_context(tok, c) for c in contexts], task.cfg.decode, pred.device,
                            progress=lambda done, total: bar.update(done - bar.n))
        bar.close()
        return [{**keep(ex), "context": c, "prediction": t} for ex, c, t in zip(examples, contexts, texts)]
    names = list(task.spec.label_names)
    out = []
    bar = _progress(len(examples), "ex")
    max_length = int(getattr(task.cfg, "max_length", 128))
    for b in range(0, len(examples), batch_size):
        chunk = examples[b:b + batch_size]
        texts = [_texts(task, ex, b + i + 1) for i, ex in enumerate(chunk)]
        columns = list(zip(*texts))
        enc = tok(*[list(c) for c in columns], truncation=True, max_length=max_length, padding=True,
                  return_tensors="pt")
        logits = model(**{k: v.to(pred.device) for k, v in enc.items()}).logits.float().cpu()
        for ex, row in zip(chunk, logits):
            if task.spec.is_regression:
                out.append({**keep(ex), "score": round(float(row[0]), 6)})
            else:
                probs = torch.softmax(row, -1)
                k = int(probs.argmax())
                out.append({**keep(ex), "label": names[k] if k < len(names) else k, "label_id": k,
                            "scores": [round(float(x), 6) for x in probs]})
        bar.update(len(chunk))
    bar.close()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_research.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="run folder, exported folder, or PEFT LoRA folder")
    p.add_argument("--input", required=True, help=".jsonl / .tsv / .csv file, or - for stdin")
    p.add_argument("--output", default="-", help="JSON lines out (default: stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--task", help="task of a PEFT folder trained elsewhere (sst2, rte, ..., e2e)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lora_research.console import quiet_libraries

    quiet_libraries()
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1 (got {args.batch_size})")
        examples = read_examples(args.input)
        pred = load_predictor(args.source, device=args.device, task=args.task)
        records = predict(pred, examples, args.batch_size)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {len(records)} predictions to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
