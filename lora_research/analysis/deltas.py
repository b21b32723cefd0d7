"""ΔW from run folders: the input of every Section 7 analysis (LoRA paper §7, Eq. 3 / Table 7).

A run folder holds ``config.yaml``, ``summary.json`` and ``adapter.safetensors`` (format
``lora_research.adapter/1``).  The safetensors metadata carries an ``index``: one entry per adapted
matrix with its layer, matrix name (q, k, v, o, mlp_in, mlp_out), module path, tensor keys and
``out_slice`` (the rows of the module's (out, in) weight that the matrix occupies, e.g. q and v of
GPT-2's fused ``c_attn``).

* LoRA entries hold ``A`` (r, k) and ``B`` (d, r); ΔW = scaling · B @ A, scaling = α/r (α/√r for rsLoRA).
* Full fine-tuning entries (``full_ft``, ``ft_top2``) hold ``W`` (the fine-tuned weight, (out, in),
  already sliced); ΔW = W_ft − W0, which needs the pretrained weights W0 through a
  :data:`BaseWeightLoader`.

**Scaling choice.** :func:`delta_w` includes the α/r factor by default (``include_scaling=True``): the
default ΔW is the update actually merged into W (W_merged − W0), the same quantity as for full
fine-tuning. The paper does not say which one it uses; φ (Eq. 4) and singular *directions* do not
depend on it, but ‖ΔW‖_F and the amplification factor of Table 7 scale with it.

Analysis reads run folders only; it never imports the trainer or the tasks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch

from lora_research.outputs import ADAPTER_FILE, ADAPTER_FORMAT as FORMAT, save_adapter
FULL_FT_METHODS = ("full_ft", "ft_top2")

#: ``loader(module_path, out_slice) -> W0`` with W0 in (out, in) orientation, rows ``out_slice``
#: (``[start, stop]``) or all rows when ``out_slice`` is None.
BaseWeightLoader = Callable[[str, Optional[Sequence[int]]], torch.Tensor]


@dataclass(frozen=True)
class AdapterEntry:
    """One adapted matrix of one layer (one row of the adapter index)."""

    layer: int
    matrix: str
    module: str
    A: Optional[torch.Tensor] = None  # (r, k), LoRA only
    B: Optional[torch.Tensor] = None  # (d, r), LoRA only
    W: Optional[torch.Tensor] = None  # (d, k) fine-tuned weight, full FT only
    r: Optional[int] = None
    alpha: Optional[float] = None
    scaling: Optional[float] = None
    out_slice: Optional[tuple] = None
    base_shape: Optional[tuple] = None

    @property
    def is_lora(self) -> bool:
        return self.A is not None and self.B is not None

    @property
    def key(self) -> tuple:
        return (self.layer, self.matrix)

    @property
    def shape(self) -> tuple:
        """(d_out, k_in) of ΔW for this entry."""
        if self.is_lora:
            return (self.B.shape[0], self.A.shape[1])
        return tuple(self.W.shape)


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

    def __iter__(self) -> Iterator[AdapterEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def is_lora(self) -> bool:
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


def _adapter_path(run: "str | Path") -> tuple:
    p = Path(run)
    if p.is_dir():
        return p / ADAPTER_FILE, p
    return p, None


def _read_config(run_dir: Optional[Path]) -> dict:
    if run_dir is None or not (run_dir / "config.yaml").exists():
        return {}
    import yaml

    with open(run_dir / "config.yaml") as fh:
        return yaml.safe_load(fh) or {}


def load_adapter(run: "str | Path") -> AdapterRecord:
    """Read ``adapter.safetensors`` (and ``config.yaml`` if present) from a run folder or bare file.

    Tensors are converted to float64 (analysis precision). Head tensors not named by the index
    (``classifier.weight`` …) are ignored.
    """
    from safetensors import safe_open

    path, run_dir = _adapter_path(run)
    if not path.exists():
        raise FileNotFoundError(f"no adapter file at {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        index = json.loads(meta["index"])
        get = lambda key: fh.get_tensor(key).to(torch.float64)  # noqa: E731
        entries = []
        for row in index:
            has_lora = row.get("A") is not None and row.get("B") is not None
            sl = row.get("out_slice")
            shape = row.get("base_shape")
            entries.append(AdapterEntry(
                layer=int(row["layer"]), matrix=str(row["matrix"]), module=str(row["module"]),
                A=get(row["A"]) if has_lora else None,
                B=get(row["B"]) if has_lora else None,
                W=None if has_lora else get(row["W"]),
                r=None if row.get("r") is None else int(row["r"]),
                alpha=None if row.get("alpha") is None else float(row["alpha"]),
                scaling=None if row.get("scaling") is None else float(row["scaling"]),
                out_slice=None if sl is None else tuple(int(s) for s in sl),
                base_shape=None if shape is None else tuple(int(s) for s in shape),
            ))
    entries.sort(key=lambda e: (e.layer, e.matrix))
    return AdapterRecord(path=path, method=meta.get("method", "lora"), base_model=meta.get("base_model", ""),
                         model_family=meta.get("model_family", ""), entries=entries, metadata=meta,
                         config=_read_config(run_dir), run_dir=run_dir)


def delta_w(entry: AdapterEntry, base_loader: Optional[BaseWeightLoader] = None,
            include_scaling: bool = True) -> torch.Tensor:
    """Dense ΔW of one entry, (out, in) orientation (rows ``out_slice`` of the module weight).

    LoRA: ``scaling · B @ A`` (``include_scaling=True``, the default, see module docstring) or
    ``B @ A``. Full FT: ``W_ft − W0``; ``include_scaling`` is ignored and ``base_loader`` is required.
    """
    if entry.is_lora:
        s = entry.scaling if (include_scaling and entry.scaling is not None) else 1.0
        return s * (entry.B @ entry.A)
    if base_loader is None:
        raise ValueError(f"full fine-tuning entry {entry.module}: ΔW = W_ft − W0 needs a base_loader")
    return entry.W - base_weight(entry, base_loader)


def base_weight(entry: AdapterEntry, base_loader: BaseWeightLoader) -> torch.Tensor:
    """W0 for an entry, float64, checked against ΔW's shape."""
    w0 = base_loader(entry.module, None if entry.out_slice is None else list(entry.out_slice))
    w0 = w0.detach().to(torch.float64)
    if tuple(w0.shape) != tuple(entry.shape):
        raise ValueError(f"{entry.module} slice {entry.out_slice}: W0 shape {tuple(w0.shape)} "
                         f"!= ΔW shape {tuple(entry.shape)}")
    return w0


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
    """Default loader: the pretrained model of a run, via ``lora_research.models.load_base_model``.

    The model config comes from the run's ``config.yaml`` (``model`` section), or else from the
    adapter metadata (``base_model``, ``model_family``). The model is loaded once, on first use.
    GPT-2 ``Conv1D`` weights are stored (in, out) and are transposed to (out, in).
    """
    path, run_dir = _adapter_path(run)
    cfg = _read_config(run_dir).get("model") or {}
    if not cfg:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        cfg = {"name_or_path": meta.get("base_model"), "family": meta.get("model_family")}
    cache: dict = {}

    def load(module: str, out_slice=None) -> torch.Tensor:
        if "model" not in cache:
            from lora_research.models import load_base_model  # lazy: analysis works without it

            cache["model"] = load_base_model(cfg)
        mod = cache["model"].get_submodule(module)
        w = mod.weight.detach()
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:  # pragma: no cover
            Conv1D = ()
        if (Conv1D and isinstance(mod, Conv1D)) or type(mod).__name__ == "Conv1D":
            w = w.T
        return _slice_rows(w, out_slice)
    return load


