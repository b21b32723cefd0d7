"""Tiny random models of every family, shared by the method tests (a plain module, not a conftest).

``tiny_model(family)`` returns ``(model, family_spec)``: 2 blocks, d=32, 4 heads, vocab 101, in
float32 eval mode (dropout off) with a fixed seed, built from a config without any download.
Encoders (bert, roberta) get a 3-way sequence-classification head; decoders (gpt2, llama) are
causal LMs. ``tiny_batch(family)`` gives matching inputs (right-padded second row).
"""
from __future__ import annotations

import torch

from lora_research.models import ModelConfig, load_model
from lora_research.targets import get_family

FAMILIES = ("bert", "roberta", "gpt2", "llama")
VOCAB = 101

OVERRIDES = {
    "bert": dict(model_type="bert", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=64),
    "roberta": dict(model_type="roberta", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=70,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "gpt2": dict(model_type="gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "llama": dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                  max_position_embeddings=64),
}


def tiny_model(family: str, seed: int = 0, attn: str | None = None):
    """A tiny random model of ``family`` and its FamilySpec (eval mode, float32)."""
    torch.manual_seed(seed)
    overrides = dict(OVERRIDES[family])
    if attn is not None:
        overrides["attn_implementation"] = attn
    cfg = ModelConfig(name=f"tiny-{family}", family=family, random_init=True, config_overrides=overrides)
    model = load_model(cfg, num_labels=3)
    # give biases and LayerNorms non-trivial values so bias/LN tests are meaningful
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower():
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    return model, get_family(family)


def tiny_batch(family: str, batch: int = 2, length: int = 7, seed: int = 1) -> dict:
    """Inputs for a tiny model: ids in [3, VOCAB), second row right-padded by 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, -2:] = 0
        ids[1, -2:] = 1 if family == "roberta" else 0
    out = {"input_ids": ids, "attention_mask": mask}
    if get_family(family).is_decoder:
        labels = ids.clone()
        labels[mask == 0] = -100
        out["labels"] = labels
    else:
        out["labels"] = torch.arange(batch) % 3
    return out


def logits_of(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


def nudge_lora_b(model, seed: int = 3, scale: float = 0.1) -> None:
    """LoRA's B away from zero (its init), so that the branch (and its dropout) counts in outputs and gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(scale * torch.randn(p.shape, generator=g))
