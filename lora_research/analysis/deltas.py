"""ΔW from run folders: the input of every Section 7 analysis (LoRA paper §7, Eq. 3 / Table 7).

A run folder holds ``config.yaml``, ``summary.json`` and ``adapter.safetensors``, whose format,
verification and ΔW belong to :mod:`lora_research.adapter_file`; this module is the analysis' view
of it. The adapter's ``index`` has one entry per adapted matrix with its layer, matrix name (q, k,
v, o, mlp_in, mlp_out), module path, tensors and ``out_slice`` (the rows of the module's (out, in)
weight that the matrix occupies, e.g. q and v of GPT-2's fused ``c_attn``). A PEFT LoRA folder is
read the same way (:func:`lora_research.adapter_file.read_peft`).

* LoRA, rsLoRA, Gaussian init: ΔW = scaling · B @ A (:attr:`AdapterEntry.is_lora`; scaling = α/r or α/√r).
* PiSSA: ΔW = scaling · (B A − B0 A0), relative to the *original* pretrained weight.
* DoRA: ΔW = m/‖V‖_c · V − W0 with V = W0 + scaling·B A: needs W0.
* Full fine-tuning (``full_ft``, ``ft_top2``): ΔW = W_ft − W0: needs W0.

W0 comes from a :data:`BaseWeightLoader`; by default each entry carries one that rebuilds the run's
base model from the identity in its adapter file, and refuses a base whose weights fingerprint
differs (:func:`lora_research.adapter_file.load_base`).

**Scaling choice.** :func:`delta_w` includes the α/r factor by default (``include_scaling=True``): the
default ΔW is the update actually merged into W (W_merged − W0), the same quantity as for full
fine-tuning. The paper does not say which one it uses; φ (Eq. 4) and singular *directions* do not
depend on it, but ‖ΔW‖_F and the amplification factor of Table 7 scale with it.

**Base models.** ΔW of adapters trained on different base models are not comparable;
:func:`check_same_base` says why two records differ (weights fingerprints; names and families for
files without one).

Analysis reads run folders only; it never imports the trainer or the tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch

from lora_research import adapter_file, outputs
from lora_research.adapter_file import (  # noqa: F401  (re-exported: the analysis' names)
    ADAPTER_FILE, FORMAT, AdapterEntry, BaseIdentity, BaseWeightLoader)


@dataclass
class AdapterRecord:
    """Everything :func:`load_adapter` read from one run folder (or bare adapter file)."""

    path: Path
    method: str
    base_model: str
    model_family: str
    entries: list
    metadata: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    run_dir: Optional[Path] = None
    base: Optional[BaseIdentity] = None

    def __iter__(self) -> Iterator[AdapterEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def is_lora(self) -> bool:
        """Every entry's ΔW is s·B A (no DoRA, PiSSA or full FT): A and B alone describe it."""
        return all(e.is_lora for e in self.entries)

    @property
    def layers(self) -> list:
        return sorted({e.layer for e in self.entries})

    @property
    def matrices(self) -> list:
        order = ["q", "k", "v", "o", "mlp_in", "mlp_out"]
        names = {e.matrix for e in self.entries}
        return sorted(names, key=lambda m: (order.index(m) if m in order else len(order), m))

    @property
    def ranks(self) -> list:
        return sorted({e.r for e in self.entries if e.r is not None})

    @property
    def seed(self) -> Optional[int]:
        return self.config.get("seed")

    @property
    def label(self) -> str:
        name = self.run_dir.name if self.run_dir is not None else self.path.stem
        r = self.ranks
        return f"{name} ({self.method}{', r=' + str(r[0]) if len(r) == 1 else ''})"

    def get(self, layer: int, matrix: str) -> AdapterEntry:
        for e in self.entries:
            if e.layer == layer and e.matrix == matrix:
                return e
        raise KeyError(f"{self.path}: no adapted matrix {matrix!r} in layer {layer}")

    def select(self, layers=None, matrices=None) -> list:
        return [e for e in self.entries
                if (layers is None or e.layer in layers) and (matrices is None or e.matrix in matrices)]


def _read_config(run_dir: Optional[Path]) -> dict:
    return {} if run_dir is None else outputs.read_config(run_dir, required=False)


def load_adapter(run: "str | Path") -> AdapterRecord:
    """Read a run folder, a bare ``adapter.safetensors`` or a PEFT LoRA folder (verified, see
    :func:`lora_research.adapter_file.read`), and ``config.yaml`` if present.

    Tensors are converted to float64 (analysis precision). Head tensors not named by the index
    (``classifier.weight`` …) are ignored. Entries of files that record their base model's identity
    carry a lazy loader of its weights (used by :func:`delta_w` for DoRA and full-FT entries when no
    loader is passed).
    """
    af = adapter_file.read(run)
    loader = _lazy(lambda: load_base_weights(run)) if af.base.model else None  # files that say how to load it
    return AdapterRecord(path=af.path, method=af.method, base_model=af.base.name_or_path,
                         model_family=af.base.family, entries=af.entries(torch.float64, base_loader=loader),
                         metadata=af.metadata, config=_read_config(af.run_dir), run_dir=af.run_dir, base=af.base)


