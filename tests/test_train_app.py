"""The Hydra app end to end on a tiny random RoBERTa and real RTE data: run folder, resume,
determinism, failures that lose nothing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from conftest import REPO, compose
from lora_research import outputs
from lora_research.config import validate
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
    "trainer.epochs=3",
    "trainer.lr=5e-3",
    "trainer.logging_steps=2",
    "trainer.threads=1",
]


@pytest.fixture
def glue_env(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))


def test_run_folder_contents(glue_env, tmp_path):
    summary = run(compose(BASE + ["method.r=4", "seed=3"]), tmp_path)
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "adapter.safetensors"):
        assert (tmp_path / f).is_file(), f
    assert not (tmp_path / "checkpoints").exists(), "checkpoints are removed after a successful run"
    records = outputs.read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1.0, 2.0, 3.0]
    best = max(records, key=lambda r: r["accuracy"])
    assert summary["metrics"]["accuracy"] == best["accuracy"]
    assert summary["best_epoch"] == best["epoch"]
    # tiny RoBERTa: d=32, 2 layers, q,v, r=4 → 2·4·32·4 = 1024; head dense 32·32+32 + out 32·2+2
    assert summary["trainable_params_without_head"] == 2 * 4 * 32 * 4
    assert summary["head_params"] == 32 * 32 + 32 + 32 * 2 + 2
    assert summary["trainable_params"] == 1024 + summary["head_params"]
    assert summary["total_params"] > 1_000_000
    for key in ("task", "model", "method", "seed", "train_runtime_s", "peak_rss_mb"):
        assert key in summary
    assert (summary["task"], summary["model"], summary["method"], summary["seed"]) == ("rte", "tiny_roberta", "lora", 3)
    assert summary["num_train_examples"] == 96 and summary["num_eval_examples"] == {"validation": 48}

    tensors, meta = outputs.load_adapter_file(tmp_path)
    assert meta["format"] == outputs.ADAPTER_FORMAT and meta["method"] == "lora"
    assert meta["r"] == 4 and meta["alpha"] == 16.0 and meta["scaling"] == 4.0
    assert meta["best_epoch"] == best["epoch"]
    index = meta["index"]
    assert sorted((e["layer"], e["matrix"]) for e in index) == [(0, "q"), (0, "v"), (1, "q"), (1, "v")]
    for e in index:
        assert tensors[e["A"]].shape == (4, 32) and tensors[e["B"]].shape == (32, 4)
        assert tensors[e["B"]].abs().sum() > 0, "B trained away from its zero init"
    assert "classifier.out_proj.weight" in tensors

    cfg_back = (tmp_path / "config.yaml").read_text()
    assert "tiny_roberta" in cfg_back and "${" not in cfg_back, "config.yaml is resolved"


def test_same_seed_same_metrics(glue_env, tmp_path):
    a = run(compose(BASE + ["trainer.epochs=2"]), tmp_path / "a")
    b = run(compose(BASE + ["trainer.epochs=2"]), tmp_path / "b")
    assert outputs.read_metrics(tmp_path / "a") == [
        {**r, "runtime": x["runtime"], "samples_per_second": x["samples_per_second"], "steps_per_second": x["steps_per_second"]}
        for r, x in zip(outputs.read_metrics(tmp_path / "b"), outputs.read_metrics(tmp_path / "a"))
    ]
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    assert a["train_loss"] == b["train_loss"]
    assert b["feature_cache_hit"], "the second run on the same task/model re-used the tokenised features"


def test_a_completed_run_whose_config_predates_a_key_is_still_this_run(glue_env, tmp_path):
    """config.yaml written by an earlier version (no trainer.eval_order, epochs as a float): the same
    command finds the run completed instead of refusing the folder as another config's."""
    import yaml

    run(compose(BASE + ["trainer.epochs=1"]), tmp_path)
    path = tmp_path / outputs.CONFIG_FILE
    cfg = yaml.safe_load(path.read_text())
    del cfg["trainer"]["eval_order"]
    cfg["trainer"]["epochs"] = 1.0
    path.write_text(yaml.safe_dump(cfg))
    again = run(compose(BASE + ["trainer.epochs=1"]), tmp_path)
    assert again.get("already_completed") is True
    with pytest.raises(outputs.RunFolderConflict, match=r"different config \(trainer.lr: 0.005 -> 0.001\)"):
        run(compose(BASE + ["trainer.epochs=1", "trainer.lr=1e-3"]), tmp_path)


