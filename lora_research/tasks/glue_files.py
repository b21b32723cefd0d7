"""GLUE files: the hub dataset ``nyu-mll/glue`` or a local GLUE folder, read into the same ``DatasetDict``.

Where the data comes from
-------------------------
``load_glue(task, data_dir=None)`` reads the Hugging Face hub dataset ``nyu-mll/glue``.
With ``data_dir`` it reads the original GLUE TSV files instead. The task config passes
``task.data_dir``, which defaults to the environment variable ``GLUE_DIR``; this module only
takes ``data_dir``. Two folder layouts are accepted under
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
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_research.tasks.glue_specs import GlueTaskSpec, get_task_spec, resolve_splits
from lora_research.tasks.hub_data import load_from_hub

__all__ = ["HUB_DATASET_ID", "load_glue", "local_sources"]

#: The hub dataset whose columns and label encoding the local reader reproduces.
HUB_DATASET_ID = "nyu-mll/glue"


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
            f"GLUE data directory {str(root)!r} does not exist (task.data_dir / "
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


def local_sources(spec: GlueTaskSpec, data_dir, splits: tuple[str, ...]) -> dict[str, list[Path]]:
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
            layout; see the module docstring). The task config passes ``task.data_dir``
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
    wanted = resolve_splits(spec, splits)
    if data_dir is None:
        kwargs = {"revision": revision} if revision else {}
        full = load_from_hub(f"{HUB_DATASET_ID}/{spec.name}", "GLUE_DIR / task.data_dir unset",
                             "set GLUE_DIR (or task.data_dir) to a folder in the GLUE download layout "
                             "(<dir>/SST-2/train.tsv ...)", HUB_DATASET_ID, spec.name, **kwargs)
        absent = [s for s in wanted if s not in full]
        if absent:
            raise ValueError(
                f"hub dataset {HUB_DATASET_ID}/{spec.name} has no split(s) {absent}; "
                f"it has {list(full)}"
            )
        return datasets.DatasetDict({s: full[s] for s in wanted})
    sources = local_sources(spec, data_dir, wanted)
    return datasets.DatasetDict(
        {s: _load_local_split(spec, s, files) for s, files in sources.items()}
    )
