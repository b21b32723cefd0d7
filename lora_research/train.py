"""The entry point: ``python -m lora_research.train [overrides]`` (Hydra; ``-m`` for sweeps).

compose (conf/) → run folder check (outputs.py) → validate + check against the model's config
(config.py, before any weights load) → build + fit (training.py) → run folder.

**A run folder belongs to one run** (:func:`lora_research.outputs.inspect_run_dir`). The same
command into a folder that holds its completed run is a no-op that says so; into an unfinished,
failed, diverged or preempted one it resumes (``trainer.resume=auto``: the last valid checkpoint);
a different config into a folder holding results is refused, unless ``overwrite=true`` (the old
files move to ``<folder>/replaced-<time>/`` first).

Every failure is one line on stderr (``error: ...``) naming the file / key / value and what is
valid; the traceback goes to ``error.json`` (status, one-line reason, overrides; see
:mod:`lora_research.outputs`). Exit status: 0 completed (or already completed), 1 internal error,
2 bad input (config, data, files, folder), 3 diverged, 75 preempted (resumable).

Sweeps (``-m``): a failing job writes its ``error.json`` and the others run on; the sweep ends
with one line counting completed / failed / diverged / preempted jobs and exits 1 if any did not
complete. Re-running it with ``hydra.sweep.dir=<that folder>`` skips the completed jobs and
re-runs (resumes) the others; ``overwrite=true`` re-runs all of them.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

from lora_research.startup import imports_unscanned

with imports_unscanned():  # ~1 s of start-up is the garbage collector scanning what imports create
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.experimental.callback import Callback
    from omegaconf import DictConfig, OmegaConf

    from lora_research import distributed, outputs, tracking
    from lora_research.config import canonical, check_against_model, validate

log = logging.getLogger("lora_research")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
TRACEBACK_ENV = "LORA_RESEARCH_TRACEBACK"  # =1: also print tracebacks on the terminal


def _hydra() -> Optional[DictConfig]:
    return HydraConfig.get() if HydraConfig.initialized() else None


def _overrides() -> Optional[list]:
    hc = _hydra()
    return list(hc.overrides.task) if hc is not None else None


def _command() -> str:
    overrides = _overrides()
    return "python -m lora_research.train " + " ".join(sys.argv[1:] if overrides is None else overrides)


def _log_to_file(message: str) -> None:
    """Write ``message`` to the run log (Hydra's train.log) only, not to the console."""
    from lora_research.console import file_logger

    file_logger("lora_research.run_status").error(message)


def _way_out(run_dir: Path) -> str:
    hc = _hydra()
    if hc is not None and hc.mode.name == "MULTIRUN":
        return f"a new sweep folder (hydra.sweep.dir=...) or add overwrite=true to move its files to {run_dir}/replaced-<time>/ first"
    return f"a new folder (hydra.run.dir=...) or add overwrite=true to move its files to {run_dir}/replaced-<time>/ first"


def claim_run_dir(run_dir: Path, resolved: dict, fp: str, overwrite: bool) -> tuple[str, outputs.RunFolder]:
    """Decide what this run does with ``run_dir``: ``new``, ``resume`` or ``completed`` (a no-op).

    Raises :class:`~lora_research.outputs.RunFolderConflict` (one line) when the folder holds
    another config's results, or files that cannot be read. Moves old files aside on ``overwrite``.
    """
    state = outputs.inspect_run_dir(run_dir)
    if state.status == "new":
        return "new", state
    if overwrite:
        dest = outputs.move_aside(run_dir) if distributed.is_main() else None
        if dest is not None:
            log.warning("overwrite=true: the earlier run's files are now in %s", dest)
        return "new", state
    if state.config_error:
        raise outputs.RunFolderConflict(
            f"run folder {run_dir} holds a run whose {state.config_error}; cannot tell whether it is this run: "
            f"use {_way_out(run_dir)}")
    if state.config is None:
        raise outputs.RunFolderConflict(
            f"run folder {run_dir} holds run files ({', '.join(state.files[:4])}) but no {outputs.CONFIG_FILE}: "
            f"cannot tell which run made them; use {_way_out(run_dir)}")
    if outputs.fingerprint(canonical(state.config)) != fp:
        if not state.has_results:  # an attempt that failed before producing anything: take the folder over
            dest = outputs.move_aside(run_dir) if distributed.is_main() else None
            log.warning("run folder %s held a %s attempt of another config with no results; moved to %s",
                        run_dir, state.status, dest)
            return "new", state
        diff = "; ".join(outputs.config_diff(canonical(state.config), canonical(resolved)))
        raise outputs.RunFolderConflict(
            f"run folder {run_dir} already holds a {state.status} run of a different config ({diff}); "
            f"use {_way_out(run_dir)}")
    if state.status == "completed":
        if state.summary_error:
            raise outputs.RunFolderConflict(
                f"run folder {run_dir} holds this run, completed, but {state.summary_error}; "
                "add overwrite=true to train it again (the old files move aside)")
        return "completed", state
    return "resume", state


def _write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/`` as Hydra writes it, once the folder is known to be this run's (conf sets output_subdir=null)."""
    hc = _hydra()
    if hc is None or hc.get("output_subdir") is not None:
        return
    try:
        d = run_dir / ".hydra"
        outputs.atomic_write_text(d / "config.yaml", OmegaConf.to_yaml(cfg))
        outputs.atomic_write_text(d / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})))
        outputs.atomic_write_text(d / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))))
    except Exception as e:  # noqa: BLE001 - Hydra's bookkeeping must not stop a run
        log.warning("could not write %s/.hydra: %s", run_dir, outputs.one_line(e))


