"""E2E NLG as the trainer sees it: causal-LM fine-tuning, then decoding and the official metrics.

Per-epoch evaluation is the dev loss on completion tokens (``main_metric="loss"``, lower is
better; the best epoch's weights are restored before decoding). :meth:`E2ETask.final_evaluate`
decodes every unique MR of the eval split (or ``decode.max_mrs`` of them), writes
``predictions.txt`` (one line per MR), ``references.txt`` (the MR's references on consecutive
lines, a blank line between MRs: the official scorer's format) and ``predictions.jsonl``
(MR, prediction, references) into the run folder, and scores them with
:func:`lora_research.metrics.e2e.score_e2e` (BLEU, NIST, METEOR, ROUGE_L, CIDEr; ``task.nist``
picks the NIST definition, recorded as ``nist_mode``).
Scores are reported on the paper's Table 3 scale (BLEU, METEOR, ROUGE_L ×100).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lora_research import console
from lora_research.decoding import DecodeConfig, check_decode_config, generate, settings_dict
from lora_research.metrics.nist import NIST_MODES
from lora_research.structured import as_dataclass
from lora_research.tasks.base import Task, TaskData, register_task
from lora_research.tasks.e2e import (
    MR_STYLES,
    SOURCES,
    encode_context,
    group_by_mr,
    load_pairs,
    prepare_e2e_features,
    subsample_mrs,
)

EVAL_SPLITS = ("dev", "test")
PAPER_SCALE_NOTE = "paper (BLEU, METEOR, ROUGE_L x100; NIST, CIDEr raw)"


@dataclass
class E2ETaskConfig:
    """E2E NLG (``task=e2e``): GPT-2 / decoder LM, completion-only loss, beam-search decoding."""

    name: str = "e2e"
    kind: str = "e2e"
    data_dir: Optional[str] = None  # folder with trainset.csv/devset.csv/testset_w_refs.csv (+ lora_format/); env E2E_DIR
    source: str = "csv"  # csv (official CSVs) | lora_txt (microsoft/LoRA MR||text files) | hub (tuetschek/e2e_nlg)
    mr_style: str = "raw"  # raw: CSV values as is | lora: values tokenised as in LoRA's txt files (£ 20 - 25)
    max_length: int = 512  # max tokens of context + completion (repo --seq_len 512); longer pairs are cut on the right
    max_train_samples: Optional[int] = None  # seeded random subset of training pairs (CPU runs)
    max_eval_samples: Optional[int] = None  # seeded random subset of eval-split MRs (whole MRs, all their references)
    subset_seed: int = 0  # seed of both subsets; fixed, so runs with different training seeds see the same data
    eval_split: str = "dev"  # dev (devset.csv, 547 MRs) | test (testset_w_refs.csv, 630 MRs): per-epoch loss + decoding
    cache_dir: Optional[str] = None  # tokenised-feature cache (default ~/.cache/lora_research/features)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # decoding for final_evaluate (see decoding.py)
    nist: str = "paper"  # paper: e2e-metrics -p (pymteval), as the LoRA paper | mteval: original mteval-v13a (metrics/nist.py)


def _check(cfg: E2ETaskConfig) -> None:
    if cfg.source not in SOURCES:
        raise ValueError(f"task.source={cfg.source!r} is not valid; valid choices: {list(SOURCES)}")
    if cfg.mr_style not in MR_STYLES:
        raise ValueError(f"task.mr_style={cfg.mr_style!r} is not valid; valid choices: {list(MR_STYLES)}")
    if cfg.eval_split not in EVAL_SPLITS:
        raise ValueError(f"task.eval_split={cfg.eval_split!r} is not valid; valid choices: {list(EVAL_SPLITS)}")
    if cfg.nist not in NIST_MODES:
        raise ValueError(f"task.nist={cfg.nist!r} is not valid; valid choices: {list(NIST_MODES)}")
    check_decode_config(cfg.decode)


def format_references(references: list[list[str]]) -> str:
    """Official reference file: one MR's references on consecutive lines, a blank line between MRs."""
    return "\n\n".join("\n".join(" ".join(r.split()) for r in refs) for refs in references) + "\n"


def format_predictions(predictions: list[str]) -> str:
    """One prediction per line (line breaks inside a prediction become spaces)."""
    return "".join(" ".join(p.split()) + "\n" for p in predictions)


