"""Typed schemas for every config group, and their validation at start-up.

Hydra composes YAML from ``conf/``; :func:`validate` then checks each group against its schema
(dataclasses below, the model's in :mod:`lora_research.models`, each task's and method's next
to its class). An unknown key or a wrong type fails before any model is loaded, with a message that
names the bad key or value and the valid choices, so a typo fails at start-up, not after an hour.

Task and method schemas come from their registered classes. Every schema is the one source of its
group's defaults: it is registered in Hydra's ConfigStore as ``schema/<group>/<name>`` (a method's
name, a task's kind; ``model``, ``trainer``, ``logger``), and each YAML in ``conf/`` builds on it
(``defaults: [/schema/method/lora@_here_, _self_]``) and holds only what differs. The stored node is
the schema's defaults as a plain dict, not the typed dataclass, so that a wrong value or key reaches
:func:`validate`, whose one-line messages name the valid choices, instead of failing inside Hydra's
composition with OmegaConf's multi-line type error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lora_research import heap
from lora_research.methods import METHODS, build_method
from lora_research.models import ModelConfig, resolve_family
from lora_research.structured import as_dataclass
from lora_research.tasks import TASKS, build_task


@dataclass
class TrainerConfig:
    """Optimisation and evaluation (``trainer=`` group). Defaults follow paper Table 9."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    epochs: float = 3.0  # passes over the training set
    max_steps: int = -1  # > 0 caps the run at this many optimiser steps (overrides epochs)
    batch_size: int = 16  # per-device training batch (Table 9 "Batch Size")
    eval_batch_size: int = 64  # per-device evaluation batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step (effective batch = batch_size x this x GPUs)
    lr: float = 4e-4  # peak learning rate (Table 9 "Learning Rate")
    weight_decay: float = 0.1  # AdamW decay; 0.1 in the repo scripts, not stated in the paper
    warmup_ratio: float = 0.06  # linear warmup over this fraction of steps (Table 9)
    warmup_steps: int = 0  # > 0: warmup in steps instead (Table 11: 500)
    lr_scheduler: str = "linear"  # any transformers scheduler name
    adam_beta2: float = 0.999  # AdamW β2 (β1 is 0.9)
    adam_epsilon: float = 1e-8  # 1e-6 in microsoft/LoRA's GPT-2 optimizer
    max_grad_norm: float = 1.0  # 0 disables clipping (GPT-2 scripts: --clip 0.0)
    label_smoothing: float = 0.0  # Table 11: 0.1 for E2E
    eval_strategy: str = "epoch"  # epoch | steps
    eval_steps: int = 0  # with eval_strategy=steps
    save_total_limit: int = 1  # trainer checkpoints kept for resume
    keep_checkpoints: bool = False  # keep <run>/checkpoints after a successful run
    logging_steps: int = 10  # training loss, lr and gradient norm logged every this many steps (train.log, W&B)
    num_workers: int = 0  # DataLoader worker processes (0: in the training process)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision on CUDA)
    full_determinism: bool = False  # torch deterministic algorithms (slower); CUBLAS_WORKSPACE_CONFIG set
    resume: str = "auto"  # auto: resume from the run folder's last checkpoint | never | <checkpoint path>
    threads: int = 0  # torch CPU threads (0 = torch default)
    # recompute each layer's activations in backward instead of keeping them (Trainer's activation checkpointing,
    # non-reentrant): less memory (SmolLM2 E2E: the saved activations), about one more forward of compute
    gradient_checkpointing: bool = False
    # random: shuffled batches (the paper's). group_by_length: HF's LengthGroupedSampler (shuffled
    # mega-batches of 50 batches sorted by length: less padding, faster, different batches, so results move)
    train_sampling: str = "random"
    # none: each training batch in one forward and backward (the paper's). length: computed as length-sorted
    # pieces, each cut to its longest row (lora_research.batch_split): the same examples in every step and the same
    # gradient, up to the dropout draws and float rounding; less padding (SST-2 batches of 32: 2/3 padding).
    # Classification / regression tasks (GLUE)
    train_batch_split: str = "none"
    # train_batch_split=length: the cost of one more forward and backward, in padded tokens; the pieces minimise
    # padded tokens + this per piece (2-core CPU, MiniLM: ~48; a GPU's per-call overhead is worth far more tokens)
    split_piece_tokens: int = 48
    # true: encoders (BERT, RoBERTa) compute only the real tokens of a padded batch; attention still per row,
    # padding masked (lora_research.unpadded). Same function, outputs equal to float rounding; in training the
    # dropout draws change. Not with prefix tuning (it inserts positions) nor decoders. auto: true where it
    # applies, else false (the run log says which). false: the padded batch as transformers computes it
    unpadded: Any = False
    # true: CPU dropout masks drawn from numpy's SFC64 (16 random bits per element, seeded from torch's generator)
    # instead of torch's bernoulli_ (~19% of a MiniLM CPU step): the same dropout, other draws, so numbers move
    # the way another seed's would (lora_research.fast_dropout). false: torch's draws, as plain PyTorch. CUDA: torch's.
    # Off by default: the quickstart scored lower with it in 6 of 6 paired seeds, then 12 of 20 (results/benchmarks/README.md)
    fast_dropout: bool = False
    # true: backward keeps fewer activations, bitwise the same numbers (lora_research.lean_activations): an adapted
    # module's LoRA branch keeps x and a boolean dropout mask instead of the float noise and dropout(x) (CPU); gated
    # SiLU MLPs (LLaMA, SmolLM2) keep gate(x) and up(x) and recompute the SiLU. false: autograd's own saved tensors.
    # Not part of a run's fingerprint or results identity (the same numbers either way)
    lean_activations: bool = True
    # CPU memory (glibc): blocks of this many MB and more are mapped from the system and handed back when freed,
    # instead of staying in the heap (lora_research.heap.set_mmap_threshold; 0 < MB <= 32). null: glibc's own
    # threshold, which rises to the largest block freed. Same numbers. 2 (the SmolLM2 E2E CPU preset): its training
    # peaks ~45 MB lower at the same speed; the padded MiniLM quickstart took ~6% longer with it (190 MB less)
    malloc_mmap_threshold_mb: Optional[float] = None
    # eval batches: auto = length-sorted where no reported number can change (classification / regression:
    # per-example loss, order-free metrics), file order for causal LMs (their dev loss averages per-batch
    # token means) | length | file
    eval_order: str = "auto"
    # causal LMs: each distinct prompt of a dev batch run once, its cache shared by the batch's rows with that
    # prompt (E2E: ~8 references per MR); same batches, same dev loss up to float rounding
    eval_shared_prompts: bool = True


