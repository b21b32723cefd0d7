"""The adapter file (``adapter.safetensors``): the one place that writes, reads and verifies it, knows
which base model it belongs to, and computes the ΔW of every entry.

Training (the best-epoch snapshot, ``init_from``, restoring a run), the Section 7 analysis
(:mod:`lora_research.analysis.deltas`), export and predict all go through this module.

Format ``lora_research.adapter/2``
----------------------------------
A safetensors file: the run's trained tensors by parameter name (LoRA: ``<module>.lora_A.<matrix>``
(r, k) and ``<module>.lora_B.<matrix>`` (d, r); DoRA adds ``<module>.lora_magnitude.<matrix>`` (d,);
PiSSA adds the initial factors ``<module>.lora_A0.<matrix>``/``lora_B0``; full fine-tuning and
FT^Top2 hold *every* trained parameter, e.g. ``<module>.weight``; every method the task head), and
string metadata (JSON values):

* ``format`` (``lora_research.adapter/2``), ``checksum`` (SHA-256 of every tensor's name, dtype,
  shape and bytes: a flipped bit or a truncated file is an error naming the file, never a wrong
  result);
* ``base``: the base model's identity (:class:`BaseIdentity`): its ``name_or_path`` and short name,
  family, ``model_type``, an ``architecture`` fingerprint (SHA-256 of the backbone's parameter
  names, shapes and dtypes) and a ``weights`` fingerprint (SHA-256 of their bytes), plus what is
  needed to load it again (the ``model`` config, head, number of labels, the seed a random-init
  base was drawn with). Two adapters are comparable when their weights fingerprints agree;
* ``method``, ``config`` (the method config), ``task``, ``seed``, ``r``, ``alpha``, ``scaling``,
  ``best_epoch``/``best_step``, and the legacy strings ``base_model``/``model_family``;
* ``index``: one entry per adapted matrix::

      {"layer": 3, "matrix": "q", "module": "bert.encoder.layer.3.attention.self.query",
       "kind": "lowrank", "A": "<key>", "B": "<key>", "r": 8, "alpha": 16.0, "scaling": 2.0,
       "out_slice": null | [start, stop], "base_shape": [out, in], "fan_in_fan_out": false,
       "dora": true, "magnitude": "<key>",          # DoRA only
       "pissa": true, "A0": "<key>", "B0": "<key>"}  # PiSSA only

  or, for full fine-tuning, ``"kind": "full", "W": "<key of the module's weight>",
  "W_layout": "module"`` (the parameter as the model holds it: (in, out) for GPT-2's ``Conv1D``).

ΔW of an entry (rows ``out_slice`` of the module's (out, in) weight, relative to the *pretrained*
weight W0), :func:`delta`:

=============================  ===============================================================
LoRA, rsLoRA, Gaussian init    s·B A                       (s = α/r, or α/√r for rsLoRA)
PiSSA                          s·(B A − B0 A0)             (the run's base held W0 − s·B0 A0)
DoRA                           m/‖V‖_c · V − W0,  V = W0 + s·B A  (‖·‖_c: norm of each output row)
DoRA + PiSSA                   same with V = W0 − s·B0 A0 + s·B A
full FT, FT^Top2               W_ft − W0
=============================  ===============================================================

DoRA and full FT need W0: :func:`load_base` rebuilds the base model from its identity and refuses
one whose weights fingerprint differs. Files of format ``/1`` (no checksum, no base identity,
full-FT ``W`` already sliced to (rows, in)) are still read.

A PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``, trained anywhere on a
supported family) is read by :func:`read` too and converted to the same entries and key names, so
analysis and ``init_from`` treat it as a run of this repo.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from lora_research.atomic import atomic_write
from lora_research.targets import FAMILIES, FamilySpec, is_head_parameter

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"  # in a run folder (``lora_research.outputs`` names the same file)
FORMAT_NAME = "lora_research.adapter"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
READABLE_VERSIONS = (1, 2)
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
EXPORT_INFO_FILE = "lora_research.json"  # written by ``lora_research.export`` into every exported folder

#: ``loader(module_path, out_slice) -> W0`` in (out, in) orientation, rows ``out_slice`` or all rows.
BaseWeightLoader = Callable[[str, Optional[Sequence[int]]], torch.Tensor]


class AdapterFileError(ValueError):
    """A file that is not a valid adapter (or does not fit the model): one line naming the file."""


# ---------------------------------------------------------------------------------------------
# The base model's identity


@dataclass(frozen=True)
class BaseIdentity:
    """Which pretrained model an adapter belongs to, and how to load it again."""

    name_or_path: str = ""
    name: str = ""
    family: str = ""
    model_type: str = ""
    architecture: Optional[str] = None  # sha256: model_type + backbone parameter names, shapes, dtypes
    weights: Optional[str] = None  # sha256: the backbone parameters' bytes
    model: dict = field(default_factory=dict)  # the ``model`` config that loads it
    head: Optional[str] = None
    num_labels: Optional[int] = None
    problem_type: Optional[str] = None
    seed: Optional[int] = None  # the run's seed (a random-init base's weights are drawn with it)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "BaseIdentity":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in known})

    def describe(self) -> str:
        bits = [self.family or "family ?"]
        if self.architecture:
            bits.append(f"architecture {self.architecture[:10]}")
        if self.weights:
            bits.append(f"weights {self.weights[:10]}")
        else:
            bits.append("no weights fingerprint")
        if self.model.get("random_init") and self.seed is not None:
            bits.append(f"random init, seed {self.seed}")
        name = self.name or self.name_or_path or "?"
        if self.name and self.name_or_path and self.name != self.name_or_path:
            name = f"{self.name} = {self.name_or_path}"
        return f"{name} ({', '.join(bits)})"


def backbone_parameters(model: torch.nn.Module, family: FamilySpec):
    """``(name, tensor)`` of every parameter outside the task head (tied ones once)."""
    for name, p in model.named_parameters():
        if not is_head_parameter(name, family):
            yield name, p


def fingerprint(model: torch.nn.Module, family: FamilySpec) -> tuple[str, str]:
    """``(architecture, weights)`` SHA-256 fingerprints of a model's backbone (the head excluded:
    it is initialised per run). Computed on the pretrained model *before* a method changes it."""
    arch = hashlib.sha256(str(getattr(model.config, "model_type", "")).encode())
    weights = hashlib.sha256()
    for name, p in backbone_parameters(model, family):
        t = p.detach()
        desc = f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode()
        arch.update(desc)
        weights.update(desc)
        weights.update(_tensor_bytes(t))
    return arch.hexdigest(), weights.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _as_dict(cfg: Any) -> dict:
    if is_dataclass(cfg):
        return asdict(cfg)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def identify_base(model, family: FamilySpec, model_cfg: Any, *, head: Optional[str] = None,
                  num_labels: Optional[int] = None, problem_type: Optional[str] = None,
                  seed: Optional[int] = None) -> BaseIdentity:
    """The identity of a freshly loaded pretrained ``model`` (call it before ``method.apply``)."""
    cfg = _as_dict(model_cfg)
    arch, weights = fingerprint(model, family)
    return BaseIdentity(
        name_or_path=str(cfg.get("name_or_path", "")), name=str(cfg.get("name", "")), family=family.name,
        model_type=str(getattr(model.config, "model_type", "")), architecture=arch, weights=weights,
        model=cfg, head=head, num_labels=num_labels, problem_type=problem_type, seed=seed,
    )


def base_mismatch(a: Optional[BaseIdentity], b: Optional[BaseIdentity]) -> Optional[str]:
    """Why two adapters' base models differ (``None``: the same base, as far as can be told).

    Weights fingerprints decide when both are known; otherwise family and ``name_or_path``.
    """
    a, b = a or BaseIdentity(), b or BaseIdentity()
    if a.weights and b.weights:
        if a.weights == b.weights:
            return None
        if a.architecture and b.architecture and a.architecture != b.architecture:
            return f"different architectures: {a.describe()} vs {b.describe()}"
        return f"same architecture, different weights: {a.describe()} vs {b.describe()}"
    if a.family and b.family and a.family != b.family:
        return f"different model families: {a.describe()} vs {b.describe()}"
    if a.architecture and b.architecture and a.architecture != b.architecture:
        return f"different architectures: {a.describe()} vs {b.describe()}"
    if _norm_name(a.name_or_path) != _norm_name(b.name_or_path):
        return (f"different base models, and one records no weights fingerprint to prove otherwise: "
                f"{a.describe()} vs {b.describe()}")
    return None


def _norm_name(name: str) -> str:
    try:
        from lora_research.models import resolve_path

        return str(Path(resolve_path(name)).resolve()) if Path(resolve_path(name)).exists() else name
    except (FileNotFoundError, ImportError):
        return name


def load_base(identity: BaseIdentity, *, verify: bool = True):
    """The pretrained base model an adapter was trained on, rebuilt from its identity.

    A random-init base is drawn with the run's seed, as training did; the task head is a fresh one
    (methods train it; it is not part of the base). With ``verify`` a base whose weights fingerprint
    differs from the recorded one is refused (the checkpoint changed, or another seed).
    """
    if not identity.model:
        raise AdapterFileError(
            f"base model {identity.name_or_path or '?'!r}: the adapter records no model config to load it "
            "(a file of format /1 or a foreign PEFT folder); pass the base weights explicitly"
        )
    from transformers import set_seed

    if identity.seed is not None:
        set_seed(int(identity.seed))
    if identity.head is None and identity.num_labels is None:  # no head recorded: the family's default
        from lora_research.models import load_base_model

        model = load_base_model(identity.model)
    else:
        from lora_research.models import load_model

        model = load_model(identity.model, head=identity.head, num_labels=identity.num_labels,
                           problem_type=identity.problem_type)
    if verify and identity.weights:
        from lora_research.models import resolve_family

        _, weights = fingerprint(model, resolve_family(identity.model))
        if weights != identity.weights:
            raise AdapterFileError(
                f"the base model loaded from {identity.name_or_path!r} is not the one the adapter was trained on "
                f"(weights fingerprint {weights[:10]} != recorded {identity.weights[:10]}): its checkpoint changed "
                "since training, or it was drawn with another seed"
            )
    return model.eval()


def base_weight_loader(identity: BaseIdentity, *, verify: bool = True) -> BaseWeightLoader:
    """A :data:`BaseWeightLoader` over :func:`load_base` (the model is loaded once, on first use)."""
    cache: dict = {}

    def load(module: str, out_slice=None) -> torch.Tensor:
        if "model" not in cache:
            cache["model"] = load_base(identity, verify=verify)
        try:
            mod = cache["model"].get_submodule(module)
        except AttributeError:
            raise AdapterFileError(f"base model {identity.name_or_path!r} has no module {module!r}") from None
        w = mod.weight.detach()
        if type(mod).__name__ == "Conv1D":  # GPT-2 stores (in, out)
            w = w.T
        return _rows(w, out_slice)

    return load


# ---------------------------------------------------------------------------------------------
# Entries and their ΔW


@dataclass(frozen=True)
class AdapterEntry:
    """One adapted matrix of one layer (one row of the index), tensors in analysis dtype."""

    layer: int
    matrix: str
    module: str
    A: Optional[torch.Tensor] = None  # (r, k)
    B: Optional[torch.Tensor] = None  # (d, r)
    W: Optional[torch.Tensor] = None  # (d, k) fine-tuned weight rows, full FT only
    r: Optional[int] = None
    alpha: Optional[float] = None
    scaling: Optional[float] = None
    out_slice: Optional[tuple] = None
    base_shape: Optional[tuple] = None
    magnitude: Optional[torch.Tensor] = None  # DoRA m, (d,)
    A0: Optional[torch.Tensor] = None  # PiSSA initial factors
    B0: Optional[torch.Tensor] = None
    fan_in_fan_out: bool = False  # the module stores its weight (in, out) (GPT-2 Conv1D)
    base_loader: Optional[BaseWeightLoader] = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return "full" if self.W is not None else "lowrank"

    @property
    def has_factors(self) -> bool:
        return self.A is not None and self.B is not None

    @property
    def dora(self) -> bool:
        return self.magnitude is not None

    @property
    def pissa(self) -> bool:
        return self.A0 is not None and self.B0 is not None

    @property
    def is_lora(self) -> bool:
        """ΔW is exactly s·B A (LoRA, rsLoRA, Gaussian init): A and B alone describe it."""
        return self.has_factors and not self.dora and not self.pissa

    @property
    def needs_base(self) -> bool:
        """ΔW depends on the pretrained W0 (full FT, DoRA)."""
        return self.W is not None or self.dora

    @property
    def key(self) -> tuple:
        return (self.layer, self.matrix)

    @property
    def shape(self) -> tuple:
        """(d_out, k_in) of ΔW for this entry."""
        if self.has_factors:
            return (self.B.shape[0], self.A.shape[1])
        return tuple(self.W.shape)


def _rows(w: torch.Tensor, out_slice) -> torch.Tensor:
    return w if out_slice is None else w[int(out_slice[0]):int(out_slice[1])]


def base_rows(entry: AdapterEntry, base_loader: Optional[BaseWeightLoader] = None) -> torch.Tensor:
    """W0 of an entry (rows ``out_slice``, (out, in)), float64, checked against ΔW's shape."""
    loader = base_loader or entry.base_loader
    if loader is None:
        raise ValueError(f"{entry.module} (layer {entry.layer}, {entry.matrix}): ΔW needs the pretrained "
                         "weights W0; pass a base_loader")
    w0 = loader(entry.module, None if entry.out_slice is None else list(entry.out_slice))
    w0 = w0.detach().to(torch.float64)
    if tuple(w0.shape) != tuple(entry.shape):
        raise ValueError(f"{entry.module} slice {entry.out_slice}: W0 shape {tuple(w0.shape)} "
                         f"!= ΔW shape {tuple(entry.shape)}")
    return w0


