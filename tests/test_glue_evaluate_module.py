"""The GLUE metrics shipped as an ``evaluate`` metric module: loads offline with ``evaluate.load(<local path>)``
and returns exactly :func:`lora_research.metrics.glue.compute_glue_metrics` (itself tested against
hand-computed values in tests/test_glue_metrics.py)."""
import json
import os
import subprocess
import sys

import numpy as np

from lora_research.metrics.glue import GLUE_EVALUATE_PATH, GLUE_METRIC_NAMES, compute_glue_metrics

SCRIPT = r"""
import json, sys
import numpy as np
import evaluate
from lora_research.metrics.glue import GLUE_EVALUATE_PATH, GLUE_METRIC_NAMES
out = {}
rng = np.random.default_rng(0)
for task in GLUE_METRIC_NAMES:
    if task == "stsb":
        refs = rng.uniform(0, 5, 50).astype(np.float32); preds = (refs + rng.normal(0, 1, 50)).astype(np.float32)
    else:
        k = 3 if task == "mnli" else 2
        refs = rng.integers(0, k, 50); preds = np.where(rng.random(50) < 0.7, refs, rng.integers(0, k, 50))
    m = evaluate.load(GLUE_EVALUATE_PATH, task)
    out[task] = {"preds": preds.tolist(), "refs": refs.tolist(), "metrics": m.compute(predictions=preds, references=refs)}
try:
    evaluate.load(GLUE_EVALUATE_PATH, "wnli")
except Exception as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_evaluate_module_loads_offline_and_equals_compute_glue_metrics(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "unknown GLUE task 'wnli'" in got.pop("error")
    assert set(got) == set(GLUE_METRIC_NAMES)
    for task, r in got.items():
        dtype = np.float32 if task == "stsb" else np.int64
        want = compute_glue_metrics(task, np.asarray(r["preds"], dtype), np.asarray(r["refs"], dtype))
        assert list(r["metrics"]) == list(GLUE_METRIC_NAMES[task])
        np.testing.assert_allclose([r["metrics"][k] for k in want], list(want.values()), rtol=1e-6)