@dataclass
class LoggerConfig:
    """Experiment tracking (``logger=`` group): W&B or none."""

    name: str = "none"  # wandb | none
    project: str = "lora-research"  # W&B project
    entity: Optional[str] = None  # W&B entity (team or user); null: your default
    mode: str = "auto"  # auto (online if an API key is set, else offline) | online | offline | disabled
    group: Optional[str] = None  # default: the sweep folder name for multiruns, else "single"
    tags: list = field(default_factory=list)  # added to the task, model and method tags
    log_adapter: bool = False  # log adapter.safetensors as a W&B artifact at the end of the run


TRAINER_CHOICES = {
    "device": None,
    "eval_strategy": ("epoch", "steps"),
    "precision": ("fp32", "bf16", "fp16"),
    "train_sampling": ("random", "group_by_length"),
    "train_batch_split": ("none", "length"),
    "eval_order": ("auto", "length", "file"),
}
LOGGER_CHOICES = {"name": ("wandb", "none"), "mode": ("auto", "online", "offline", "disabled")}


@dataclass
class RunConfig:
    """The validated run: one object per group plus the top-level keys."""

    model: ModelConfig
    task: Any
    method: Any  # the method's own Config dataclass
    trainer: TrainerConfig
    logger: LoggerConfig
    seed: int = 0
    init_from: Optional[str] = None  # run folder / adapter.safetensors to start the method's weights from
    raw: Optional[DictConfig] = None  # the composed config as Hydra gave it
    fingerprint: Optional[str] = None  # outputs.fingerprint of the resolved config (set by train.run)


