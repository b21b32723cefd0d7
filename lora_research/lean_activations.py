"""Fewer activations kept for backward, bitwise the same gradients (``trainer.lean_activations``, default true).

Autograd keeps what each op's backward reads. In a LoRA run on CPU two places keep more than that:

* **The LoRA branch input**, ``A · dropout(x)`` (Hu et al. 2021, Eq. 3 with loralib's ``lora_dropout``). On CPU,
  ``torch.nn.functional.dropout`` multiplies ``x`` by a float noise tensor (0 or 1/(1-p)); autograd keeps the
  noise (for the gradient of x) and the product ``dropout(x)`` (for the gradient of A): two float copies of x for
  each adapted module, four per layer with q and v. :func:`dropped_linears` keeps ``x`` itself (one copy, the same
  tensor for every module that reads it) and a boolean mask (a quarter of a float); the backward recomputes noise
  and product with the same ops. The mask is drawn by the same call as before (``bernoulli_`` on a tensor of x's
  shape, or ``fast_dropout``'s mask), so the random stream, the outputs and every gradient are bitwise unchanged.
* **Gated MLPs**, ``down(silu(gate(x)) ⊙ up(x))`` (the LLaMA family: SmolLM2). Autograd keeps ``gate(x)`` for
  SiLU's gradient, and ``silu(gate(x))`` and ``up(x)`` for the product's: three [tokens, intermediate] tensors
  per layer. :class:`SiluProduct` keeps ``gate(x)`` and ``up(x)`` and recomputes the SiLU in backward (one
  elementwise op), calling the backward ops autograd calls, so the gradients are bitwise the same.

Measured (SmolLM2-135M, LoRA r=4 on q, v, dropout 0.1, the bench's E2E job): see ``results/benchmarks/README.md``.
:func:`enable` switches both on for a model (after the method is applied); :meth:`LeanActivations.remove` undoes it.
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.activations import SiLUActivation

from lora_research import fast_dropout


# -- the LoRA branch input ----------------------------------------------------------------------------------------
def _dropped(x: torch.Tensor, keep: torch.Tensor, how: tuple) -> torch.Tensor:
    """``dropout(x)`` from a boolean keep-mask, with the ops the dropout itself used (so bitwise its output)."""
    kind, value = how
    if kind == "torch":  # ATen's CPU dropout: noise = bernoulli(1-p) as 0./1., noise /= (1-p), x * noise
        return x * keep.to(x.dtype).div_(1 - value)
    return fast_dropout._Masked.apply(x, keep, value)  # fast_dropout: where(keep, x, 0) * scale


class _DroppedLinears(torch.autograd.Function):
    """``[F.linear(dropout(x), w) for w in weights]`` keeping x and the boolean mask; backward replays the ops."""

    @staticmethod
    def forward(ctx, x, keep, how, *weights):
        ctx.how = how
        ctx.save_for_backward(x, keep, *weights)
        xd = _dropped(x, keep, how)
        return tuple(F.linear(xd, w) for w in weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x, keep, *weights = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        with torch.enable_grad():
            xr = x.detach().requires_grad_(need_x)
            ws = [w.detach().requires_grad_(n) for w, n in zip(weights, need_w)]
            xd = _dropped(xr, keep, ctx.how)
            outs = [F.linear(xd, w) for w in ws]
        wanted = [t for t in (xr, *ws) if t.requires_grad]
        used = [(o, g) for o, g in zip(outs, grads) if g is not None]
        got = iter(torch.autograd.grad([o for o, _ in used], wanted, [g for _, g in used], allow_unused=True))
        gx = next(got) if need_x else None
        gws = [next(got) if n else None for n in need_w]
        return (gx, None, None, *gws)


def _mask(dropout: nn.Module, x: torch.Tensor):
    """The keep-mask ``dropout`` would draw for ``x`` (the same random call), and how it applies it; None when this
    dropout is not one of the two kinds handled here (then the caller takes the plain path)."""
    if type(dropout) is fast_dropout.Dropout:
        keep, scale = fast_dropout.keep_mask(x.shape, dropout.p)
        return keep, ("fast", scale)
    if type(dropout) is nn.Dropout:
        noise = torch.empty_like(x).bernoulli_(1 - dropout.p)  # the draw ATen's CPU dropout makes
        return noise.bool(), ("torch", dropout.p)
    return None


def dropped_linears(x: torch.Tensor, dropout: nn.Module, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[F.linear(dropout(x), w) for w in weights]``, keeping for backward ``x`` and a boolean mask only (CPU
    training with 0 < p < 1); elsewhere exactly that expression."""
    lean = (torch.is_grad_enabled() and dropout.training and isinstance(dropout, nn.Dropout)
            and 0.0 < dropout.p < 1.0 and x.device.type == "cpu" and not dropout.inplace)
    drawn = _mask(dropout, x) if lean else None
    if drawn is None:
        xd = dropout(x)
        return [F.linear(xd, w) for w in weights]
    keep, how = drawn
    return list(_DroppedLinears.apply(x, keep, how, *weights))


# -- gated MLPs ---------------------------------------------------------------------------------------------------
class SiluProduct(torch.autograd.Function):
    """``silu(gate) ⊙ up`` keeping ``gate`` and ``up``; the backward is autograd's (``silu_backward``, products)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        g_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        g_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return g_gate, g_up


def _gated_forward(self, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP's forward, ``down(silu(gate(x)) ⊙ up(x))``, with the product as :class:`SiluProduct`."""
    gate, up = self.gate_proj(x), self.up_proj(x)
    if not torch.is_grad_enabled():
        return self.down_proj(self.act_fn(gate) * up)
    return self.down_proj(SiluProduct.apply(gate, up))


def is_gated_silu_mlp(module: nn.Module) -> bool:
    """A LLaMA-style MLP: ``gate_proj``, ``up_proj``, ``down_proj`` and a SiLU ``act_fn``."""
    return (all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
            and type(getattr(module, "act_fn", None)) in (nn.SiLU, SiLUActivation))


class LeanActivations:
    """What :func:`enable` changed on a model; :meth:`remove` restores it."""

    def __init__(self, branches: list[nn.Module], mlps: list[nn.Module]):
        self.branches, self.mlps = branches, mlps

    def remove(self) -> None:
        for m in self.branches:
            m.lean_input = False
        for m in self.mlps:
            del m.forward  # the class's forward again
        self.branches, self.mlps = [], []


def enable(model: nn.Module) -> LeanActivations:
    """Adapter branches that support it (a ``lean_input`` attribute: LoRA) keep x and a boolean mask; gated SiLU
    MLPs keep their two inputs. Same outputs and gradients, bitwise."""
    branches, mlps = [], []
    for module in model.modules():
        if hasattr(module, "lean_input"):
            module.lean_input = True
            branches.append(module)
        elif is_gated_silu_mlp(module) and "forward" not in vars(module):
            module.forward = types.MethodType(_gated_forward, module)
            mlps.append(module)
    return LeanActivations(branches, mlps)
