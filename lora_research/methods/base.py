"""The small surface every fine-tuning method exposes.

A method (LoRA, adapters, BitFit, prefix tuning, full fine-tuning, ...) is a :class:`Method`:

* ``apply(model, family)`` changes the model in place: freezes what the method keeps fixed,
  adds what it trains, and leaves the task head trainable (every method trains the head; it is
  counted apart, as the paper does);
* ``trainable_state(model)`` returns the tensors a run saves (``adapter.safetensors``);
* ``analysis_index(model)`` describes those tensors for the Section 7 analysis;
* ``can_merge`` / ``merge`` / ``unmerge``: whether the learned update folds into W0;
* ``validate(family)`` checks the config against a model family before anything is loaded;
* ``label()`` names the run's row in results tables (``lora r=8 q,v``).

A method registers itself with :func:`register_method` where it is defined; every module of
``lora_research/methods/`` is imported by the package, and third-party packages add methods
through the entry-point group ``lora_research.methods``. ``methods/`` knows modules and tensors
only: not tasks, data or the trainer.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

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
    # the method changes how each token is computed, never which positions a block sees (prefix tuning inserts
    # positions): an encoder can run its batches packed, real tokens only (trainer.unpadded, lora_research.unpadded)
    token_wise: ClassVar[bool] = True

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.family: FamilySpec | None = None

    @abc.abstractmethod
    def apply(self, model: nn.Module, family: FamilySpec) -> nn.Module:
        """Adapt ``model`` in place (and return it)."""

    def validate(self, family: FamilySpec) -> None:
        """Raise ``ValueError`` if this config cannot adapt a model of ``family`` (e.g. unknown targets)."""

    def label(self) -> str:
        """Row label in results tables: the name, then rank and targets when the method has them."""
        r, targets = getattr(self.cfg, "r", None), getattr(self.cfg, "targets", None)
        return self.name + (f" r={r}" if r is not None else "") + (" " + ",".join(targets) if targets else "")

    def merge(self, model: nn.Module, keep_original: bool = True) -> None:
        """Fold the learned update into the pretrained weights. ``keep_original=False``: for a model that is used
        merged and then dropped (decoding, prediction), no copy of W0 is kept aside for a bit-exact unmerge."""
        raise MergeNotSupported(
            f"method {self.name!r} cannot merge: its trained parameters are extra modules or "
            "inputs, not an update of the pretrained weight matrices"
        )

    def unmerge(self, model: nn.Module) -> None:
        raise MergeNotSupported(f"method {self.name!r} cannot merge, so it cannot unmerge")

    def merge_for_inference(self, model: nn.Module) -> bool:
        """Fold the update into the weights of a model that is only used merged from now on (decoding, prediction,
        export): the forward then costs what the base model's costs, and no copy of W0 is kept. Returns whether it
        merged (False: the method cannot, and the model is left as it is)."""
        if self.can_merge:
            self.merge(model, keep_original=False)
        return self.can_merge

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every trainable tensor by parameter name, detached on CPU (what a run saves)."""
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def analysis_index(self, model: nn.Module) -> list[dict]:
        """Index entries for ``adapter.safetensors`` (see :mod:`lora_research.outputs`)."""
        return []

    def extra_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Frozen tensors the analysis needs beyond ``trainable_state`` (e.g. FT target weights)."""
        return {}


METHODS: dict[str, type[Method]] = {}
ENTRY_POINT_GROUP = "lora_research.methods"
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``method=<cls.name>``."""
    other = METHODS.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}")
    METHODS[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in METHODS:
            obj = ep.load()  # a Method subclass, or a module whose classes use @register_method
            if isinstance(obj, type) and issubclass(obj, Method):
                register_method(obj)


def get_method_class(name: str) -> type[Method]:
    """The registered method called ``name``; ``ValueError`` naming the valid choices otherwise."""
    if name not in METHODS:
        _load_entry_points()
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid choices: {sorted(METHODS)}") from None


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