def _one_line_config_error(e: Exception, group: str) -> ValueError:
    """A schema error (omegaconf's are several lines) as one line naming ``group.key``, the value, what is valid."""
    from omegaconf.errors import OmegaConfBaseException

    src = e if isinstance(e, OmegaConfBaseException) else getattr(e, "__context__", None)
    if isinstance(src, OmegaConfBaseException) and getattr(src, "full_key", None):
        msg = str(getattr(src, "msg", "") or src).splitlines()[0]
        return ValueError(f"{group}.{src.full_key}: {msg} (invalid value in {group!r} config)")
    return ValueError(" ".join(str(e).split()))


def _as_schema(schema: type, node: Any, group: str):
    try:
        return as_dataclass(schema, node, f"in {group!r} config")
    except ValueError as e:
        raise _one_line_config_error(e, group) from None


def _check_choice(group: str, key: str, value: Any, choices) -> None:
    if choices is not None and value not in choices:
        raise ValueError(f"{group}.{key}={value!r} is not valid; valid choices: {list(choices)}")


def _finite(x) -> bool:
    import math

    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_trainer(t: TrainerConfig) -> None:
    """Values that would crash late, train nothing, or silently do something else: fail now, one line each."""
    for key, choices in TRAINER_CHOICES.items():
        _check_choice("trainer", key, getattr(t, key), choices)
    for key in ("lr", "epochs", "weight_decay", "warmup_ratio", "adam_beta2", "adam_epsilon", "max_grad_norm",
                "label_smoothing"):
        if not _finite(getattr(t, key)):
            raise ValueError(f"trainer.{key}={getattr(t, key)!r} is not valid; valid: a finite number")
    if t.batch_size < 1 or t.eval_batch_size < 1:
        bad = "batch_size" if t.batch_size < 1 else "eval_batch_size"
        raise ValueError(f"trainer.{bad}={getattr(t, bad)} is not valid; valid: integers >= 1")
    if t.gradient_accumulation_steps < 1:
        raise ValueError(f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps} is not valid; "
                         "valid: integers >= 1 (1 = no accumulation)")
    if t.lr <= 0:
        raise ValueError(f"trainer.lr={t.lr} is not valid; valid: a learning rate > 0 (e.g. 4e-4)")
    if t.epochs < 0:
        raise ValueError(f"trainer.epochs={t.epochs} is not valid; valid: a number > 0")
    if t.max_steps == 0 or t.max_steps < -1:
        raise ValueError(f"trainer.max_steps={t.max_steps} would train {'zero' if t.max_steps == 0 else 'no'} steps; "
                         "valid: -1 (no cap: train trainer.epochs) or a positive number of steps")
    if t.max_steps == -1 and t.epochs == 0:
        raise ValueError("trainer.epochs=0 with trainer.max_steps=-1 trains zero steps; valid: trainer.epochs > 0 "
                         "or trainer.max_steps > 0")
    if not 0 <= t.warmup_ratio < 1:
        raise ValueError(f"trainer.warmup_ratio={t.warmup_ratio} is not valid; valid: 0 <= warmup_ratio < 1")
    if t.warmup_steps < 0:
        raise ValueError(f"trainer.warmup_steps={t.warmup_steps} is not valid; valid: integers >= 0")
    if t.max_grad_norm < 0:
        raise ValueError(f"trainer.max_grad_norm={t.max_grad_norm} is not valid; valid: >= 0 (0 disables clipping)")
    if not 0 <= t.label_smoothing < 1:
        raise ValueError(f"trainer.label_smoothing={t.label_smoothing} is not valid; valid: 0 <= label_smoothing < 1")
    if not 0 < t.adam_beta2 < 1:
        raise ValueError(f"trainer.adam_beta2={t.adam_beta2} is not valid; valid: 0 < adam_beta2 < 1")
    if t.eval_strategy == "steps" and t.eval_steps < 1:
        raise ValueError(f"trainer.eval_strategy=steps needs trainer.eval_steps >= 1 (got {t.eval_steps})")
    if t.logging_steps < 1:
        raise ValueError(f"trainer.logging_steps={t.logging_steps} is not valid; valid: integers >= 1")
    if t.save_total_limit < 1:
        raise ValueError(f"trainer.save_total_limit={t.save_total_limit} is not valid; valid: integers >= 1 "
                         "(checkpoints kept for resume)")
    if t.split_piece_tokens < 0:
        raise ValueError(f"trainer.split_piece_tokens={t.split_piece_tokens} is not valid; valid: integers >= 0 "
                         "(the cost of one more forward and backward, in padded tokens)")
    if t.malloc_mmap_threshold_mb is not None and not 0 < t.malloc_mmap_threshold_mb <= heap.MAX_MMAP_THRESHOLD_MB:
        raise ValueError(f"trainer.malloc_mmap_threshold_mb={t.malloc_mmap_threshold_mb} is not valid; valid: "
                         f"0 < MB <= {heap.MAX_MMAP_THRESHOLD_MB} (glibc's limit), or null for glibc's own threshold")
    if t.num_workers < 0 or t.threads < 0:
        bad = "num_workers" if t.num_workers < 0 else "threads"
        raise ValueError(f"trainer.{bad}={getattr(t, bad)} is not valid; valid: integers >= 0")
    from transformers import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    if t.lr_scheduler not in schedulers:
        raise ValueError(f"trainer.lr_scheduler={t.lr_scheduler!r} is not valid; valid choices: {schedulers}")