def run(cfg: DictConfig, run_dir: Path, group: str | None = None, overrides: Optional[list] = None) -> dict:
    """Check the folder, validate, train and write one run folder; returns ``summary.json``'s content.

    A folder that already holds this run, completed, is left as it is: the returned summary is the
    one on disk, with ``"already_completed": True`` added (not written).
    """
    with imports_unscanned():  # transformers' Trainer, datasets, accelerate: most of start-up
        from lora_research.preemption import EXIT_PREEMPTED, Preempted
        from lora_research.training import Diverged

    main = distributed.is_main()  # DDP: rank 0 alone writes the run folder and logs to W&B
    run_dir = Path(run_dir)
    overrides = overrides if overrides is not None else _overrides()
    command = _command()
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation that cannot be resolved (e.g. a missing env var)
        raise ValueError(f"the config cannot be resolved: {outputs.one_line(e)}") from None
    fp = outputs.fingerprint(canonical(resolved))
    overwrite = cfg.get("overwrite", False) is True
    conflict = None
    with distributed.main_process_first():  # rank 0 moves old files aside first; the others then see its result
        try:
            decision, state = claim_run_dir(run_dir, resolved, fp, overwrite)
        except outputs.RunFolderConflict as e:
            conflict = e
    if conflict is not None:
        raise conflict
    if decision == "completed":
        log.info("run folder %s already holds this run, completed (same config): nothing to do", run_dir)
        return dict(state.summary, already_completed=True)

    def record(status: str, reason: str, exc: Optional[BaseException], **extra) -> None:
        if not main:
            return
        try:
            outputs.atomic_write_json(run_dir / outputs.ERROR_FILE, outputs.error_record(
                status, reason, exc=exc, overrides=overrides, fingerprint=fp, run_dir=run_dir, command=command,
                **extra))
        except OSError as e2:  # disk full, folder gone: say so in the log, keep the original error
            _log_to_file(f"could not write {run_dir / outputs.ERROR_FILE}: {outputs.error_message(e2)}")
        _log_to_file(f"{status}: {reason}")

    try:
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            outputs.atomic_write_text(run_dir / outputs.CONFIG_FILE, OmegaConf.to_yaml(resolved))
            _write_hydra_files(run_dir, cfg)
        run_cfg = validate(cfg)  # fails before anything heavy is loaded
        run_cfg.fingerprint = fp
        check_against_model(run_cfg)  # ranks, targets, init_from against the model's config: no weights yet
    except BaseException as e:
        record("failed", outputs.error_message(e), e)
        raise
    from lora_research.training import fit

    name = f"{run_cfg.task.name}-{run_cfg.model.name}-{run_cfg.method.name}-s{run_cfg.seed}"
    tracker = tracking.start(run_cfg.logger, resolved, run_dir, name=name, group=group) if main else tracking.Tracker()
    try:
        summary = fit(run_cfg, run_dir, command=command, tracker=tracker)
    except Preempted as e:
        if main:
            rec = e.record()
            rec.update(reason=outputs.one_line(e), overrides=overrides, fingerprint=fp, run_dir=str(run_dir),
                       command=command, resume=f"run the same command again with hydra.run.dir={run_dir} "
                                               "(or hydra.sweep.dir=<its sweep> for a sweep job)")
            try:
                outputs.atomic_write_json(run_dir / outputs.ERROR_FILE, rec)
            except OSError as e2:
                _log_to_file(f"could not write {run_dir / outputs.ERROR_FILE}: {outputs.error_message(e2)}")
        tracker.finish(exit_code=EXIT_PREEMPTED)
        raise
    except KeyboardInterrupt as e:  # a second Ctrl-C, or one outside training: no new checkpoint
        record("preempted", f"interrupted ({outputs.one_line(e) or 'KeyboardInterrupt'}); no new checkpoint", e,
               signal="SIGINT", resume="run the same command again (resumes from the last checkpoint, if any)")
        tracker.finish(exit_code=EXIT_PREEMPTED)
        raise
    except Diverged as e:
        record("diverged", str(e), e, step=e.step)
        tracker.finish(exit_code=EXIT_DIVERGED)
        raise
    except BaseException as e:
        record("failed", outputs.error_message(e), e)
        tracker.finish(exit_code=1)
        raise
    if main:
        (run_dir / outputs.ERROR_FILE).unlink(missing_ok=True)  # a resumed run is no longer failed
    tracker.log_summary(summary, run_dir)
    tracker.finish()
    return summary


