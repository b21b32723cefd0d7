#!/usr/bin/env bash
# The main job: set up, then a short real LoRA experiment (MiniLM + LoRA r=8 on W_q,W_v, SST-2).
# GLUE data: $GLUE_DIR if set, else ../shared/data/glue next to the checkout, else the HF hub.
# Extra arguments are Hydra overrides, e.g.  bash scripts/quickstart.sh trainer.device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${LORA_VENV:-.venv}/bin/activate"
if [ -z "${GLUE_DIR:-}" ] && [ -d ../shared/data/glue ]; then
  export GLUE_DIR="$(cd ../shared/data/glue && pwd)"
fi
echo "[quickstart] GLUE data: ${GLUE_DIR:-HF hub (nyu-mll/glue)}"
exec python -m lora_research.train experiment=quickstart "$@"
