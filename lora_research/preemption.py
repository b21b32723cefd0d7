"""Preemption and time limits: on SIGTERM / SIGINT / SLURM's warning signal, checkpoint and stop.

:class:`PreemptionCallback` turns the signal into "save a checkpoint at the end of this step, then
stop" (``control.should_save`` + ``control.should_training_stop``), and raises :class:`Preempted`
once the checkpoint is on disk. The entry point then records ``{"status": "preempted",
"resumable": true}`` in ``error.json`` and exits with :data:`EXIT_PREEMPTED`; the next run of the
same command (``trainer.resume=auto``) resumes from that checkpoint to the same result as an
uninterrupted run.

Under SLURM through ``hydra/launcher=slurm`` (submitit), SLURM sends ``SIGUSR2`` ``signal_delay_s``
before the time limit and on preemption; submitit has a handler for it that requeues the job. We
take that signal over during training, checkpoint first, then hand it to submitit's handler
(:attr:`Preempted.requeue`), which requeues the same job; the requeued job resumes in the same run
folder. A second Ctrl-C stops at once (KeyboardInterrupt).
"""
from __future__ import annotations

import logging
import os
import signal
from typing import Callable, Optional

from transformers import TrainerCallback

from lora_research import distributed

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL ("try again"): re-run the same command to resume


def submitit_signal() -> signal.Signals:
    """The signal submitit asks SLURM for (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)


class Preempted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: str, requeue: Optional[Callable] = None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.requeue = requeue  # submitit's handler: call it as requeue(signum, None) to requeue
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}"
        )

    def record(self) -> dict:
        return {
            "status": "preempted",
            "resumable": True,
            "signal": signal.Signals(self.signum).name,
            "step": self.step,
            "checkpoint": self.checkpoint,
            "error": f"Preempted: {self}",
            "resume": "run the same command again (trainer.resume=auto resumes from the checkpoint)",
        }


_late_signal: Optional[int] = None  # a signal that came after the last training step (see on_train_end)


def late_signal() -> Optional[int]:
    """The signal received after training's last step (during the final evaluation), once; else None.
    The job that got it has finished and written its results; the caller stops instead of going on
    to the next job of a sweep."""
    global _late_signal
    sig, _late_signal = _late_signal, None
    return sig


class PreemptionCallback(TrainerCallback):
    """Checkpoint-and-stop on a signal; installed for the duration of ``trainer.train()``."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._stopping = False
        self._previous: dict[int, object] = {}

    # signal handling -----------------------------------------------------------------------
    def _signals(self) -> list[int]:
        sigs = [signal.SIGTERM, signal.SIGINT]
        usr = submitit_signal()
        if callable(signal.getsignal(usr)):  # a submitit job: take its requeue signal over too
            sigs.append(usr)
        return sigs

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C: stopping without a checkpoint")
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: saving a checkpoint at the end of this step, then stopping",
                        signal.Signals(signum).name)

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    # Trainer hooks ---------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        try:
            for s in self._signals():
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_rank(self.signum is not None):
            self._stopping = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if not self._stopping:
            return
        usr = submitit_signal()
        requeue = self._previous.get(usr) if self.signum == usr else None
        self._restore()
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        raise Preempted(self.signum or signal.SIGTERM, state.global_step, checkpoint,
                        requeue if callable(requeue) else None)

    def on_train_end(self, args, state, control, **kwargs):
        global _late_signal
        if self.signum is not None and not self._stopping:  # after the last step: no step end to act on it
            _late_signal = self.signum
            log.warning("%s received after the last training step: this run finishes (its results are written), "
                        "then the process stops", signal.Signals(self.signum).name)
        self._restore()