def check_task_sizes(task_cfg: Any) -> None:
    """Subset sizes that leave nothing to train or evaluate on fail before anything loads."""
    for key in ("max_train_samples", "max_eval_samples"):
        n = getattr(task_cfg, key, None)
        if n is not None and n < 1:
            what = "training" if key == "max_train_samples" else "evaluation"
            raise ValueError(f"task.{key}={n} leaves no {what} examples; valid: null (all) or an integer >= 1")


def check_method_inert(method_cfg: Any) -> None:
    """Method settings under which the method cannot learn anything (only the head would): refuse them."""
    name = getattr(method_cfg, "name", "?")
    alpha = getattr(method_cfg, "alpha", None)
    if alpha is not None and _finite(alpha) and alpha == 0:
        raise ValueError(f"method.alpha=0 makes the {name} scaling alpha/r = 0: the update is always zero and only "
                         "the head learns; valid: alpha != 0 (e.g. 8 or 16)")
    if alpha is not None and not _finite(alpha):
        raise ValueError(f"method.alpha={alpha!r} is not valid; valid: a finite number != 0")
    for key in ("dropout",):
        p = getattr(method_cfg, key, None)
        if p is not None and (not _finite(p) or not 0 <= p < 1):
            extra = " (1 drops every input of the update: it never learns)" if p == 1 else ""
            raise ValueError(f"method.{key}={p!r} is not valid{extra}; valid: 0 <= {key} < 1")


