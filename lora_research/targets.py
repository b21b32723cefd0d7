"""Weight-matrix names → module paths, per model family.

The paper names the matrices it adapts W_q, W_k, W_v, W_o (self-attention) and the two MLP
matrices (§4.2). This module maps those names to modules of Hugging Face models:

=========  ===========================  ==========================  ===============
matrix     BERT / RoBERTa               GPT-2 (Conv1D, fused qkv)   LLaMA-style
=========  ===========================  ==========================  ===============
q          attention.self.query         attn.c_attn  rows [0, d)    self_attn.q_proj
k          attention.self.key           attn.c_attn  rows [d, 2d)   self_attn.k_proj
v          attention.self.value         attn.c_attn  rows [2d, 3d)  self_attn.v_proj
o          attention.output.dense       attn.c_proj                 self_attn.o_proj
mlp_in     intermediate.dense           mlp.c_fc                    mlp.up_proj (+ gate_proj as mlp_gate)
mlp_out    output.dense                 mlp.c_proj                  mlp.down_proj
=========  ===========================  ==========================  ===============

GPT-2 stores q, k and v in one fused ``Conv1D`` whose weight is (in, out) ("fan_in_fan_out");
a target there is a *slice* of the fused output, as loralib's ``MergedLinear`` does it.

Methods ask this module for :class:`Target` records and never hard-code module names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

MATRICES: tuple[str, ...] = ("q", "k", "v", "o", "mlp_in", "mlp_out", "mlp_gate")


@dataclass(frozen=True)
class MatrixLocation:
    """Where one named matrix lives inside a transformer block.

    ``fused_index``/``fused_parts``: for a fused projection (GPT-2 ``c_attn``), which of the
    ``fused_parts`` equal output blocks this matrix is; ``None`` when the module is the matrix.
    """

    module: str
    fused_index: int | None = None
    fused_parts: int = 1


@dataclass(frozen=True)
class FamilySpec:
    """Everything methods need to know about one model family's module layout."""

    name: str
    layer_paths: tuple[str, ...]  # candidate paths of the ModuleList of blocks, first found wins
    matrices: dict[str, MatrixLocation]
    # Modules trained with every method and counted apart as "head" (paper footnote: the
    # classifier is trained but not counted; issue microsoft/LoRA#16).
    head_modules: tuple[str, ...] = ()
    # Per-block LayerNorms after attention and after the MLP (used by adapters and AdapterL).
    attn_layer_norm: str | None = None
    mlp_layer_norm: str | None = None
    # Sub-modules whose outputs adapters wrap: attention output projection, MLP output projection.
    attn_output: str | None = None
    mlp_output: str | None = None
    is_decoder: bool = False

    @property
    def heads(self) -> tuple[str, ...]:
        """Task heads this family serves (the first is the default): decoders generate, encoders classify."""
        return ("generation",) if self.is_decoder else ("classification", "regression")


_BERT_MATRICES = {
    "q": MatrixLocation("attention.self.query"),
    "k": MatrixLocation("attention.self.key"),
    "v": MatrixLocation("attention.self.value"),
    "o": MatrixLocation("attention.output.dense"),
    "mlp_in": MatrixLocation("intermediate.dense"),
    "mlp_out": MatrixLocation("output.dense"),
}

FAMILIES: dict[str, FamilySpec] = {
    "bert": FamilySpec(
        name="bert",
        layer_paths=("bert.encoder.layer", "encoder.layer"),
        matrices=_BERT_MATRICES,
        # BERT's pooler plays the role of RoBERTa's classifier.dense.
        head_modules=("classifier", "bert.pooler"),
        attn_layer_norm="attention.output.LayerNorm",
        mlp_layer_norm="output.LayerNorm",
        attn_output="attention.output.dense",
        mlp_output="output.dense",
    ),
    "roberta": FamilySpec(
        name="roberta",
        layer_paths=("roberta.encoder.layer", "encoder.layer"),
        matrices=_BERT_MATRICES,
        head_modules=("classifier",),
        attn_layer_norm="attention.output.LayerNorm",
        mlp_layer_norm="output.LayerNorm",
        attn_output="attention.output.dense",
        mlp_output="output.dense",
    ),
    "gpt2": FamilySpec(
        name="gpt2",
        layer_paths=("transformer.h", "h"),
        matrices={
            "q": MatrixLocation("attn.c_attn", 0, 3),
            "k": MatrixLocation("attn.c_attn", 1, 3),
            "v": MatrixLocation("attn.c_attn", 2, 3),
            "o": MatrixLocation("attn.c_proj"),
            "mlp_in": MatrixLocation("mlp.c_fc"),
            "mlp_out": MatrixLocation("mlp.c_proj"),
        },
        attn_layer_norm="ln_1",
        mlp_layer_norm="ln_2",
        attn_output="attn.c_proj",
        mlp_output="mlp.c_proj",
        is_decoder=True,
    ),
    "llama": FamilySpec(
        name="llama",
        layer_paths=("model.layers", "layers"),
        matrices={
            "q": MatrixLocation("self_attn.q_proj"),
            "k": MatrixLocation("self_attn.k_proj"),
            "v": MatrixLocation("self_attn.v_proj"),
            "o": MatrixLocation("self_attn.o_proj"),
            "mlp_in": MatrixLocation("mlp.up_proj"),
            "mlp_gate": MatrixLocation("mlp.gate_proj"),
            "mlp_out": MatrixLocation("mlp.down_proj"),
        },
        attn_layer_norm="input_layernorm",
        mlp_layer_norm="post_attention_layernorm",
        attn_output="self_attn.o_proj",
        mlp_output="mlp.down_proj",
        is_decoder=True,
    ),
}

