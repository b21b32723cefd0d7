"""Readers for the files the E2E scorer consumes (only what scoring needs).

Formats, as read by the official ``measure_scores.py`` (tuetschek/e2e-metrics):

* prediction file: one prediction per line (UTF-8), each line stripped of surrounding whitespace;
  an empty line is an empty prediction.
* reference file: the references of one MR on consecutive lines, MRs separated by a blank line;
  lines stripped. A file without any blank line is a single-reference file: one MR per line.
* the E2E dataset CSVs (``devset.csv``, ``testset_w_refs.csv``; header ``mr,ref``): rows of the
  same MR are its references. Grouped by MR in order of first appearance.
"""

from __future__ import annotations

from pathlib import Path


def read_prediction_file(path: str | Path) -> list[str]:
    """One prediction per line, stripped (the official ``read_lines``)."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh]


def read_reference_file(path: str | Path) -> list[list[str]]:
    """Blank-line-separated groups of references (one per line) -> one list per MR.

    Trailing blank lines are ignored. Two consecutive blank lines inside the file would make an MR
    without references (the official reader silently creates an empty group there), so they raise
    ``ValueError`` naming the line. A file without blank lines is read as single-reference data.
    """
    groups: list[list[str]] = [[]]
    stray_blank = None  # a blank line that does not close a non-empty group
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.strip()
            if line:
                if stray_blank is not None:
                    raise ValueError(
                        f"{path}: empty reference group: line {stray_blank} is a blank line at the start of "
                        "the file or right after another blank line (MRs are separated by ONE blank line)"
                    )
                groups[-1].append(line)
            elif groups[-1]:
                groups.append([])
            elif stray_blank is None:
                stray_blank = line_no
    if not groups[-1]:
        groups.pop()
    if len(groups) == 1:  # no separator at all: single-reference file, one MR per line
        groups = [[ref] for ref in groups[0]]
    return groups


def read_e2e_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Read an E2E dataset CSV (``mr,ref`` rows) -> (MRs, references per MR).

    The rows come from the task's reader (:func:`lora_research.tasks.e2e.read_csv`: header ``mr,ref``,
    CRLF with a few quoted multi-line fields, a clear error on a bad file); MRs are in order of first
    appearance and a line break inside a text is replaced by a space.
    """
    from lora_research.tasks.e2e import read_csv

    groups: dict[str, list[str]] = {}
    for _line, mr, ref in read_csv(path):
        groups.setdefault(_one_line(mr), []).append(_one_line(ref))
    return list(groups), list(groups.values())


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
