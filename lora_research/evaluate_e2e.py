"""Decode and score a finished E2E run: ``python -m lora_research.evaluate_e2e run_dir=PATH [key=value ...]``.

Arguments (``key=value``, Hydra-like; unknown keys fail naming the valid ones):

* ``run_dir=PATH`` (required): a run folder written by ``lora_research.train`` with ``task=e2e``.
* ``split=dev|test``: the split to decode (default: the run's ``task.eval_split``).
* ``max_mrs=N``: decode only the first N MRs (default: the run's ``task.decode.max_mrs``; ``null`` = all).
* ``decode.<key>=VALUE``: override a decoding setting of :class:`lora_research.decoding.DecodeConfig`
  (``decode.strategy=greedy``, ``decode.num_beams=4``, ``decode.length_penalty=0.8`` ...).
* ``weights=best|init``: ``best`` (default) = the run's ``adapter.safetensors``; ``init`` = the
  method freshly applied to the pretrained model (LoRA's B = 0, i.e. the *unadapted* model): the
  zero-shot baseline with the same prompt format.
* ``tag=NAME``: file prefix and summary key. Without a tag (and ``weights=best``) the files are
  ``predictions.txt``, ``references.txt``, ``predictions.jsonl`` and ``summary.json``'s
  ``final_evaluation`` is replaced; with a tag they are ``NAME.predictions.txt`` ... and the
  result goes to ``summary.json["evaluations"][NAME]``. ``weights=init`` defaults to ``tag=zero_shot``.
* ``device=cpu|cuda|auto`` (default cpu), ``threads=N`` (torch CPU threads, 0 = default).

Prints the result as JSON (scores on the paper's scale: BLEU, METEOR, ROUGE_L ×100).
Exit status: 0 done; 2 bad argument or run folder (one line on stderr naming it: not a run
folder, not an E2E run, the run did not finish, a corrupted adapter ...); 1 internal error.
``LORA_RESEARCH_TRACEBACK=1`` also prints the traceback.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional

from lora_research import outputs

KEYS = ("run_dir", "split", "max_mrs", "weights", "tag", "device", "threads")


STRING_KEYS = ("run_dir", "tag", "weights", "device", "split")  # kept as typed (a tag "1" stays "1")


def parse_args(argv: list[str]) -> tuple[dict, dict]:
    """``key=value`` tokens (OmegaConf's dotlist, YAML-typed values) → (options, decode overrides)."""
    from omegaconf import OmegaConf

    from lora_research.decoding import DecodeConfig

    valid_decode = [f.name for f in fields(DecodeConfig)]
    valid = f"valid keys: {list(KEYS)} and decode.<{'|'.join(valid_decode)}>"
    for tok in argv:
        if "=" not in tok:
            raise ValueError(f"argument {tok!r} is not key=value; {valid}")
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(list(argv)))
    except Exception as e:  # noqa: BLE001 - OmegaConf's grammar errors
        raise ValueError(f"arguments {list(argv)} do not parse as key=value ({outputs.one_line(e)[:160]}); {valid}") from None
    opts: dict[str, Any] = {"weights": "best", "device": "cpu", "threads": 0}
    decode = given.pop("decode", {})
    if not isinstance(decode, dict):
        raise ValueError(f"decode={decode!r} is not valid; set one decoding setting at a time: decode.<{'|'.join(valid_decode)}>=VALUE")
    for k, v in decode.items():
        if k not in valid_decode:
            raise ValueError(f"unknown decoding setting {k!r}; valid: {valid_decode}")
        if k == "early_stopping":
            decode[k] = str(v).lower()
    for key, val in given.items():
        if key not in KEYS:
            raise ValueError(f"unknown argument {key!r}; {valid}")
        opts[key] = str(val) if key in STRING_KEYS and val is not None else val
    if not opts.get("run_dir"):
        raise ValueError("run_dir=PATH is required")
    if opts["weights"] not in ("best", "init"):
        raise ValueError(f"weights={opts['weights']!r}; valid choices: best, init")
    if "split" in opts and opts["split"] not in ("dev", "test"):
        raise ValueError(f"split={opts['split']!r} is not valid; valid choices: dev, test")
    m = opts.get("max_mrs", "default")
    if m != "default" and m is not None and (not isinstance(m, int) or m < 1):
        raise ValueError(f"max_mrs={m!r} is not valid; valid: an integer >= 1 or null (all MRs)")
    if not isinstance(opts["threads"], int) or opts["threads"] < 0:
        raise ValueError(f"threads={opts['threads']!r} is not valid; valid: an integer >= 0 (0 = torch default)")
    if opts["device"] not in ("cpu", "cuda", "auto") and not str(opts["device"]).startswith("cuda:"):
        raise ValueError(f"device={opts['device']!r} is not valid; valid choices: cpu, cuda, cuda:N, auto")
    return opts, decode


