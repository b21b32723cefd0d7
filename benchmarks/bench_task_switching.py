"""Task switching on one frozen base: the LoRA paper's deployment claim (§4.2 "Practical Benefits
and Limitations", §1: "a pre-trained model can be shared and used to build many small LoRA modules
for different tasks ... switch tasks by replacing the matrices A and B").

One RoBERTa-base-shaped model (12 blocks, d=768, random weights: timing and memory do not depend
on the values) serves ``--tasks`` GLUE-like tasks, each a LoRA r=8 adapter on W_q, W_v plus its own
classification head, stored as a run's ``adapter.safetensors``. Per switch to the next task
(median over ``--switches``, cycling through the tasks):

* ``merge/unmerge``: unmerge the current update (W0 restored exactly), copy the next task's A, B
  and head into the model, merge (W0 + s·BA): requests then run at the base model's latency;
* ``unmerged swap``: copy the next task's A, B and head only; requests pay the LoRA branch
  (the "unmerged routing" option: no weight is rewritten, adapters could even differ per request);
* ``adapter from disk``: read and verify the next task's ``adapter.safetensors``, then merge/unmerge;
* ``PEFT set_adapter``: a ``PeftModel`` holding all tasks' adapters, ``set_adapter(name)``;
* ``separate model``: ``from_pretrained`` of that task's fine-tuned model folder (the alternative
  to adapters: one full model per task; files in the page cache, i.e. the best case for it).

Memory for N tasks: parameter bytes of one base + N adapters (A, B, head) against N full models,
and the on-disk size of an adapter file against a model folder. Request latency (batch 1 × 128
tokens) is reported for the merged and the unmerged model to show what each switching mode costs
per request. Usage: ``python benchmarks/bench_task_switching.py [--tasks 4] [--device cpu]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_research import adapter_file  # noqa: E402
from lora_research.methods import build_method  # noqa: E402
from lora_research.models import ModelConfig, load_model  # noqa: E402
from lora_research.targets import get_family, is_head_parameter  # noqa: E402

ROBERTA_BASE = dict(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--switches", type=int, default=12)
    ap.add_argument("--requests", type=int, default=10, help="forward passes timed per latency figure")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--workdir", default=None, help="where the adapter files and model folders go (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="task_switching_"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    family = get_family("roberta")
    cfg = ModelConfig(name="roberta_base_shape", name_or_path="roberta-base", random_init=True,
                      config_overrides=dict(ROBERTA_BASE, num_hidden_layers=args.layers))
    torch.manual_seed(0)
    model = load_model(cfg, head="classification", num_labels=2).eval()
    base_bytes = _bytes(p for _, p in model.named_parameters())
    backbone_bytes = _bytes(p for n, p in model.named_parameters() if not is_head_parameter(n, family))
    method = build_method({"name": "lora", "r": 8, "alpha": 16, "targets": ["q", "v"]})
    method.apply(model, family)
    model.to(dev)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    index = method.analysis_index(model)
    # N tasks: random trained tensors (A, B and head), each saved as a run's adapter file, and
    # each task's fine-tuned model as a separate Hugging Face folder
    g = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    tasks, files, folders = [], [], []
    for i in range(args.tasks):
        tensors = {n: (0.02 * torch.randn(params[n].shape, generator=g)).to(params[n].dtype) for n in trainable}
        tasks.append(tensors)
        path = work / f"task{i}" / "adapter.safetensors"
        adapter_file.save(path, tensors, {"method": "lora", "index": index})
        files.append(path)
        adapter_file.load_into(model, {k: v.to(dev) for k, v in tensors.items()}, trainable)
        method.merge(model)
        merged = load_model(cfg, head="classification", num_labels=2)
        state = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
        merged.load_state_dict(state, strict=True)
        folder = work / f"task{i}_model"
        merged.save_pretrained(str(folder))
        folders.append(folder)
        method.unmerge(model)
        del merged
    adapter_bytes = _bytes(tasks[0].values())
    lora_bytes = _bytes(v for k, v in tasks[0].items() if ".lora_" in k)
    print(f"[setup] {args.tasks} tasks written to {work} in {time.perf_counter() - t_all:.1f}s", flush=True)

    on_dev = [{k: v.to(dev) for k, v in t.items()} for t in tasks]
    state = {"cur": 0}
    adapter_file.load_into(model, on_dev[0], trainable)
    method.merge(model)

    def merge_switch(i):
        nxt = (state["cur"] + 1) % args.tasks
        method.unmerge(model)
        adapter_file.load_into(model, on_dev[nxt], trainable)
        method.merge(model)
        state["cur"] = nxt

    def disk_switch(i):
        nxt = (state["cur"] + 1) % args.tasks
        tensors = adapter_file.read(files[nxt]).tensors
        method.unmerge(model)
        adapter_file.load_into(model, {k: v.to(dev) for k, v in tensors.items()}, trainable)
        method.merge(model)
        state["cur"] = nxt

    def swap_switch(i):
        nxt = (state["cur"] + 1) % args.tasks
        adapter_file.load_into(model, on_dev[nxt], trainable)
        state["cur"] = nxt

    ids = torch.randint(5, 1000, (1, 128), generator=g).to(dev)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    @torch.no_grad()
    def request(_):
        model(**batch)

    results = {}
    results["merge/unmerge"] = _median_ms(merge_switch, args.switches)
    results["adapter from disk"] = _median_ms(disk_switch, args.switches)
    lat_merged = _median_ms(request, args.requests)
    method.unmerge(model)
    results["unmerged swap"] = _median_ms(swap_switch, args.switches)
    lat_unmerged = _median_ms(request, args.requests)
    print("[switch] in-repo modes done", flush=True)

    peft_ms = None
    try:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        pbase = load_model(cfg, head="classification", num_labels=2).eval()
        lcfg = dict(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"],
                    task_type="SEQ_CLS")
        pm = get_peft_model(pbase, LoraConfig(**lcfg), adapter_name="task0")
        for i in range(1, args.tasks):
            pm.add_adapter(f"task{i}", LoraConfig(**lcfg))
        pm.to(dev).eval()
        peft_ms = _median_ms(lambda i: pm.set_adapter(f"task{(i + 1) % args.tasks}"), args.switches)
        del pm, pbase
    except ImportError:
        pass
    results["PEFT set_adapter"] = peft_ms

    from transformers import AutoModelForSequenceClassification

    holder = {}

    def separate_switch(i):
        nxt = (state["cur"] + 1) % args.tasks
        holder["m"] = AutoModelForSequenceClassification.from_pretrained(str(folders[nxt])).to(dev).eval()
        state["cur"] = nxt

    separate_switch(0)  # warm the page cache once
    results["separate model"] = _median_ms(separate_switch, max(3, args.switches // 3))
    holder.clear()

    n = args.tasks
    mem = {"base_bytes": base_bytes, "adapter_bytes_per_task": adapter_bytes, "lora_bytes_per_task": lora_bytes,
           "one_base_plus_n_adapters": backbone_bytes + n * adapter_bytes, "n_full_models": n * base_bytes,
           "adapter_file_bytes": files[0].stat().st_size, "model_folder_bytes": _folder_bytes(folders[0])}
    total = time.perf_counter() - t_all
    ref = results["separate model"]
    lines = [f"Task switching ({n} tasks, RoBERTa-base-shaped random model, {args.layers} blocks, LoRA r=8 q,v + "
             f"head per task; {args.device}, {args.threads} thread(s); median of {args.switches} switches; "
             f"total {total:.0f}s)", "",
             "| switch to the next task | median ms | vs loading a separate fine-tuned model |", "|---|---:|---:|"]
    for k in ("merge/unmerge", "unmerged swap", "adapter from disk", "PEFT set_adapter", "separate model"):
        v = results[k]
        lines.append(f"| {k} | {'n/a' if v is None else f'{v:.2f}'} | "
                     f"{'n/a' if v is None else f'{v / ref:.4f}× ({ref / v:.0f}× faster)' if k != 'separate model' else '1'} |")
    lines += ["", f"Request latency, batch 1 × 128 tokens: merged {lat_merged:.1f} ms, unmerged {lat_unmerged:.1f} ms "
              f"({lat_unmerged / lat_merged:.3f}×)", "",
              "| memory for N tasks | bytes | MB |", "|---|---:|---:|"]
    for k in ("base_bytes", "adapter_bytes_per_task", "lora_bytes_per_task", "one_base_plus_n_adapters",
              "n_full_models", "adapter_file_bytes", "model_folder_bytes"):
        lines.append(f"| {k} | {mem[k]:,} | {mem[k] / 2**20:.2f} |")
    lines.append("")
    lines.append(f"{n} tasks: one base + {n} adapters = {mem['one_base_plus_n_adapters'] / mem['n_full_models']:.4f}× "
                 f"the memory of {n} full models; an adapter file is {mem['adapter_file_bytes'] / mem['model_folder_bytes']:.5f}× "
                 "a model folder on disk.")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"switch_ms": results, "latency_ms": {"merged": lat_merged,
                                               "unmerged": lat_unmerged}, "memory": mem, "tasks": n,
                                               "device": args.device, "threads": args.threads}, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
