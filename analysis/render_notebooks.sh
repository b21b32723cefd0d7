#!/usr/bin/env bash
# Rendered copies of the analysis notebooks for readers who do not run them: each notebook executed
# top to bottom on the real Section 7 runs (make them first: bash analysis/make_section7_results.sh),
# written as results/notebooks/<name>.html (code, printed tables and figures). Refuses demo data.
# sweeps.ipynb reads sweep folders, not these runs: it is not rendered here.
set -euo pipefail
cd "$(dirname "$0")/.."
export LORA_SECTION7_RUNS=${RUNS:-outputs/section7}
export LORA_SECTION7_RESULTS=${RESULTS:-results/section7}
export LORA_NOTEBOOK_REQUIRE_REAL=1  # a missing run is an error, never a rendered demo
OUT=${OUT:-results/notebooks}
NOTEBOOKS=${NOTEBOOKS:-section7_walkthrough intrinsic_rank}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"
for name in $NOTEBOOKS; do
  python -m nbconvert --to html --execute --ExecutePreprocessor.timeout=1800 \
    --output-dir "$tmp" "analysis/$name.ipynb" 2> "$tmp/$name.log" || { cat "$tmp/$name.log" >&2; exit 1; }
  mv "$tmp/$name.html" "$OUT/$name.html"  # whole file or nothing
  echo "wrote $OUT/$name.html ($(du -k "$OUT/$name.html" | cut -f1) kB)"
done