def delta(entry: AdapterEntry, base_loader: Optional[BaseWeightLoader] = None,
          include_scaling: bool = True) -> torch.Tensor:
    """Dense ΔW of one entry relative to the pretrained weight: (rows of its slice, in), float64.

    See the module docstring for each method. ``include_scaling=False`` drops the α/r factor of the
    low-rank forms (s·BA → BA, s·(BA − B0A0) → BA − B0A0); it does not apply to DoRA and full FT,
    whose ΔW is a difference of weights. ``base_loader`` (default: the entry's own) gives W0.
    """
    if entry.W is not None:
        return entry.W.to(torch.float64) - base_rows(entry, base_loader)
    if not entry.has_factors:
        raise ValueError(f"{entry.module}: entry has neither A/B factors nor a weight")
    A, B = entry.A.to(torch.float64), entry.B.to(torch.float64)
    low = B @ A
    if entry.pissa:
        low = low - entry.B0.to(torch.float64) @ entry.A0.to(torch.float64)
    if not entry.dora:
        s = entry.scaling if (include_scaling and entry.scaling is not None) else 1.0
        return s * low
    s = 1.0 if entry.scaling is None else float(entry.scaling)
    w0 = base_rows(entry, base_loader)
    v = w0 + s * low  # W0 (or PiSSA's residual W0 − s·B0A0) + s·BA
    m = entry.magnitude.to(torch.float64)
    return (m / torch.linalg.norm(v, dim=1))[:, None] * v - w0


