#!/usr/bin/env bash
# Section 7 on real runs: MiniLM + LoRA (q, v) on an SST-2 subset, r=8 and r=64, seeds 1 and 2,
# plus a full fine-tuning run. Makes the runs if they are missing, then the figures and tables in
# results/section7/. MiniLM has 6 layers: "the middle layer" (paper: 48 of 96) is layer 3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs/section7}
OUT=${OUT:-results/section7}
export GLUE_DIR=${GLUE_DIR:-$(cd ../shared/data/glue 2>/dev/null && pwd)}
if [ ! -f "$RUNS/lora/r64_s2/summary.json" ]; then
  python -m lora_research.train -m experiment=quickstart logger=none method.r=8,64 seed=1,2 \
    hydra.sweep.dir="$RUNS/lora" 'hydra.sweep.subdir=r${method.r}_s${seed}'
fi
if [ ! -f "$RUNS/full_ft/s1/summary.json" ]; then
  python -m lora_research.train experiment=quickstart logger=none method=full_ft trainer.lr=5e-5 seed=1 \
    hydra.run.dir="$RUNS/full_ft/s1"
fi
A=python\ -m\ lora_research.analysis
# Fig. 3 compares r=8 and r=64 from DIFFERENT seeds: with the same seed the first LoRA module's
# A_{r=8} is initialised from the very numbers of A_{r=64}'s first 8 rows (same generator, same
# Kaiming bound), which puts φ ≈ 1 there before any training.
$A figures "$RUNS/lora/r8_s2" "$RUNS/lora/r64_s1" --layer 0,3,5 --out "$OUT/fig3_r8s2_vs_r64s1"
$A figures "$RUNS/lora/r64_s1" "$RUNS/lora/r64_s2" --layer 0,3,5 --out "$OUT/fig4_r64_seed1_vs_seed2"
$A figures "$RUNS/lora/r8_s1" "$RUNS/lora/r8_s2" --layer 3 --out "$OUT/fig4_r8_seed1_vs_seed2"
$A amplification "$RUNS/lora/r8_s1" --layer 3 --out "$OUT/table7_r8"
$A amplification "$RUNS/lora/r64_s1" --layer 3 --out "$OUT/table7_r64"
$A spectra "$RUNS/lora/r8_s1" "$RUNS/lora/r64_s1" "$RUNS/full_ft/s1" --out "$OUT/spectra"
python -m lora_research.results "$RUNS" --out "$OUT/runs_table.md"
