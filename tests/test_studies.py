"""Study presets (issue #8): every paper/* and cpu/* study composes and validates for each job of
its grid, carries its sweep, keeps command-line overrides, and is what its generator writes."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO

STUDY_DIRS = ("paper", "cpu")
STUDIES = sorted(f"{kind}/{p.stem}" for kind in STUDY_DIRS for p in (CONF / "experiment" / kind).glob("*.yaml"))
PAPER_TABLES = ["table2_base", "table2_large", "table3", "table5", "table6", "table18"]


_INIT: dict = {}


def _compose(overrides, hydra_cfg=False):
    """Compose as ``python -m lora_research.train`` would (Hydra initialised once, not per call)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    if not gh.is_initialized() or _INIT.get("hydra") is not gh.hydra:
        gh.clear()
        initialize_config_dir(config_dir=str(CONF), version_base="1.3")
        _INIT["hydra"] = gh.hydra
    return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def grid(study: str, extra=()) -> list[list[str]]:
    """The job override lists Hydra's basic sweeper makes of ``-m experiment=<study> <extra>``."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = _compose([f"experiment={study}", *[e for e in extra if "," not in e]], hydra_cfg=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    args = [f"{k}={v}" for k, v in params.items()] + [f"experiment={study}", *extra]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return batch


def test_every_paper_table_has_a_paper_and_a_cpu_study():
    for t in PAPER_TABLES:
        assert f"paper/{t}" in STUDIES
    for t in ("table2", "table2_base", "table2_large", "table3", "table5", "table6", "table18"):
        assert f"cpu/{t}" in STUDIES
    assert (CONF / "experiment" / "paper" / "table2_base.yaml").exists()  # tests/test_cluster.py's recipe


def test_presets_are_what_the_generator_writes():
    proc = subprocess.run([sys.executable, "experiments/make_study_presets.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("study", STUDIES)
def test_every_job_of_the_grid_composes_and_validates(study):
    """Each cell x non-seed axis combination is composed as its job would be and validated.

    Seeds change nothing but ``seed`` (checked on the first cell), so the rest use the first seed."""
    from lora_research.config import validate

    jobs = grid(study)
    assert jobs, study
    seen = {}
    seed_values = set()
    for job in jobs:
        seed = [o for o in job if o.startswith("seed=")]
        assert seed, f"{study}: the grid has no seed axis"
        seed_values.add(seed[0])
        key = tuple(o for o in job if not o.startswith("seed="))
        if key in seen:
            continue
        cfg = _compose(job)
        run = validate(cfg)  # raises on any bad key or value
        assert run.seed == int(seed[0].split("=")[1])
        name = cfg.experiment_name
        assert name not in seen.values(), f"{study}: two jobs named {name!r}: their folders would differ only by number"
        seen[key] = name
    kind, name = study.split("/")
    if kind == "paper":  # the paper's protocol: 5 seeds for GLUE (D.1), 3 for E2E (D.3)
        assert len(seed_values) == (3 if name in ("table3", "table18") else 5), study
    elif not name.startswith("lr_search"):
        assert len(seed_values) >= 2, study


def test_table5_grid_is_the_paper_fixed_budget():
    for study in ("paper/table5", "cpu/table5"):
        jobs = [j for j in grid(study) if "seed=0" in j]
        assert len(jobs) == 7
        got = {}
        for job in jobs:
            m = _compose(job).method
            got["".join(m.targets)] = m.r
            assert m.r * len(m.targets) == 8, "r=8 for one matrix, 4 for two, 2 for four"
        assert got == {"q": 8, "k": 8, "v": 8, "o": 8, "qk": 4, "qv": 4, "qkvo": 2}


def test_table6_and_table18_grids():
    t6 = {(tuple(_compose(j).method.targets), _compose(j).method.r) for j in grid("paper/table6") if "seed=0" in j}
    assert t6 == {(t, r) for t in (("q",), ("q", "v"), ("q", "k", "v", "o")) for r in (1, 2, 4, 8, 64)}
    rs = sorted(_compose(j).method.r for j in grid("paper/table18") if "seed=0" in j)
    assert rs == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def test_paper_settings_in_the_cells():
    """Spot checks against ../shared/PAPER.md (Table 9, Table 11)."""
    c = _compose(["experiment=paper/table2_base", "experiment/paper/table2_base=lora_rte"])
    assert (c.model.name, c.task.name, c.method.alpha, c.trainer.lr, c.trainer.batch_size, c.trainer.epochs) == \
        ("roberta_base", "rte", 8, 5e-4, 32, 80)
    c = _compose(["experiment=paper/table2_large", "experiment/paper/table2_large=adapter_p_3m_sst2"])
    assert (c.method.name, c.method.r, c.trainer.lr, c.trainer.batch_size, c.task.max_length, c.trainer.epochs) == \
        ("adapter_p", 64, 3e-5, 32, 128, 20)
    c = _compose(["experiment=paper/table2_large", "experiment/paper/table2_large=lora_restricted_stsb"])
    assert (c.trainer.batch_size, c.task.max_length, c.trainer.epochs, c.init_from) == (4, 128, 10, None)
    c = _compose(["experiment=paper/table3", "experiment/paper/table3=lora"])
    assert (c.model.name, c.method.r, c.method.alpha, c.trainer.lr, c.task.decode.num_beams, c.task.decode.length_penalty) == \
        ("gpt2_medium", 4, 32, 2e-4, 10, 0.9)


def test_command_line_overrides_apply_to_every_job_and_replace_an_axis():
    jobs = grid("cpu/table5", ["trainer.max_steps=1", "model=tiny_bert", "seed=7"])
    assert len(jobs) == 7
    for job in jobs:
        cfg = _compose(job)
        assert cfg.trainer.max_steps == 1 and cfg.model.name == "tiny_bert" and cfg.seed == 7
    jobs = grid("cpu/table5", ["experiment/cpu/table5=q,qv", "trainer.lr=1e-3,2e-3"])
    assert len(jobs) == 2 * 2 * 3
    assert {_compose(j).trainer.lr for j in jobs} == {1e-3, 2e-3}


def test_cpu_rows_record_their_learning_rate_source():
    for study in ("table2", "table3"):
        for cell in (CONF / "experiment" / "cpu" / study).glob("*.yaml"):
            text = cell.read_text()
            assert "chosen by the recorded search" in text or "PROVISIONAL" in text, cell
    t5 = (CONF / "experiment" / "cpu" / "table5.yaml").read_text()
    assert "lr_search_rank" in t5


def test_cfg_job_of_a_study_job_through_the_cli(tmp_path):
    """``--cfg job`` of one job of a study, as a user would check it."""
    proc = subprocess.run([sys.executable, "-m", "lora_research.train", "experiment=cpu/table5",
                           "experiment/cpu/table5=qkvo", "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert list(cfg.method.targets) == ["q", "k", "v", "o"] and cfg.method.r == 2 and cfg.model.name == "minilm"


def test_grid_sizes():
    sizes = {s: len(grid(s)) for s in ("cpu/table5", "cpu/table6", "paper/table2_base", "paper/table2_large")}
    assert sizes == {"cpu/table5": 21, "cpu/table6": 45, "paper/table2_base": 5 * 8 * 5, "paper/table2_large": 7 * 8 * 5}
    assert list(itertools.islice(grid("cpu/table5"), 1))[0][0].startswith("experiment/cpu/table5=")


@pytest.mark.slow
def test_cpu_table5_runs_every_job_at_the_same_budget_and_renders(glue_dir, tmp_path):
    """Issue #8's check, one seed: the 7 jobs complete with one trainable_params_without_head, and
    ``python -m lora_research.results <dir> --layout table5`` prints the table with a paper column."""
    import json
    import os

    sweep = tmp_path / "sweep"
    env = dict(os.environ, GLUE_DIR=str(glue_dir), PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "lora_research.train", "-m", "experiment=cpu/table5", "trainer.max_steps=1",
           "task.max_eval_samples=16", "task.max_train_samples=64", "logger=none", "seed=0", "trainer.threads=1",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 7
    assert {s["trainable_params_without_head"] for s in summaries} == {36864}
    out = subprocess.run([sys.executable, "-m", "lora_research.results", str(sweep), "--layout", "table5"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "paper" in out.stdout and "W_q,W_v" in out.stdout and "91.3" in out.stdout  # the paper's MNLI row