# ---------------------------------------------------------------------------------------------
# The file


@dataclass
class AdapterFile:
    """What :func:`read` returns: the tensors (as stored) and the decoded metadata."""

    path: Path
    tensors: dict
    metadata: dict
    version: int = FORMAT_VERSION
    source: str = FORMAT_NAME  # or "peft" for a converted PEFT folder
    run_dir: Optional[Path] = None

    @property
    def method(self) -> str:
        return str(self.metadata.get("method", "lora"))

    @property
    def index(self) -> list:
        return list(self.metadata.get("index") or [])

    @property
    def base(self) -> BaseIdentity:
        b = self.metadata.get("base")
        if isinstance(b, Mapping):
            return BaseIdentity.from_dict(b)
        return BaseIdentity(name_or_path=str(self.metadata.get("base_model", "")),
                            family=str(self.metadata.get("model_family", "")))

    def entries(self, dtype: torch.dtype = torch.float64,
                base_loader: Optional[BaseWeightLoader] = None) -> list:
        """One :class:`AdapterEntry` per index row, sorted by (layer, matrix), tensors in ``dtype``."""
        out = [_entry(row, lambda k: self.tensors[k].to(dtype), base_loader) for row in self.index]
        out.sort(key=lambda e: (e.layer, e.matrix))
        return out

    def indexed_keys(self) -> set:
        keys = set()
        for row in self.index:
            keys.update(row[k] for k in ("A", "B", "W", "magnitude", "A0", "B0") if row.get(k) is not None)
        return keys


