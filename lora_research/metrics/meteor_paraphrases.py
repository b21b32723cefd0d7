"""METEOR 1.5's English paraphrase table cut to the pairs a corpus could match: the same score, ~5 s sooner.

``meteor-1.5.jar -l en`` reads its paraphrase table (``data/paraphrase-en.gz``: 5.3M phrase pairs, 62 MB
of gzip) at every start. On E2E's 50 dev MRs that is ~4.7 s of METEOR's ~5.7 s (2-core CPU), paid by
every run of a sweep. A paraphrase match (``edu.cmu.meteor.aligner.ParaphraseMatcher``) needs one phrase
of a pair in the hypothesis and the other in a reference, word for word over the normalised words of
the two lines; a pair holding a word that cannot occur in the scored texts never matches. This module
drops those pairs and METEOR reads the rest (``-a``): every alignment, and so every segment score and
the corpus score, is unchanged (``tests/test_meteor_paraphrases.py`` compares them with the full table's).

*Cannot occur*, conservatively: ``-norm`` tokenises (Moses-style), lower-cases and rewrites quotes,
dashes and entities, which splits tokens and changes punctuation but keeps their letters and digits.
So the *key* of every word METEOR sees (its ASCII letters and digits, lower-cased, accents stripped) is
a substring of the key of a whitespace token of the text it was sent. A pair is kept when every one of
its words' keys is such a substring; words without letters or digits (punctuation) always pass. That
keeps a superset of the pairs that can match (~100k of 5.3M on E2E).

The table is indexed once per machine, in a subprocess (it parses 15.8M lines: ~20 s, ~1 GB that the
scoring run should not hold), into ``$LORA_RESEARCH_CACHE/meteor/`` (default
``~/.cache/lora_research``), keyed by the table's path, size and modification time, and published
atomically. Each scoring then writes its small table in well under a second. Where the index cannot be
built or read, :func:`cut_table` returns ``None`` and METEOR reads the full table.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import subprocess
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import numpy as np

from lora_research.cache_dir import cache_dir, write_entry

log = logging.getLogger(__name__)

_INDEX_FORMAT = 3
_FILES = ("keys.txt", "key_ids.npy", "pair_starts.npy", "pairs.txt", "pair_offsets.npy")


def full_table() -> Path:
    """The paraphrase table meteor-1.5.jar reads by default (pycocoevalcap's copy, byte-identical to the
    official scorer's)."""
    import pycocoevalcap.meteor.meteor as meteor

    return Path(meteor.__file__).resolve().parent / "data" / "paraphrase-en.gz"


def word_key(word: str) -> str:
    """A word's ASCII letters and digits, lower-cased, accents stripped ("Café-au" -> "cafeau", "--" -> "")."""
    folded = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in folded if c.isascii() and c.isalnum())


def possible_keys(texts: Iterable[str]) -> set[str]:
    """Every substring of the key of every whitespace token of ``texts`` (and the empty key)."""
    keys = {""}
    for token in {t for text in texts for t in text.split()}:
        k = word_key(token)
        keys.update(k[i:j] for i in range(len(k)) for j in range(i + 1, len(k) + 1))
    return keys