def classify(exc: BaseException, run_dir: Path) -> tuple[str, int, str]:
    """(status, exit code, one-line message) of a failed run."""
    from lora_research.training import Diverged

    if isinstance(exc, outputs.RunFolderConflict):
        return "refused", EXIT_BAD_INPUT, outputs.one_line(exc)
    if isinstance(exc, Diverged):
        return "diverged", EXIT_DIVERGED, f"{exc} (run folder {run_dir}: status diverged, see error.json)"
    if isinstance(exc, (ValueError, LookupError, OSError)):
        return "failed", EXIT_BAD_INPUT, outputs.error_message(exc)
    if type(exc).__name__ == "SafetensorError":
        return "failed", EXIT_BAD_INPUT, f"a safetensors file is corrupted: {outputs.one_line(exc)} (see {run_dir}/error.json)"
    where = run_dir / outputs.ERROR_FILE
    return "failed", EXIT_FAILED, f"internal error {type(exc).__name__}: {outputs.one_line(exc)} (traceback: {where})"


def _job_record(hc, run_dir: Path, status: str, reason: str = "") -> None:
    if hc is None or hc.mode.name != "MULTIRUN" or not distributed.is_main():
        return
    try:
        outputs.write_job_record(hc.sweep.dir, hc.job.get("num", 0), {
            "job": hc.job.get("num", 0), "status": status, "reason": reason, "run_dir": str(run_dir),
            "overrides": list(hc.overrides.task)})
    except OSError as e:
        log.warning("could not record job status in %s: %s", hc.sweep.dir, outputs.error_message(e))


def result_lines(summary: dict) -> list[str]:
    """The console's result for a finished run: its best dev metrics, then (E2E) the decoded scores."""
    shown = {k: v for k, v in summary["metrics"].items() if isinstance(v, float) and "/" not in k}
    if len(shown) > 1:  # the dev loss is shown only when it is the only dev metric (E2E: the scores come from decoding)
        shown.pop("loss", None)
    lines = [f"best dev {summary['task']} (epoch {summary['best_epoch']}): " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())]
    final = summary.get("final_evaluation") or {}
    from lora_research.metrics.e2e import E2E_METRICS

    scores = {k: final[k] for k in E2E_METRICS if isinstance(final.get(k), (int, float))}
    if scores:
        dec = final.get("decoding") or {}
        lines.append(f"decoded {final.get('num_mrs', '?')} dev MRs ({dec.get('strategy', '?')}, beams {dec.get('num_beams', '?')}): "
                     + ", ".join(f"{k}={v:.2f}" for k, v in scores.items()))
    return lines


