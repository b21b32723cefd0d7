"""Whole jobs against the script a researcher would write (issue #13), every ratio measured side by side.

    python benchmarks/bench_jobs.py                    # full size (CPU: about an hour on 2 idle cores)
    python benchmarks/bench_jobs.py --quick            # smaller jobs, one repetition
    python benchmarks/bench_jobs.py --only quickstart,decode --json out.json
    python benchmarks/bench_jobs.py --ours-root /tmp/base   # "ours" = another checkout (e.g. the commit before)

Sections (``--only``), each a ratio against its goal:

``quickstart``  the quickstart job (``python -m lora_research.train experiment=quickstart logger=none``)
                vs ``benchmarks/peer_quickstart.py`` (Trainer + PEFT, same data, hyper-parameters and
                evaluation), one job per seed for each arm, arms interleaved (A B, B A, ...). Wall time
                ratio (goal <= 0.6) at equal dev accuracy (mean over seeds, goal within 1 point). When
                the checkout has ``trainer.train_batch_split``, an ``ours_padded`` arm runs the preset with
                ``trainer.train_batch_split=none trainer.unpadded=false`` (and ``trainer.fast_dropout=false``
                where it exists: each batch in one padded forward with torch's dropout draws, the paper's
                computation); when it has ``trainer.train_sampling``, an ``ours_grouped`` arm
                runs ``train_sampling=group_by_length`` (changes batch composition: its accuracy is
                reported; ``--no-grouped`` skips it).
``e2e``         SmolLM2 + LoRA E2E job (``experiment=smollm2_lora_e2e_cpu`` with a fixed number of steps,
                then beam-10 decoding of the dev MRs) vs ``benchmarks/peer_e2e.py`` (Trainer + PEFT +
                ``generate(num_beams=10)``); wall ratio (goal <= 0.6), BLEU of both (goal within 0.5),
                both scored here by ``lora_research.metrics.e2e`` from their ``predictions.txt``.
``decode``      beam-10 decoding of the same prompts with the same trained model: the project's decoder
                vs ``model.generate(num_beams=10, ...)`` (``decode.engine=hf``), tokens/s ratio (goal
                >= 1.5) and whether every output is identical.
``memory``      peak RSS of a short SmolLM2 E2E job with LoRA and with full fine-tuning (goal: LoRA <=
                1300 MB and <= 0.5x full FT), plus the RSS of loading the model alone; where the machine has
                ``libjemalloc.so.2``, both jobs and the low-memory one once more with it preloaded (``LD_PRELOAD``).
``step``        one training step (forward, backward, AdamW) of LoRA vs full fine-tuning on the same model
                and batch (MiniLM 32x128 r=8 q,v; SmolLM2 4x64 r=4 q,v), goal <= 0.70; ``minilm_fast``:
                MiniLM with ``trainer.fast_dropout=true``'s dropout masks in both arms (when the checkout has it).
``startup``     time from process start to the first training step: a tiny run (tiny BERT, 64 examples)
                and, from the quickstart section, the quickstart job and its peer.

Every job is a fresh process; wall time, CPU time (user + sys) and peak RSS come from ``wait4``;
the time to the first training step is recorded by patching ``Trainer.training_step`` in the
child. The machine may be shared: repetitions are interleaved, medians are reported, and the load
average (``/proc/loadavg``) is printed before every section. ``--baseline`` takes the JSON of an
earlier run and prints its numbers beside the new ones.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
SECTIONS = ("quickstart", "e2e", "decode", "memory", "step", "startup")
# minilm_fast: MiniLM with trainer.fast_dropout=true's CPU dropout masks (lora_research.fast_dropout), both arms
STEP_MODELS = ("minilm", "minilm_fast", "smollm2")


def smollm2_model_config(root: Path) -> dict:
    """``conf/model/smollm2.yaml`` of a checkout as a model config: its keys over the schema's defaults
    (its ``defaults:`` list names that schema; checkouts before 100938e spell every key out)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(str(root / "conf/model/smollm2.yaml")))
    cfg.pop("defaults", None)
    return cfg


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {loadavg()}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- running one job


def run_job(target: list[str], *, cwd: Path, work: Path, name: str, env_extra: dict | None = None) -> dict:
    """Run ``python <target>`` (``-m module ...`` or ``script ...``) in a fresh process through the
    first-step wrapper; wall, CPU, peak RSS (wait4), time to the first training step."""
    work.mkdir(parents=True, exist_ok=True)
    fs_file = work / f"{name}.first_step"
    fs_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(env_extra or {})
    env["BENCH_OURS_ROOT"] = str(cwd)
    cmd = [sys.executable, str(HERE), "--_wrap", str(fs_file), "--", *target]
    log_path = work / f"{name}.log"
    load0 = loadavg()
    t0 = time.time()
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    first = None
    if fs_file.exists():
        first = float(fs_file.read_text()) - t0
    rec = {
        "name": name, "rc": rc, "wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "first_step_s": None if first is None else round(first, 2),
        "load_start": load0, "load_end": loadavg(), "log": str(log_path), "start_time": t0,
    }
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"job {name} failed (rc {rc}): {' '.join(cmd)}\n" + "\n".join(tail))
    log(f"{name}: wall {rec['wall_s']} s, cpu {rec['cpu_s']} s, rss {rec['peak_rss_mb']} MB, first step {rec['first_step_s']} s")
    return rec


