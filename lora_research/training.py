"""Training and evaluation with 🤗 Trainer (accelerate underneath: CPU, CUDA, DDP via torchrun).

The paper's recipe (Table 9 / Table 11): AdamW, linear decay after warmup (ratio 0.06 or a step
count), weight decay, dev evaluation every epoch, and the run's *best epoch* reported (§D.1: "the
best epoch" of each run; median over seeds is taken across runs by the results tables).

What this module adds to Trainer:

* :class:`RunTrainer` checkpoints only the trainable tensors (LoRA on RoBERTa-large: a few MB
  instead of 1.4 GB), which Trainer's resume loads back; optimizer, scheduler and RNG states are
  Trainer's own, so a resumed run ends with the same metrics as an uninterrupted one.
* :class:`RunFolderCallback` appends every evaluation to ``metrics.jsonl`` and, whenever the main
  dev metric improves, writes ``adapter.safetensors`` (the best-epoch snapshot) atomically.
* :func:`fit` builds everything from a validated :class:`~lora_research.config.RunConfig` and
  writes ``summary.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate.utils import DistributedType
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from lora_research import (adapter_file, batch_split, console, distributed, fast_dropout, heap, lean_activations, lm_loss,
                           outputs, unpadded)
from lora_research.config import RunConfig
from lora_research.methods import Method, count_parameters, get_method_class
from lora_research.models import load_model, load_tokenizer, pick_device, resolve_family
from lora_research.tasks import Task, build_task

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """A non-finite training loss, gradient norm or evaluation metric: the run stops (status ``diverged``)."""

    def __init__(self, step: int, what: str, value: float):
        self.step, self.what, self.value = step, what, value
        super().__init__(f"diverged at step {step}: {what}={value}")


def _nonfinite(value) -> bool:
    import math

    if isinstance(value, torch.Tensor):
        return not bool(torch.isfinite(value.detach()).all())
    return isinstance(value, float) and not math.isfinite(value)


class RunTrainer(Trainer):
    """Trainer whose checkpoints hold the trainable tensors only, and that notices divergence.

    Every micro-batch loss is checked here, every gradient norm by :class:`DivergenceCallback` (Trainer
    itself hides a NaN loss from its logs, ``logging_nan_inf_filter``), which stops the run on the first.
    A training batch may be computed as length-sorted pieces, one optimizer step per batch as before
    (``trainer.train_batch_split=length``, :mod:`lora_research.batch_split`). Only Trainer's public methods
    are overridden.
    """

    diverged: Optional[tuple] = None  # (step, what, value) of the first non-finite value
    _piece_share: Optional[float] = None  # the current piece's share of its batch's rows

    def __init__(self, *args, eval_shared_prompts: bool = False, split_piece_tokens: Optional[int] = None,
                 **kwargs):
        """``eval_shared_prompts``: trainer.eval_shared_prompts (:func:`lm_loss.shared_prompt_loss`);
        ``split_piece_tokens``: trainer.train_batch_split=length's piece cost (:mod:`lora_research.batch_split`),
        None: each batch in one forward. The other arguments are Trainer's."""
        super().__init__(*args, **kwargs)
        self.eval_shared_prompts = eval_shared_prompts
        self.split_piece_tokens = split_piece_tokens

    def training_step(self, model, inputs, num_items_in_batch=None):
        pieces = [(inputs, 1.0)] if self.split_piece_tokens is None else \
            batch_split.split_batch(inputs, self.split_piece_tokens)
        if len(pieces) == 1:
            loss = super().training_step(model, pieces[0][0], num_items_in_batch)
        else:  # one optimizer step's batch as length-sorted pieces; gradients synchronised after the last
            loss = 0.0
            for k, (piece, share) in enumerate(pieces):
                sync = k == len(pieces) - 1 or self.accelerator.distributed_type == DistributedType.DEEPSPEED
                with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                    self._piece_share = share
                    try:
                        loss = loss + super().training_step(model, piece, num_items_in_batch)
                    finally:
                        self._piece_share = None
        if self.diverged is None and _nonfinite(loss):
            self.diverged = (self.state.global_step + 1, "loss", float(loss.detach().float().mean()))
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """A causal LM's loss from the logits of its labelled positions only (:mod:`lora_research.lm_loss`:
        the same value as Trainer's, without the [batch, length, vocabulary] logits and their copies).
        Other models, and evaluations that keep logits for ``compute_metrics``, take Trainer's path."""
        if self._piece_share is not None:  # a piece of a split batch: its share of the batch's mean loss
            loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            return loss * self._piece_share
        if "labels" not in inputs or (return_outputs and self.compute_metrics is not None) or not self._causal_lm(model):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = None
        if self.eval_shared_prompts and not model.training and not torch.is_grad_enabled() \
                and not self.accelerator.unwrap_model(model)._forward_pre_hooks:  # prefix tuning rewrites the inputs
            loss = lm_loss.shared_prompt_loss(model, inputs, label_smoothing=self.args.label_smoothing_factor,
                                              num_items_in_batch=num_items_in_batch)
        if loss is None:
            loss = lm_loss.completion_loss(model, inputs, label_smoothing=self.args.label_smoothing_factor,
                                           num_items_in_batch=num_items_in_batch)
        return (loss, {}) if return_outputs else loss

    def _causal_lm(self, model) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        # Trainer's own test for a label-shifting loss (Trainer.compute_loss)
        return self.accelerator.unwrap_model(model)._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """A checkpoint's model file holds the trainable tensors only (LoRA on RoBERTa-large: a few MB
        instead of 1.4 GB), under Trainer's own name (``model.safetensors``), so that Trainer's resume
        loads them back (``load_state_dict(strict=False)``: the frozen base comes from the pretrained
        model). :func:`check_checkpoint_tensors` checks the names and shapes before a resume."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        outputs.save_trainable(self.accelerator.unwrap_model(self.model), output_dir)


class DivergenceCallback(TrainerCallback):
    """Stops training with :class:`Diverged` on the first non-finite loss, gradient norm or dev metric.

    Registered before :class:`RunFolderCallback`, so a non-finite evaluation never reaches
    ``metrics.jsonl`` nor becomes the "best" epoch. Under DDP every rank stops at the same step.
    """

    def __init__(self, trainer_ref=None):
        self.trainer = trainer_ref

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """The gradient norm after clipping (a non-finite norm makes the clipped gradients NaN too)."""
        if self.trainer is None or self.trainer.diverged is not None or model is None or args.fp16:
            return  # fp16: GradScaler skips steps with inf gradients by design
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            if _nonfinite(norm):
                self.trainer.diverged = (state.global_step + 1, "grad_norm", float(norm))

    def on_step_end(self, args, state, control, **kwargs):
        bad = self.trainer.diverged if self.trainer is not None else None
        if distributed.any_rank(bad is not None):
            step, what, value = bad or (state.global_step, "loss", float("nan"))
            raise Diverged(step, what, value)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        for k, v in (metrics or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and _nonfinite(float(v)):
                name = k[len("eval_"):] if k.startswith("eval_") else k
                raise Diverged(state.global_step, name, float(v))


class ConsoleCallback(TrainerCallback):
    """The console is for people: one progress bar over the training steps (on a terminal, rank 0),
    while Trainer's per-step log dicts go to the run's log file only (Hydra's ``train.log``)."""

    def __init__(self):
        self.bar = None
        self.file_log = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.file_log = console.file_logger("lora_research.trainer_log")
        if state.is_world_process_zero:
            self.bar = console.progress_bar(state.max_steps, "step", initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and self.file_log is not None:
            self.file_log.info("step %d: %s", state.global_step, json.dumps(logs, default=str))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunFolderCallback(TrainerCallback):
    """Writes ``metrics.jsonl`` and the best-epoch ``adapter.safetensors`` into the run folder."""

    def __init__(self, run_dir: Path, task: Task, method: Method, model, adapter_metadata: dict, splits: tuple):
        self.run_dir = Path(run_dir)
        self.task_splits = tuple(splits)
        main_split = self.task_splits[0]
        self.task = task
        self.method = method
        self.model = model
        self.adapter_metadata = adapter_metadata
        self.main_split = main_split
        self.reload_best()

    def reload_best(self) -> None:
        """Best main-split record so far, from ``metrics.jsonl`` (a resumed run keeps its best)."""
        self.best = outputs.best_record(
            [r for r in outputs.read_metrics(self.run_dir) if r.get("split") == self.main_split],
            self.task.main_metric,
            self.task.greater_is_better,
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        split = next((s for s in self.task_splits if any(k.startswith(f"eval_{s}_") for k in metrics)), None)
        if split is None:
            return
        prefix = f"eval_{split}_"
        record = {"epoch": round(state.epoch or 0.0, 4), "step": state.global_step, "split": split}
        record.update({k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)})
        if state.is_world_process_zero:  # DDP: metrics are gathered; rank 0 writes them
            outputs.append_metrics(self.run_dir, record)
        if split != self.main_split or self.task.main_metric not in record:
            return
        value = record[self.task.main_metric]
        if self.best is None or (
            value > self.best[self.task.main_metric]
            if self.task.greater_is_better
            else value < self.best[self.task.main_metric]
        ):
            self.best = record
            meta = dict(self.adapter_metadata, best_epoch=record["epoch"], best_step=record["step"])
            if state.is_world_process_zero:
                adapter_file.save_run_adapter(self.run_dir / outputs.ADAPTER_FILE, self.method, self.model, meta)


def _training_arguments(run: RunConfig, run_dir: Path, device: torch.device) -> TrainingArguments:
    t = run.trainer
    if t.max_grad_norm < 0:
        raise ValueError(f"trainer.max_grad_norm must be >= 0 (got {t.max_grad_norm})")
    strategy = t.eval_strategy
    if strategy == "steps" and t.eval_steps < 1:
        raise ValueError("trainer.eval_strategy=steps needs trainer.eval_steps >= 1")
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        optim="adamw_torch",
        max_grad_norm=t.max_grad_norm,
        label_smoothing_factor=t.label_smoothing,
        eval_strategy=strategy,
        eval_steps=t.eval_steps if strategy == "steps" else None,
        save_strategy=strategy,
        save_steps=t.eval_steps if strategy == "steps" else 500,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        dataloader_num_workers=t.num_workers,
        seed=run.seed,
        full_determinism=t.full_determinism,
        use_cpu=device.type == "cpu",
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        report_to=[],  # W&B is started by lora_research.tracking; Trainer's callback is added there
        disable_tqdm=True,
        remove_unused_columns=True,
        train_sampling_strategy=t.train_sampling,
        **_checkpointing_arguments(t.gradient_checkpointing),
    )


def _resume_checkpoint(run: RunConfig, run_dir: Path) -> Optional[str]:
    """The checkpoint to resume from: the newest one that verifies (:func:`outputs.verify_checkpoint`).

    A corrupted or half-written checkpoint is renamed ``corrupt-checkpoint-N`` (kept, but never
    picked again) and the previous valid one is used; none valid left → a clear error.
    """
    mode = run.trainer.resume
    if mode == "never":
        return None
    if mode != "auto":
        if not Path(mode).is_dir():
            raise FileNotFoundError(f"trainer.resume={mode!r}: no such checkpoint folder")
        try:
            outputs.upgrade_checkpoint(mode)
            outputs.verify_checkpoint(mode)
        except ValueError as e:
            raise ValueError(f"trainer.resume={mode!r}: cannot resume: {e}") from None
        return mode
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir() or get_last_checkpoint(str(ckpt_dir)) is None:
        return None
    import re

    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    problems = []
    for _, ckpt in reversed(found):
        try:
            outputs.upgrade_checkpoint(ckpt)
            outputs.verify_checkpoint(ckpt)
            if problems:
                log.warning("resuming from %s instead: %s", ckpt, "; ".join(problems))
            return str(ckpt)
        except ValueError as e:
            problems.append(str(e))
            if distributed.is_main():
                os.replace(ckpt, ckpt.with_name("corrupt-" + ckpt.name))
    raise ValueError(
        f"cannot resume {run_dir}: {problems[0]}; no earlier valid checkpoint. Start over with overwrite=true "
        "(moves the old files aside) or use a new run folder"
    )


def _frozen_base_not_missing(record: logging.LogRecord) -> bool:
    """Drops Trainer's "missing keys" warning on resume: a checkpoint holds the trainable tensors only, by
    design, and :func:`outputs.check_checkpoint_tensors` has checked that it holds all of them."""
    return not record.getMessage().startswith("There were missing keys in the checkpoint model loaded")


def _drop_records_after(run_dir: Path, step: int) -> None:
    """On resume, forget evaluations newer than the checkpoint (they will be redone)."""
    records = outputs.read_metrics(run_dir)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
        outputs.write_metrics(run_dir, kept)


def load_init(model, source: str, family, base=None) -> list[str]:
    """Start the method's tensors from another run (paper D.1: MRPC/RTE/STS-B from the MNLI LoRA).

    ``source``: a run folder, an ``adapter.safetensors`` or a PEFT LoRA folder; every non-head
    tensor whose name and shape match a trainable parameter is loaded (the head never: its label
    count differs). See :func:`lora_research.adapter_file.init_from`.
    """
    return adapter_file.init_from(model, source, family, base=base)


def _checkpointing_arguments(enabled: bool) -> dict:
    """TrainingArguments' activation (gradient) checkpointing, non-reentrant: ``activation_checkpointing*``
    since transformers 5.2x, ``gradient_checkpointing*`` (now a deprecated alias) before."""
    import dataclasses

    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)} \
        else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def _eval_by_length(order: str, model, world_size: int) -> bool:
    """``trainer.eval_order``: sort eval batches by length only where no reported number can change.

    Per-example losses (classification / regression heads, ``accepts_loss_kwargs`` False) average to
    the same dev loss in any order, and their metrics do not depend on order; a causal LM's dev loss is
    a mean of per-batch token means, which depends on how examples are batched: file order (``auto``).
    """
    if order == "file" or world_size > 1:
        return False
    return order == "length" or getattr(model, "accepts_loss_kwargs", True) is False


