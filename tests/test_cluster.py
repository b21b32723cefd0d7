"""From a laptop to a cluster (issue #10): preemption checkpoint-and-resume, DDP that equals one
process, W&B runs read back from disk, and the launcher presets (submitit, joblib, SLURM sbatch)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import REPO, compose
from lora_research import outputs
from lora_research.preemption import EXIT_PREEMPTED, Preempted
from lora_research.train import run

BASE = [
    "model=tiny_roberta",
    "task=rte",
    "logger=none",
    "task.max_train_samples=96",
    "task.max_eval_samples=48",
    "task.max_length=48",
    "trainer.device=cpu",
    "trainer.batch_size=16",
    "trainer.epochs=2",
    "trainer.lr=5e-3",
    "trainer.logging_steps=2",
    "trainer.threads=1",
]
NO_DROPOUT = ["+model.config_overrides.hidden_dropout_prob=0", "+model.config_overrides.attention_probs_dropout_prob=0"]


@pytest.fixture
def glue_env(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))


def _env(tmp_path, glue_dir, **extra) -> dict:
    env = {"GLUE_DIR": str(glue_dir), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "LORA_RESEARCH_CACHE": os.environ["LORA_RESEARCH_CACHE"], "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


def _assert_same_adapter(a_dir, b_dir, atol=0.0):
    a, _ = outputs.load_adapter_file(a_dir)
    b, _ = outputs.load_adapter_file(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def _strip(records):
    return [(r["epoch"], r["step"], r["accuracy"], round(r["loss"], 6)) for r in records]


# --- preemption (SIGTERM / SIGINT / submitit's USR2) -------------------------------------------------

class _SignalAtStep(TrainerCallback):
    """Sends ``signum`` to this process at the end of step ``step`` (mid-epoch), like SLURM would."""

    def __init__(self, signum, step):
        self.signum, self.step = signum, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _with_callback(monkeypatch, callback):
    from lora_research import training

    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: real_fit(*a, **k, extra_callbacks=[callback]))
    return lambda: monkeypatch.setattr(training, "fit", real_fit)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_the_same_command_resumes_identically(glue_env, tmp_path, monkeypatch, signum):
    straight = run(compose(BASE), tmp_path / "straight")  # 12 steps, dev evaluation after 6 and 12

    handler_before = signal.getsignal(signum)
    undo = _with_callback(monkeypatch, _SignalAtStep(signum, 4))
    stopped = tmp_path / "stopped"
    with pytest.raises(Preempted) as info:
        run(compose(BASE), stopped)
    undo()
    assert info.value.step == 4 and info.value.signum == signum
    status = json.loads((stopped / "error.json").read_text())
    assert status["status"] == "preempted" and status["resumable"] is True
    assert status["signal"] == signal.Signals(signum).name and status["step"] == 4
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == ["checkpoint-4"]
    assert not (stopped / "summary.json").exists()
    assert signal.getsignal(signum) is handler_before, "the signal handler is given back"

    resumed = run(compose(BASE), stopped)  # the same command again
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert not (stopped / "error.json").exists(), "a completed resume is no longer marked preempted"
    assert _strip(outputs.read_metrics(stopped)) == _strip(outputs.read_metrics(tmp_path / "straight"))
    assert resumed["metrics"]["accuracy"] == straight["metrics"]["accuracy"]
    assert resumed["best_epoch"] == straight["best_epoch"] and resumed["train_steps"] == 12
    _assert_same_adapter(stopped, tmp_path / "straight", atol=1e-6)


def test_cli_exits_with_the_resumable_code(glue_env, tmp_path, monkeypatch, capsys):
    from lora_research.train import main

    _with_callback(monkeypatch, _SignalAtStep(signal.SIGTERM, 2))
    monkeypatch.setattr(sys, "argv", [str(REPO / "lora_research" / "train.py"), *BASE, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert "interrupted: stopped by SIGTERM at step 2" in err and "run the same command again" in err


class _SignalAtFinalEvaluation(TrainerCallback):
    """Sends SIGTERM while the last dev evaluation runs (after the last step: no step end follows)."""

    def on_evaluate(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            os.kill(os.getpid(), signal.SIGTERM)


def test_signal_during_the_final_evaluation_finishes_the_run_then_stops(glue_env, tmp_path, monkeypatch, capsys):
    """A sweep killed while a job evaluates after its last step: that job completes (summary written), and
    the process stops with the resumable code instead of going on to the next job."""
    from lora_research.train import main

    _with_callback(monkeypatch, _SignalAtFinalEvaluation())
    monkeypatch.setattr(sys, "argv", [str(REPO / "lora_research" / "train.py"), *BASE, f"hydra.run.dir={tmp_path / 'run'}"])
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == EXIT_PREEMPTED
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train_steps"] == 12
    assert not (tmp_path / "run" / "error.json").exists()
    err = capsys.readouterr().err
    assert "interrupted:" in err and "SIGTERM received during the final evaluation; this run completed" in err
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_submitit_signal_checkpoints_then_hands_over_to_submitits_requeue(glue_env, tmp_path, monkeypatch):
    """On SLURM, submitit's USR2 handler requeues the job: it must run after our checkpoint."""
    from lora_research.train import main

    seen = []

    def submitit_handler(signum, frame):  # what submitit installs: requeue, then exit
        seen.append((signum, sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())))
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        _with_callback(monkeypatch, _SignalAtStep(signal.SIGUSR2, 3))
        monkeypatch.setattr(sys, "argv", [str(REPO / "lora_research" / "train.py"), *BASE, f"hydra.run.dir={tmp_path / 'run'}"])
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert info.value.code == -1, "submitit's handler ended the job (it requeues it on SLURM)"
    assert seen == [(signal.SIGUSR2, ["checkpoint-3"])]
    assert json.loads((tmp_path / "run" / "error.json").read_text())["status"] == "preempted"