def _wrap(fs_file: str, target: list[str]) -> None:
    """Child side of :func:`run_job`: record when ``Trainer.training_step`` first runs, then run target."""
    import importlib.abc
    import importlib.util
    import runpy

    ours = os.environ.get("BENCH_OURS_ROOT")
    if ours:
        sys.path.insert(0, ours)
    done = []

    def patch(module) -> None:
        orig = module.Trainer.training_step

        def training_step(self, *a, **k):
            if not done:
                done.append(1)
                Path(fs_file).write_text(repr(time.time()))
            return orig(self, *a, **k)

        module.Trainer.training_step = training_step

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "transformers.trainer":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            orig_exec = spec.loader.exec_module

            def exec_module(module):
                orig_exec(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(target)
        sys.path.insert(0, str(Path(target[0]).resolve().parent))
        runpy.run_path(target[0], run_name="__main__")


def ours_has(ours: Path, expr: str) -> bool:
    """Evaluate a feature test (a Python expression) in the ``ours`` checkout."""
    code = f"import sys; sys.path.insert(0, {str(ours)!r}); from dataclasses import fields\n{expr}"
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ours), capture_output=True, text=True)
    return out.returncode == 0


def ours_has_trainer_option(ours: Path, name: str) -> bool:
    """Whether the ``ours`` checkout's ``TrainerConfig`` has the field ``name`` (arms that need it run only then)."""
    return ours_has(ours, f"from lora_research.config import TrainerConfig\nassert {name!r} in {{f.name for f in fields(TrainerConfig)}}")


def interleave(arms: list[str], reps: int) -> list[tuple[int, str]]:
    """A B C, B C A, C A B, ...: every arm in every position, drift evened out."""
    order = []
    for r in range(reps):
        k = r % len(arms)
        order += [(r, a) for a in arms[k:] + arms[:k]]
    return order


# ----------------------------------------------------------------------------- sections


def section_quickstart(args, ours: Path, work: Path) -> dict:
    seeds = [0] if args.quick else [0, 1, 2]
    size = (["task.max_train_samples=640", "trainer.epochs=1"] if args.quick else [])
    peer_size = (["--max-train-samples", "640", "--epochs", "1"] if args.quick else [])
    arms = ["ours", "peer"]
    grouped = ours_has_trainer_option(ours, "train_sampling")
    split = ours_has_trainer_option(ours, "train_batch_split")
    fast = ours_has_trainer_option(ours, "fast_dropout")
    if split:  # the preset's levers off: each batch in one padded forward, the paper's computation
        arms.append("ours_padded")
    if grouped and not args.no_grouped:
        arms.append("ours_grouped")
    if args.bf16:  # bf16 autocast (CPUs with AMX / AVX512-BF16, or CUDA); the peer gets the same switch
        arms += ["ours_bf16", "peer_bf16"]
    runs = {a: [] for a in arms}
    for i, arm in interleave(arms, len(seeds)):
        seed = seeds[i]
        d = work / "quickstart" / f"{arm}_s{seed}"
        if arm.startswith("peer"):
            target = [str(ROOT / "benchmarks/peer_quickstart.py"), "--seed", str(seed), "--out", str(d), *peer_size]
            if arm == "peer_bf16":
                target.append("--bf16")
        else:
            target = ["-m", "lora_research.train", "experiment=quickstart", "logger=none", "trainer.device=cpu",
                      f"seed={seed}", f"hydra.run.dir={d}", *size]
            if arm == "ours_grouped":
                target.append("trainer.train_sampling=group_by_length")
            if arm == "ours_padded":
                target += ["trainer.train_batch_split=none", "trainer.unpadded=false"]
                if fast:  # the paper's computation: torch's own dropout draws too
                    target.append("trainer.fast_dropout=false")
            if arm == "ours_bf16":
                target.append("trainer.precision=bf16")
        rec = run_job(target, cwd=ours if not arm.startswith("peer") else ROOT, work=work / "quickstart", name=f"{arm}_s{seed}")
        if arm.startswith("peer"):
            res = json.loads((d / "result.json").read_text())
            rec.update(accuracy=res["accuracy"], self_rss_mb=res["peak_rss_mb"], train_runtime_s=res["train_runtime_s"])
        else:
            s = json.loads((d / "summary.json").read_text())
            rec.update(accuracy=s["metrics"]["accuracy"], self_rss_mb=s["peak_rss_mb"], train_runtime_s=s["train_runtime_s"])
        rec["seed"] = seed
        runs[arm].append(rec)
    return {"config": {"seeds": seeds, "size": size or "experiment=quickstart as is"}, "runs": runs}


def _e2e_overrides(steps: int, mrs: int, extra=()) -> list[str]:
    return ["experiment=smollm2_lora_e2e_cpu", "logger=none", f"trainer.max_steps={steps}",
            f"task.max_train_samples={4 * steps}", f"task.max_eval_samples={mrs}", f"task.decode.max_mrs={mrs}",
            "task.decode.strategy=beam", "task.decode.num_beams=10", "task.decode.batch_size=8", *extra]


def _bleu(pred_file: Path, ref_file: Path) -> float:
    sys.path.insert(0, str(ROOT))
    from lora_research.metrics.e2e import score_e2e
    from lora_research.metrics.e2e_files import read_prediction_file, read_reference_file

    preds, refs = read_prediction_file(pred_file), read_reference_file(ref_file)
    return round(100 * score_e2e(preds, refs, metrics=("BLEU",))["BLEU"], 2)