def _entry(row: Mapping, get, base_loader) -> AdapterEntry:
    sl, shape = row.get("out_slice"), row.get("base_shape")
    ff = bool(row.get("fan_in_fan_out", False))
    W = A = B = mag = A0 = B0 = None
    if row.get("W") is not None:
        W = get(row["W"])
        if row.get("W_layout") == "module":  # the module's whole weight as the model holds it
            W = _rows(W.T if ff else W, sl)
    else:
        A, B = get(row["A"]), get(row["B"])
        if row.get("magnitude") is not None:
            mag = get(row["magnitude"])
        if row.get("A0") is not None and row.get("B0") is not None:
            A0, B0 = get(row["A0"]), get(row["B0"])
    return AdapterEntry(
        layer=int(row["layer"]), matrix=str(row["matrix"]), module=str(row["module"]), A=A, B=B, W=W,
        r=None if row.get("r") is None else int(row["r"]),
        alpha=None if row.get("alpha") is None else float(row["alpha"]),
        scaling=None if row.get("scaling") is None else float(row["scaling"]),
        out_slice=None if sl is None else tuple(int(s) for s in sl),
        base_shape=None if shape is None else tuple(int(s) for s in shape),
        magnitude=mag, A0=A0, B0=B0, fan_in_fan_out=ff, base_loader=base_loader,
    )


def checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _json_default(o):
    if isinstance(o, BaseIdentity):
        return o.to_dict()
    if is_dataclass(o):
        return asdict(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (Path, tuple)):
        return str(o) if isinstance(o, Path) else list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _decode_metadata(raw: Mapping[str, str]) -> dict:
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return meta


def save(path: Path | str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write an adapter file atomically: tensors + metadata (non-strings as JSON), with format and
    checksum. The index is verified against the tensors first, so an inconsistent file is never written."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: v for k, v in metadata.items() if k not in ("format", "checksum")}
    meta = json.loads(json.dumps(meta, default=_json_default, allow_nan=False))  # plain JSON values
    meta["format"] = FORMAT
    meta["checksum"] = checksum(tensors)
    verify_index(path, tensors, meta)
    encoded = {k: v if isinstance(v, str) else json.dumps(v, allow_nan=False) for k, v in meta.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=encoded))
    return path


def save_run_adapter(path: Path | str, method, model, metadata: Mapping[str, Any]) -> Path:
    """The training run's snapshot: the method's trainable tensors, plus the frozen ones its ΔW
    needs (``extra_state``, e.g. PiSSA's A0/B0), with ``metadata``."""
    tensors = dict(method.trainable_state(model))
    extra = method.extra_state(model)
    clash = sorted(set(tensors) & set(extra))
    if clash:
        raise ValueError(f"method {method.name!r}: extra_state repeats trainable tensors {clash[:3]}")
    tensors.update(extra)
    return save(path, tensors, metadata)


def _version(path: Path, meta: Mapping) -> int:
    fmt = meta.get("format")
    m = re.fullmatch(re.escape(FORMAT_NAME) + r"/(\d+)", str(fmt))
    if not m:
        raise AdapterFileError(f"{path}: format {fmt!r} is not an adapter of this repo (expected {FORMAT!r})")
    version = int(m.group(1))
    if version not in READABLE_VERSIONS:
        raise AdapterFileError(f"{path}: format {fmt!r}; this version reads "
                               f"{', '.join(f'{FORMAT_NAME}/{v}' for v in READABLE_VERSIONS)} (upgrade lora-research)")
    return version


