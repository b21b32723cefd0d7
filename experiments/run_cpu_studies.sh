#!/usr/bin/env bash
# The CPU reproductions of paper Tables 2, 3, 5, 6 and 18 (issue #8): every study preset, then its table.
#
#   bash experiments/run_cpu_studies.sh [study ...]     # default: all, in the order below
#   e.g. bash experiments/run_cpu_studies.sh table5 table6
#
# Each study: the learning-rate search its rows need (skipping its completed jobs), the presets regenerated from the chosen lr
# (experiments/make_study_presets.py reads results/cpu/lr_search_*.csv), the sweep into outputs/cpu/<study>,
# then `python -m lora_research.results ... --layout <study> --out results/cpu/<study>.md` (+ .csv, .png).
# Every command and its wall time go to results/cpu/<study>.command. Jobs run two at a time
# (hydra/launcher=local_parallel: one torch thread each on a 2-core machine).
#
# Sizes, one job at a time at one torch thread (PAR="logger=none trainer.threads=1", how they ran here next to other
# work): table5 21 jobs, ~25 min; table6 45 jobs, ~55 min; table2 72 jobs (+18 search), ~1 CPU-min each on SST-2/STS-B
# and ~2 on MRPC/RTE; table3 14 jobs (+21 search, ~3.5 min each) and table18 14 jobs at ~10 CPU-min each (beam 10
# on 100 MRs of SmolLM2 on CPU is most of it).
# A killed sweep resumes: run the same line again (same hydra.sweep.dir): completed jobs are skipped, the
# interrupted one resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}"
export E2E_DIR="${E2E_DIR:-$(cd .. && pwd)/shared/data/e2e}"
OUT=outputs/cpu
RES=results/cpu
PAR="${PAR:-hydra/launcher=local_parallel hydra.launcher.n_jobs=2 logger=none}"  # e.g. PAR="hydra.launcher.n_jobs=1 trainer.threads=1 ..." to share the machine
mkdir -p "$OUT" "$RES"

run() {  # run <name> <command...>: the command, logged with its wall time into results/cpu/<name>.command
  local name=$1; shift
  local start; start=$(date +%s)
  echo "+ $*"
  "$@"
  local wall=$(( $(date +%s) - start ))
  printf '%s\n# wall time: %ss (%s), %s\n' "$*" "$wall" "$(date -u +%FT%TZ)" "$(nproc) cores" >> "$RES/$name.command"
}

search() {  # search <preset>: the recorded lr search; then regenerate the presets from its choice
  # Resumable like a study: completed jobs are skipped, so a later round added in make_study_presets.py
  # (GLUE_LR_ROUNDS / E2E_LR_ROUNDS) runs only its new cells. Once every cell has a run, nothing runs.
  local s=$1
  python experiments/make_study_presets.py
  run "$s" python -m lora_research.train -m experiment=cpu/$s $PAR hydra.sweep.dir=$OUT/$s
  run "$s" python -m lora_research.results $OUT/$s --layout lr_search --out $RES/$s.md
  python experiments/make_study_presets.py
}

study() {  # study <name> [layout]  (the .command file is appended to: a sweep resumed in a later session adds its wall time)
  local s=$1 layout=${2:-$1}
  run "$s" python -m lora_research.train -m experiment=cpu/$s $PAR hydra.sweep.dir=$OUT/$s
  run "$s" python -m lora_research.results $OUT/$s --layout "$layout" --out $RES/$s.md
}

studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(table5 table6 table2 table3 table18)
for s in "${studies[@]}"; do
  case $s in
    table5|table6) search lr_search_rank; study "$s" ;;
    table2)        search lr_search_glue; study table2 ;;
    table3)        search lr_search_e2e;  study table3 ;;
    table18)       search lr_search_e2e;  study table18 ;;
    *) echo "unknown study $s (table2 table3 table5 table6 table18)" >&2; exit 2 ;;
  esac
done