def section_e2e(args, ours: Path, work: Path) -> dict:
    steps, mrs, reps = (6, 8, 1) if args.quick else (30, 50, 2)
    runs = {"ours": [], "peer": []}
    # one-time machine set-up, like the converted GGUF model the jobs load: METEOR's paraphrase-table index
    # (lora_research.metrics.meteor_paraphrases), built here so that no timed job pays for it
    meteor_index = None
    if ours_has(ours, "import lora_research.metrics.meteor_paraphrases"):
        t0 = time.time()
        warm = subprocess.run([sys.executable, "-c", "from lora_research.metrics import meteor_paraphrases as m; "
                               "print(m.ensure_index(m.full_table()))"], cwd=str(ours), capture_output=True, text=True)
        meteor_index = {"seconds": round(time.time() - t0, 1), "ok": warm.returncode == 0}
        log(f"METEOR paraphrase index: {meteor_index}")
    for i, arm in interleave(["ours", "peer"], reps):
        d = work / "e2e" / f"{arm}_{i}"
        if arm == "ours":
            target = ["-m", "lora_research.train", *_e2e_overrides(steps, mrs), f"hydra.run.dir={d}"]
        else:
            target = [str(ROOT / "benchmarks/peer_e2e.py"), "--steps", str(steps), "--eval-mrs", str(mrs), "--out", str(d)]
        rec = run_job(target, cwd=ours if arm == "ours" else ROOT, work=work / "e2e", name=f"{arm}_{i}")
        rec["BLEU"] = _bleu(d / "predictions.txt", d / "references.txt")
        # like for like: both arms to the moment their predictions.txt is written (the peer then exits; ours
        # scores the five official metrics, METEOR's JVM start-up ~5 s of it, and writes its summary)
        rec["to_predictions_s"] = round((d / "predictions.txt").stat().st_mtime - rec["start_time"], 2)
        if arm == "ours":
            s = json.loads((d / "summary.json").read_text())
            fe = s["final_evaluation"]
            rec.update(self_rss_mb=s["peak_rss_mb"], train_runtime_s=s["train_runtime_s"],
                       decode_seconds=fe.get("decode_seconds"), decode_tokens_per_s=fe.get("decode_tokens_per_s"),
                       generated_tokens=fe.get("generated_tokens"), score_s=fe.get("score_seconds"), run_dir=str(d))
        else:
            res = json.loads((d / "result.json").read_text())
            rec.update(self_rss_mb=res["peak_rss_mb"], train_runtime_s=res["train_runtime_s"],
                       decode_seconds=res["decode_seconds"], decode_tokens_per_s=res["decode_tokens_per_s"],
                       generated_tokens=res["generated_tokens"])
        runs[arm].append(rec)
    return {"config": {"steps": steps, "train_pairs": 4 * steps, "dev_mrs": mrs, "beams": 10, "reps": reps}, "runs": runs,
            "meteor_index": meteor_index}


def _decode_worker(run_dir: str, engine: str, mrs: int, out: str) -> None:
    sys.path.insert(0, os.environ.get("BENCH_OURS_ROOT", str(ROOT)))
    from dataclasses import fields, replace

    from lora_research.decoding import DecodeConfig, generate
    from lora_research.tasks.e2e import encode_context
    from lora_research.training import restore_run

    run, model, tok, _, task = restore_run(run_dir, device="cpu")
    cfg = replace(task.cfg.decode, strategy="beam", num_beams=10, batch_size=8)
    if "engine" in {f.name for f in fields(DecodeConfig)}:
        cfg = replace(cfg, engine=engine)
    elif engine != "hf":
        raise SystemExit(f"this checkout has no decode.engine; only the hf engine exists")
    contexts, _ = task.eval_mrs(max_mrs=mrs)
    prompts = [encode_context(tok, c) for c in contexts]
    texts, stats = generate(model, tok, prompts, cfg, "cpu")
    Path(out).write_text(json.dumps({"texts": texts, "stats": stats}))


def section_decode(args, ours: Path, work: Path, e2e: dict | None) -> dict:
    mrs, reps = (8, 1) if args.quick else (50, 2)
    run_dir = None
    if e2e and e2e["runs"].get("ours"):
        run_dir = e2e["runs"]["ours"][0].get("run_dir")
    if run_dir is None:  # a short LoRA run to decode with
        run_dir = str(work / "decode" / "train")
        run_job(["-m", "lora_research.train", *_e2e_overrides(6 if args.quick else 30, 1), f"hydra.run.dir={run_dir}"],
                cwd=ours, work=work / "decode", name="train")
    engines = ["hf"]
    if ours_has(ours, "from lora_research.decoding import DecodeConfig\n"
                      "assert 'engine' in {f.name for f in fields(DecodeConfig)}"):
        engines.append("fast")
    runs = {e: [] for e in engines}
    texts = {}
    for i, eng in interleave(engines, reps):
        out = work / "decode" / f"{eng}_{i}.json"
        rec = run_job([str(HERE), "--_decode-worker", run_dir, eng, str(mrs), str(out)], cwd=ours,
                      work=work / "decode", name=f"{eng}_{i}")
        res = json.loads(out.read_text())
        rec.update(res["stats"])
        texts.setdefault(eng, res["texts"])
        runs[eng].append(rec)
    result = {"config": {"mrs": mrs, "reps": reps, "run_dir": run_dir, "beams": 10, "batch": 8}, "runs": runs}
    if "fast" in texts:
        diff = [i for i, (a, b) in enumerate(zip(texts["hf"], texts["fast"])) if a != b]
        result["identical"] = not diff and len(texts["hf"]) == len(texts["fast"])
        result["differing_mrs"] = diff
    return result


