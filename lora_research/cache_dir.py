"""The project's on-disk caches: where they live and how an entry is published.

Every cache (tokenised features, converted GGUF models, METEOR's paraphrase index) is a folder under
``$LORA_RESEARCH_CACHE`` (default ``~/.cache/lora_research``), one sub-folder per kind. An entry is
written into a temporary folder beside its final place and moved there with ``os.replace``, so a
reader never sees half an entry; when two processes build the same entry, the first one wins.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_dir(kind: str) -> Path:
    """``$LORA_RESEARCH_CACHE/<kind>`` (``LORA_RESEARCH_CACHE`` defaults to ``~/.cache/lora_research``)."""
    root = os.environ.get("LORA_RESEARCH_CACHE") or os.path.join("~", ".cache", "lora_research")
    return Path(root).expanduser() / kind


def write_entry(entry: Path, save: Callable[[Path], None]) -> None:
    """Publish the cache entry ``entry``: ``save(folder)`` fills a temporary folder, which then takes its place.
    A ``save`` that raises leaves nothing behind; an entry a concurrent writer published first is kept."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        save(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, entry)
    except OSError:  # a concurrent writer published the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
