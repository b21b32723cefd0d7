"""GLUE features: tokenised splits, cached by :mod:`lora_research.tasks.feature_cache`.

:func:`prepare_glue_features` tokenises the splits :func:`~lora_research.tasks.glue_files.load_glue`
reads and caches the result under ``cache_dir`` (default ``$LORA_RESEARCH_CACHE/features``), keyed by
a fingerprint of the data source, the tokenizer, ``max_length``, the splits and the subsampling.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lora_research.tasks.feature_cache import cached_features, key_digest, tokenizer_identity
from lora_research.tasks.glue_files import HUB_DATASET_ID, load_glue, local_sources
from lora_research.tasks.glue_specs import GlueTaskSpec, get_task_spec, resolve_splits

__all__ = ["features_fingerprint", "prepare_glue_features"]

#: Bump when the loading or tokenisation logic changes, to invalidate old feature caches.
_CACHE_FORMAT_VERSION = 1


def _data_identity(spec: GlueTaskSpec, data_dir, splits, revision) -> dict[str, Any]:
    if data_dir is None:
        return {"source": "hub", "dataset": HUB_DATASET_ID, "config": spec.name,
                "revision": revision or "default"}
    sources = local_sources(spec, data_dir, splits)
    files = {}
    for split, paths in sources.items():
        entries = []
        for p in paths:
            st = p.stat()
            entries.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        files[split] = entries
    return {"source": "local", "files": files}


def features_fingerprint(
    task: str,
    tokenizer,
    *,
    max_length: int,
    data_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    revision: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key of :func:`prepare_glue_features`: ``(sha256 hex, the keyed contents)``.

    Keyed on: task; data source (local files' resolved path + size + mtime, or the hub id +
    revision); tokenizer identity (:func:`_tokenizer_identity`); ``max_length``; splits;
    subsampling sizes, and ``seed`` only when a subsample is actually drawn.
    """
    spec = get_task_spec(task)
    wanted = resolve_splits(spec, splits)
    subsampling = max_train_samples is not None or max_eval_samples is not None
    key = {
        "version": _CACHE_FORMAT_VERSION,
        "task": spec.name,
        "splits": list(wanted),
        "data": _data_identity(spec, data_dir, wanted, revision),
        "tokenizer": tokenizer_identity(tokenizer),
        "max_length": int(max_length),
        "max_train_samples": max_train_samples,
        "max_eval_samples": max_eval_samples,
        "seed": seed if subsampling else None,
    }
    return key_digest(key), key


def _subsample(ds, n: int | None, seed: int):
    """A seeded uniform random subset of ``n`` rows, kept in the original order.

    Unlike HF ``run_glue.py`` (first ``n`` rows), a random subset keeps label and length
    distributions representative. ``n=None`` or ``n >= len(ds)`` keeps everything.
    """
    if n is None or n >= len(ds):
        return ds
    if n < 0:
        raise ValueError(f"sample count must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(ds), size=n, replace=False))
    return ds.select(keep.tolist())


def _tokenise(spec: GlueTaskSpec, raw, tokenizer, max_length: int):
    import datasets

    label_type = datasets.Value("float32" if spec.is_regression else "int64")

    def encode(batch):
        texts = [batch[c] for c in spec.text_columns]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["labels"] = batch["label"]
        return out

    out = datasets.DatasetDict()
    for split, ds in raw.items():
        mapped = ds.map(encode, batched=True, remove_columns=ds.column_names,
                        keep_in_memory=True, desc=f"tokenising {spec.name}/{split}")
        out[split] = mapped.cast_column("labels", label_type)
    return out


def prepare_glue_features(
    task: str,
    tokenizer,
    *,
    max_length: int,
    data_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    revision: str | None = None,
):
    """Tokenised GLUE features, cached on disk. Returns ``(DatasetDict, cache_hit)``.

    Each split has columns ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` if the
    tokenizer returns them) and ``labels`` (int64 class id; float32 score for STS-B; -1 on
    unlabelled test rows). Sentence pairs are encoded as ``tokenizer(text_a, text_b,
    truncation=True, max_length=max_length)`` (longest-first truncation, as in the LoRA repo's
    ``run_glue.py``), without padding: the collator pads each batch dynamically.

    Subsampling: ``max_train_samples`` / ``max_eval_samples`` (applied to every non-train
    split) draw a seeded uniform random subset (``numpy.random.default_rng(seed)``), kept in
    file order, before tokenisation. ``seed`` is part of the cache key only when subsampling.

    Cache: ``<cache_dir>/<task>-<fingerprint[:20]>/`` (``cache_dir`` default:
    :func:`~lora_research.tasks.feature_cache.default_cache_dir`), written with ``save_to_disk`` into a temp folder in the same
    parent and moved into place with ``os.replace`` (atomic; concurrent writers are safe, the
    first to finish wins). A hit is served by ``load_from_disk`` without reading the raw data.
    ``key.json`` inside the entry records the fingerprinted contents.
    """

    spec = get_task_spec(task)
    wanted = resolve_splits(spec, splits)
    if max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    _, key = features_fingerprint(
        task, tokenizer, max_length=max_length, data_dir=data_dir, splits=wanted,
        max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
        seed=seed, revision=revision,
    )
    def build():
        raw = load_glue(task, data_dir, splits=wanted, revision=revision)
        for split in wanted:
            n = max_train_samples if split == "train" else max_eval_samples
            raw[split] = _subsample(raw[split], n, seed)
        return _tokenise(spec, raw, tokenizer, max_length)

    return cached_features(spec.name, key, build, cache_dir)