@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from lora_research.console import quiet_libraries

    quiet_libraries()
    hc = HydraConfig.get()
    run_dir = distributed.shared_run_dir(Path(hc.runtime.output_dir))
    distributed.take_local_parallel_slot(cfg, hc)  # local_parallel: this job's share of CPUs / GPU
    multirun = hc.mode.name == "MULTIRUN"
    group = hc.runtime.choices.get("experiment") or (Path(hc.sweep.dir).name if multirun else None)
    from lora_research.preemption import EXIT_PREEMPTED, Preempted, late_signal

    label = f"job {hc.job.get('num', 0)} ({','.join(hc.overrides.task) or 'no overrides'}): " if multirun else ""
    resume_hint = (f"run the same command again with hydra.sweep.dir={hc.sweep.dir}" if multirun
                   else f"run the same command again with hydra.run.dir={run_dir}")
    try:
        summary = run(cfg, run_dir, group=group)
    except Preempted as e:
        _job_record(hc, run_dir, "preempted", str(e))
        if e.requeue is not None:  # a submitit job on SLURM: its handler requeues this job and exits
            e.requeue(e.signum, None)
        if distributed.is_main():
            print(f"interrupted: {label}{e}; resumable: {resume_hint} to resume", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
        _job_record(hc, run_dir, "preempted", "interrupted")
        if distributed.is_main():
            print(f"interrupted: {label}stopped by Ctrl-C; {resume_hint} to continue", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except Exception as e:  # noqa: BLE001 - every failure: one line here, the traceback in error.json
        status, code, message = classify(e, run_dir)
        _job_record(hc, run_dir, status, message)
        if distributed.is_main():
            print(f"error: {label}{message}", file=sys.stderr)
            if os.environ.get(TRACEBACK_ENV):
                traceback.print_exc()
        if multirun:
            return None  # the sweep's other jobs go on; SweepReport counts this one at the end
        sys.exit(code)
    main_value = summary["metrics"].get(summary["main_metric"])
    _job_record(hc, run_dir, "skipped" if summary.get("already_completed") else "completed")
    late = late_signal()  # asked to stop during the final evaluation: this job is done, no further job starts
    if not distributed.is_main():
        if late is not None:
            sys.exit(EXIT_PREEMPTED)
        return main_value
    if summary.get("already_completed"):
        print(f"\n{label}run folder {run_dir} already holds this run, completed (same config): nothing to do "
              "(overwrite=true trains it again)")
    else:
        print(f"\nrun folder: {run_dir}")
    print("\n".join(result_lines(summary)))
    if late is not None:
        print(f"interrupted: {label}{signal.Signals(late).name} received during the final evaluation; this run "
              f"completed; {resume_hint} to continue" + (" with the next job" if multirun else ""), file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    return main_value  # lets Hydra sweepers (e.g. Optuna) optimise the main metric


class SweepReport(Callback):
    """Hydra callback (conf/config.yaml): at the end of a sweep, one line counting its jobs by outcome.

    Exits 1 when a job failed, diverged, was refused or preempted (their ``error.json`` say why).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        outputs.clear_job_records(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        records = outputs.read_job_records(sweep_dir)
        counts = {k: 0 for k in ("completed", "skipped", "failed", "diverged", "preempted", "refused")}
        for r in records:
            counts[r.get("status") if r.get("status") in counts else "failed"] += 1
        done = counts["completed"] + counts["skipped"]
        bad = len(records) - done
        parts = [f"{done} completed" + (f" ({counts['skipped']} already done, skipped)" if counts["skipped"] else ""),
                 f"{counts['failed']} failed", f"{counts['diverged']} diverged"]
        parts += [f"{counts[k]} {k}" for k in ("preempted", "refused") if counts[k]]
        line = f"sweep {sweep_dir}: {len(records)} jobs: " + ", ".join(parts)
        if bad:
            line += (f"; see <job>/error.json; to retry them: the same command with hydra.sweep.dir={sweep_dir} "
                     "(completed jobs are skipped; overwrite=true re-runs all)")
        print(line, file=sys.stderr if bad else sys.stdout)
        sys.stdout.flush()
        if bad:
            sys.exit(EXIT_FAILED)


def _hydra_error_line(exc: BaseException) -> str:
    """Hydra's composition / override errors (several lines) as one line."""
    import re

    text = str(exc)
    m = re.search(r"Could not find '([^']+)'", text)
    options = getattr(exc, "options", None)
    if m and options:
        group = m.group(1).rsplit("/", 1)[0]
        return f"could not find '{m.group(1)}'; valid choices for {group}: {', '.join(options)}"
    if getattr(exc, "override", None):
        return f"cannot parse override {exc.override!r}: {text.splitlines()[0]} (see the Hydra override grammar)"
    noise = ("full_key:", "object_type=", "Config search path", "provider=", "Set the environment variable")
    lines = [ln.strip() for ln in text.splitlines()]
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines()]
    kept = []
    for ln in lines:
        if ln and not ln.startswith(noise) and ln not in kept:
            kept.append(ln)
    return " ".join(kept) or type(exc).__name__


def _check_command_line(args: list) -> None:
    """Hydra's own flags, parsed as Hydra will: a bad one is one line (exit 2), not argparse's usage block."""
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:  # pragma: no cover - a Hydra without it: Hydra reports as usual
        return
    parser = get_args_parser()

    def error(message):
        print(f"error: {' '.join(str(message).split())} (see --help; overrides are key=value)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    parser.error = error
    parser.parse_args(args)


def cli(argv: Optional[list] = None) -> None:
    """Console entry: one line for every error, Hydra's included; under torchrun, replicas run
    Hydra without its own files."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    sys.argv += distributed.replica_hydra_overrides()
    _check_command_line(sys.argv[1:])
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing several lines; we print one
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: stopped by Ctrl-C before training started", file=sys.stderr)
        sys.exit(75)
    except Exception as e:  # noqa: BLE001 - composition, overrides, unwritable output folder ...
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, (HydraException, OmegaConfBaseException)):
            message = _hydra_error_line(e)
        else:
            message = outputs.error_message(e)
        print(f"error: {message}", file=sys.stderr)
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        sys.exit(EXIT_BAD_INPUT)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


if __name__ == "__main__":
    cli()
