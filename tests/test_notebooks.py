"""Every notebook in analysis/ runs top to bottom (nbclient, one kernel each) on small real runs.

The runs are made here once (real MiniLM, real SST-2, a few steps) in the layout
``analysis/make_section7_results.sh`` writes (``lora/r{8,64}_s{1,2}``, ``full_ft/s1``), and the
script's own analysis commands write the result files beside them; each notebook then runs with
``LORA_SECTION7_RUNS`` / ``LORA_SECTION7_RESULTS`` pointing there and ``LORA_NOTEBOOK_REQUIRE_REAL=1``
(falling back to demo data is an error), and must reproduce the script's numbers. A notebook with
its own test is listed in ``DEDICATED``; any other new notebook is executed here automatically.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from conftest import compose

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "analysis"
NOTEBOOKS = sorted(p.name for p in ANALYSIS.glob("*.ipynb"))
#: notebooks executed by their own test (they need other inputs than the Section 7 runs)
DEDICATED = {"sweeps.ipynb": "tests/test_results_store.py"}
#: lines each notebook must print on the runs made here (besides running without error)
EXPECT = {
    "section7_walkthrough.ipynb": ["REAL RUNS from", "Fig. 3: matches", "Fig. 4: matches",
                                   "Table 7 (table7_r8): matches", "Table 7 (table7_r64): matches",
                                   "Spectra: matches"],
    "intrinsic_rank.ipynb": ["REAL RUNS: A =", "What r would have sufficed?", "(lora/r64_s1): r90, r99 and"],
}
EXECUTED = [n for n in NOTEBOOKS if n not in DEDICATED]


def _code_cells(name):
    import nbformat

    return [c for c in nbformat.read(ANALYSIS / name, as_version=4).cells if c.cell_type == "code"]


def test_every_notebook_in_analysis_is_executed_by_a_test():
    assert "section7_walkthrough.ipynb" in EXECUTED and "intrinsic_rank.ipynb" in EXECUTED
    for name in NOTEBOOKS:
        if name in DEDICATED:
            test = REPO / DEDICATED[name]
            assert test.is_file(), f"{name} is listed as having its own test, but {test} does not exist"
            assert name in test.read_text(), f"{test} does not mention {name}"
    assert set(EXPECT) <= set(EXECUTED), f"EXPECT names notebooks that are not executed here: {set(EXPECT) - set(EXECUTED)}"


@pytest.mark.parametrize("name", EXECUTED)
def test_first_cell_says_which_path_is_missing(name, tmp_path, monkeypatch, capsys):
    """No runs: the inputs cell names the missing path loudly, or refuses under LORA_NOTEBOOK_REQUIRE_REAL."""
    missing = tmp_path / "no_runs_here"
    monkeypatch.chdir(REPO / "analysis")  # where Jupyter starts a notebook
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("LORA_SECTION7_RUNS", str(missing))
    for var in ("LORA_RANK_RUN_A", "LORA_RANK_RUN_B", "LORA_NOTEBOOK_REQUIRE_REAL"):
        monkeypatch.delenv(var, raising=False)
    first = _code_cells(name)[0].source
    scope: dict = {}
    exec(compile(first, name, "exec"), scope)
    err = capsys.readouterr().err
    assert scope["DEMO"] is True
    assert "DEMO DATA, NOT REAL RUNS" in err and f"{missing}/lora/" in err and "adapter.safetensors does not exist" in err
    monkeypatch.setenv("LORA_NOTEBOOK_REQUIRE_REAL", "1")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        exec(compile(first, name, "exec"), {})


@pytest.fixture(scope="module")
def section7(tmp_path_factory, glue_dir):
    """Section 7 runs in make_section7_results.sh's layout (MiniLM, 3 steps each), and its result files."""
    from lora_research.analysis.__main__ import main as analysis_main
    from lora_research.train import run

    mp = pytest.MonkeyPatch()
    mp.setenv("GLUE_DIR", str(glue_dir))
    root = tmp_path_factory.mktemp("section7")
    runs, results = root / "runs", root / "results"
    small = ["experiment=quickstart", "logger=none", "trainer.device=cpu", "trainer.threads=1",
             "task.max_train_samples=48", "task.max_eval_samples=32", "task.max_length=32",
             "trainer.max_steps=3", "trainer.batch_size=16", "trainer.eval_batch_size=32"]
    try:
        for r in (8, 64):
            for seed in (1, 2):
                run(compose(small + [f"method.r={r}", f"seed={seed}"]), runs / "lora" / f"r{r}_s{seed}")
        run(compose(small + ["method=full_ft", "trainer.lr=5e-5", "seed=1"]), runs / "full_ft" / "s1")
        # the script's analysis commands ($A ...), in-process, with its RUNS and OUT
        script = (ANALYSIS / "make_section7_results.sh").read_text()
        commands = [line[len("$A "):] for line in script.splitlines() if line.startswith("$A ")]
        assert len(commands) >= 5, "make_section7_results.sh: analysis commands ($A ...) not found"
        for cmd in commands:
            argv = shlex.split(cmd.replace("$RUNS", str(runs)).replace("$OUT", str(results)))
            assert analysis_main(argv) == 0, cmd
        yield runs, results
    finally:
        mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("name", EXECUTED)
def test_notebook_runs_on_real_runs(name, section7, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    runs, results = section7
    monkeypatch.setenv("LORA_SECTION7_RUNS", str(runs))
    monkeypatch.setenv("LORA_SECTION7_RESULTS", str(results))
    monkeypatch.setenv("LORA_NOTEBOOK_REQUIRE_REAL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("LORA_RANK_RUN_A", "LORA_RANK_RUN_B"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(ANALYSIS / name, as_version=4)
    # a cell error raises CellExecutionError (with the traceback) and fails the test
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ANALYSIS)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "DEMO" not in text and "DIFFER" not in text, text
    for line in EXPECT.get(name, []):
        assert line in text, f"{name} did not print {line!r}:\n{text}"
    assert images >= 2, f"{name}: {images} figures shown"
