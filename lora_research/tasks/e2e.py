"""E2E NLG Challenge data (Novikova, Dušek & Rieser, SIGDIAL 2017) as the LoRA paper used it.

Sources (``source=``):

* ``csv`` (default): the official release CSVs in ``data_dir`` (``trainset.csv`` 42,061 pairs,
  ``devset.csv`` 4,672 pairs / 547 MRs, ``testset_w_refs.csv`` 4,693 pairs / 630 MRs). Header
  ``mr,ref``; CRLF line endings and two training references with an embedded line break, hence
  ``csv.reader(open(f, newline='', encoding='utf-8'))``. Whitespace inside a reference (the
  embedded ``"\\r\\n  "``) is collapsed to one space.
* ``lora_txt``: microsoft/LoRA's ``examples/NLG/data/e2e/{train,valid,test}.txt`` in
  ``data_dir/lora_format`` (or ``data_dir`` itself): one ``MR||reference`` pair per line, MR
  already linearised, both sides tokenised (``£ 20 - 25``, ``family - friendly .``).
* ``hub``: ``datasets.load_dataset("tuetschek/e2e_nlg")`` (columns ``meaning_representation``,
  ``human_reference``; splits train/validation/test = the CSVs above).

MR linearisation (:func:`linearise_mr`): ``name[The Vaults], eatType[pub], priceRange[more than
£30]`` → ``name : The Vaults | Type : pub | price : more than £30``: attributes in their original
order, ``" : "`` between attribute and value, ``" | "`` between pairs, and the attribute names of
LoRA's files, derived by aligning ``devset.csv`` with ``lora_format/valid.txt`` row by row
(:data:`ATTRIBUTE_NAMES`: ``eatType``→``Type``, ``priceRange``→``price``, ``familyFriendly``→
``family friendly``, the other five unchanged). LoRA's files additionally tokenise the values
(``£20-25`` → ``£ 20 - 25``, ``less than £20`` → ``less than £ 20``); ``mr_style="lora"`` does
that too and then reproduces every MR of ``valid.txt``/``test.txt`` exactly. The default
``mr_style="raw"`` keeps the values as in the CSV (matching the raw, untokenised references).

Training features (:func:`encode_pair`), as ``gpt2_encode.py --add_bos --add_eos`` +
``FT_Dataset`` (objective ``clm``): ``input_ids = tok(context) + [EOS] + tok(" " + completion) +
[EOS]``; ``labels`` are ``-100`` on the context and its EOS (no loss there), equal to
``input_ids`` on the completion and its final EOS; truncated on the right to ``max_length``.
Trainer's causal-LM loss shifts labels by one, so each completion token is predicted from the
tokens before it. Batches are padded by ``transformers.DataCollatorForSeq2Seq`` (right side:
``input_ids`` with the pad id, ``attention_mask`` with 0, ``labels`` with -100).

References are grouped by MR in order of first appearance (:func:`group_by_mr`): consecutive rows
of one MR are its multiple references.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lora_research.tasks.hub_data import load_from_hub

#: CSV attribute → the name in microsoft/LoRA's linearised MRs (derived from devset.csv vs valid.txt).
ATTRIBUTE_NAMES = {
    "name": "name",
    "eatType": "Type",
    "food": "food",
    "priceRange": "price",
    "customer rating": "customer rating",
    "area": "area",
    "familyFriendly": "family friendly",
    "near": "near",
}
SPLITS = ("train", "dev", "test")
CSV_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
LORA_TXT_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
HUB_DATASET_ID = "tuetschek/e2e_nlg"
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
SOURCES = ("csv", "lora_txt", "hub")
MR_STYLES = ("raw", "lora")
_CACHE_FORMAT_VERSION = 1

_PAIR_RE = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*")


@dataclass(frozen=True)
class E2EPair:
    """One (MR, reference) pair; ``context`` is the linearised MR."""

    context: str
    completion: str


def parse_mr(mr: str, where: str = "MR") -> list[tuple[str, str]]:
    """``"name[X], eatType[pub]"`` → ``[("name", "X"), ("eatType", "pub")]``.

    ``ValueError`` naming ``where`` (file/line) and the value when the text is not a
    comma-separated list of ``attribute[value]``.
    """
    pairs: list[tuple[str, str]] = []
    pos = 0
    text = mr.strip()
    while pos < len(text):
        m = _PAIR_RE.match(text, pos)
        if m is None:
            raise ValueError(
                f"{where}: malformed MR {mr!r} (at character {pos}): expected comma-separated "
                f"'attribute[value]' items, e.g. 'name[The Vaults], eatType[pub]'"
            )
        pairs.append((m.group(1), m.group(2).strip()))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"{where}: malformed MR {mr!r}: expected ',' at character {pos}")
            pos += 1
    if not pairs:
        raise ValueError(f"{where}: empty MR {mr!r}")
    return pairs


def _tokenise_value(value: str) -> str:
    """LoRA files' value tokenisation: ``£20-25`` → ``£ 20 - 25``."""
    value = re.sub(r"£(?=\d)", "£ ", value)
    return re.sub(r"(?<=\d)-(?=\d)", " - ", value)