def _load_worker(out: str) -> None:
    import resource

    sys.path.insert(0, os.environ.get("BENCH_OURS_ROOT", str(ROOT)))
    rss = lambda: round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # noqa: E731
    t0 = time.time()
    import torch  # noqa: F401

    from lora_research.models import load_model, load_tokenizer

    cfg = smollm2_model_config(Path(os.environ.get("BENCH_OURS_ROOT", str(ROOT))))
    r_imports = rss()
    t1 = time.time()
    load_tokenizer(cfg)
    t2 = time.time()
    r_tok = rss()
    model = load_model(cfg, head="generation")
    t3 = time.time()
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    Path(out).write_text(json.dumps({
        "rss_after_imports_mb": r_imports, "rss_after_tokenizer_mb": r_tok, "peak_rss_after_model_mb": rss(),
        "param_mb": round(params, 1), "load_peak_over_params_mb": round(rss() - r_tok - params, 1),
        "tokenizer_s": round(t2 - t1, 2), "model_s": round(t3 - t2, 2), "imports_s": round(t1 - t0, 2),
    }))


# settings that trade time for memory, with the same predictions: activations recomputed in backward, 3 MRs (30 beams)
# decoded at a time (2 until 2026-12-07: the cache's freed buffers are now handed back as it grows, lora_research/heap.py)
LOWMEM = ["trainer.gradient_checkpointing=true", "task.decode.batch_size=3"]


def jemalloc() -> str | None:
    """The path of ``libjemalloc.so.2`` on this machine (``ldconfig -p``; Debian/Ubuntu: ``apt install libjemalloc2``),
    or None. The memory section runs LoRA and full FT once more with it preloaded (``LD_PRELOAD``): same numbers,
    another allocator."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = [line.split("=>")[-1].strip() for line in out.splitlines() if "libjemalloc.so.2" in line]
    return next((p for p in paths if Path(p).exists()), None)


def section_memory(args, ours: Path, work: Path, e2e: dict | None = None) -> dict:
    """LoRA vs full FT peak RSS on the E2E job; the LoRA job is the e2e section's when it ran."""
    steps, mrs = (6, 8) if args.quick else (30, 50)
    runs = {}
    je = jemalloc()
    methods = ["lora", "full_ft", "lora_lowmem"] + (["lora_jemalloc", "full_ft_jemalloc", "lora_lowmem_jemalloc"] if je else [])
    if e2e and e2e["runs"].get("ours") and e2e["config"]["steps"] == steps and e2e["config"]["dev_mrs"] == mrs:
        runs["lora"] = dict(e2e["runs"]["ours"][0], reused_from="e2e section")
        methods.remove("lora")
    for arm in methods:
        d = work / "memory" / arm
        method = arm.removesuffix("_jemalloc")
        # full_ft: the experiment's LoRA options (r, alpha, dropout, targets) are deleted, not inherited
        swap = [f"method={method}"] + ([f"~method.{k}" for k in ("r", "alpha", "dropout", "targets")] if method != "lora" else [])
        if method == "lora_lowmem":  # the same LoRA job with memory settings: same predictions, slower
            swap = ["method=lora", *LOWMEM]
        rec = run_job(["-m", "lora_research.train", *_e2e_overrides(steps, mrs, swap), f"hydra.run.dir={d}"],
                      cwd=ours, work=work / "memory", name=arm,
                      env_extra={"LD_PRELOAD": je} if arm.endswith("_jemalloc") else None)
        s = json.loads((d / "summary.json").read_text())
        rec["self_rss_mb"] = s["peak_rss_mb"]
        rec["decode_seconds"] = s.get("final_evaluation", {}).get("decode_seconds")
        rec["train_runtime_s"] = s.get("train_runtime_s")
        runs[arm] = rec
    out = work / "memory" / "load.json"
    rec = run_job([str(HERE), "--_load-worker", str(out)], cwd=ours, work=work / "memory", name="load_only")
    rec.update(json.loads(out.read_text()))
    runs["load_only"] = rec
    return {"config": {"steps": steps, "mrs": mrs, "beams": 10, "jemalloc": je}, "runs": runs}


