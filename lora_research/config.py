"""Typed schemas for every config group, and their validation at start-up.

Hydra composes YAML from ``conf/``; :func:`validate` then checks each group against its schema
(dataclasses below, the model's in :mod:`lora_research.models`, each task's and method's next
to its class). An unknown key or a wrong type fails before any model is loaded, with a message that
names the bad key or value and the valid choices, so a typo fails at start-up, not after an hour.

Task and method schemas come from their registered classes. All schemas are also registered in
Hydra's ConfigStore (``schema/<group>/<name>``) so tools can list them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

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
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    lr: float = 4e-4  # peak learning rate (Table 9 "Learning Rate")
    weight_decay: float = 0.1  # AdamW decay; 0.1 in the repo scripts, not stated in the paper
    warmup_ratio: float = 0.06  # linear warmup over this fraction of steps (Table 9)
    warmup_steps: int = 0  # > 0: warmup in steps instead (Table 11: 500)
    lr_scheduler: str = "linear"  # any transformers scheduler name
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8  # 1e-6 in microsoft/LoRA's GPT-2 optimizer
    max_grad_norm: float = 1.0  # 0 disables clipping (GPT-2 scripts: --clip 0.0)
    label_smoothing: float = 0.0  # Table 11: 0.1 for E2E
    eval_strategy: str = "epoch"  # epoch | steps
    eval_steps: int = 0  # with eval_strategy=steps
    save_total_limit: int = 1  # trainer checkpoints kept for resume
    keep_checkpoints: bool = False  # keep <run>/checkpoints after a successful run
    logging_steps: int = 10
    num_workers: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision on CUDA)
    full_determinism: bool = False  # torch deterministic algorithms (slower); CUBLAS_WORKSPACE_CONFIG set
    resume: str = "auto"  # auto: resume from the run folder's last checkpoint | never | <checkpoint path>
    threads: int = 0  # torch CPU threads (0 = torch default)


@dataclass
class LoggerConfig:
    """Experiment tracking (``logger=`` group): W&B or none."""

    name: str = "none"  # wandb | none
    project: str = "lora-research"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online if an API key is set, else offline) | online | offline | disabled
    group: Optional[str] = None  # default: the sweep folder name for multiruns, else "single"
    tags: list = field(default_factory=list)  # added to the task, model and method tags
    log_adapter: bool = False  # log adapter.safetensors as a W&B artifact at the end of the run


TRAINER_CHOICES = {
    "device": None,
    "eval_strategy": ("epoch", "steps"),
    "precision": ("fp32", "bf16", "fp16"),
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


def _as_schema(schema: type, node: Any, group: str):
    return as_dataclass(schema, node, f"in {group!r} config")


def _check_choice(group: str, key: str, value: Any, choices) -> None:
    if choices is not None and value not in choices:
        raise ValueError(f"{group}.{key}={value!r} is not valid; valid choices: {list(choices)}")


def validate(cfg: DictConfig) -> RunConfig:
    """Check the composed config group by group; raise ``ValueError`` on the first problem.

    The task and the method are asked whether they fit the model's family (its heads, its matrices).
    """
    known_top = {"model", "task", "method", "trainer", "logger", "seed", "init_from", "hydra", "experiment_name"}
    unknown = sorted(set(cfg.keys()) - known_top)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown}; valid keys: {sorted(known_top)}")
    model = _as_schema(ModelConfig, cfg.model, "model")
    family = resolve_family(model)
    model.family = family.name
    task = build_task(cfg.task)
    task.validate(family)
    method = build_method(cfg.method)
    method.validate(family)
    trainer = _as_schema(TrainerConfig, cfg.trainer, "trainer")
    for key, choices in TRAINER_CHOICES.items():
        _check_choice("trainer", key, getattr(trainer, key), choices)
    from lora_research.models import pick_device

    pick_device(trainer.device)
    if trainer.batch_size < 1 or trainer.eval_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1 (got {trainer.batch_size}, {trainer.eval_batch_size})")
    if trainer.lr <= 0:
        raise ValueError(f"trainer.lr must be > 0 (got {trainer.lr})")
    logger = _as_schema(LoggerConfig, cfg.logger, "logger")
    for key, choices in LOGGER_CHOICES.items():
        _check_choice("logger", key, getattr(logger, key), choices)
    return RunConfig(
        model=model,
        task=task.cfg,
        method=method.cfg,
        trainer=trainer,
        logger=logger,
        seed=int(cfg.get("seed", 0)),
        init_from=cfg.get("init_from"),
        raw=cfg,
    )


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    for kind, task_cls in TASKS.items():
        cs.store(group="schema/task", name=kind, node=task_cls.Config)
    for name, method_cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=method_cls.Config)


_register()