def verify_index(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Every index row names tensors that exist and whose shapes agree with r, the slice and the base shape."""
    index = meta.get("index") or []
    if not isinstance(index, list):
        raise AdapterFileError(f"{path}: metadata 'index' is not a list")

    def fail(i, row, what):
        raise AdapterFileError(f"{path}: index entry {i} (layer {row.get('layer')}, {row.get('matrix')}, "
                               f"{row.get('module')}): {what}")

    def shape_of(i, row, key):
        name = row.get(key)
        if name is None:
            fail(i, row, f"has no {key!r} key")
        if name not in tensors:
            fail(i, row, f"tensor {name!r} ({key}) is not in the file")
        return tuple(tensors[name].shape)

    for i, row in enumerate(index):
        if not isinstance(row, Mapping) or not {"layer", "matrix", "module"} <= set(row):
            raise AdapterFileError(f"{path}: index entry {i} lacks layer/matrix/module: {row!r}")
        base = tuple(row["base_shape"]) if row.get("base_shape") is not None else None
        sl = row.get("out_slice")
        rows = (int(sl[1]) - int(sl[0])) if sl is not None else (base[0] if base else None)
        if row.get("W") is not None:
            w = shape_of(i, row, "W")
            if row.get("W_layout") == "module":
                want = base if base is None or not row.get("fan_in_fan_out") else (base[1], base[0])
            else:
                want = (rows, base[1]) if base is not None else None
            if want is not None and w != tuple(want):
                fail(i, row, f"tensor {row['W']!r} has shape {w}, expected {tuple(want)}")
            continue
        a, b = shape_of(i, row, "A"), shape_of(i, row, "B")
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            fail(i, row, f"A {a} and B {b} are not an (r, k), (d, r) pair")
        if row.get("r") is not None and int(row["r"]) != a[0]:
            fail(i, row, f"r={row['r']} but A has {a[0]} rows")
        if base is not None and (a[1] != base[1] or (rows is not None and b[0] != rows)):
            fail(i, row, f"A {a} / B {b} do not fit the base matrix {base} rows {sl}")
        if row.get("magnitude") is not None:
            m = shape_of(i, row, "magnitude")
            if m != (b[0],):
                fail(i, row, f"magnitude {row['magnitude']!r} has shape {m}, expected ({b[0]},)")
        for k0, want in (("A0", a), ("B0", b)):
            if row.get(k0) is not None and shape_of(i, row, k0) != want:
                fail(i, row, f"{k0} {row[k0]!r} has shape {shape_of(i, row, k0)}, expected {want}")


def _open_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: truncated, not safetensors, unreadable
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AdapterFileError(f"{path}: not a readable safetensors file ({reason}); "
                               "it is truncated or corrupted") from None
    return tensors, raw


def resolve(source: Path | str) -> tuple[Path, Optional[Path], str]:
    """``(file, run_dir, kind)`` for a run folder, an adapter file or a PEFT folder (``run_dir``: only
    when a folder was given)."""
    p = Path(source)
    if p.is_dir():
        if (p / ADAPTER_FILE).is_file():
            return p / ADAPTER_FILE, p, FORMAT_NAME
        if (p / PEFT_CONFIG_FILE).is_file():
            return p, None, "peft"
        raise FileNotFoundError(f"no adapter in {p}: expected {ADAPTER_FILE} (a run folder) or "
                                f"{PEFT_CONFIG_FILE} + {PEFT_WEIGHTS_FILE} (a PEFT folder)")
    if p.name == PEFT_CONFIG_FILE or p.name == PEFT_WEIGHTS_FILE:
        return p.parent, None, "peft"
    if not p.exists():
        raise FileNotFoundError(f"no adapter file at {p}")
    return p, None, FORMAT_NAME


def read(source: Path | str, *, verify: bool = True) -> AdapterFile:
    """Read (and verify) the adapter of a run folder, an ``adapter.safetensors`` or a PEFT folder.

    Verification: the format version, the checksum, every index row against the tensors.
    Errors are :class:`AdapterFileError` (a ``ValueError``) lines naming the file.
    """
    path, run_dir, kind = resolve(source)
    if kind == "peft":
        return read_peft(path)
    tensors, raw = _open_safetensors(path)
    meta = _decode_metadata(raw)
    version = _version(path, meta)
    if verify:
        if meta.get("checksum") is not None and checksum(tensors) != meta["checksum"]:
            raise AdapterFileError(f"{path}: tensor data does not match the file's checksum; the file is corrupted")
        verify_index(path, tensors, meta)
    return AdapterFile(path=path, tensors=tensors, metadata=meta, version=version, run_dir=run_dir)


def load(source: Path | str) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a verified adapter (see :func:`read`)."""
    af = read(source)
    return af.tensors, af.metadata


# ---------------------------------------------------------------------------------------------
# Into a model: restoring a run, init_from


def load_into(model, tensors: Mapping[str, torch.Tensor], names: Iterable[str], source: Any = "adapter") -> list:
    """Copy ``tensors[name]`` into the model's parameter ``name`` for each name; shapes must agree."""
    params = dict(model.named_parameters())
    names = list(names)
    for n in names:
        if n not in params:
            raise AdapterFileError(f"{source}: tensor {n!r} is not a parameter of this model")
        if tuple(params[n].shape) != tuple(tensors[n].shape):
            raise AdapterFileError(
                f"{source}: tensor {n!r} has shape {tuple(tensors[n].shape)} but the model's parameter has "
                f"{tuple(params[n].shape)} (another rank, target set or model?)")
    unexpected = model.load_state_dict({n: tensors[n] for n in names}, strict=False).unexpected_keys
    if unexpected:  # a name that is a parameter here always loads; kept as a guard on load_state_dict's naming
        raise AdapterFileError(f"{source}: tensors {unexpected[:5]} are not in this model's state_dict")
    return names


def init_from(model, source: Path | str, family: FamilySpec, base: Optional[BaseIdentity] = None) -> list:
    """Start a run's method tensors from another adapter (run folder, file or PEFT folder; paper D.1).

    Every non-head tensor whose name and shape match a trainable parameter is copied; LoRA B factors
    are rescaled by s_source / s_run where the two scalings differ, so the starting ΔW is the
    source's. The head is never copied (its label count differs). A source trained on another base
    model is allowed, with a warning.
    """
    af = read(source)
    if base is not None:
        why = base_mismatch(af.base, base)
        if why:
            log.warning("init_from=%s: trained on another base model (%s)", source, why)
    params = dict(model.named_parameters())
    rescale = {}
    for row in af.index:
        if row.get("B") is not None and row.get("scaling") is not None:
            mod_path, _, matrix = row["B"].rpartition(".lora_B.")
            try:
                mod = model.get_submodule(mod_path)
            except AttributeError:
                continue
            s_run = getattr(mod, "scaling", {}).get(matrix) if isinstance(getattr(mod, "scaling", None), dict) else None
            if s_run and float(row["scaling"]) != float(s_run):
                rescale[row["B"]] = float(row["scaling"]) / float(s_run)
    names = [n for n, v in af.tensors.items()
             if not is_head_parameter(n, family) and n in params and params[n].requires_grad
             and tuple(params[n].shape) == tuple(v.shape)]
    if not names:
        raise ValueError(f"init_from={str(source)!r}: no tensor matches this run's trainable parameters "
                         "(different method, targets, rank or model?)")
    tensors = {n: (af.tensors[n] * rescale[n] if n in rescale else af.tensors[n]) for n in names}
    return load_into(model, tensors, names, source)


# ---------------------------------------------------------------------------------------------
# PEFT LoRA folders (import)


PEFT_PREFIX = "base_model.model."
_UNSUPPORTED_PEFT = ("use_qalora", "lora_bias", "use_bdlora", "arrow_config", "kasa_config", "velora_config",
                     "monteclora_config", "alora_invocation_tokens", "layer_replication", "trainable_token_indices")


def _pattern_value(patterns: Mapping, module: str, default):
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup (``peft.utils.other.get_pattern_key``)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def locate(module: str, families: Iterable[str] = FAMILIES) -> Optional[tuple]:
    """``(family, layer, [(matrix, fused_index, fused_parts)])`` of a module path, or ``None``."""
    for fname in families:
        fam = FAMILIES[fname]
        for lp in fam.layer_paths:
            m = re.fullmatch(re.escape(lp) + r"\.(\d+)\.(.+)", module)
            if not m:
                continue
            mats = [(mat, loc.fused_index, loc.fused_parts) for mat, loc in fam.matrices.items()
                    if loc.module == m.group(2)]
            if mats:
                return fname, int(m.group(1)), mats
    return None


def read_peft(folder: Path | str) -> AdapterFile:
    """A PEFT LoRA folder converted to this repo's entries and names (``<module>.lora_A.<matrix>`` ...).

    On GPT-2's fused ``c_attn`` one PEFT adapter covers q, k and v: each slice becomes an entry with
    the columns of B that are non-zero on its rows (an export of this repo stacks q and v into one
    rank-2r adapter; they come back as the two rank-r adapters they were). A folder written by
    ``lora_research.export`` also carries the base identity and the original index.
    """
    folder = Path(folder)
    cfg_path, w_path = folder / PEFT_CONFIG_FILE, folder / PEFT_WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(f"{folder}: a PEFT folder needs {PEFT_CONFIG_FILE} and {PEFT_WEIGHTS_FILE}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{cfg_path}: not valid JSON ({e})") from None
    if cfg.get("peft_type") != "LORA":
        raise AdapterFileError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters can be read")
    bad = [k for k in _UNSUPPORTED_PEFT if cfg.get(k)]
    if bad:
        raise AdapterFileError(f"{cfg_path}: LoRA variant option(s) {bad} are not supported (plain LoRA, rsLoRA, DoRA)")
    raw, _ = _open_safetensors(w_path)
    info = {}
    if (folder / EXPORT_INFO_FILE).is_file():
        info = json.loads((folder / EXPORT_INFO_FILE).read_text(encoding="utf-8"))
    known_index = {(int(r["layer"]), r["matrix"]) for r in info.get("index", [])} or None
    tensors: dict = {}
    mods: dict = {}
    for key, t in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.weight)?", name)
        mm = re.fullmatch(r"(.+)\.lora_magnitude_vector(?:\.weight)?", name)
        if m:
            mods.setdefault(m.group(1), {})[m.group(2)] = t
        elif mm:
            mods.setdefault(mm.group(1), {})["magnitude"] = t
        elif ".lora_" in name:
            raise AdapterFileError(f"{w_path}: tensor {key!r} is of a LoRA kind this reader does not support")
        else:
            tensors[name] = t  # modules_to_save (the task head), trained biases
    family = info.get("base", {}).get("family") or _peft_family(cfg, list(mods))
    use_dora, rslora = bool(cfg.get("use_dora")), bool(cfg.get("use_rslora"))
    index = []
    for path, parts in sorted(mods.items()):
        if "lora_A" not in parts or "lora_B" not in parts:
            raise AdapterFileError(f"{w_path}: module {path!r} has only one of lora_A / lora_B")
        A, B = parts["lora_A"], parts["lora_B"]
        R = A.shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), path, cfg.get("lora_alpha", 8)))
        s = alpha / math.sqrt(R) if rslora else alpha / R
        where = locate(path, [family] if family in FAMILIES else FAMILIES)
        if where is None:
            raise AdapterFileError(f"{w_path}: module {path!r} is not a known q/k/v/o/mlp matrix of a "
                                   f"{family or 'supported'} model")
        _, layer, mats = where
        out, k = B.shape[0], A.shape[1]
        for matrix, fidx, fparts in mats:
            if known_index is not None and (layer, matrix) not in known_index:
                continue
            sl = None if fidx is None else (fidx * out // fparts, (fidx + 1) * out // fparts)
            b_rows = _rows(B, sl)
            cols = list(range(R))
            if sl is not None:
                cols = [j for j in range(R) if bool(b_rows[:, j].abs().sum() > 0)]
                if not cols and not use_dora:
                    continue  # this slice of the fused module is not adapted
                cols = cols or list(range(R))
            a_key, b_key = f"{path}.lora_A.{matrix}", f"{path}.lora_B.{matrix}"
            tensors[a_key] = A[cols].contiguous()
            tensors[b_key] = b_rows[:, cols].contiguous()
            r = len(cols)
            row = {"layer": layer, "matrix": matrix, "module": path, "kind": "lowrank", "A": a_key, "B": b_key,
                   "r": r, "alpha": s * (math.sqrt(r) if rslora else r), "scaling": s,
                   "out_slice": None if sl is None else list(sl), "base_shape": [out, k],
                   "fan_in_fan_out": bool(cfg.get("fan_in_fan_out"))}
            if "magnitude" in parts:
                mag_key = f"{path}.lora_magnitude.{matrix}"
                tensors[mag_key] = _rows(parts["magnitude"], sl).contiguous()
                row.update(dora=True, magnitude=mag_key)
            index.append(row)
    ranks = sorted({row["r"] for row in index})
    base = info.get("base") or {"name_or_path": cfg.get("base_model_name_or_path") or "", "family": family or ""}
    meta = {"format": FORMAT, "method": info.get("method", "lora"), "source": "peft", "peft_config": cfg,
            "base": base, "base_model": base.get("name_or_path", ""), "model_family": family or "",
            "index": index, "r": ranks[0] if len(ranks) == 1 else None, "config": info.get("config", {})}
    verify_index(w_path, tensors, meta)
    return AdapterFile(path=w_path, tensors=tensors, metadata=meta, source="peft")


def _peft_family(cfg: Mapping, modules: list) -> str:
    """The family of a foreign PEFT adapter: its base's ``model_type`` when that config is local,
    else the first family whose module paths match."""
    base = cfg.get("base_model_name_or_path")
    if base:
        try:
            from lora_research.models import resolve_path
            from lora_research.targets import family_for_model_type

            config_json = Path(resolve_path(base)) / "config.json"
            if config_json.is_file():
                return family_for_model_type(json.loads(config_json.read_text())["model_type"]).name
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
            pass
    for mod in modules:
        where = locate(mod)
        if where:
            return where[0]
    return ""
