"""The small surface every fine-tuning method exposes.

A method (LoRA, adapters, BitFit, prefix tuning, full fine-tuning, ...) is a :class:`Method`:

* ``apply(model, family)`` changes the model in place: freezes what the method keeps fixed,
  adds what it trains, and leaves the task head trainable (every method trains the head; it is
  counted apart, as the paper does);
* ``trainable_state(model)`` returns the tensors a run saves (``adapter.safetensors``);
* ``analysis_index(model)`` describes those tensors for the Section 7 analysis;
* ``can_merge`` / ``merge`` / ``unmerge``: whether the learned update folds into W0.

``methods/`` knows modules and tensors only: not tasks, data or the trainer.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from lora_research.targets import FamilySpec, is_head_parameter


class MergeNotSupported(RuntimeError):
    """Raised by methods whose update cannot be folded into the pretrained weights."""


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of an adapted model (summary.json fields of the same names)."""

    trainable_params: int
    trainable_params_without_head: int
    head_params: int
    total_params: int


class Method(abc.ABC):
    """Base class of every method; subclasses set ``name`` and ``Config`` (a dataclass schema)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    can_merge: ClassVar[bool] = False

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.family: FamilySpec | None = None

    @abc.abstractmethod
    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        """Adapt ``model`` in place (and return it)."""

    def merge(self, model: nn.Module) -> None:
        raise MergeNotSupported(
            f"method {self.name!r} cannot merge: its trained parameters are extra modules or "
            "inputs, not an update of the pretrained weight matrices"
        )

    def unmerge(self, model: nn.Module) -> None:
        raise MergeNotSupported(f"method {self.name!r} cannot merge, so it cannot unmerge")

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every trainable tensor by parameter name, detached on CPU (what a run saves)."""
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def analysis_index(self, model: nn.Module) -> list[dict]:
        """Index entries for ``adapter.safetensors`` (see :mod:`lora_research.outputs`)."""
        return []

    def extra_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Frozen tensors the analysis needs beyond ``trainable_state`` (e.g. FT target weights)."""
        return {}


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_head(model: nn.Module, family: FamilySpec) -> None:
    """Make the task head trainable (RoBERTa ``classifier``; BERT ``pooler`` + ``classifier``)."""
    for name, p in model.named_parameters():
        if is_head_parameter(name, family):
            p.requires_grad_(True)


def count_parameters(model: nn.Module, family: FamilySpec) -> ParamCounts:
    """Count trainable parameters with and without the head, and all parameters.

    Tied parameters (GPT-2's lm_head = wte) are counted once.
    """
    seen: set[int] = set()
    trainable = head = total = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            if is_head_parameter(name, family):
                head += p.numel()
    return ParamCounts(trainable, trainable - head, head, total)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``path`` inside ``model``."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)