@register_task
class E2ETask(Task):
    """E2E NLG: causal LM fine-tuning (completion-only loss), decoding, official metrics."""

    kind = "e2e"
    Config = E2ETaskConfig
    final_evaluation = True
    name = "e2e"
    head = "generation"
    num_labels = None
    problem_type = None
    main_metric = "loss"
    greater_is_better = False

    def __init__(self, cfg):
        cfg = as_dataclass(E2ETaskConfig, cfg, "in 'task' config")
        _check(cfg)
        super().__init__(cfg)
        self.name = cfg.name

    def prepare(self, tokenizer, *, seed: int) -> TaskData:
        # Subsets use task.subset_seed, not the training seed.
        c = self.cfg
        feats, hit = prepare_e2e_features(
            tokenizer,
            splits=("train", c.eval_split),
            max_length=c.max_length,
            source=c.source,
            data_dir=c.data_dir,
            mr_style=c.mr_style,
            max_train_samples=c.max_train_samples,
            max_eval_mrs=c.max_eval_samples,
            seed=c.subset_seed,
            cache_dir=c.cache_dir,
        )
        from transformers import DataCollatorForSeq2Seq

        # pads on the tokenizer's side (load_tokenizer: right) with its pad id; labels with -100
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        return TaskData(train=feats["train"], evals={c.eval_split: feats[c.eval_split]}, collator=collator,
                        cache_hit=hit)

    def eval_mrs(self, split: Optional[str] = None, max_mrs: Optional[int] = None) -> tuple[list[str], list[list[str]]]:
        """The unique MRs of ``split`` (after the ``max_eval_samples`` MR subset) and their refs,
        cut to the first ``max_mrs`` (default ``decode.max_mrs``)."""
        c = self.cfg
        split = split or c.eval_split
        pairs = load_pairs(split, source=c.source, data_dir=c.data_dir, mr_style=c.mr_style)
        pairs = subsample_mrs(pairs, c.max_eval_samples, c.subset_seed)
        contexts, refs = group_by_mr(pairs)
        limit = max_mrs if max_mrs is not None else c.decode.max_mrs
        if limit is not None:
            contexts, refs = contexts[:limit], refs[:limit]
        return contexts, refs

    def decode_and_score(
        self,
        model,
        tokenizer,
        run_dir: Optional[Path],
        device,
        *,
        split: Optional[str] = None,
        decode: Optional[DecodeConfig] = None,
        max_mrs: Optional[int] = None,
        prefix: str = "",
    ) -> dict[str, Any]:
        """Decode the split's MRs, write ``<prefix>predictions.txt`` etc. into ``run_dir``, score."""
        from lora_research.metrics.e2e import score_e2e, to_paper_scale
        from lora_research.outputs import atomic_write_text

        decode = decode or self.cfg.decode
        check_decode_config(decode)
        split = split or self.cfg.eval_split
        contexts, refs = self.eval_mrs(split, max_mrs if max_mrs is not None else decode.max_mrs)
        prompts = [encode_context(tokenizer, c) for c in contexts]
        # the console gets one bar (on a terminal); the run's log, the settings and each MR done
        file_log = console.file_logger(f"{__name__}.decoding")
        file_log.info("decoding %d %s MRs (%s)", len(prompts), split, settings_dict(decode))
        bar = console.progress_bar(len(prompts), "MR")

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
            file_log.info("decoded %d/%d", done, total)

        try:
            preds, stats = generate(model, tokenizer, prompts, decode, device, progress=progress)
        finally:
            bar.close()
        if run_dir is not None:
            run_dir = Path(run_dir)
            atomic_write_text(run_dir / f"{prefix}predictions.txt", format_predictions(preds))
            atomic_write_text(run_dir / f"{prefix}references.txt", format_references(refs))
            atomic_write_text(
                run_dir / f"{prefix}predictions.jsonl",
                "".join(json.dumps({"id": i, "mr": c, "prediction": p, "references": r}, ensure_ascii=False) + "\n"
                        for i, (c, p, r) in enumerate(zip(contexts, preds, refs))),
            )
        t_score = time.perf_counter()
        official = score_e2e(preds, refs, nist_mode=self.cfg.nist)
        score_seconds = time.perf_counter() - t_score
        paper = to_paper_scale(official)
        result: dict[str, Any] = {m: round(float(paper[m]), 4) for m in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr") if m in paper}
        result["nist_mode"] = self.cfg.nist
        result["scale"] = PAPER_SCALE_NOTE
        result["official_scale"] = {k: v for k, v in official.items() if k != "errors"}
        if "errors" in official:
            result["errors"] = official["errors"]
        result.update(
            split=split,
            num_mrs=len(contexts),
            num_references=sum(len(r) for r in refs),
            decoding=dict(settings_dict(decode), max_mrs=decode.max_mrs if max_mrs is None else max_mrs),
            decode_tokens_per_s=stats["tokens_per_s"],
            decode_seconds=stats["seconds"],
            generated_tokens=stats["generated_tokens"],
            score_seconds=round(score_seconds, 3),  # the five official metrics (METEOR's JVM start ~5 s of it)
            files={"predictions": f"{prefix}predictions.txt", "references": f"{prefix}references.txt",
                   "jsonl": f"{prefix}predictions.jsonl"} if run_dir is not None else None,
        )
        return result

    def final_evaluate(self, model, tokenizer, run_dir: Path, device) -> dict[str, Any]:
        return self.decode_and_score(model, tokenizer, run_dir, device)

    def headline(self, metrics: dict, final_evaluation: dict) -> Optional[dict]:
        """BLEU of the decoded eval split (paper Table 3 scale)."""
        v = final_evaluation.get("BLEU")
        return None if v is None else {"name": "BLEU", "value": float(v)}


__all__ = ["E2ETask", "E2ETaskConfig", "format_predictions", "format_references"]