# --- DDP ------------------------------------------------------------------------------------------

def test_torchrun_two_processes_equals_one_process_over_the_same_global_batches(glue_dir, glue_env, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU), per-process batch 8 == one process, batch 16: same
    adapter; rank 0 alone writes the run folder and prints; the dev set (47: odd) is scored once."""
    common = ["model=tiny_bert", "task=rte", "logger=none", "trainer.device=cpu", "trainer.threads=1",
              "task.max_train_samples=64", "task.max_eval_samples=47", "trainer.max_steps=4", "trainer.lr=5e-3",
              *NO_DROPOUT]
    single = run(compose(common + ["trainer.batch_size=16"]), tmp_path / "single")

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "lora_research.train",
           *common, "trainer.batch_size=8", f"hydra.run.dir={ddp}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, glue_dir, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best dev rte") == 1 and proc.stdout.count("run folder:") == 1, proc.stdout
    assert sorted(p.name for p in ddp.iterdir()) == [
        ".hydra", "adapter.safetensors", "config.yaml", "metrics.jsonl", "summary.json", "train.log"]
    assert len(outputs.read_metrics(ddp)) == 1, "one evaluation record, not one per rank"
    summary = outputs.load_summary(ddp)
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16
    assert single["world_size"] == 1 and single["global_batch_size"] == 16
    _assert_same_adapter(ddp, tmp_path / "single", atol=1e-6)
    acc = summary["metrics"]["accuracy"]
    assert acc == single["metrics"]["accuracy"]
    assert abs(acc * 47 - round(acc * 47)) < 1e-9, "accuracy over exactly 47 examples (no padding repeats)"


def test_torchrun_with_split_and_unpadded_batches_equals_one_plain_process(glue_dir, glue_env, tmp_path):
    """The quickstart's speed levers under DDP (pieces synchronise gradients once, after the last): two
    processes with trainer.train_batch_split=length and trainer.unpadded=true train the adapter that one
    process with neither trains over the same global batches (dropout off)."""
    common = ["model=tiny_bert", "task=rte", "logger=none", "trainer.device=cpu", "trainer.threads=1",
              "task.max_train_samples=64", "task.max_eval_samples=47", "trainer.max_steps=4", "trainer.lr=5e-3",
              "method.dropout=0.0", *NO_DROPOUT]
    single = run(compose(common + ["trainer.batch_size=16"]), tmp_path / "single")
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "lora_research.train",
           *common, "trainer.batch_size=8", "trainer.train_batch_split=length", "trainer.split_piece_tokens=0",
           "trainer.unpadded=true", f"hydra.run.dir={ddp}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, glue_dir, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_adapter(ddp, tmp_path / "single", atol=1e-5)
    assert outputs.load_summary(ddp)["metrics"]["accuracy"] == single["metrics"]["accuracy"]


# --- W&B ------------------------------------------------------------------------------------------

def test_wandb_offline_run_reads_back(glue_env, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lora_research.tracking import read_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no login → offline
    summary = run(compose(BASE + ["logger=wandb", "method.r=4", "trainer.epochs=1"]), tmp_path / "run", group="sweep-7")
    wandb.teardown()  # the W&B service closes the run's file (as at process exit)
    (run_path,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    back = read_offline_run(run_path)

    assert back["group"] == "sweep-7" and back["job_type"] == "lora"
    assert back["tags"] == ["rte", "tiny_roberta", "lora"]
    cfg = back["config"]
    assert cfg["method.r"] == 4 and cfg["model.name"] == "tiny_roberta" and cfg["trainer.lr"] == 5e-3
    assert cfg["task.max_train_samples"] == 96 and cfg["logger.name"] == "wandb"
    dev = [h for h in back["history"] if "eval/validation_accuracy" in h]
    assert [h["_step"] for h in dev] == [r["step"] for r in outputs.read_metrics(tmp_path / "run")] == [6]
    assert dev[0]["eval/validation_accuracy"] == summary["metrics"]["accuracy"]
    assert any("train/loss" in h for h in back["history"])
    s = back["summary"]
    assert s["best/accuracy"] == summary["metrics"]["accuracy"] and s["best_epoch"] == summary["best_epoch"]
    for key in ("trainable_params", "trainable_params_without_head", "total_params", "train_runtime_s",
                "peak_rss_mb", "world_size", "global_batch_size"):
        assert s[key] == summary[key], key


def test_results_table_logs_as_a_wandb_table(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lora_research.tracking import log_results_table, read_offline_run

    monkeypatch.setenv("HOME", str(tmp_path))
    rows = [{"method": "lora r=8", "rte": 71.2, "params": 0.3}, {"method": "bitfit", "rte": 69.0, "params": 0.1}]
    log_results_table(rows, project="p", group="paper/table2_base", mode="offline", dir=str(tmp_path))
    wandb.teardown()
    (run_path,) = (tmp_path / "wandb").glob("offline-run-*")
    back = read_offline_run(run_path)
    assert back["group"] == "paper/table2_base" and back["job_type"] == "results"
    (logged,) = [h["results"] for h in back["history"] if "results" in h]
    assert logged["_type"] == "table-file" and logged["nrows"] == 2 and logged["ncols"] == 3
    (table_file,) = run_path.glob(f"files/{logged['path']}")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["method", "params", "rte"]
    assert table["data"] == [["lora r=8", 0.3, 71.2], ["bitfit", 0.1, 69.0]]


# --- launcher presets -----------------------------------------------------------------------------

def test_slurm_preset_renders_the_sbatch_script_asked_for(glue_dir, tmp_path):
    """Through Hydra → submitit → a stub ``sbatch`` that keeps the script (no cluster here)."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "no cluster here" >&2\nexit 1\n')
    (stub / "sbatch").chmod(0o755)
    (stub / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    (stub / "srun").chmod(0o755)
    cmd = [sys.executable, "-m", "lora_research.train", "-m", "hydra/launcher=slurm", "model=tiny_bert", "task=rte",
           "logger=none", "method.r=1,2,4", "hydra.launcher.partition=gpu-long", "hydra.launcher.account=nlp-lab",
           "hydra.launcher.timeout_min=90", "hydra.launcher.mem_gb=24", "hydra.launcher.array_parallelism=2",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = _env(tmp_path, glue_dir)
    env["PATH"] = f"{stub}:{env['PATH']}"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no cluster here" in proc.stderr
    lines = (tmp_path / "submitted.sh").read_text().splitlines()
    sbatch = {line.split()[1] for line in lines if line.startswith("#SBATCH ")}
    for flag in ("--partition=gpu-long", "--account=nlp-lab", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=24GB", "--time=90", "--array=0-2%2", "--signal=USR2@120", "--requeue", "--ntasks-per-node=1",
                 "--nodes=1"):
        assert flag in sbatch, (flag, sorted(sbatch))
    assert any("srun" in line and "submitit.core._submit" in line for line in lines)


def test_readme_cluster_recipe_submits_the_table2_study(glue_dir, tmp_path):
    """experiments/README.md's one-line SLURM recipe, as written, reaches sbatch."""
    if not (REPO / "conf" / "experiment" / "paper" / "table2_base.yaml").exists():
        pytest.skip("experiment=paper/table2_base (issue #8) is not in this checkout yet")
    text = (REPO / "experiments" / "README.md").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("python -m lora_research.train -m hydra/launcher=slurm")]
    line = line.replace("<partition>", "gpu").replace("<account>", "lab").replace(
        "hydra.sweep.dir=outputs/table2_base", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\nexit 1\n')
    (stub / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in stub.iterdir():
        f.chmod(0o755)
    env = _env(tmp_path, glue_dir)
    env["PATH"] = f"{stub}:{env['PATH']}"
    argv = [sys.executable, *line.split()[1:]]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and (tmp_path / "submitted.sh").exists(), proc.stderr[-2000:]
    script = (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --account=lab" in script
    assert "#SBATCH --array=0-" in script


@pytest.mark.slow
def test_submitit_local_sweep_with_a_failing_job(glue_dir, tmp_path):
    cmd = [sys.executable, "-m", "lora_research.train", "-m", "hydra/launcher=submitit_local", "model=tiny_bert",
           "task=rte", "logger=none", "method.r=1,2,0", "trainer.max_steps=2", "trainer.threads=1",
           "task.max_train_samples=32", "task.max_eval_samples=16", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, glue_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, "a failed job makes the sweep exit non-zero"
    jobs = {p.name.split(",")[0]: p for p in (tmp_path / "sweep").iterdir() if p.name[0].isdigit()}
    assert sorted(jobs) == ["0_method.r=1", "1_method.r=2", "2_method.r=0"]
    for ok in ("0_method.r=1", "1_method.r=2"):
        assert outputs.load_summary(jobs[ok])["status"] == "completed"
    assert not (jobs["2_method.r=0"] / "summary.json").exists()
    err = json.loads((jobs["2_method.r=0"] / "error.json").read_text())
    assert err["status"] == "failed" and "impossible LoRA rank r=0" in err["error"]


@pytest.mark.slow
def test_local_parallel_two_jobs_equal_running_them_one_by_one(glue_dir, glue_env, tmp_path):
    common = ["model=tiny_bert", "task=rte", "logger=none", "trainer.device=cpu", "task.max_train_samples=48",
              "task.max_eval_samples=32", "trainer.max_steps=6", "trainer.lr=5e-3"]
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)
    cmd = [sys.executable, "-m", "lora_research.train", "-m", "hydra/launcher=local_parallel",
           "hydra.launcher.n_jobs=2", *common, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, glue_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.name[0].isdigit())
    assert [j.name[:2] for j in jobs] == ["0_", "1_"] and "seed=1" in jobs[0].name and "seed=2" in jobs[1].name
    for seed, parallel in zip((1, 2), jobs):
        from omegaconf import OmegaConf

        assert OmegaConf.load(parallel / "config.yaml").trainer.threads == threads, "cores split between 2 jobs"
        alone = run(compose(common + [f"seed={seed}", f"trainer.threads={threads}"]), tmp_path / f"alone{seed}")
        assert outputs.load_summary(parallel)["metrics"]["accuracy"] == alone["metrics"]["accuracy"]
        assert _strip(outputs.read_metrics(parallel)) == _strip(outputs.read_metrics(tmp_path / f"alone{seed}"))
        _assert_same_adapter(parallel, tmp_path / f"alone{seed}")