def length_sorted(ds):
    """``ds`` in order of length (less padding per evaluation batch); a view (``Dataset.select``), and
    predictions come back in the same order as the labels, so ``compute_metrics`` is unchanged."""
    if not hasattr(ds, "column_names") or "input_ids" not in ds.column_names:
        return ds
    lengths = [len(x) for x in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def release_freed_memory() -> None:
    """Hand memory that training freed back to the operating system (glibc keeps freed heap in its arenas,
    so the resident size would stay at training's high-water mark through decoding). No-op elsewhere."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    heap.trim()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict:
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}


def _check_examples(task: Task, data) -> None:
    """Zero examples after loading and subsetting is an error, not a run that trains nothing."""
    for split, ds in [("train", data.train), *data.evals.items()]:
        if len(ds) == 0:
            raise ValueError(f"task {task.name}: split {split!r} has 0 examples after loading and subsetting "
                             "(empty data file, or task.max_train_samples / max_eval_samples too small)")


def fit(run: RunConfig, run_dir: Path, *, command: str = "", tracker=None, extra_callbacks=()) -> dict:
    """Build model, method and data from ``run``; train; evaluate; write the run folder."""
    run_dir = Path(run_dir)
    t = run.trainer
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    heap.set_mmap_threshold(t.malloc_mmap_threshold_mb)  # big blocks off the heap: from here to the process's end
    if t.full_determinism:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    device = pick_device(t.device)
    set_seed(run.seed)

    family = resolve_family(run.model)
    task = build_task(run.task)
    tokenizer = load_tokenizer(run.model)
    with distributed.main_process_first():  # rank 0 writes the feature cache, the others read it
        data = task.prepare(tokenizer, seed=run.seed)  # before the weights: bad data fails in seconds
    _check_examples(task, data)
    set_seed(run.seed)  # the model's random init does not depend on what data preparation drew
    model = load_model(run.model, head=task.head, num_labels=task.num_labels, problem_type=task.problem_type)
    base_identity = adapter_file.identify_base(model, family, run.model, head=task.head, num_labels=task.num_labels,
                                               problem_type=task.problem_type, seed=run.seed)
    method = get_method_class(run.method.name)(run.method)
    method.apply(model, family)
    if run.init_from:
        loaded = load_init(model, run.init_from, family, base=base_identity)
        log.info("init_from %s: %d tensors loaded", run.init_from, len(loaded))
    fast_masks = fast_dropout.enable(model) if t.fast_dropout else None  # after apply: the method's dropouts too
    unpadded_hooks = unpadded.enable(model, family, method) if t.unpadded else None
    lean = lean_activations.enable(model) if t.lean_activations else None
    distributed.mean_loss_per_batch(model)  # DDP / gradient accumulation scale the loss right
    counts = count_parameters(model, family)
    log.info(
        "%s | %s | %s: trainable %d (without head %d) of %d parameters; %d train examples",
        task.name, run.model.name, method.name, counts.trainable_params,
        counts.trainable_params_without_head, counts.total_params, len(data.train),
    )

    index = method.analysis_index(model)
    adapter_meta = {
        "method": method.name,
        "base": base_identity,
        "base_model": run.model.name_or_path,
        "model_family": family.name,
        "task": task.name,
        "seed": run.seed,
        "config": _asdict(run.method),
        "index": index,
        "r": getattr(run.method, "r", None),
        "alpha": getattr(run.method, "alpha", None),
        "scaling": _scaling_summary(index),
    }
    main_split = next(iter(data.evals))
    callback = RunFolderCallback(run_dir, task, method, model, adapter_meta, tuple(data.evals))
    from lora_research.preemption import PreemptionCallback

    divergence = DivergenceCallback()
    callbacks = [divergence, callback, *extra_callbacks, PreemptionCallback()]
    if tracker is not None and tracker.active:
        callbacks.append(tracker.callback())

    args = _training_arguments(run, run_dir, device)
    evals = data.evals
    if _eval_by_length(t.eval_order, model, args.world_size):
        evals = {split: length_sorted(ds) for split, ds in evals.items()}
    trainer = RunTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=evals,
        data_collator=data.collator,
        # a task without prediction metrics (E2E: dev loss only) must not make Trainer keep every dev logit
        compute_metrics=task.compute_metrics if type(task).compute_metrics is not Task.compute_metrics else None,
        callbacks=callbacks,
        eval_shared_prompts=bool(t.eval_shared_prompts),
        split_piece_tokens=t.split_piece_tokens if t.train_batch_split == "length" else None,
    )
    trainer.remove_callback(PrinterCallback)  # its print(logs) is replaced by ConsoleCallback
    trainer.add_callback(ConsoleCallback())
    divergence.trainer = trainer
    resume = _resume_checkpoint(run, run_dir)
    if resume:
        outputs.check_checkpoint_tensors(resume, model)
    step = int(Path(resume).name.split("-")[-1]) if resume else 0
    with distributed.main_process_first():  # records newer than the start point are redone, never duplicated
        if distributed.is_main():
            _drop_records_after(run_dir, step)
        callback.reload_best()
    if resume:
        log.info("resuming from %s", resume)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    trainer_log = logging.getLogger("transformers.trainer")
    trainer_log.addFilter(_frozen_base_not_missing)
    try:
        train_result = trainer.train(resume_from_checkpoint=resume)
    finally:
        trainer_log.removeFilter(_frozen_base_not_missing)
    runtime = time.time() - start
    trainer.accelerator.wait_for_everyone()  # DDP: rank 0 has written every record
    records = outputs.read_metrics(run_dir)
    if not records or records[-1].get("step") != trainer.state.global_step:
        trainer.evaluate()  # make sure the final weights are evaluated once
        records = outputs.read_metrics(run_dir)

    if unpadded_hooks is not None:
        unpadded_hooks.remove()  # the final evaluation and everything after see the model as loaded and adapted
    if fast_masks is not None:
        fast_masks.remove()
    if lean is not None:
        lean.remove()
    best = callback.best
    final_metrics: dict[str, Any] = {}
    if task.final_evaluation:
        release_freed_memory()  # decoding starts from the memory the process needs, not training's high-water mark
        restored = _restore_best(model, method, run_dir)
        # decoded as lora_research.evaluate_e2e decodes it: W0 + BA in the weights, so a beam step costs what the base
        # model's costs (SmolLM2 E2E, 24 MRs: 10% less decoding time, the same tokens); the adapter file was written
        # from A and B already
        method.merge_for_inference(model)
        final_metrics = task.final_evaluate(model, tokenizer, run_dir, trainer.args.device)
        final_metrics["weights"] = "best" if restored else "last"

    metrics = _best_metrics(records, best, main_split)
    summary = {
        "status": "completed",
        "task": task.name,
        "model": run.model.name,
        "model_name_or_path": run.model.name_or_path,
        "method": method.name,
        "method_label": method.label(),
        "seed": run.seed,
        "main_metric": task.main_metric,
        "headline_metric": task.headline(metrics, final_metrics),
        "metrics": metrics,
        "best_epoch": best["epoch"] if best else None,
        "best_step": best["step"] if best else None,
        "final_evaluation": final_metrics,
        "trainable_params": counts.trainable_params,
        "trainable_params_without_head": counts.trainable_params_without_head,
        "head_params": counts.head_params,
        "total_params": counts.total_params,
        "train_runtime_s": round(runtime, 2),
        "train_steps": trainer.state.global_step,
        "train_loss": train_result.training_loss,
        "num_train_examples": len(data.train),
        "num_eval_examples": {k: len(v) for k, v in data.evals.items()},
        "feature_cache_hit": data.cache_hit,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "device": str(trainer.args.device),
        "world_size": trainer.args.world_size,
        "global_batch_size": t.batch_size * t.gradient_accumulation_steps * trainer.args.world_size,
        "resumed_from": resume,
        "fingerprint": getattr(run, "fingerprint", None),
        "files": {outputs.ADAPTER_FILE: outputs.file_record(run_dir / outputs.ADAPTER_FILE)}
        if (run_dir / outputs.ADAPTER_FILE).is_file() else {},
        "command": command,
        "run_dir": str(run_dir),
        "versions": _versions(),
    }
    if distributed.is_main():
        outputs.atomic_write_json(run_dir / outputs.SUMMARY_FILE, summary)
        if not t.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return summary


def _best_metrics(records: list[dict], best: Optional[dict], main_split: str) -> dict:
    """Main-split metrics at the best step; other splits at that step as ``<split>/<name>``."""
    if best is None:
        return {}
    skip = {"epoch", "step", "split", "runtime", "samples_per_second", "steps_per_second"}
    out = {k: v for k, v in best.items() if k not in skip}
    for r in records:
        if r.get("step") == best["step"] and r.get("split") != main_split:
            out.update({f"{r['split']}/{k}": v for k, v in r.items() if k not in skip})
    return out


def _restore_best(model, method: Method, run_dir: Path) -> bool:
    """Load the best-epoch tensors back when they cover every trainable parameter."""
    path = run_dir / outputs.ADAPTER_FILE
    if not path.exists():
        return False
    tensors = adapter_file.read(path).tensors
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not set(trainable) <= set(tensors):
        return False
    adapter_file.load_into(model, tensors, trainable, path)
    return True


def _check_base(run_dir: Path, model, family) -> None:
    """Refuse to rebuild a run on a base model other than the one its adapter was trained on."""
    path = run_dir / outputs.ADAPTER_FILE
    if not path.exists():
        return
    recorded = adapter_file.read(path).base
    if recorded.weights:
        _, weights = adapter_file.fingerprint(model, family)
        if weights != recorded.weights:
            raise ValueError(
                f"{path}: the base model {recorded.name_or_path!r} loaded now is not the one this run was trained on "
                f"(weights fingerprint {weights[:10]} != {recorded.weights[:10]}); its checkpoint changed since training"
            )


def _asdict(cfg) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def _scaling_summary(index: list[dict]):
    values = {e["scaling"] for e in index if e.get("scaling") is not None}
    if not values:
        return None
    return values.pop() if len(values) == 1 else {f"{e['layer']}.{e['matrix']}": e["scaling"] for e in index}


def restore_run(run_dir, *, device: str = "cpu", weights: str = "best"):
    """Rebuild a finished run's model from its folder: base weights + method + saved tensors.

    Returns ``(run_config, model, tokenizer, method, task)``; ``model`` is in eval mode. Used by
    decoding (``lora_research.evaluate_e2e``) and notebooks. Methods whose ``adapter.safetensors``
    does not hold every trainable tensor (full FT saves only target matrices) raise a clear error.
    """
    from omegaconf import OmegaConf

    from lora_research.config import validate

    run_dir = Path(run_dir)
    run = validate(OmegaConf.create(outputs.read_config(run_dir)))
    family = resolve_family(run.model)
    task = build_task(run.task)
    tokenizer = load_tokenizer(run.model)
    set_seed(run.seed)
    model = load_model(run.model, head=task.head, num_labels=task.num_labels, problem_type=task.problem_type)
    _check_base(run_dir, model, family)
    method = get_method_class(run.method.name)(run.method)
    method.apply(model, family)
    if weights == "best" and not _restore_best(model, method, run_dir):
        raise ValueError(
            f"{run_dir}/{outputs.ADAPTER_FILE} is missing or does not hold every trainable tensor "
            f"of method {method.name!r}; cannot rebuild the trained model from the run folder"
        )
    model.to(pick_device(device)).eval()
    return run, model, tokenizer, method, task