class _KillAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("simulated kill after the first checkpoint")


@pytest.mark.parametrize("fast_dropout", [False, True])
def test_killed_run_resumes_to_same_final_metrics(glue_env, tmp_path, monkeypatch, fast_dropout):
    # trainer.fast_dropout=true: its masks are seeded from torch's generator, whose state the checkpoint holds
    over = ["trainer.epochs=3", f"trainer.fast_dropout={str(fast_dropout).lower()}"]
    straight = run(compose(BASE + over), tmp_path / "straight")

    from lora_research import training

    real_fit = training.fit
    monkeypatch.setattr(
        training, "fit", lambda *a, **k: real_fit(*a, **k, extra_callbacks=[_KillAfterFirstSave()])
    )
    killed_dir = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(compose(BASE + over), killed_dir)
    assert (killed_dir / "error.json").is_file()
    assert not (killed_dir / "summary.json").exists()
    assert len(outputs.read_metrics(killed_dir)) == 1, "the epoch-1 evaluation survived the kill"
    assert list((killed_dir / "checkpoints").glob("checkpoint-*"))
    monkeypatch.setattr(training, "fit", real_fit)

    resumed = run(compose(BASE + over), killed_dir)
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("checkpoint-6")
    strip = lambda rs: [(r["epoch"], r["step"], r["accuracy"], round(r["loss"], 6)) for r in rs]  # noqa: E731
    assert strip(outputs.read_metrics(killed_dir)) == strip(outputs.read_metrics(tmp_path / "straight"))
    assert resumed["metrics"]["accuracy"] == straight["metrics"]["accuracy"]
    t_straight, _ = outputs.load_adapter_file(tmp_path / "straight")
    t_resumed, _ = outputs.load_adapter_file(killed_dir)
    for k in t_straight:
        torch.testing.assert_close(t_resumed[k], t_straight[k], atol=1e-6, rtol=0)


def test_checkpoints_hold_the_trainable_tensors_under_trainers_name(glue_env, tmp_path, monkeypatch):
    """A checkpoint is Trainer's layout with a trainable-only model.safetensors (Trainer's own resume loads it);
    a checkpoint of another rank is refused by name; one of the earlier layout is renamed and resumed."""
    from lora_research import training

    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: real_fit(*a, **k, extra_callbacks=[_KillAfterFirstSave()]))
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(compose(BASE + ["trainer.epochs=2", "method.r=4"]), killed)
    monkeypatch.setattr(training, "fit", real_fit)
    ckpt = killed / "checkpoints" / "checkpoint-6"
    header = outputs.safetensors_header(ckpt / "model.safetensors")
    names = sorted(n for n in header if n != "__metadata__")
    assert names and all(".lora_" in n or n.startswith("classifier.") for n in names), names
    assert sum(".lora_" in n for n in names) == 8  # 2 layers x (q, v) x (A, B)
    assert {tuple(header[n]["shape"]) for n in names if ".lora_A" in n} == {(4, 32)}  # r=4, d=32

    with pytest.raises(ValueError, match=r"checkpoint-6 does not match this run's trainable tensors.*other shape"):
        run(compose(BASE + ["trainer.epochs=2", "method.r=2", f"trainer.resume={ckpt}"]), tmp_path / "r2")

    (ckpt / "model.safetensors").rename(ckpt / outputs.LEGACY_CHECKPOINT_WEIGHTS)
    digest = (ckpt / "model.safetensors.sha256").read_text().replace("model.safetensors", "trainable.safetensors")
    (ckpt / "trainable.safetensors.sha256").write_text(digest)
    (ckpt / "model.safetensors.sha256").unlink()
    resumed = run(compose(BASE + ["trainer.epochs=2", "method.r=4"]), killed)
    assert resumed["resumed_from"].endswith("checkpoint-6") and resumed["train_steps"] == 12