def step_model(model_name: str, variant: str, root: Path):
    """The step section's model with its method applied, and its fixed batch: ``(model, inputs)``. MiniLM
    32 x 128, LoRA r=8 on q, v; SmolLM2 4 x 64, LoRA r=4 on q, v with dropout 0.1 (``variant``: lora | full_ft).
    Also ``benchmarks/bench_compile.py``'s step."""
    import torch

    from lora_research.methods import build_method
    from lora_research.models import ModelConfig, load_model, resolve_family

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if model_name == "minilm":
        cfg = ModelConfig()
        model = load_model(cfg, num_labels=2)
        lora = {"name": "lora", "r": 8, "alpha": 16, "targets": ["q", "v"]}
        ids = torch.randint(1000, 30000, (32, 128), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (32,), generator=g)}
    else:
        cfg = smollm2_model_config(root)
        model = load_model(cfg, head="generation")
        lora = {"name": "lora", "r": 4, "alpha": 32, "dropout": 0.1, "targets": ["q", "v"]}
        ids = torch.randint(1000, 40000, (4, 64), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    build_method(lora if variant == "lora" else {"name": "full_ft"}).apply(model, resolve_family(cfg))
    return model, inputs


def _step_worker(model_name: str, variant: str, steps: int, warmup: int, out: str) -> None:
    sys.path.insert(0, os.environ.get("BENCH_OURS_ROOT", str(ROOT)))
    import torch

    root = Path(os.environ.get("BENCH_OURS_ROOT", str(ROOT)))
    fast = model_name.endswith("_fast")  # minilm_fast: the dropout masks of trainer.fast_dropout=true, both arms
    model, inputs = step_model(model_name.removesuffix("_fast"), variant, root)
    batch, seq = inputs["input_ids"].shape
    if fast:
        from lora_research import fast_dropout

        fast_dropout.enable(model)
    if (root / "lora_research/lean_activations.py").exists():  # training's default (trainer.lean_activations=true)
        from lora_research import lean_activations

        lean_activations.enable(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    Path(out).write_text(json.dumps({"step_s": statistics.median(times), "times": times, "batch": batch, "seq": seq,
                                     "trainable": sum(p.numel() for p in params)}))


def section_step(args, ours: Path, work: Path) -> dict:
    reps, steps, warmup = (1, 3, 1) if args.quick else (3, 6, 2)
    result = {"config": {"reps": reps, "steps": steps, "warmup": warmup}}
    fast = ours_has_trainer_option(ours, "fast_dropout")
    for model in (m for m in STEP_MODELS if fast or not m.endswith("_fast")):
        runs = {"full_ft": [], "lora": []}
        for i, v in interleave(["full_ft", "lora"], reps):
            out = work / "step" / f"{model}_{v}_{i}.json"
            rec = run_job([str(HERE), "--_step-worker", model, v, str(steps), str(warmup), str(out)], cwd=ours,
                          work=work / "step", name=f"{model}_{v}_{i}")
            rec.update(json.loads(out.read_text()))
            runs[v].append(rec)
        result[model] = runs
    return result


def section_startup(args, ours: Path, work: Path) -> dict:
    reps = 1 if args.quick else 3
    runs = []
    for i in range(reps):
        d = work / "startup" / f"tiny_{i}"
        target = ["-m", "lora_research.train", "model=tiny_bert", "task=sst2", "task.max_train_samples=64",
                  "task.max_eval_samples=64", "trainer.max_steps=2", "trainer.device=cpu", "logger=none",
                  f"hydra.run.dir={d}"]
        runs.append(run_job(target, cwd=ours, work=work / "startup", name=f"tiny_{i}"))
    imp = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lora_research.train, lora_research.training"],
                         cwd=str(ours), capture_output=True, text=True)
    top = []
    for line in imp.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            top.append((int(parts[1]), parts[2].rstrip()))
    top.sort(reverse=True)
    return {"runs": runs, "import_cumulative_us_top": [(us, name) for us, name in top[:12]]}


# ----------------------------------------------------------------------------- report


def _fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def _goal(value, op, target) -> str:
    if value is None:
        return "n/a"
    ok = value <= target if op == "<=" else value >= target
    return f"(goal {op} {target}: {'met' if ok else 'NOT met'})"


def summarise(res: dict) -> dict:
    """The ratios of the issue from the raw records."""
    out = {}
    q = res.get("quickstart")
    if q:
        r = q["runs"]
        m = {a: {"wall_s": median([x["wall_s"] for x in v]), "cpu_s": median([x["cpu_s"] for x in v]),
                 "rss_mb": median([x["peak_rss_mb"] for x in v]), "first_step_s": median([x["first_step_s"] for x in v]),
                 "accuracy_mean": statistics.mean(x["accuracy"] for x in v) * 100,
                 "accuracies": [round(100 * x["accuracy"], 2) for x in v]} for a, v in r.items()}
        out["quickstart"] = m
        for a in [a for a in m if a != "peer"]:
            out[f"quickstart_{a}_vs_peer_wall"] = m[a]["wall_s"] / m["peer"]["wall_s"]
            out[f"quickstart_{a}_vs_peer_cpu"] = m[a]["cpu_s"] / m["peer"]["cpu_s"]
            out[f"quickstart_{a}_acc_minus_peer"] = m[a]["accuracy_mean"] - m["peer"]["accuracy_mean"]
        if "ours_bf16" in m and "peer_bf16" in m:  # like for like: both with bf16 autocast
            out["quickstart_bf16_like_for_like_wall"] = m["ours_bf16"]["wall_s"] / m["peer_bf16"]["wall_s"]
    e = res.get("e2e")
    if e:
        r = e["runs"]
        m = {a: {k: median([x.get(k) for x in v]) for k in ("wall_s", "cpu_s", "self_rss_mb", "train_runtime_s",
                                                             "decode_seconds", "decode_tokens_per_s", "BLEU",
                                                             "to_predictions_s", "score_s")}
             for a, v in r.items()}
        out["e2e"] = m
        if m.get("peer", {}).get("wall_s") and m.get("ours", {}).get("wall_s"):
            out["e2e_wall"] = m["ours"]["wall_s"] / m["peer"]["wall_s"]
            out["e2e_cpu"] = m["ours"]["cpu_s"] / m["peer"]["cpu_s"]
            out["e2e_bleu_minus_peer"] = m["ours"]["BLEU"] - m["peer"]["BLEU"]
            if m["ours"].get("to_predictions_s") and m["peer"].get("to_predictions_s"):
                out["e2e_to_predictions"] = m["ours"]["to_predictions_s"] / m["peer"]["to_predictions_s"]
    d = res.get("decode")
    if d:
        m = {eng: {"tokens_per_s": median([x["tokens_per_s"] for x in v]), "seconds": median([x["seconds"] for x in v]),
                   "generated_tokens": v[0]["generated_tokens"]} for eng, v in d["runs"].items()}
        out["decode"] = m
        if "fast" in m:
            out["decode_speedup"] = m["fast"]["tokens_per_s"] / m["hf"]["tokens_per_s"]
            out["decode_identical"] = d.get("identical")
    mem = res.get("memory")
    if mem:
        r = mem["runs"]
        out["memory"] = {"lora_mb": r["lora"]["self_rss_mb"], "full_ft_mb": r["full_ft"]["self_rss_mb"],
                         "lora_wait4_mb": r["lora"]["peak_rss_mb"], "full_ft_wait4_mb": r["full_ft"]["peak_rss_mb"],
                         "load_only": {k: v for k, v in r["load_only"].items() if k.endswith(("_mb", "_s"))}}
        out["memory_lora_over_ft"] = r["lora"]["self_rss_mb"] / r["full_ft"]["self_rss_mb"]
        if "lora_lowmem" in r:
            lm = r["lora_lowmem"]
            out["memory"]["lowmem"] = {k: lm.get(k) for k in ("self_rss_mb", "wall_s", "decode_seconds",
                                                                "train_runtime_s")}
            out["memory"]["lora_run"] = {k: r["lora"].get(k) for k in ("wall_s", "decode_seconds", "train_runtime_s")}
            out["memory_lowmem_over_ft"] = lm["self_rss_mb"] / r["full_ft"]["self_rss_mb"]
        if "lora_jemalloc" in r:
            out["memory"]["jemalloc"] = {a: {k: r[f"{a}_jemalloc"].get(k) for k in ("self_rss_mb", "wall_s", "decode_seconds",
                                                                                   "train_runtime_s")}
                                         for a in ("lora", "full_ft", "lora_lowmem") if f"{a}_jemalloc" in r}
            out["memory_jemalloc_lora_over_ft"] = (r["lora_jemalloc"]["self_rss_mb"]
                                                   / r["full_ft_jemalloc"]["self_rss_mb"])
    s = res.get("step")
    if s:
        for model in STEP_MODELS:
            if model in s:
                ft = median([x["step_s"] for x in s[model]["full_ft"]])
                lo = median([x["step_s"] for x in s[model]["lora"]])
                out[f"step_{model}"] = {"full_ft_s": ft, "lora_s": lo}
                out[f"step_{model}_ratio"] = lo / ft
    st = res.get("startup")
    if st:
        out["startup_tiny_first_step_s"] = median([x["first_step_s"] for x in st["runs"]])
        out["startup_tiny_wall_s"] = median([x["wall_s"] for x in st["runs"]])
    return out


def report(res: dict, base: dict | None) -> str:
    s = summarise(res)
    b = summarise(base) if base else {}
    L = []
    w = L.append

    def before(key, nd=3):
        return f"   [before: {_fmt(b.get(key), nd)}]" if key in b else ""

    w(f"bench_jobs ({'quick' if res['meta']['quick'] else 'full'}) {res['meta']['date']}, ours = {res['meta']['ours_root']}"
      f" @ {res['meta']['ours_commit']}")
    w(f"machine: {res['meta']['cpus']} CPUs, torch threads default; load average at start {res['meta']['load_start']}, "
      f"at end {res['meta'].get('load_end')}")
    if "quickstart" in s:
        w("")
        w(f"1. quickstart job vs peer (Trainer + PEFT), {res['quickstart']['config']}; load at section start "
          f"{res['quickstart'].get('load')}")
        w(f"   {'arm':<14}{'wall s':>9}{'cpu s':>9}{'RSS MB':>9}{'1st step s':>11}  dev accuracy per seed (mean)")
        for a, m in s["quickstart"].items():
            w(f"   {a:<14}{_fmt(m['wall_s'], 1):>9}{_fmt(m['cpu_s'], 1):>9}{_fmt(m['rss_mb'], 0):>9}"
              f"{_fmt(m['first_step_s'], 1):>11}  {m['accuracies']} ({m['accuracy_mean']:.2f})")
        for a in [a for a in s["quickstart"] if a != "peer"]:
            r = s[f"quickstart_{a}_vs_peer_wall"]
            w(f"   {a} / peer wall: {r:.3f} {_goal(r, '<=', 0.6)}{before(f'quickstart_{a}_vs_peer_wall')};"
              f" cpu {s[f'quickstart_{a}_vs_peer_cpu']:.3f}; accuracy {s[f'quickstart_{a}_acc_minus_peer']:+.2f} points"
              f" vs peer {_goal(abs(s[f'quickstart_{a}_acc_minus_peer']), '<=', 1.0)}")
        if "quickstart_bf16_like_for_like_wall" in s:
            w(f"   ours_bf16 / peer_bf16 wall (both bf16, like for like): {s['quickstart_bf16_like_for_like_wall']:.3f}")
    if "e2e" in s:
        w("")
        w(f"2. SmolLM2 E2E job vs peer (Trainer + PEFT + generate), {res['e2e']['config']}; load {res['e2e'].get('load')}")
        w(f"   {'arm':<6}{'wall s':>9}{'cpu s':>9}{'RSS MB':>9}{'train s':>9}{'decode s':>10}{'tok/s':>8}{'BLEU':>8}")
        for a, m in s["e2e"].items():
            w(f"   {a:<6}{_fmt(m['wall_s'], 1):>9}{_fmt(m['cpu_s'], 1):>9}{_fmt(m['self_rss_mb'], 0):>9}"
              f"{_fmt(m['train_runtime_s'], 1):>9}{_fmt(m['decode_seconds'], 1):>10}{_fmt(m['decode_tokens_per_s'], 1):>8}"
              f"{_fmt(m['BLEU'], 2):>8}")
        if "e2e_wall" in s:
            w(f"   ours / peer wall: {s['e2e_wall']:.3f} {_goal(s['e2e_wall'], '<=', 0.6)}{before('e2e_wall')}; cpu {s['e2e_cpu']:.3f};"
              f" BLEU {s['e2e_bleu_minus_peer']:+.2f} vs peer {_goal(abs(s['e2e_bleu_minus_peer']), '<=', 0.5)}")
            if "e2e_to_predictions" in s:
                o, p_ = s["e2e"]["ours"], s["e2e"]["peer"]
                w(f"   like for like, start to predictions.txt written: ours {_fmt(o['to_predictions_s'], 1)} s / peer "
                  f"{_fmt(p_['to_predictions_s'], 1)} s = {s['e2e_to_predictions']:.3f} "
                  f"{_goal(s['e2e_to_predictions'], '<=', 0.6)}{before('e2e_to_predictions')} (the peer then exits; ours then"
                  f" scores BLEU, NIST, METEOR, ROUGE_L, CIDEr in {_fmt(o['score_s'], 1)} s and writes its summary)")
            if res["e2e"].get("meteor_index"):
                mi = res["e2e"]["meteor_index"]
                w(f"   (before the timed jobs: METEOR's paraphrase-table index, once per machine, {mi['seconds']} s"
                  f"{'' if mi['ok'] else ', FAILED: ours scored METEOR with the full table'})")
        else:
            w("   (no peer run in this record: no ratio)")
        if b.get("e2e"):
            for a, m in b["e2e"].items():
                w(f"   [before: {a} wall {_fmt(m['wall_s'], 1)} s, cpu {_fmt(m['cpu_s'], 1)} s, RSS {_fmt(m['self_rss_mb'], 0)} MB, "
                  f"train {_fmt(m['train_runtime_s'], 1)} s, decode {_fmt(m['decode_seconds'], 1)} s]")
    if "decode" in s:
        w("")
        w(f"3. beam-10 decoding, same model and prompts, {res['decode']['config']['mrs']} dev MRs, batch 8; load "
          f"{res['decode'].get('load')}")
        for eng, m in s["decode"].items():
            label = "generate(num_beams=10)" if eng == "hf" else "project decoder"
            w(f"   {label:<24} {_fmt(m['tokens_per_s'], 2):>8} tokens/s  ({_fmt(m['seconds'], 1)} s, {m['generated_tokens']} tokens)")
        if "decode_speedup" in s:
            w(f"   speed-up: {s['decode_speedup']:.2f}x {_goal(s['decode_speedup'], '>=', 1.5)}; identical outputs: "
              f"{s['decode_identical']} (differing MRs: {res['decode'].get('differing_mrs')})")
        elif "decode" in b:
            pass
    if res.get("decode_in_process"):
        dp = res["decode_in_process"]
        w("")
        w(f"3b. beam decoding in one process, engines interleaved: {dp['note']}")
        for line in dp["lines"]:
            w(f"   {line}")
    for sec in ("quickstart", "e2e", "decode", "memory", "step", "startup"):
        if isinstance(res.get(sec), dict) and res[sec].get("note"):
            w(f"   note ({sec}): {res[sec]['note']}")
    if "memory" in s:
        m = s["memory"]
        w("")
        w(f"4. SmolLM2 E2E job peak RSS (python process), {res['memory']['config']}; load {res['memory'].get('load')}")

        def peaks(lora_mb: float, ft_mb: float, ratio: float) -> str:  # goal 4: LoRA <= 1300 MB and <= 0.5x full FT
            return (f"LoRA {lora_mb:.0f} MB {_goal(lora_mb, '<=', 1300)}, full FT {ft_mb:.0f} MB; "
                    f"LoRA / full FT {ratio:.3f} {_goal(ratio, '<=', 0.5)}")

        w(f"   {peaks(m['lora_mb'], m['full_ft_mb'], s['memory_lora_over_ft'])}{before('memory_lora_over_ft')}")
        if b.get("memory"):
            w(f"   [before: LoRA {b['memory']['lora_mb']:.0f} MB, full FT {b['memory']['full_ft_mb']:.0f} MB]")
        if "lowmem" in m:
            lm, lr = m["lowmem"], m["lora_run"]
            w(f"   LoRA with {' '.join(LOWMEM)}: {lm['self_rss_mb']:.0f} MB {_goal(lm['self_rss_mb'], '<=', 1300)}, "
              f"/ full FT {s['memory_lowmem_over_ft']:.3f} {_goal(s['memory_lowmem_over_ft'], '<=', 0.5)}; "
              f"wall {lm['wall_s']} s vs {lr.get('wall_s')} s (train {lm['train_runtime_s']} vs {lr.get('train_runtime_s')} s, "
              f"decoding {lm['decode_seconds']} vs {lr.get('decode_seconds')} s)")
        if "jemalloc" in m:
            jl, jf = m["jemalloc"]["lora"], m["jemalloc"]["full_ft"]
            w(f"   with jemalloc ({res['memory']['config'].get('jemalloc')} preloaded, the same jobs): "
              f"{peaks(jl['self_rss_mb'], jf['self_rss_mb'], s['memory_jemalloc_lora_over_ft'])}; "
              f"LoRA wall {jl['wall_s']} s (train {jl['train_runtime_s']} s, decoding {jl['decode_seconds']} s)")
            if "lora_lowmem" in m["jemalloc"]:
                jm = m["jemalloc"]["lora_lowmem"]
                w(f"   with jemalloc and {' '.join(LOWMEM)}: {jm['self_rss_mb']:.0f} MB {_goal(jm['self_rss_mb'], '<=', 1300)}, "
                  f"/ full FT with jemalloc {jm['self_rss_mb'] / jf['self_rss_mb']:.3f}; wall {jm['wall_s']} s")
        lo = m["load_only"]
        w(f"   loading alone: RSS after imports {lo.get('rss_after_imports_mb')} MB, after tokenizer "
          f"{lo.get('rss_after_tokenizer_mb')} MB, peak after model {lo.get('peak_rss_after_model_mb')} MB for "
          f"{lo.get('param_mb')} MB of weights (peak above weights: {lo.get('load_peak_over_params_mb')} MB); "
          f"tokenizer {lo.get('tokenizer_s')} s, model {lo.get('model_s')} s")
        if b.get("memory"):
            bl = b["memory"]["load_only"]
            w(f"   [before: peak after model {bl.get('peak_rss_after_model_mb')} MB, above weights "
              f"{bl.get('load_peak_over_params_mb')} MB; tokenizer {bl.get('tokenizer_s')} s, model {bl.get('model_s')} s]")
    if any(k.startswith("step_") for k in s):
        w("")
        w(f"5. training step, LoRA vs full FT, same model and batch, {res['step']['config']}; load {res['step'].get('load')}")
        for model in STEP_MODELS:
            if f"step_{model}" in s:
                m = s[f"step_{model}"]
                w(f"   {model:<11} full FT {m['full_ft_s']:.3f} s, LoRA {m['lora_s']:.3f} s: ratio "
                  f"{s[f'step_{model}_ratio']:.3f} {_goal(s[f'step_{model}_ratio'], '<=', 0.70)}{before(f'step_{model}_ratio')}")
    if "startup_tiny_first_step_s" in s:
        w("")
        w(f"6. start-up: time to the first training step; load {res['startup'].get('load')}")
        w(f"   tiny run (tiny BERT, 64 SST-2 examples, 2 steps): first step at {s['startup_tiny_first_step_s']:.2f} s, "
          f"whole run {s['startup_tiny_wall_s']:.2f} s{before('startup_tiny_first_step_s')}")
        if "quickstart" in s:
            q = s["quickstart"]
            w("   quickstart job: " + ", ".join(f"{a} {_fmt(m['first_step_s'], 1)} s" for a, m in q.items()))
        w("   largest cumulative imports (us): " + "; ".join(f"{n.strip()} {us}" for us, n in res["startup"]["import_cumulative_us_top"][:6]))
    return "\n".join(L)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_wrap":
        sep = sys.argv.index("--")
        return _wrap(sys.argv[2], sys.argv[sep + 1:])
    if len(sys.argv) > 1 and sys.argv[1] == "--_decode-worker":
        return _decode_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    if len(sys.argv) > 1 and sys.argv[1] == "--_load-worker":
        return _load_worker(sys.argv[2])
    if len(sys.argv) > 1 and sys.argv[1] == "--_step-worker":
        return _step_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller jobs, one repetition")
    ap.add_argument("--bf16", action="store_true", help="quickstart: also bf16-autocast arms of ours and the peer")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--ours-root", default=str(ROOT), help="checkout whose lora_research is 'ours' (default: this one)")
    ap.add_argument("--json", help="write the raw records here")
    ap.add_argument("--baseline", help="JSON of an earlier run: its numbers are printed as [before: ...]")
    ap.add_argument("--work", help="folder for the jobs' run folders and logs (default: a temp folder, removed)")
    ap.add_argument("--no-grouped", action="store_true", help="skip the train_sampling=group_by_length arm")
    ap.add_argument("--report-only", metavar="JSON", help="print the report of an earlier run's JSON and exit")
    args = ap.parse_args()
    if args.report_only:
        base = json.loads(Path(args.baseline).read_text()) if args.baseline else None
        print(report(json.loads(Path(args.report_only).read_text()), base))
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        ap.error(f"unknown sections {bad}; valid: {list(SECTIONS)}")
    ours = Path(args.ours_root).resolve()
    data = ROOT.parent / "shared" / "data"
    os.environ.setdefault("GLUE_DIR", str(data / "glue"))
    os.environ.setdefault("E2E_DIR", str(data / "e2e"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    commit = subprocess.run(["git", "-C", str(ours), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ours), "status", "--porcelain", "lora_research", "conf"],
                           capture_output=True, text=True).stdout.strip()
    res: dict = {"meta": {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "ours_root": str(ours),
                          "ours_commit": commit + ("+uncommitted" if dirty else ""), "cpus": os.cpu_count(),
                          "load_start": loadavg(), "python": sys.version.split()[0]}}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))

    try:
        for name in SECTIONS:
            if name not in only:
                continue
            log(f"section {name}")
            load = loadavg()
            if name in ("decode", "memory"):
                res[name] = globals()[f"section_{name}"](args, ours, work, res.get("e2e"))
            else:
                res[name] = globals()[f"section_{name}"](args, ours, work)
            res[name]["load"] = f"{load} -> {loadavg()}"
            save()
    finally:
        res["meta"]["load_end"] = loadavg()
        save()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    base = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    print(report(res, base))


if __name__ == "__main__":
    main()
