"""On-disk cache of tokenised features, shared by every task (GLUE, E2E).

An entry is ``<cache_dir>/<name>-<sha256(key)[:20]>/``: a saved ``datasets.DatasetDict`` plus the
``key.json`` it was built for. The key lists everything the features depend on (data files,
tokenizer identity, max length, subsampling), so a second run on the same task and model does no
re-tokenisation, and any change builds a new entry. Entries are written to a temporary folder
and moved into place with ``os.replace``; when two processes build the same entry, the first wins.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from lora_research.cache_dir import cache_dir, write_entry


def default_cache_dir() -> Path:
    """``$LORA_RESEARCH_CACHE/features``; ``LORA_RESEARCH_CACHE`` defaults to ``~/.cache/lora_research``."""
    return cache_dir("features")


def tokenizer_identity(tokenizer) -> dict[str, Any]:
    """What determines a tokenizer's output: class, name, vocab size, a hash of its serialisation.

    Fast tokenizers: the backend ``tokenizer.json`` (vocab, normaliser, pre-tokeniser,
    post-processor, added tokens) without its mutable ``truncation``/``padding`` state. Other
    tokenizers: the vocabulary and special tokens. The truncation side is added since it changes
    which tokens survive ``max_length``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ser = json.loads(backend.to_str())
        ser.pop("truncation", None)
        ser.pop("padding", None)
        payload = json.dumps(ser, sort_keys=True)
    else:
        payload = json.dumps(
            {"vocab": sorted(tokenizer.get_vocab().items()),
             "special": sorted(map(str, tokenizer.all_special_tokens)),
             "lower": getattr(tokenizer, "do_lower_case", None)},
            sort_keys=True,
        )
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "serialisation_sha256": hashlib.sha256(payload.encode("utf-8")).hexdigest(),
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def cached_features(name: str, key: dict[str, Any], build: Callable[[], Any], cache_dir=None):
    """``(DatasetDict, cache_hit)``: the entry for ``key`` if present, else ``build()`` stored atomically."""
    import datasets

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = root / f"{name}-{key_digest(key)[:20]}"
    if (entry / "key.json").is_file():
        try:
            return datasets.load_from_disk(str(entry)), True
        except Exception:  # noqa: BLE001 - unreadable entry (e.g. deleted files): rebuild
            shutil.rmtree(entry, ignore_errors=True)
    features = build()

    def save(tmp: Path) -> None:
        features.save_to_disk(str(tmp))
        (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True))

    write_entry(entry, save)
    return datasets.load_from_disk(str(entry)), False