class _InfGradients(TrainerCallback):
    """Gradients that overflow while the loss stays finite (what a loss check alone would miss)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        p = next(p for n, p in model.named_parameters() if ".lora_B" in n)
        p.register_hook(lambda g: torch.full_like(g, float("inf")))


def test_infinite_gradient_norm_stops_the_run_as_diverged(glue_env, tmp_path, monkeypatch):
    from lora_research import training

    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: real_fit(*a, **k, extra_callbacks=[_InfGradients()]))
    with pytest.raises(training.Diverged, match=r"diverged at step 1: grad_norm=(nan|inf)"):
        run(compose(BASE + ["trainer.epochs=1"]), tmp_path)
    rec = json.loads((tmp_path / outputs.ERROR_FILE).read_text())
    assert rec["status"] == "diverged" and not (tmp_path / outputs.SUMMARY_FILE).exists()


def test_init_from_loads_lora_but_not_head(glue_env, tmp_path):
    first = tmp_path / "first"
    run(compose(BASE + ["trainer.epochs=1"]), first)
    from lora_research.methods import build_method
    from lora_research.models import load_model
    from lora_research.targets import get_family
    from lora_research.training import load_init

    cfg = validate(compose(BASE + ["task=stsb"]))
    model = load_model(cfg.model, num_labels=1)
    build_method(cfg.method).apply(model, get_family("roberta"))
    loaded = load_init(model, str(first), get_family("roberta"))
    assert len(loaded) == 8 and all(".lora_" in n for n in loaded)
    saved, _ = outputs.load_adapter_file(first)
    params = dict(model.named_parameters())
    for n in loaded:
        assert torch.equal(params[n], saved[n])


def test_missing_data_dir_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "nope"))
    with pytest.raises((FileNotFoundError, ValueError), match="nope"):
        run(compose(BASE), tmp_path / "run")
    err = json.loads((tmp_path / "run" / "error.json").read_text())
    assert err["status"] == "failed" and "nope" in err["error"]


@pytest.mark.slow
def test_sweep_with_a_failing_job_keeps_the_others(glue_dir, tmp_path):
    """Hydra multirun: the r=64 job is impossible (d=32) and fails; r=2 still completes."""
    env = {"GLUE_DIR": str(glue_dir), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "LORA_RESEARCH_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lora_research.train", "-m", *BASE, "trainer.epochs=1",
           "method.r=2,64", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, "a failed job makes the sweep exit non-zero"
    jobs = sorted((tmp_path / "sweep").iterdir())
    ok = [j for j in jobs if (j / "summary.json").exists()]
    failed = [j for j in jobs if (j / "error.json").exists()]
    assert len(ok) == 1 and "method.r=2" in ok[0].name
    assert len(failed) == 1 and "method.r=64" in failed[0].name
    assert "impossible LoRA rank r=64" in json.loads((failed[0] / "error.json").read_text())["error"]


def test_wandb_offline_run_logs_config_and_summary(glue_env, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login → auto = offline
    summary = run(compose(BASE + ["trainer.epochs=1", "logger=wandb"]), tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "one offline W&B run in the run folder"
    assert summary["status"] == "completed"


def test_cli_bad_value_is_one_clear_line_and_exit_2(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lora_research.train", "model=tiny_roberta", "logger=none", "method.targets=[q,wv]",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: unknown target matrix 'wv' for model family 'roberta'; "
        "valid choices: ['q', 'k', 'v', 'o', 'mlp_in', 'mlp_out']"
    ]
    assert "Traceback" not in proc.stderr


def test_cli_failed_run_is_one_line_on_the_console_and_the_reason_in_its_log(tmp_path):
    """A run that fails after its folder exists: one ``error:`` line on the console; ``error.json`` and the
    run's log (``train.log``, through ``console.file_logger``) say ``failed`` and why."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    empty = tmp_path / "glue"
    empty.mkdir()
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "lora_research.train", "model=tiny_roberta", "logger=none", f"task.data_dir={empty}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no folder for GLUE task 'sst2' in '{empty}'" in errors[0]
    assert "failed:" not in proc.stdout + proc.stderr  # the status line is the log's, not the console's
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert f"[lora_research.run_status][ERROR] - failed: no folder for GLUE task 'sst2' in '{empty}'" in log
    assert json.loads((run_dir / "error.json").read_text())["status"] == "failed"