def _lazy(make) -> BaseWeightLoader:
    cache: dict = {}

    def load(module: str, out_slice=None) -> torch.Tensor:
        if "loader" not in cache:
            cache["loader"] = make()
        return cache["loader"](module, out_slice)
    return load


def delta_w(entry: AdapterEntry, base_loader: Optional[BaseWeightLoader] = None,
            include_scaling: bool = True) -> torch.Tensor:
    """Dense ΔW of one entry, (out, in) orientation (rows ``out_slice`` of the module weight).

    LoRA: ``scaling · B @ A`` (``include_scaling=True``, the default, see module docstring) or
    ``B @ A``; PiSSA, DoRA and full FT as :func:`lora_research.adapter_file.delta`. ``base_loader``
    (default: the entry's own) gives W0 where ΔW needs it.
    """
    return adapter_file.delta(entry, base_loader, include_scaling)


def base_weight(entry: AdapterEntry, base_loader: Optional[BaseWeightLoader] = None) -> torch.Tensor:
    """W0 for an entry, float64, checked against ΔW's shape."""
    return adapter_file.base_rows(entry, base_loader)


def check_same_base(records: Sequence[AdapterRecord], allow: bool = False) -> Optional[str]:
    """Raise ``ValueError`` (one line) when the records were trained on different base models;
    with ``allow`` return the reason instead (``None`` when they agree)."""
    for other in records[1:]:
        why = adapter_file.base_mismatch(records[0].base, other.base)
        if why:
            if allow:
                return why
            raise ValueError(f"{records[0].run_dir or records[0].path} and {other.run_dir or other.path} were "
                             f"trained on different base models ({why}); their ΔW are not comparable "
                             "(pass --allow-different-bases to compare them anyway)")
    return None


def _slice_rows(w: torch.Tensor, out_slice) -> torch.Tensor:
    return w if out_slice is None else w[int(out_slice[0]):int(out_slice[1])]


def dict_base_loader(weights: Mapping[str, torch.Tensor]) -> BaseWeightLoader:
    """In-memory loader: ``weights[module]`` is the full (out, in) weight of that module."""
    def load(module: str, out_slice=None) -> torch.Tensor:
        return _slice_rows(weights[module], out_slice)
    return load


def safetensors_base_loader(path: "str | Path", family: str = "") -> BaseWeightLoader:
    """Loader reading a checkpoint file (e.g. the hub's ``model.safetensors``) directly.

    Looks up ``{module}.weight``, dropping leading path components until a key matches (the hub's
    GPT-2 file says ``h.0.attn.c_attn`` where the model says ``transformer.h.0.attn.c_attn``).
    For ``family == "gpt2"`` the Conv1D weights are stored (in, out) and are transposed.
    """
    from safetensors import safe_open

    fh = safe_open(str(path), framework="pt")
    keys = set(fh.keys())

    def load(module: str, out_slice=None) -> torch.Tensor:
        parts = module.split(".")
        for start in range(len(parts)):
            key = ".".join(parts[start:]) + ".weight"
            if key in keys:
                w = fh.get_tensor(key)
                if family == "gpt2":
                    w = w.T
                return _slice_rows(w, out_slice)
        raise KeyError(f"{path}: no weight for module {module!r}")
    return load


def load_base_weights(run: "str | Path") -> BaseWeightLoader:
    """Default loader: the pretrained model of a run, loaded once, on first use.

    Rebuilt from the base identity in the adapter file (random-init bases with the run's seed) and
    refused when its weights fingerprint differs (:func:`lora_research.adapter_file.load_base`).
    Files without that identity (format /1) fall back to the ``model`` section of ``config.yaml``,
    unverified. GPT-2 ``Conv1D`` weights are transposed to (out, in).
    """
    af = adapter_file.read(run)
    identity = af.base
    if not identity.model:
        cfg = _read_config(af.run_dir).get("model") or {}
        if not cfg:
            cfg = {"name_or_path": identity.name_or_path, "family": identity.family or None}
        seed = _read_config(af.run_dir).get("seed")
        identity = BaseIdentity(name_or_path=identity.name_or_path, family=identity.family, model=cfg,
                                seed=seed if cfg.get("random_init") else None)
    return adapter_file.base_weight_loader(identity)