# Hugging Face ``config.model_type`` → family.
MODEL_TYPE_TO_FAMILY = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
}


def get_family(name: str) -> FamilySpec:
    """Return the :class:`FamilySpec` called ``name`` or fail naming the valid choices."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; valid choices: {sorted(FAMILIES)}") from None


def family_for_model_type(model_type: str) -> FamilySpec:
    """The family of a Hugging Face ``config.model_type`` (``roberta`` → roberta, ``qwen2`` → llama)."""
    if model_type not in MODEL_TYPE_TO_FAMILY:
        raise ValueError(
            f"no model family known for model_type {model_type!r}; known: {sorted(MODEL_TYPE_TO_FAMILY)} "
            f"(or set model.family to one of {sorted(FAMILIES)})"
        )
    return FAMILIES[MODEL_TYPE_TO_FAMILY[model_type]]


@dataclass(frozen=True)
class Target:
    """One weight matrix to adapt: ``module`` (full dotted path) and, for fused projections,
    the rows ``out_slice`` of the module's (out, in) weight that belong to ``matrix``."""

    layer: int
    matrix: str
    module: str
    in_features: int
    out_features: int  # of this matrix (the slice), not of the fused module
    out_slice: tuple[int, int] | None = None


def find_layers(model: nn.Module, family: FamilySpec) -> tuple[str, nn.ModuleList]:
    """Return ``(path, ModuleList)`` of the transformer blocks of ``model``."""
    for path in family.layer_paths:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    raise ValueError(
        f"could not find the transformer blocks of a {family.name} model; tried {family.layer_paths}"
    )


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a linear layer whose weight is stored (in, out) ("fan_in_fan_out")."""
    return type(module).__name__ == "Conv1D"


def module_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or a GPT-2 Conv1D (weight stored (in, out))."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and is_conv1d(module):
        return weight.shape[1], weight.shape[0]
    raise TypeError(f"cannot adapt module of type {type(module).__name__}: expected Linear or Conv1D")


def validate_matrices(matrices, family: FamilySpec) -> list[str]:
    """Check matrix names against the family's map; error names the bad value and valid choices."""
    names = list(matrices)
    if not names:
        raise ValueError(f"no target matrices given; valid choices for {family.name}: {list(family.matrices)}")
    for m in names:
        if m not in family.matrices:
            raise ValueError(
                f"unknown target matrix {m!r} for model family {family.name!r}; "
                f"valid choices: {list(family.matrices)}"
            )
    return names


def resolve_targets(
    model: nn.Module,
    family: FamilySpec,
    matrices,
    layers: list[int] | None = None,
) -> list[Target]:
    """Expand matrix names (e.g. ``["q", "v"]``) into one :class:`Target` per block and matrix.

    ``layers`` restricts to the given block indices (default: every block).
    """
    names = validate_matrices(matrices, family)
    prefix, blocks = find_layers(model, family)
    n = len(blocks)
    chosen = range(n) if layers is None else list(layers)
    for i in chosen:
        if not 0 <= i < n:
            raise ValueError(f"layer index {i} out of range; the model has layers 0..{n - 1}")
    targets = []
    for i in chosen:
        for m in names:
            loc = family.matrices[m]
            path = f"{prefix}.{i}.{loc.module}"
            out_f, in_f = module_shape(model.get_submodule(path))
            out_slice = None
            if loc.fused_index is not None:
                part = out_f // loc.fused_parts
                out_slice = (loc.fused_index * part, (loc.fused_index + 1) * part)
                out_f = part
            targets.append(Target(i, m, path, in_f, out_f, out_slice))
    return targets


def is_head_parameter(name: str, family: FamilySpec) -> bool:
    """True when parameter ``name`` belongs to the task head (trained by every method)."""
    return any(name == h or name.startswith(h + ".") for h in family.head_modules)