def index_dir(table: Path) -> Path:
    st = table.stat()
    key = {"format": _INDEX_FORMAT, "table": str(table.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("meteor") / f"{table.stem}-{digest}"


def build_index(table: Path, entry: Path) -> None:
    """Index ``table`` (gzip, 3 lines per pair: probability, phrase, phrase) into the folder ``entry``:
    ``keys.txt`` (distinct word keys), ``key_ids.npy`` (the key id of every word of every pair, pair
    after pair), ``pair_starts.npy`` (where each pair's ids start, and the end), ``pairs.txt`` (the
    pairs' lines as read) and ``pair_offsets.npy`` (where each pair's bytes start, and the end)."""
    write_entry(entry, lambda tmp: _write_index(table, tmp))


def _write_index(table: Path, tmp: Path) -> None:
    key_of: dict[str, int] = {}
    word_ids: dict[str, int] = {}
    ids, starts, offsets = [], [0], [0]
    with gzip.open(table, "rb") as src, open(tmp / "pairs.txt", "wb") as dst:
        while True:
            lines = [src.readline() for _ in range(3)]
            if not lines[0]:
                break
            if not lines[2]:
                raise ValueError(f"{table}: truncated paraphrase pair at byte {offsets[-1]} (want 3 lines per pair)")
            for word in (lines[1] + b" " + lines[2]).decode("utf-8").split():
                wid = word_ids.get(word)
                if wid is None:
                    wid = word_ids[word] = key_of.setdefault(word_key(word), len(key_of))
                ids.append(wid)
            starts.append(len(ids))
            data = b"".join(lines)
            dst.write(data)
            offsets.append(offsets[-1] + len(data))
    keys = sorted(key_of, key=key_of.__getitem__)
    (tmp / "keys.txt").write_text("\n".join(keys), encoding="utf-8")
    np.save(tmp / "key_ids.npy", np.asarray(ids, dtype=np.uint16 if len(keys) <= 1 << 16 else np.int32))
    small = np.int32 if max(len(ids), offsets[-1]) < 1 << 31 else np.int64
    np.save(tmp / "pair_starts.npy", np.asarray(starts, dtype=small))
    np.save(tmp / "pair_offsets.npy", np.asarray(offsets, dtype=small))


def ensure_index(table: Path) -> Path:
    """The index of ``table``, built first (in a subprocess) if missing."""
    entry = index_dir(table)
    if not all((entry / f).is_file() for f in _FILES):
        log.info("indexing METEOR's paraphrase table %s into %s (once per machine)", table, entry)
        done = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from lora_research.metrics.meteor_paraphrases import build_index; "
                               "build_index(Path(sys.argv[1]), Path(sys.argv[2]))", str(table), str(entry)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"indexing {table} failed: {done.stderr.strip()[-400:]}")
    return entry


_BLOCK = 1 << 18  # pairs per block: the cut reads the index a block at a time (a few MB), never all of it


class _Array:
    """A 1-d ``.npy`` file read a slice at a time (``np.load(mmap_mode="r")`` would leave every page read
    resident in the process, ~130 MB for METEOR's table)."""

    def __init__(self, path: Path):
        self.file = open(path, "rb")
        fmt = np.lib.format
        header = fmt.read_array_header_1_0 if fmt.read_magic(self.file) == (1, 0) else fmt.read_array_header_2_0
        shape, _, self.dtype = header(self.file)
        self.size, self.offset = shape[0], self.file.tell()

    def __getitem__(self, piece: slice) -> np.ndarray:
        start, stop = piece.start, min(piece.stop, self.size)
        self.file.seek(self.offset + start * self.dtype.itemsize)
        return np.fromfile(self.file, dtype=self.dtype, count=max(stop - start, 0))

    def close(self) -> None:
        self.file.close()


def cut_pairs(entry: Path, keys: set[str], out: Path) -> int:
    """Write into ``out`` (a gzip table METEOR reads with ``-a``), in table order, the pairs of the index
    ``entry`` all of whose words' keys are in ``keys``; returns their number."""
    table_keys = (entry / "keys.txt").read_text(encoding="utf-8").split("\n")
    key_ok = np.fromiter((k in keys for k in table_keys), dtype=bool, count=len(table_keys))
    arrays = [_Array(entry / name) for name in ("key_ids.npy", "pair_starts.npy", "pair_offsets.npy")]
    key_ids, starts, offsets = arrays
    kept = 0
    try:
        with open(entry / "pairs.txt", "rb") as src, gzip.open(out, "wb", compresslevel=1) as dst:
            for first in range(0, starts.size - 1, _BLOCK):
                bounds = starts[first: first + _BLOCK + 1].astype(np.int64)
                bad = ~key_ok[key_ids[bounds[0]: bounds[-1]]]
                bad_before = np.zeros(bad.size + 1, dtype=np.int32)  # [i]: words before i whose key is missing
                bad_before[1:] = np.cumsum(bad.view(np.uint8), dtype=np.int32)  # (a bool cumsum: ~7x slower)
                rel = bounds - bounds[0]
                good = np.flatnonzero(bad_before[rel[1:]] == bad_before[rel[:-1]])
                at = offsets[first: first + _BLOCK + 1].astype(np.int64)
                for i in good.tolist():
                    src.seek(int(at[i]))
                    dst.write(src.read(int(at[i + 1] - at[i])))
                kept += good.size
    finally:
        for array in arrays:
            array.close()
    return kept


def cut_table(texts: Iterable[str], out_dir: Path, table: Optional[Path] = None) -> Optional[Path]:
    """A paraphrase table for scoring ``texts`` (every hypothesis and reference METEOR will be sent) with
    the pairs they could match, written into ``out_dir``; ``None`` (METEOR then reads the full table)
    where the index cannot be built or read, with the reason in the log."""
    table = table or full_table()
    try:
        entry = ensure_index(table)
        out = Path(out_dir) / "paraphrase-cut.gz"
        cut_pairs(entry, possible_keys(texts), out)
        return out
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("METEOR reads its full paraphrase table (%s): %s", table, exc)
        return None