def validate(cfg: DictConfig) -> RunConfig:
    """Check the composed config group by group; raise ``ValueError`` on the first problem.

    The task and the method are asked whether they fit the model's family (its heads, its matrices).
    Every message is one line naming the key, the value and what is valid.
    """
    known_top = {"model", "task", "method", "trainer", "logger", "seed", "init_from", "hydra", "experiment_name",
                 "overwrite"}
    unknown = sorted(set(cfg.keys()) - known_top)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown}; valid keys: {sorted(known_top)}")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is not valid; valid: an integer (e.g. seed=1)")
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite={overwrite!r} is not valid; valid: true or false")
    init_from = cfg.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise ValueError(f"init_from={init_from!r} is not valid; valid: a run folder or adapter.safetensors path")
    model = _as_schema(ModelConfig, cfg.model, "model")
    family = resolve_family(model)
    model.family = family.name
    try:
        task = build_task(cfg.task)
    except ValueError as e:
        raise _one_line_config_error(e, "task") from None
    task.validate(family, model=model.name)
    check_task_sizes(task.cfg)
    try:
        method = build_method(cfg.method)
    except ValueError as e:
        raise _one_line_config_error(e, "method") from None
    method.validate(family)
    check_method_inert(method.cfg)
    trainer = _as_schema(TrainerConfig, cfg.trainer, "trainer")
    from lora_research.models import pick_device

    pick_device(trainer.device)
    check_trainer(trainer)
    resolve_unpadded(trainer, family, method)
    if trainer.train_batch_split != "none" and task.head not in ("classification", "regression"):
        raise ValueError(f"trainer.train_batch_split={trainer.train_batch_split} is for tasks whose loss is a mean "
                         f"over the batch's rows (classification, regression: GLUE); task {task.name} trains a "
                         f"{task.head} head; valid here: trainer.train_batch_split=none")
    logger = _as_schema(LoggerConfig, cfg.logger, "logger")
    for key, choices in LOGGER_CHOICES.items():
        _check_choice("logger", key, getattr(logger, key), choices)
    return RunConfig(
        model=model,
        task=task.cfg,
        method=method.cfg,
        trainer=trainer,
        logger=logger,
        seed=seed,
        init_from=init_from,
        raw=cfg,
    )


def resolve_unpadded(trainer: TrainerConfig, family, method) -> None:
    """Check ``trainer.unpadded`` against the model family and method; ``auto`` becomes true or false."""
    if trainer.unpadded not in (True, False, "auto"):
        raise ValueError(f"trainer.unpadded={trainer.unpadded!r} is not valid; valid choices: [true, false, auto]")
    from lora_research.unpadded import refusal

    why = refusal(family, method)
    if trainer.unpadded is True and why:
        raise ValueError(f"trainer.unpadded=true packs encoder batches (BERT, RoBERTa families) for methods that change "
                         f"each token alone; {why}; valid here: trainer.unpadded=false or auto")
    if trainer.unpadded == "auto":
        trainer.unpadded = not why
        if why:
            logging.getLogger(__name__).info("trainer.unpadded=auto: padded batches (%s)", why)