def check_run_dir(run_dir, weights: str = "best") -> None:
    """Refuse, before any model loads, a folder that is not a finished E2E run (one line, naming it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={run_dir}: no such folder")
    cfg = outputs.read_config(run_dir)
    task = cfg.get("task") or {}
    from lora_research.tasks import get_task_class

    kind = task.get("kind", "glue")
    if get_task_class(kind).head != "generation":  # the registered task says whether it decodes
        raise ValueError(f"{run_dir} is a {task.get('name', '?')!r} run (task.kind={kind}), "
                         "not an E2E run: evaluate_e2e decodes task=e2e runs only")
    if weights == "best":
        outputs.verify_adapter(run_dir)  # missing (run not finished) / truncated / checksum mismatch


def evaluate(run_dir, *, split: Optional[str] = None, max_mrs: Any = "default", decode: Optional[dict] = None,
             weights: str = "best", tag: Optional[str] = None, device: str = "cpu", threads: int = 0) -> dict:
    """Rebuild the run's model, decode, score, write the files and update ``summary.json``."""
    import torch

    from lora_research.tasks.e2e_task import E2ETask
    from lora_research.training import restore_run

    if threads and threads > 0:
        torch.set_num_threads(int(threads))
    run_dir = Path(run_dir)
    run, model, tokenizer, method, task = restore_run(run_dir, device=device, weights=weights)
    if not isinstance(task, E2ETask):
        raise ValueError(f"{run_dir} is a {task.name!r} run, not an E2E run")
    if weights == "init" and tag is None:
        tag = "zero_shot"
    dec = replace(task.cfg.decode, **(decode or {}))
    limit = dec.max_mrs if max_mrs == "default" else max_mrs
    dec = replace(dec, max_mrs=limit)
    method.merge_for_inference(model)  # W0 + BA in the weights: decoding costs what the base model costs
    prefix = f"{tag}." if tag else ""
    dev = next(model.parameters()).device
    result = task.decode_and_score(model, tokenizer, run_dir, dev, split=split, decode=dec, max_mrs=limit, prefix=prefix)
    result["weights"] = weights
    result["command"] = "python -m lora_research.evaluate_e2e " + " ".join(sys.argv[1:])
    summary_path = run_dir / outputs.SUMMARY_FILE
    summary = outputs.load_summary(run_dir) if summary_path.exists() else {}
    if tag:
        summary.setdefault("evaluations", {})[tag] = result
    else:
        summary["final_evaluation"] = result
        summary["headline_metric"] = task.headline(summary.get("metrics", {}), result)
    outputs.atomic_write_json(summary_path, summary)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    from lora_research.console import quiet_libraries

    quiet_libraries()
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    import os
    import traceback

    try:
        opts, decode = parse_args(argv)
        check_run_dir(opts["run_dir"], opts["weights"])
        result = evaluate(
            opts["run_dir"], split=opts.get("split"), max_mrs=opts.get("max_mrs", "default"), decode=decode,
            weights=opts["weights"], tag=opts.get("tag"), device=opts["device"], threads=opts["threads"],
        )
    except (ValueError, LookupError, OSError, TypeError) as e:
        print(f"error: {outputs.error_message(e)}", file=sys.stderr)
        if os.environ.get("LORA_RESEARCH_TRACEBACK"):
            traceback.print_exc()
        return 2
    except Exception as e:  # noqa: BLE001 - one line on the terminal, the traceback on request
        print(f"error: internal error {type(e).__name__}: {outputs.one_line(e)} "
              "(LORA_RESEARCH_TRACEBACK=1 prints the traceback)", file=sys.stderr)
        if os.environ.get("LORA_RESEARCH_TRACEBACK"):
            traceback.print_exc()
        return 1
    print(outputs.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