# ---------------------------------------------------------------------------------------------
# Writing the format (inverse of load_adapter): synthetic run folders for tests, benchmarks, demos.
# The training app writes real runs through lora_research.outputs.

def write_adapter(path: "str | Path", tensors: Mapping[str, torch.Tensor], index: list,
                  method: str = "lora", base_model: str = "synthetic", model_family: str = "bert") -> Path:
    """Write tensors + index in the ``lora_research.adapter/1`` format (test fixtures, demos)."""
    return save_adapter(path, dict(tensors), {"method": method, "base_model": base_model,
                                              "model_family": model_family, "index": index})


def synthetic_run(run_dir: "str | Path", *, n_layers: int = 2, d: int = 16, k: Optional[int] = None,
                  r: int = 4, alpha: float = 8.0, seed: int = 0, matrices: Sequence[str] = ("q", "v"),
                  method: str = "lora", base: Optional[Mapping[str, torch.Tensor]] = None,
                  dtype=torch.float32) -> Path:
    """A BERT-style run folder with random factors (LoRA) or random ``W0 + noise`` (full FT).

    ``base`` maps module path → (out, in) pretrained weight; required for full-FT runs (their
    ``W`` = base + N(0, 0.01²)). Returns the run folder.
    """
    k = d if k is None else k
    g = torch.Generator().manual_seed(seed)
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense"}
    tensors, index = {"classifier.weight": torch.zeros(2, d)}, []
    full = method in FULL_FT_METHODS
    for layer in range(n_layers):
        for m in matrices:
            module = f"bert.encoder.layer.{layer}.{names.get(m, m)}"
            row = {"layer": layer, "matrix": m, "module": module, "out_slice": None, "base_shape": [d, k]}
            if full:
                w = base[module] + 0.01 * torch.randn(d, k, generator=g, dtype=base[module].dtype)
                tensors[f"{module}.weight"] = w.to(dtype)
                row.update(W=f"{module}.weight", r=None, alpha=None, scaling=None)
            else:
                tensors[f"{module}.lora_A.{m}"] = torch.randn(r, k, generator=g).to(dtype)
                tensors[f"{module}.lora_B.{m}"] = (0.1 * torch.randn(d, r, generator=g)).to(dtype)
                row.update(A=f"{module}.lora_A.{m}", B=f"{module}.lora_B.{m}", r=r, alpha=alpha,
                           scaling=alpha / r)
            index.append(row)
    run_dir = Path(run_dir)
    write_adapter(run_dir / ADAPTER_FILE, tensors, index, method=method)
    import yaml

    cfg = {"model": {"name_or_path": "synthetic", "family": "bert"}, "seed": seed,
           "method": {"name": method, "r": None if full else r, "alpha": None if full else alpha},
           "task": {"name": "synthetic"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "summary.json").write_text(json.dumps({"synthetic": True}))
    return run_dir