def check_against_model(run: RunConfig) -> None:
    """Ranks, targets, layers and ``init_from`` against the model's config, before any weight loads.

    The architecture is built on the ``meta`` device (shapes only, no memory, no weights read) from
    the checkpoint's ``config.json`` (or ``config_overrides``), the method is applied to it, and an
    ``init_from`` adapter's tensor names and shapes (read from its header) are matched against the
    trainable parameters. Problems raise ``ValueError`` (one line); a model config that cannot be
    read here (e.g. a hub id while offline) is left to the real load.
    """
    import torch

    from lora_research.methods import count_parameters, get_method_class
    from lora_research.models import _random_config, config_source
    from lora_research.tasks import build_task
    from lora_research.targets import get_family, is_head_parameter

    family = get_family(run.model.family) if run.model.family else resolve_family(run.model)
    task = build_task(run.task)
    task_kwargs: dict = {}
    if task.head != "generation":
        task_kwargs["num_labels"] = task.num_labels if task.num_labels is not None else 2
        if task.problem_type:
            task_kwargs["problem_type"] = task.problem_type
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        if run.model.random_init:
            hf_cfg = _random_config(run.model, **task_kwargs)
        else:
            path, kwargs = config_source(run.model)
            hf_cfg = AutoConfig.from_pretrained(path, **kwargs, **task_kwargs)
        auto = AutoModelForCausalLM if task.head == "generation" else AutoModelForSequenceClassification
        with torch.device("meta"):
            skeleton = auto.from_config(hf_cfg)
    except (OSError, ValueError, KeyError, ImportError, TypeError, RuntimeError):
        return  # the real load reports it (with its own message)
    method = get_method_class(run.method.name)(run.method)
    try:
        with torch.device("meta"):
            method.apply(skeleton, family)
    except ValueError as e:
        raise ValueError(" ".join(str(e).split())) from None
    except Exception:  # noqa: BLE001 - an operation the meta device lacks: the real apply will tell
        return
    counts = count_parameters(skeleton, family)
    if counts.trainable_params_without_head == 0:
        raise ValueError(f"method {run.method.name!r} with these settings trains no parameter besides the head "
                         "(nothing to adapt); check its options (layers, lengths, top_layers ...)")
    if run.init_from:
        from pathlib import Path

        from lora_research import outputs

        src = Path(run.init_from).expanduser()
        if src.is_dir() and not (src / outputs.ADAPTER_FILE).exists() and (src / "adapter_model.safetensors").exists():
            outputs.safetensors_header(src / "adapter_model.safetensors")  # a PEFT folder: its names are PEFT's
            return
        if not src.exists():
            raise FileNotFoundError(f"init_from={run.init_from!r}: no such run folder or adapter file")
        path = outputs.verify_adapter(src)
        header = outputs.safetensors_header(path)
        if (header.get("__metadata__") or {}).get("format", outputs.ADAPTER_FORMAT).split("/")[0] != \
                outputs.ADAPTER_FORMAT.split("/")[0]:
            return
        shapes = {n: tuple(v["shape"]) for n, v in header.items() if n != "__metadata__"}
        trainable = {n: tuple(p.shape) for n, p in skeleton.named_parameters() if p.requires_grad}
        usable = [n for n, s in shapes.items() if not is_head_parameter(n, family) and trainable.get(n) == s]
        if not usable:
            raise ValueError(f"init_from={run.init_from!r}: no tensor of {path} matches this run's trainable "
                             "parameters (different method, targets, rank or model?)")


def schema_defaults(schema: type) -> dict:
    """A schema's defaults as the plain dict that ``conf/`` YAML files build on."""
    return OmegaConf.to_container(OmegaConf.structured(schema))


#: the groups with one schema each (a task's schema follows its kind, a method's its name)
GROUP_SCHEMAS = {"model": ModelConfig, "trainer": TrainerConfig, "logger": LoggerConfig}


def _schema_of(group: str, node: Any) -> Optional[type]:
    if not isinstance(node, dict):
        return None
    if group in GROUP_SCHEMAS:
        return GROUP_SCHEMAS[group]
    if group == "task":
        cls = TASKS.get(node.get("kind"))
    elif group == "method":
        cls = METHODS.get(node.get("name"))
    else:
        return None
    return cls.Config if cls is not None else None


def _fill(defaults: dict, node: dict) -> dict:
    out = dict(node)
    for k, d in defaults.items():
        if k not in out:
            out[k] = d
        elif isinstance(d, dict) and d and isinstance(out[k], dict):
            out[k] = _fill(d, out[k])
    return out


def _integral_floats_as_ints(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _integral_floats_as_ints(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_integral_floats_as_ints(v) for v in x]
    return int(x) if isinstance(x, float) and x.is_integer() else x


def canonical(resolved: dict) -> dict:
    """A resolved config as two runs are compared (run-folder fingerprint, results-table rows): every
    group with its schema's defaults filled in and integral floats as ints. A ``config.yaml`` written
    before a key existed (that key at its default) or spelling α as 16 rather than 16.0 is the same run."""
    out = {g: (_fill(schema_defaults(schema), node) if (schema := _schema_of(g, node)) else node)
           for g, node in resolved.items()}
    return _integral_floats_as_ints(out)


def register_schemas() -> None:
    """``schema/<group>/<name>`` in Hydra's ConfigStore for every schema (run again after a plugin
    method registers itself, to make ``/schema/method/<its name>`` available to its YAML)."""
    cs = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=group, node=schema_defaults(schema))
    for kind, task_cls in TASKS.items():
        cs.store(group="schema/task", name=kind, node=schema_defaults(task_cls.Config))
    for name, method_cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=schema_defaults(method_cls.Config))


register_schemas()
