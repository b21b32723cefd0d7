"""Export a run so that tools without this repo can use it.

    python -m lora_research.export RUN --to peft   --out DIR   # PEFT LoRA folder (LoRA, rsLoRA, DoRA, PiSSA)
    python -m lora_research.export RUN --to merged --out DIR   # plain Hugging Face model folder

``--to peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``PeftModel.from_pretrained(base, DIR)`` loads, plus the tokenizer. Every adapted module becomes one
PEFT LoRA layer addressed by its full module path (``target_modules``/``rank_pattern``/
``alpha_pattern``), so per-matrix ranks and the adapted layers carry over exactly. GPT-2's fused
``c_attn`` holds q and v as separate slices here; PEFT has one adapter per module, so they are
*stacked* into one rank-(r_q + r_v) adapter (A = [A_q; A_v], B block-diagonal on the q and v rows,
zero on k) with ``fan_in_fan_out``: B A is then exactly s·B_q A_q on the q rows, s·B_v A_v on the
v rows and 0 on k; α is scaled so PEFT's α'/r' equals the run's s. DoRA's magnitude goes to
``lora_magnitude_vector`` (rows that are not adapted keep PEFT's own ‖W0‖, i.e. scale 1). PiSSA is
exported relative to the *original* base: [A; A0], [B, −B0] (rank 2r), the form PEFT itself uses
to convert PiSSA adapters. The task head goes to ``modules_to_save``. A base that
``from_pretrained`` cannot load by name (a random-init test model, a GGUF file) is written to
``DIR/base_model`` and named in ``base_model_name_or_path``, so PEFT alone loads the folder.

``--to merged`` folds the update into the weights (``merge``), removes the method's wrappers and
writes ``save_pretrained`` + tokenizer: ``AutoModelFor….from_pretrained(DIR)`` loads it with no
project code. Methods that train plain weights (full FT, FT^Top2, BitFit) write their trained
model. Adapters and prefix tuning add modules that cannot be folded into the weights: refused.

Both check their output before they finish: the exported folder is loaded back with PEFT /
transformers alone and its logits on a probe batch are compared with the run's own model
(``--tol``, default 1e-5 for float32; ``--no-verify`` skips it). ``DIR/lora_research.json``
records the run, its task and decoding settings and the base identity (``predict`` reads it).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from lora_research import adapter_file
from lora_research.adapter_file import EXPORT_INFO_FILE, AdapterFile, BaseIdentity

EXPORT_FORMAT = "lora_research.export/1"
TARGETS = ("peft", "merged")


class ExportRefused(ValueError):
    """This run cannot be exported in the requested form (one line: why, and what can be done)."""


# ---------------------------------------------------------------------------------------------
# helpers


def _auto_class(head: Optional[str]):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if head == "generation" else AutoModelForSequenceClassification


def _project_modules(model) -> list[str]:
    """Modules whose class belongs to this repo (method wrappers, adapters, prefixes)."""
    return [n for n, m in model.named_modules() if type(m).__module__.startswith("lora_research.")]


def unwrap_merged(model) -> int:
    """Replace every merged wrapper (a module with ``merged`` true and a ``base`` module) by its base."""
    n = 0
    for name, mod in list(model.named_modules()):
        if name and getattr(mod, "merged", False) and isinstance(getattr(mod, "base", None), torch.nn.Module):
            model.set_submodule(name, mod.base, strict=True)
            n += 1
    return n


def probe_batch(model, family_is_decoder: bool, seed: int = 0, length: int = 12) -> dict:
    """Two rows of random tokens (the second right-padded by 3) for comparing logits."""
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, min(vocab, 1000), (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    dev = next(model.parameters()).device
    out = model(**{k: v.to(dev) for k, v in batch.items()})
    logits = out.logits.float().cpu()
    if logits.dim() == 3:  # causal LM: padded positions are not compared
        logits = logits * batch["attention_mask"][..., None]
    return logits


def _default_tol(model) -> float:
    dtype = next(model.parameters()).dtype
    return 1e-5 if dtype == torch.float32 else 2e-2


def _base_loadable_by_name(identity: BaseIdentity) -> Optional[str]:
    """The path/hub id ``from_pretrained`` loads the base from, or None (random init, GGUF)."""
    cfg = identity.model or {}
    if cfg.get("random_init") or not identity.name_or_path:
        return None
    from lora_research.models import resolve_path

    try:
        path = resolve_path(identity.name_or_path)
    except FileNotFoundError:
        return None
    if path.endswith(".gguf"):
        return None
    return str(Path(path).resolve()) if Path(path).exists() else path


def _prepare_out(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportRefused(f"{out} exists and is not empty; choose a new --out or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _info(run_dir: Path, kind: str, af: AdapterFile, run, task, extra: dict) -> dict:
    from dataclasses import asdict, is_dataclass

    def plain(x):
        return asdict(x) if is_dataclass(x) else x

    spec = getattr(task, "spec", None)
    return {"format": EXPORT_FORMAT, "kind": kind, "run_dir": str(Path(run_dir).resolve()), "method": af.method,
            "config": af.metadata.get("config", {}), "task": plain(run.task), "model": plain(run.model),
            "head": task.head, "num_labels": task.num_labels, "problem_type": task.problem_type,
            "label_names": list(getattr(spec, "label_names", ()) or ()), "base": af.base.to_dict(),
            "index": af.index, "seed": run.seed, "best_epoch": af.metadata.get("best_epoch"), **extra}


# ---------------------------------------------------------------------------------------------
# to PEFT


def peft_state(af: AdapterFile, family, peft_model=None) -> tuple[dict, dict]:
    """``(LoraConfig kwargs, adapter state dict in PEFT's saved naming)`` for an adapter file.

    DoRA magnitudes need ``peft_model`` (the rows that are not adapted keep its initial ‖W0‖);
    without it they are left out. Raises :class:`ExportRefused` naming what PEFT's LoRA cannot express.
    """
    from lora_research.targets import is_head_parameter

    index = af.index
    method = af.method
    if not index:
        raise ExportRefused(f"method {method!r} has no low-rank adapter to export to PEFT (its index is empty); "
                            "`--to merged` writes the trained model if the method can merge")
    full = [r for r in index if r.get("W") is not None]
    if full:
        raise ExportRefused(f"method {method!r} trains whole weight matrices, which PEFT's LoRA cannot express; "
                            "use `--to merged` for the fine-tuned model")
    head = {k for k in af.tensors if is_head_parameter(k, family)}
    other = sorted(set(af.tensors) - af.indexed_keys() - head)
    if other:
        raise ExportRefused(f"method {method!r} trains tensors PEFT's LoRA cannot express exactly "
                            f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); use `--to merged`")
    cfg = af.metadata.get("config") or {}
    rslora = cfg.get("scaling_rule") == "rslora"
    by_module: dict = {}
    for row in index:
        by_module.setdefault(row["module"], []).append(row)
    state, ranks, alphas = {}, {}, {}
    any_dora = any(r.get("magnitude") for r in index)
    if any_dora and not all(r.get("magnitude") for r in index):
        raise ExportRefused("DoRA on some matrices only has no single PEFT config")
    t = af.tensors
    for module, rows in sorted(by_module.items()):
        out_f, in_f = (int(x) for x in rows[0]["base_shape"])
        ref = rows[0]
        s_ref = float(ref["scaling"])
        blocks = []  # (A_block, B_block on its rows, row slice)
        for row in rows:
            rs = row["out_slice"] or [0, out_f]
            factor = float(row["scaling"]) / s_ref
            A, B = t[row["A"]].float(), t[row["B"]].float() * factor
            blocks.append((A, B, rs))
            if row.get("A0") is not None:  # PiSSA: ΔW vs the original base is s·(BA − B0A0)
                blocks.append((t[row["A0"]].float(), -t[row["B0"]].float() * factor, rs))
        R = sum(a.shape[0] for a, _, _ in blocks)
        A_full = torch.cat([a for a, _, _ in blocks], 0)
        B_full = torch.zeros(out_f, R)
        col = 0
        for a, b, (r0, r1) in blocks:
            B_full[r0:r1, col:col + a.shape[0]] = b
            col += a.shape[0]
        r_ref = int(ref["r"])
        alpha_ref = float(ref["alpha"]) if ref.get("alpha") is not None else s_ref * (math.sqrt(r_ref) if rslora else r_ref)
        # PEFT's scaling α'/R (α'/√R with rsLoRA) must equal s_ref = α/r (α/√r)
        alpha = alpha_ref * (math.sqrt(R / r_ref) if rslora else R / r_ref)
        if R == r_ref:
            alpha = alpha_ref
        key = re.escape(module)
        ranks[key], alphas[key] = R, alpha
        p = f"{adapter_file.PEFT_PREFIX}{module}"
        state[f"{p}.lora_A.weight"] = A_full.contiguous()
        state[f"{p}.lora_B.weight"] = B_full.contiguous()
        if any_dora and peft_model is not None:
            peft_mod = peft_model.get_submodule(f"base_model.model.{module}")
            mag = peft_mod.lora_magnitude_vector["default"].weight.detach().clone().float()
            for row in rows:
                r0, r1 = row["out_slice"] or [0, out_f]
                mag[r0:r1] = t[row["magnitude"]].float()
            state[f"{p}.lora_magnitude_vector"] = mag
    for k in sorted(head):
        state[f"{adapter_file.PEFT_PREFIX}{k}"] = t[k].float()
    values = list(ranks.values())
    r_default = max(set(values), key=values.count)
    head_modules = sorted({h for h in family.head_modules if any(k == h or k.startswith(h + ".") for k in head)})
    config = dict(
        r=r_default, lora_alpha=alphas[next(k for k in ranks if ranks[k] == r_default)],
        target_modules=sorted(by_module), rank_pattern=ranks, alpha_pattern=alphas,
        lora_dropout=float(cfg.get("dropout", 0.0) or 0.0), use_rslora=rslora, use_dora=any_dora,
        fan_in_fan_out=any(r.get("fan_in_fan_out") for r in index), bias="none",
        modules_to_save=head_modules or None, init_lora_weights=True,
    )
    return config, state


def export_peft(run_dir, out, *, verify: bool = True, tol: Optional[float] = None, save_base: bool = False,
                overwrite: bool = False, device: str = "cpu") -> dict:
    """Write a PEFT LoRA folder for a run (see the module docstring); returns a report."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ExportRefused("--to peft needs the peft package: pip install peft") from None
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    from lora_research.models import resolve_family
    from lora_research.training import restore_run

    run_dir = Path(run_dir)
    af = adapter_file.read(run_dir)
    run, model, tokenizer, method, task = restore_run(run_dir, device=device)
    family = resolve_family(run.model)
    kwargs, _ = peft_state(af, family)  # the config, or the one-line refusal, before anything is written
    identity = af.base
    base = adapter_file.load_base(identity)
    out = _prepare_out(Path(out), overwrite)
    base_path = None if save_base else _base_loadable_by_name(identity)
    if base_path is None:
        base.save_pretrained(out / "base_model")
        tokenizer.save_pretrained(out / "base_model")
        base_path = str((out / "base_model").resolve())
    task_type = "CAUSAL_LM" if task.head == "generation" else "SEQ_CLS"
    config = LoraConfig(task_type=task_type, base_model_name_or_path=base_path, **kwargs)
    base.name_or_path = base_path  # what get_peft_model records as base_model_name_or_path
    peft_model = get_peft_model(base, config)
    _, state = peft_state(af, family, peft_model)
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise ExportRefused(f"PEFT did not accept tensors {result.unexpected_keys[:3]} (peft {peft.__version__})")
    peft_model.peft_config["default"].base_model_name_or_path = base_path
    peft_model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    report = {"to": "peft", "out": str(out), "base_model_name_or_path": base_path, "modules": len(kwargs["target_modules"]),
              "task_type": task_type}
    if verify:
        from transformers import AutoConfig

        auto = _auto_class(task.head)
        extra = {}
        if task.head != "generation" and task.num_labels and AutoConfig.from_pretrained(base_path).num_labels != task.num_labels:
            extra["num_labels"] = task.num_labels
        fresh = auto.from_pretrained(base_path, **extra)
        loaded = PeftModel.from_pretrained(fresh, str(out)).eval()
        report.update(_compare(model, loaded, task, tol))
    _write_info(out, _info(run_dir, "peft", af, run, task, {"peft": report}))
    return report


def _compare(model, other, task, tol) -> dict:
    batch = probe_batch(model, task.head == "generation")
    a, b = _logits(model, batch), _logits(other, batch)
    diff = float((a - b).abs().max())
    tol = _default_tol(model) if tol is None else tol
    if not math.isfinite(diff) or diff > tol:
        raise ExportRefused(f"the exported model's logits differ from the run's by {diff:.3g} > --tol {tol:g}; "
                            "the export is not faithful (please report this)")
    return {"verified": True, "max_abs_logit_diff": diff, "tol": tol}


def _write_info(out: Path, info: dict) -> None:
    (out / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# merged


def export_merged(run_dir, out, *, verify: bool = True, tol: Optional[float] = None, overwrite: bool = False,
                  device: str = "cpu") -> dict:
    """Merge, unwrap and ``save_pretrained`` a run's model (see the module docstring); returns a report."""
    from lora_research.training import restore_run

    run_dir = Path(run_dir)
    af = adapter_file.read(run_dir)
    run, model, tokenizer, method, task = restore_run(run_dir, device=device)
    wrappers = _project_modules(model)
    if wrappers and not method.can_merge:
        raise ExportRefused(
            f"method {method.name!r} adds modules to the model ({wrappers[0]}, ...) that cannot be folded into "
            "its weights, so there is no plain merged model; use the run folder with python -m lora_research.predict")
    batch = probe_batch(model, task.head == "generation")
    reference = _logits(model, batch)
    if method.merge_for_inference(model):
        unwrap_merged(model)
    left = _project_modules(model)
    if left:
        raise ExportRefused(f"after merging, module {left[0]!r} of method {method.name!r} is still a wrapper; "
                            "it cannot be written as a plain Hugging Face model")
    spec = getattr(task, "spec", None)
    names = list(getattr(spec, "label_names", ()) or ())
    if names and task.head != "generation":
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    out = _prepare_out(Path(out), overwrite)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    report = {"to": "merged", "out": str(out), "merged": bool(method.can_merge)}
    if verify:
        loaded = _auto_class(task.head).from_pretrained(str(out)).eval()
        diff = float((reference - _logits(loaded, batch)).abs().max())
        tol = _default_tol(loaded) if tol is None else tol
        if not math.isfinite(diff) or diff > tol:
            raise ExportRefused(f"the merged model's logits differ from the run's by {diff:.3g} > --tol {tol:g}")
        report.update({"verified": True, "max_abs_logit_diff": diff, "tol": tol})
    _write_info(out, _info(run_dir, "merged", af, run, task, {"merged": report}))
    return report


def export(run_dir, to: str, out, **kw) -> dict:
    if to not in TARGETS:
        raise ValueError(f"--to {to!r}; valid choices: {list(TARGETS)}")
    return export_peft(run_dir, out, **kw) if to == "peft" else export_merged(
        run_dir, out, **{k: v for k, v in kw.items() if k != "save_base"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_research.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (config.yaml + adapter.safetensors)")
    p.add_argument("--to", required=True, choices=TARGETS)
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-verify", action="store_true", help="skip loading the export back and comparing logits")
    p.add_argument("--tol", type=float, help="max |logit difference| accepted by the check (default 1e-5 in float32)")
    p.add_argument("--save-base", action="store_true", help="(peft) always write the base model into OUT/base_model")
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lora_research.console import quiet_libraries

    quiet_libraries()
    kw: dict[str, Any] = dict(verify=not args.no_verify, tol=args.tol, overwrite=args.overwrite, device=args.device)
    if args.to == "peft":
        kw["save_base"] = args.save_base
    try:
        report = export(args.run, args.to, args.out, **kw)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    checked = (f"; loaded back, max |Δlogits| = {report['max_abs_logit_diff']:.2g}" if report.get("verified")
               else "; not verified")
    print(f"wrote {report['out']} ({args.to}{checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
