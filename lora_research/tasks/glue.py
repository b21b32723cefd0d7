"""GLUE tasks: specs, data loading (hub or a local GLUE folder) and cached tokenised features.

GLUE: Wang et al., 2019, "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding" (ICLR). The LoRA paper (Hu et al., 2021, Table 2) reports on the GLUE
dev sets: MNLI matched/mismatched accuracy, CoLA Matthews correlation, STS-B Pearson, the rest
accuracy (see ``shared/PAPER.md`` and :mod:`lora_research.metrics.glue`).

Where the data comes from
-------------------------
``load_glue(task, data_dir=None)`` reads the Hugging Face hub dataset ``nyu-mll/glue``.
With ``data_dir`` it reads the original GLUE TSV files instead. The config layer passes
``data_dir`` from the setting ``data.glue_dir``, which defaults to the environment variable
``GLUE_DIR``; this module only takes ``data_dir``. Two folder layouts are accepted under
``data_dir``: the GLUE download layout (``CoLA/``, ``SST-2/``, ``MRPC/``, ``STS-B/``, ``QQP/``,
``MNLI/``, ``QNLI/``, ``RTE/``) and hub-style lowercase names (``cola/``, ``sst2/`` ...), as in
``../shared/data/glue`` next to the checkout.

The local reader reproduces the hub dataset exactly (columns, order, label encoding, ``idx``),
following the hub's builder script (``glue.py`` of ``nyu-mll/glue``):

* TSVs are read with quoting disabled (``csv.QUOTE_NONE``: some sentences contain unbalanced
  ``"``) and ``utf-8-sig`` (the MRPC files start with a BOM). Blank lines are skipped.
* Label ids are the hub's ``ClassLabel`` ids, e.g. RTE/QNLI ``entailment=0, not_entailment=1``;
  MNLI ``entailment=0, neutral=1, contradiction=2``; CoLA/SST-2/MRPC/QQP use the file's 0/1.
  STS-B labels are float32 scores. Unlabelled test rows get label ``-1``.
* ``idx`` is the 0-based row number within the source file (for MRPC train/validation built by
  the join rule below: the row number within ``msr_paraphrase_train.txt``, as on the hub).
* MRPC: if ``train.tsv`` exists, train/validation come from ``train.tsv``/``dev.tsv``.
  Otherwise they are built by the join rule: rows of ``msr_paraphrase_train.txt`` whose
  ``(#1 ID, #2 ID)`` is listed in ``dev_ids.tsv`` form validation (408), the others train (3668).
  The test split is the labelled ``msr_paraphrase_test.txt`` when present (the hub's MRPC test
  has labels), else the unlabelled GLUE ``test.tsv``.

Splits are read lazily: only the requested ``splits`` must exist, so dev-only use works when
a train file is absent (e.g. QNLI train is not in this project's ``shared/data``).

Feature cache
-------------
:func:`prepare_glue_features` tokenises and caches the result with ``save_to_disk`` under
``cache_dir`` (default ``$LORA_RESEARCH_CACHE/features``, with ``LORA_RESEARCH_CACHE``
defaulting to ``~/.cache/lora_research``), keyed by a fingerprint of the data source, the
tokenizer, ``max_length``, the splits and the subsampling arguments.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lora_research.tasks.feature_cache import cached_features, key_digest, tokenizer_identity
from lora_research.metrics.glue import GLUE_METRIC_NAMES

__all__ = [
    "GLUE_TASKS",
    "GlueTaskSpec",
    "HUB_DATASET_ID",
    "features_fingerprint",
    "get_task_spec",
    "load_glue",
    "prepare_glue_features",
]

#: The hub dataset whose columns and label encoding the local reader reproduces.
HUB_DATASET_ID = "nyu-mll/glue"

#: Bump when the loading or tokenisation logic changes, to invalidate old feature caches.
_CACHE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- task specs


@dataclass(frozen=True)
class GlueTaskSpec:
    """Static description of one GLUE task.

    Attributes:
        name: hub config name (``"cola"``, ``"sst2"``, ...), also the key in :data:`GLUE_TASKS`.
        text_columns: the hub's text column(s), in model-input order, e.g.
            ``("sentence1", "sentence2")``; one column for single-sentence tasks.
        num_labels: size of the classifier head; ``1`` for regression (STS-B).
        label_names: class names in label-id order (the hub ``ClassLabel`` names);
            ``()`` for regression.
        is_regression: ``True`` for STS-B (float score in [0, 5], MSE loss).
        metric_names: metrics reported by :func:`lora_research.metrics.glue.compute_glue_metrics`.
        main_metric: metric used for best-epoch selection and the paper's Table 2 column
            (CoLA ``matthews_correlation``, STS-B ``pearson``, all others ``accuracy``).
        eval_splits: dev splits to evaluate on (MNLI: matched and mismatched; others
            ``("validation",)``). The first one is :attr:`main_eval_split`.
        test_splits: unlabelled (GLUE leaderboard) test splits, as named on the hub.
        glue_dir_name: folder name in the original GLUE download (``"CoLA"``, ``"SST-2"``...).
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    is_regression: bool
    metric_names: tuple[str, ...]
    main_metric: str
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    glue_dir_name: str

    @property
    def main_eval_split(self) -> str:
        """The dev split whose ``main_metric`` selects the best epoch (MNLI: matched)."""
        return self.eval_splits[0]

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names of the task, as on the hub: train, eval splits, test splits."""
        return ("train", *self.eval_splits, *self.test_splits)

    @property
    def default_splits(self) -> tuple[str, ...]:
        """What training needs (``splits=None``): train and the eval splits, no test."""
        return ("train", *self.eval_splits)


def _spec(name, text_columns, label_names, glue_dir_name, main_metric="accuracy",
          eval_splits=("validation",), test_splits=("test",)) -> GlueTaskSpec:
    is_regression = not label_names
    return GlueTaskSpec(
        name=name,
        text_columns=tuple(text_columns),
        num_labels=1 if is_regression else len(label_names),
        label_names=tuple(label_names),
        is_regression=is_regression,
        metric_names=GLUE_METRIC_NAMES[name],
        main_metric=main_metric,
        eval_splits=tuple(eval_splits),
        test_splits=tuple(test_splits),
        glue_dir_name=glue_dir_name,
    )


#: The eight GLUE tasks of the LoRA paper (WNLI and AX are not used).
GLUE_TASKS: dict[str, GlueTaskSpec] = {
    "cola": _spec("cola", ["sentence"], ["unacceptable", "acceptable"], "CoLA",
                  main_metric="matthews_correlation"),
    "sst2": _spec("sst2", ["sentence"], ["negative", "positive"], "SST-2"),
    "mrpc": _spec("mrpc", ["sentence1", "sentence2"], ["not_equivalent", "equivalent"], "MRPC"),
    "qqp": _spec("qqp", ["question1", "question2"], ["not_duplicate", "duplicate"], "QQP"),
    "stsb": _spec("stsb", ["sentence1", "sentence2"], [], "STS-B", main_metric="pearson"),
    "mnli": _spec("mnli", ["premise", "hypothesis"], ["entailment", "neutral", "contradiction"],
                  "MNLI", eval_splits=("validation_matched", "validation_mismatched"),
                  test_splits=("test_matched", "test_mismatched")),
    "qnli": _spec("qnli", ["question", "sentence"], ["entailment", "not_entailment"], "QNLI"),
    "rte": _spec("rte", ["sentence1", "sentence2"], ["entailment", "not_entailment"], "RTE"),
}


def get_task_spec(task: str) -> GlueTaskSpec:
    """Return the spec of ``task``; ``ValueError`` naming the valid choices otherwise."""
    try:
        return GLUE_TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown GLUE task {task!r}; valid choices: {', '.join(GLUE_TASKS)}"
        ) from None


def _resolve_splits(spec: GlueTaskSpec, splits: Sequence[str] | str | None) -> tuple[str, ...]:
    if splits is None:
        return spec.default_splits
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(dict.fromkeys(splits))  # de-duplicate, keep order
    bad = [s for s in splits if s not in spec.splits]
    if bad or not splits:
        raise ValueError(
            f"invalid split(s) {bad!r} for GLUE task {spec.name!r}; "
            f"valid choices: {', '.join(spec.splits)}"
        )
    return splits


# --------------------------------------------------------------------------- TSV formats


@dataclass(frozen=True)
class _TsvFormat:
    """How one GLUE TSV maps to hub columns.

    ``columns`` maps hub column -> file column (a header name, or an int position when the
    file has no header). ``label_column`` is None for unlabelled files.
    """

    has_header: bool
    columns: dict[str, str | int]
    label_column: str | int | None
    num_columns: int | None = None  # only for header-less files


# File label value -> hub label id, per task (STS-B: float score instead).
_LABEL_VALUES: dict[str, dict[str, int]] = {
    "cola": {"0": 0, "1": 1},
    "sst2": {"0": 0, "1": 1},
    "mrpc": {"0": 0, "1": 1},
    "qqp": {"0": 0, "1": 1},
    "mnli": {"entailment": 0, "neutral": 1, "contradiction": 2},
    "qnli": {"entailment": 0, "not_entailment": 1},
    "rte": {"entailment": 0, "not_entailment": 1},
}
_STSB_RANGE = (0.0, 5.0)

_MRPC_GLUE_COLUMNS = {"sentence1": "#1 String", "sentence2": "#2 String"}


def _tsv_format(task: str, split: str) -> _TsvFormat:
    """Column layout of the GLUE file for (task, split); test files carry no label."""
    labelled = not split.startswith("test")
    if task == "cola" and labelled:  # CoLA train/dev: no header; source, label, mark, sentence
        return _TsvFormat(False, {"sentence": 3}, 1, num_columns=4)
    cols: dict[str, dict[str, str]] = {
        "cola": {"sentence": "sentence"},
        "sst2": {"sentence": "sentence"},
        "mrpc": _MRPC_GLUE_COLUMNS,
        "qqp": {"question1": "question1", "question2": "question2"},
        "stsb": {"sentence1": "sentence1", "sentence2": "sentence2"},
        "mnli": {"premise": "sentence1", "hypothesis": "sentence2"},
        "qnli": {"question": "question", "sentence": "sentence"},
        "rte": {"sentence1": "sentence1", "sentence2": "sentence2"},
    }
    label = {"cola": "label", "sst2": "label", "mrpc": "Quality", "qqp": "is_duplicate",
             "stsb": "score", "mnli": "gold_label", "qnli": "label", "rte": "label"}
    return _TsvFormat(True, cols[task], label[task] if labelled else None)


def _iter_tsv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank line, quoting disabled, BOM removed.

    A byte that is not UTF-8 raises ``ValueError`` naming the file, the line and the byte offset.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row:
                    yield reader.line_num, row
    except UnicodeDecodeError:
        from lora_research.outputs import utf8_error

        raise ValueError(utf8_error(path, "utf-8-sig") or f"{path}: not valid UTF-8") from None
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: unreadable TSV ({e})") from None


class _RowParser:
    """Turns raw rows of one file into hub-style examples, raising precise ValueErrors."""

    def __init__(self, task: str, path: Path, fmt: _TsvFormat):
        self.task, self.path, self.fmt = task, path, fmt
        self.index: dict[str | int, int] = {}
        self.num_columns = fmt.num_columns

    def set_header(self, line: int, header: list[str]) -> None:
        self.num_columns = len(header)
        wanted = list(self.fmt.columns.values())
        if self.fmt.label_column is not None:
            wanted.append(self.fmt.label_column)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(
                f"{self.path}: line {line}: header {header!r} lacks column(s) {missing!r}; "
                f"expected the GLUE {self.task} columns {wanted!r}"
            )
        self.index = {name: header.index(name) for name in header}

    def _col(self, key: str | int) -> int:
        return key if isinstance(key, int) else self.index[key]

    def parse(self, line: int, row: list[str]) -> tuple[dict[str, str], float | int | None]:
        if len(row) != self.num_columns:
            raise ValueError(
                f"{self.path}: line {line}: expected {self.num_columns} tab-separated columns, "
                f"got {len(row)}: {row!r}"
            )
        texts = {hub: row[self._col(col)] for hub, col in self.fmt.columns.items()}
        label = None
        if self.fmt.label_column is not None:
            label = self.parse_label(line, row[self._col(self.fmt.label_column)])
        return texts, label

    def parse_label(self, line: int, value: str) -> float | int:
        if self.task == "stsb":
            try:
                score = float(value)
            except ValueError:
                score = math.nan
            lo, hi = _STSB_RANGE
            if not lo <= score <= hi:  # also rejects NaN
                raise ValueError(
                    f"{self.path}: line {line}: bad STS-B score {value!r}; "
                    f"expected a number in [{lo}, {hi}]"
                )
            return score
        valid = _LABEL_VALUES[self.task]
        if value not in valid:
            raise ValueError(
                f"{self.path}: line {line}: bad label {value!r} for GLUE task {self.task!r}; "
                f"expected one of {list(valid)}"
            )
        return valid[value]


def _read_glue_tsv(task: str, split: str, path: Path) -> list[tuple[int, dict[str, str], Any]]:
    """Read one GLUE TSV into ``[(line, texts, label_or_None), ...]``."""
    fmt = _tsv_format(task, split)
    parser = _RowParser(task, path, fmt)
    rows = []
    it = _iter_tsv(path)
    if fmt.has_header:
        first = next(it, None)
        if first is None:
            raise ValueError(f"{path}: file is empty; expected a header line")
        parser.set_header(*first)
    for line, row in it:
        texts, label = parser.parse(line, row)
        rows.append((line, texts, label))
    if not rows:
        raise ValueError(f"{path}: no examples" + (" after the header line" if fmt.has_header else "")
                         + f"; expected one row per example of GLUE {task} {split}")
    return rows


# --------------------------------------------------------------------------- local files


def _task_dir(spec: GlueTaskSpec, data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"GLUE data directory {str(root)!r} does not exist (data_dir / data.glue_dir / "
            f"GLUE_DIR); expected a folder holding {spec.glue_dir_name}/ or {spec.name}/"
        )
    candidates = [root / spec.glue_dir_name, root / spec.name]
    for cand in candidates:
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        f"no folder for GLUE task {spec.name!r} in {str(root)!r}: tried "
        f"{', '.join(str(c) for c in candidates)}"
    )


def _split_sources(spec: GlueTaskSpec, task_dir: Path, split: str) -> list[Path] | None:
    """The file(s) ``split`` is read from, or None when absent (see :func:`_expected_files`)."""
    if spec.name == "mrpc":
        if split == "test":
            for name in ("msr_paraphrase_test.txt", "test.tsv"):
                if (task_dir / name).is_file():
                    return [task_dir / name]
            return None
        if (task_dir / "train.tsv").is_file():
            path = task_dir / ("train.tsv" if split == "train" else "dev.tsv")
            return [path] if path.is_file() else None
        pieces = [task_dir / "msr_paraphrase_train.txt", task_dir / "dev_ids.tsv"]
        return pieces if all(p.is_file() for p in pieces) else None
    path = task_dir / _glue_file_name(split)
    return [path] if path.is_file() else None


def _glue_file_name(split: str) -> str:
    """Hub split name -> GLUE file name (validation -> dev, ``*_matched`` kept for MNLI)."""
    return split.replace("validation", "dev") + ".tsv"


def _expected_files(spec: GlueTaskSpec, task_dir: Path, split: str) -> str:
    if spec.name == "mrpc":
        if split == "test":
            return f"{task_dir / 'msr_paraphrase_test.txt'} or {task_dir / 'test.tsv'}"
        if (task_dir / "train.tsv").is_file():
            return str(task_dir / "dev.tsv")
        return (f"{task_dir / 'train.tsv'} (+ dev.tsv), or {task_dir / 'msr_paraphrase_train.txt'}"
                f" + {task_dir / 'dev_ids.tsv'} (join rule)")
    return str(task_dir / _glue_file_name(split))


def _local_sources(spec: GlueTaskSpec, data_dir, splits: tuple[str, ...]) -> dict[str, list[Path]]:
    """Resolve the source files of ``splits``; one clear error listing every absent split."""
    task_dir = _task_dir(spec, data_dir)
    sources = {s: _split_sources(spec, task_dir, s) for s in splits}
    absent = [s for s, files in sources.items() if files is None]
    if absent:
        present = [s for s in spec.splits if _split_sources(spec, task_dir, s) is not None]
        details = "; ".join(f"{s}: expected {_expected_files(spec, task_dir, s)}" for s in absent)
        raise FileNotFoundError(
            f"GLUE task {spec.name!r}: split(s) {absent} absent in {str(task_dir)!r} ({details}). "
            f"Splits available there: {present or 'none'}; request only those with splits=..."
        )
    return sources  # type: ignore[return-value]


def _read_mrpc_join(files: list[Path], split: str) -> list[tuple[int, dict, int]]:
    """MRPC join rule (GLUE ``download_glue_data.py`` / hub builder).

    ``dev_ids.tsv`` lists ``#1 ID <tab> #2 ID`` of the dev pairs; rows of
    ``msr_paraphrase_train.txt`` with a listed pair are validation, the rest train. ``idx`` is
    the row number in ``msr_paraphrase_train.txt`` (as on the hub).
    """
    train_txt, dev_ids_path = files
    dev_ids = set()
    for line, row in _iter_tsv(dev_ids_path):
        if len(row) != 2:
            raise ValueError(
                f"{dev_ids_path}: line {line}: expected 2 tab-separated columns "
                f"(#1 ID, #2 ID), got {len(row)}: {row!r}"
            )
        dev_ids.add((row[0], row[1]))
    rows = _read_glue_tsv_with_ids(train_txt)
    found = {ids for _, _, _, ids in rows} & dev_ids
    if len(found) != len(dev_ids):
        missing = sorted(dev_ids - found)
        raise ValueError(
            f"{dev_ids_path}: {len(missing)} listed pair(s) not found in {train_txt}, "
            f"e.g. {missing[0]!r}; expected every dev pair to be in the training file"
        )
    want_dev = split == "validation"
    return [(n, texts, label) for n, (_, texts, label, ids) in enumerate(rows)
            if (ids in dev_ids) == want_dev]


def _read_glue_tsv_with_ids(path: Path) -> list[tuple[int, dict, int, tuple[str, str]]]:
    """Read an MSR paraphrase file (``Quality #1 ID #2 ID #1 String #2 String``)."""
    fmt = _TsvFormat(True, dict(_MRPC_GLUE_COLUMNS), "Quality")
    parser = _RowParser("mrpc", path, fmt)
    it = _iter_tsv(path)
    first = next(it, None)
    if first is None:
        raise ValueError(f"{path}: file is empty; expected a header line")
    parser.set_header(*first)
    for col in ("#1 ID", "#2 ID"):
        if col not in parser.index:
            raise ValueError(f"{path}: header {first[1]!r} lacks column {col!r}")
    i1, i2 = parser.index["#1 ID"], parser.index["#2 ID"]
    out = []
    for line, row in it:
        texts, label = parser.parse(line, row)
        out.append((line, texts, label, (row[i1], row[i2])))
    if not out:
        raise ValueError(f"{path}: no examples after the header line; expected one row per sentence pair")
    return out


def _hub_features(spec: GlueTaskSpec):
    import datasets

    feats = {c: datasets.Value("string") for c in spec.text_columns}
    feats["label"] = (datasets.Value("float32") if spec.is_regression
                      else datasets.ClassLabel(names=list(spec.label_names)))
    feats["idx"] = datasets.Value("int32")
    return datasets.Features(feats)


def _load_local_split(spec: GlueTaskSpec, split: str, files: list[Path]):
    import datasets

    if spec.name == "mrpc" and len(files) == 2:
        examples = _read_mrpc_join(files, split)
    elif spec.name == "mrpc" and files[0].name == "msr_paraphrase_test.txt":  # labelled test
        rows = _read_glue_tsv_with_ids(files[0])
        examples = [(n, texts, label) for n, (_, texts, label, _) in enumerate(rows)]
    else:
        rows = _read_glue_tsv(spec.name, split, files[0])
        examples = [(n, texts, label) for n, (_, texts, label) in enumerate(rows)]
    missing_label = -1.0 if spec.is_regression else -1
    data: dict[str, list] = {c: [] for c in spec.text_columns}
    data["label"], data["idx"] = [], []
    for n, texts, label in examples:
        for c in spec.text_columns:
            data[c].append(texts[c])
        data["label"].append(missing_label if label is None else label)
        data["idx"].append(n)
    return datasets.Dataset.from_dict(data, features=_hub_features(spec), split=split)


# --------------------------------------------------------------------------- public loading


def load_glue(
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    splits: Sequence[str] | str | None = None,
    revision: str | None = None,
):
    """Load a GLUE task as a ``datasets.DatasetDict`` with the hub's columns and label ids.

    Args:
        task: one of :data:`GLUE_TASKS` (``cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte``).
        data_dir: ``None`` → the hub dataset ``nyu-mll/glue`` (``datasets.load_dataset``).
            Otherwise a folder with the GLUE TSVs (``CoLA/train.tsv`` or ``cola/train.tsv``
            layout; see the module docstring). The config layer passes ``data.glue_dir``
            (default: env ``GLUE_DIR``).
        splits: hub split names to return. ``None`` → ``("train", *spec.eval_splits)`` (what
            training needs; test splits only on request). Only requested splits must exist,
            so ``splits=("validation",)`` works without a train file.
        revision: hub dataset revision (git sha / tag); ignored for local data.

    Returns:
        ``DatasetDict`` whose splits have columns ``(*spec.text_columns, "label", "idx")``.

    Raises:
        ValueError: unknown task or split; malformed row (file, line, bad value, expectation).
        FileNotFoundError: ``data_dir`` or a requested split's file(s) absent (names the
            expected paths and the splits that are available).
    """
    import datasets

    spec = get_task_spec(task)
    wanted = _resolve_splits(spec, splits)
    if data_dir is None:
        kwargs = {"revision": revision} if revision else {}
        full = datasets.load_dataset(HUB_DATASET_ID, spec.name, **kwargs)
        absent = [s for s in wanted if s not in full]
        if absent:
            raise ValueError(
                f"hub dataset {HUB_DATASET_ID}/{spec.name} has no split(s) {absent}; "
                f"it has {list(full)}"
            )
        return datasets.DatasetDict({s: full[s] for s in wanted})
    sources = _local_sources(spec, data_dir, wanted)
    return datasets.DatasetDict(
        {s: _load_local_split(spec, s, files) for s, files in sources.items()}
    )


# --------------------------------------------------------------------------- features + cache


def _data_identity(spec: GlueTaskSpec, data_dir, splits, revision) -> dict[str, Any]:
    if data_dir is None:
        return {"source": "hub", "dataset": HUB_DATASET_ID, "config": spec.name,
                "revision": revision or "default"}
    sources = _local_sources(spec, data_dir, splits)
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
    wanted = _resolve_splits(spec, splits)
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
    wanted = _resolve_splits(spec, splits)
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
