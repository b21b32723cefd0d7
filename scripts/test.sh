#!/usr/bin/env bash
# Set up, then run the test suite (unit, oracle and a bounded set of real-model tests).
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"   (the fast loop)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${LORA_VENV:-.venv}/bin/activate"
export LORA_RESEARCH_DATA="${LORA_RESEARCH_DATA:-$(cd .. && pwd)/shared/data}"
exec python -m pytest "$@"
