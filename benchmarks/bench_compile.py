"""``torch.compile`` on the training step (issue #13's lever "torch.compile where it pays"), against eager.

    python benchmarks/bench_compile.py                      # MiniLM and SmolLM2, LoRA and full FT
    python benchmarks/bench_compile.py --models minilm --inductor-rng --json out.json

The step is ``benchmarks/bench_jobs.py``'s step section (its ``step_model``): forward, backward, AdamW, on one
fixed batch (MiniLM 32 x 128, LoRA r=8 on q, v; SmolLM2 4 x 64, LoRA r=4 on q, v with dropout 0.1). Arms, each
a fresh process, one after the other:

``eager``       the project's training computation (``trainer.lean_activations=true``, as ``fit`` runs it);
``compile``     ``torch.compile(model)`` (inductor, what ``TrainingArguments(torch_compile=True)`` does),
                with ``torch._inductor.config.fallback_random=True``: dropout draws torch's own masks, as eager;
``compile_rng`` (``--inductor-rng``) the same with inductor's own random numbers (fused into its kernels;
                other draws, as ``trainer.fast_dropout`` has).

For each: the first step (compilation included, from empty inductor caches: what a sweep's first job pays; again
from the warm cache: its later jobs), the median of the next steps, the compiled / eager step ratio, the steps a
job needs before compiling has paid for itself, and LoRA / full FT (goal <= 0.70).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
MODES = ("eager", "compile", "compile_rng")


def _worker(model_name: str, method: str, mode: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE.parent))
    import torch
    import transformers

    from bench_jobs import step_model
    from lora_research import lean_activations

    transformers.logging.set_verbosity_error()
    model, inputs = step_model(model_name, method, ROOT)
    forward = model
    if mode == "eager":
        lean_activations.enable(model)
    else:
        import torch._inductor.config as inductor

        inductor.fallback_random = mode == "compile"
        forward = torch.compile(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(1 + steps):
        t0 = time.perf_counter()
        forward(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "step_s": statistics.median(times[2:] if steps > 2 else times[1:]), "times": times}


def run(model_name: str, method: str, mode: str, steps: int) -> dict:
    """One arm in a fresh process. A compiled arm runs twice on the same inductor cache, first empty (what a
    sweep's first job pays), then warm (what its later jobs pay); the step time is the first run's."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
        records = []
        for _ in range(1 if mode == "eager" else 2):
            proc = subprocess.run([sys.executable, str(HERE), "--_worker", model_name, method, mode, str(steps)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
                return {"error": tail[0]}
            records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = records[0]
    if len(records) > 1:
        out["first_warm_s"] = records[1]["first_s"]
        out["warm_times"] = records[1]["times"]
    return out


def report(res: dict) -> str:
    lines = []
    for model_name, arms in res["models"].items():
        lines.append(f"{model_name}:")
        lines.append(f"  {'method':8s} {'mode':12s} {'1st step s':>10s} {'warm cache':>10s} {'step s':>7s} {'vs eager':>8s} "
                     f"{'pays after (cold / warm cache)':>30s}")
        for method in ("lora", "full_ft"):
            eager = arms[method].get("eager", {})
            for mode, r in arms[method].items():
                if "error" in r:
                    lines.append(f"  {method:8s} {mode:12s} failed: {r['error']}")
                    continue
                ratio = pays = warm = ""
                if mode != "eager" and "step_s" in eager:
                    ratio = f"{r['step_s'] / eager['step_s']:.3f}"
                    gain = eager["step_s"] - r["step_s"]
                    firsts = [r["first_s"]] + ([r["first_warm_s"]] if "first_warm_s" in r else [])
                    pays = " / ".join(f"{(f - eager['first_s']) / gain:.0f}" for f in firsts) + " steps" if gain > 0 else "never"
                    warm = f"{r['first_warm_s']:.1f}" if "first_warm_s" in r else ""
                lines.append(f"  {method:8s} {mode:12s} {r['first_s']:10.1f} {warm:>10s} {r['step_s']:7.3f} {ratio:>8s} {pays:>30s}")
        for mode in arms["lora"]:
            lo, ft = arms["lora"][mode], arms["full_ft"].get(mode, {})
            if "step_s" in lo and "step_s" in ft:
                ratio = lo["step_s"] / ft["step_s"]
                lines.append(f"  LoRA / full FT, {mode}: {ratio:.3f} (goal <= 0.7: {'met' if ratio <= 0.7 else 'NOT met'})")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        print(json.dumps(_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2")
    ap.add_argument("--steps", type=int, default=6, help="steps after the first (the median of those after the second)")
    ap.add_argument("--inductor-rng", action="store_true", help="also compile with inductor's own random numbers")
    ap.add_argument("--json", help="write the raw records here")
    args = ap.parse_args()
    modes = MODES if args.inductor_rng else MODES[:2]
    res = {"started": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps, "models": {}}
    for model_name in args.models.split(","):
        if model_name not in ("minilm", "smollm2"):
            ap.error(f"--models: {model_name!r} is not one of minilm, smollm2")
        arms = res["models"][model_name] = {"lora": {}, "full_ft": {}}
        for mode in modes:
            for method in ("lora", "full_ft"):
                t0 = time.time()
                arms[method][mode] = run(model_name, method, mode, args.steps)
                print(f"[{time.strftime('%H:%M:%S')}] {model_name} {method} {mode}: {arms[method][mode]} "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"bench_compile {res['started']}, torch {__import__('torch').__version__}, "
          f"{args.steps} steps after the first\n" + report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