def linearise_mr(mr: str, style: str = "raw", where: str = "MR") -> str:
    """The LoRA repo's MR string: ``name : X | Type : pub | ...`` (see the module docstring)."""
    if style not in MR_STYLES:
        raise ValueError(f"unknown mr_style {style!r}; valid choices: {list(MR_STYLES)}")
    items = []
    for attr, value in parse_mr(mr, where):
        if style == "lora":
            value = _tokenise_value(value)
        items.append(f"{ATTRIBUTE_NAMES.get(attr, attr)} : {value}")
    return " | ".join(items)


def _clean(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- readers


def read_csv(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """Rows of an official E2E CSV as ``(line, mr, ref)``; ``ValueError`` on a bad file."""
    path = Path(path)
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: file is empty; expected a header 'mr,ref'")
            names = [h.strip().lower() for h in header]
            if "mr" not in names or "ref" not in names:
                raise ValueError(f"{path}: line 1: header {header!r} lacks column(s) 'mr' and/or 'ref'")
            i_mr, i_ref = names.index("mr"), names.index("ref")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{path}: line {line}: expected {len(header)} fields, got {len(row)}: {row!r}")
                out.append((line, row[i_mr], row[i_ref]))
    except UnicodeDecodeError:
        raise ValueError(_utf8_error(path)) from None
    except csv.Error as e:
        raise ValueError(f"{path}: unreadable CSV ({e})") from None
    if not out:
        raise ValueError(f"{path}: no examples after the header line; expected 'mr,ref' rows")
    return out


def _utf8_error(path) -> str:
    from lora_research.outputs import utf8_error

    return utf8_error(path) or f"{path}: not valid UTF-8"


def read_lora_txt(path: str | os.PathLike) -> list[E2EPair]:
    """microsoft/LoRA's ``MR||reference`` lines (MR already linearised, text tokenised)."""
    pairs = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if "||" not in line:
                    raise ValueError(f"{path}: line {line_no}: expected 'MR||reference', got {line!r}")
                context, completion = line.split("||", 1)
                if " : " not in context:
                    raise ValueError(f"{path}: line {line_no}: malformed linearised MR {context!r}")
                pairs.append(E2EPair(context.strip(), _clean(completion)))
    except UnicodeDecodeError:
        raise ValueError(_utf8_error(path)) from None
    if not pairs:
        raise ValueError(f"{path}: no examples; expected one 'MR||reference' pair a line")
    return pairs


def _lora_txt_path(data_dir: Path, split: str) -> Path:
    name = LORA_TXT_FILES[split]
    for cand in (data_dir / "lora_format" / name, data_dir / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"E2E split {split!r} in LoRA txt format not found: tried {data_dir / 'lora_format' / name} "
        f"and {data_dir / name}" + (" (microsoft/LoRA's train.txt is often absent; use source=csv)" if split == "train" else "")
    )


def _load_hub_split(split: str, revision: Optional[str] = None):
    return load_from_hub(f"{HUB_DATASET_ID} ({split})", "task.source=hub",
                         "use task.source=csv with E2E_DIR (or task.data_dir) set to the e2e-dataset folder "
                         "(trainset.csv, devset.csv, testset_w_refs.csv)",
                         HUB_DATASET_ID, split=HUB_SPLITS[split], revision=revision)


def load_pairs(
    split: str,
    *,
    source: str = "csv",
    data_dir: Optional[str | os.PathLike] = None,
    mr_style: str = "raw",
) -> list[E2EPair]:
    """All (linearised MR, reference) pairs of ``split`` (train | dev | test), in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown E2E split {split!r}; valid choices: {list(SPLITS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown E2E source {source!r}; valid choices: {list(SOURCES)}")
    if source == "hub":
        ds = _load_hub_split(split)
        return [
            E2EPair(linearise_mr(r["meaning_representation"], mr_style, f"{HUB_DATASET_ID}/{split} row {i}"),
                    _clean(r["human_reference"]))
            for i, r in enumerate(ds)
        ]
    root = _data_root(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"E2E data directory {str(root)!r} does not exist (task.data_dir / E2E_DIR)")
    if source == "lora_txt":
        return read_lora_txt(_lora_txt_path(root, split))
    path = root / CSV_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"E2E split {split!r}: {path} not found")
    return [E2EPair(linearise_mr(mr, mr_style, f"{path}: line {line}"), _clean(ref)) for line, mr, ref in read_csv(path)]


def group_by_mr(pairs: Sequence[E2EPair]) -> tuple[list[str], list[list[str]]]:
    """(unique contexts in order of first appearance, their references)."""
    groups: dict[str, list[str]] = {}
    for p in pairs:
        groups.setdefault(p.context, []).append(p.completion)
    return list(groups), list(groups.values())


def subsample_pairs(pairs: Sequence[E2EPair], n: Optional[int], seed: int) -> list[E2EPair]:
    """A seeded uniform subset of ``n`` pairs, in file order (``None``/``n >= len``: all)."""
    if n is None or n >= len(pairs):
        return list(pairs)
    if n < 0:
        raise ValueError(f"sample count must be >= 0, got {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=n, replace=False))
    return [pairs[i] for i in keep]


def subsample_mrs(pairs: Sequence[E2EPair], n_mrs: Optional[int], seed: int) -> list[E2EPair]:
    """All pairs of a seeded subset of ``n_mrs`` whole MRs (file order kept)."""
    contexts, _ = group_by_mr(pairs)
    if n_mrs is None or n_mrs >= len(contexts):
        return list(pairs)
    if n_mrs < 0:
        raise ValueError(f"MR count must be >= 0, got {n_mrs}")
    keep = {contexts[i] for i in np.random.default_rng(seed).choice(len(contexts), size=n_mrs, replace=False)}
    return [p for p in pairs if p.context in keep]


# --------------------------------------------------------------------------- tokenisation


def encode_context(tokenizer, context: str) -> list[int]:
    """Prompt ids: ``tok(context) + [EOS]`` (``gpt2_encode.py --add_bos``: 50256 after the MR)."""
    return list(tokenizer(context, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def encode_pair(tokenizer, context: str, completion: str, max_length: int) -> dict[str, list[int]]:
    """Training features with completion-only labels (see the module docstring)."""
    ctx = encode_context(tokenizer, context)
    comp = list(tokenizer(" " + completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (ctx + comp)[:max_length]
    labels = ([-100] * len(ctx) + comp)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


# --------------------------------------------------------------------------- cached features


def _data_root(data_dir) -> Path:
    """The E2E data folder of a file source (csv, lora_txt); a clear error where none is set."""
    if data_dir is None:
        raise ValueError("E2E data_dir is not set (task.data_dir or env E2E_DIR); or use task.source=hub")
    return Path(data_dir).expanduser()


def _data_identity(source: str, data_dir, splits) -> dict[str, Any]:
    if source == "hub":
        return {"source": "hub", "dataset": HUB_DATASET_ID}
    root = _data_root(data_dir)
    files = {}
    for s in splits:
        p = _lora_txt_path(root, s) if source == "lora_txt" else root / CSV_FILES[s]
        if p.is_file():
            st = p.stat()
            files[s] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return {"source": source, "files": files}


def prepare_e2e_features(
    tokenizer,
    *,
    splits: Sequence[str],
    max_length: int,
    source: str = "csv",
    data_dir=None,
    mr_style: str = "raw",
    max_train_samples: Optional[int] = None,
    max_eval_mrs: Optional[int] = None,
    seed: int = 0,
    cache_dir=None,
):
    """Tokenised features per split (``datasets.Dataset``), cached on disk. Returns ``(dict, hit)``.

    ``train`` is subsampled to ``max_train_samples`` pairs, other splits to ``max_eval_mrs``
    whole MRs (all their references), both seeded with ``seed`` (the task's ``subset_seed``).
    The cache (``save_to_disk`` into a temp folder, then ``os.replace``) lives under
    :func:`lora_research.tasks.feature_cache.default_cache_dir` and is keyed like the GLUE one.
    """
    import datasets

    from lora_research.tasks.feature_cache import cached_features, tokenizer_identity

    if max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    key = {
        "version": _CACHE_FORMAT_VERSION,
        "task": "e2e",
        "splits": list(splits),
        "data": _data_identity(source, data_dir, splits),
        "mr_style": mr_style,
        "tokenizer": tokenizer_identity(tokenizer),
        "max_length": int(max_length),
        "max_train_samples": max_train_samples,
        "max_eval_mrs": max_eval_mrs,
        "seed": seed,
    }
    def build():
        out = datasets.DatasetDict()
        for s in splits:
            pairs = load_pairs(s, source=source, data_dir=data_dir, mr_style=mr_style)
            if s == "train":
                pairs = subsample_pairs(pairs, max_train_samples, seed)
            else:
                pairs = subsample_mrs(pairs, max_eval_mrs, seed)
            enc = [encode_pair(tokenizer, p.context, p.completion, max_length) for p in pairs]
            out[s] = datasets.Dataset.from_dict(
                {k: [e[k] for e in enc] for k in ("input_ids", "attention_mask", "labels")}
            )
        return out

    dd, hit = cached_features("e2e", key, build, cache_dir)
    return {s: dd[s] for s in splits}, hit
