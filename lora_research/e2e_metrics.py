"""Drop-in for the E2E challenge's ``measure_scores.py -p REF_FILE PRED_FILE``, printing JSON.

    python -m lora_research.e2e_metrics REF_FILE PRED_FILE [--metrics BLEU NIST ...] [--paper-scale]
                                         [--nist paper|mteval]

REF_FILE: references of one MR on consecutive lines, MRs separated by a blank line (LoRA's
``e2e_ref.txt``), or an E2E dataset CSV (``*.csv``, ``mr,ref`` rows). PRED_FILE: one prediction per
line (LoRA's ``e2e_pred.txt``). Prints ``{"BLEU": ..., "NIST": ..., ...}`` (official scale; with
``--paper-scale`` the LoRA paper's Table 3 scale) and, when NIST is computed, ``"nist_mode"``:
``paper`` (default; ``measure_scores.py -p``, as the LoRA paper) or ``mteval`` (``--nist mteval``:
the original mteval-v13a, the scorer's default without ``-p``). Exit status: 0 all metrics computed; 1 some
metric failed (JSON still printed, with an ``"errors"`` entry, reason also on stderr); 2 bad usage
or input (missing file, count mismatch...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_research.metrics.e2e import E2E_METRICS, ERRORS_KEY, NIST_MODES, score_e2e, to_paper_scale
from lora_research.metrics.e2e_files import read_e2e_csv, read_prediction_file, read_reference_file


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``error: ...``, exit 2), not usage + message."""

    def error(self, message):  # noqa: D102
        self.exit(2, f"error: {' '.join(message.split())} (see --help)\n")


def _read(kind: str, path: Path, reader):
    """Run ``reader(path)``; a non-UTF-8 byte becomes one line naming the file, line and byte offset."""
    try:
        return reader(path)
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
            raise ValueError(f"{kind} file {path}: not valid UTF-8") from None
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ValueError(f"{kind} file {path}: line {line}, byte {e.start}: not valid UTF-8 "
                             f"(byte 0x{raw[e.start]:02x}); the scorer reads UTF-8 text") from None


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m lora_research.e2e_metrics", description=__doc__.split("\n")[0])
    parser.add_argument("ref_file", type=Path, help="references: blank-line-separated groups, or an E2E .csv")
    parser.add_argument("pred_file", type=Path, help="predictions: one per line")
    parser.add_argument("--metrics", nargs="+", default=list(E2E_METRICS), choices=E2E_METRICS, metavar="METRIC",
                        help=f"subset of {' '.join(E2E_METRICS)} (default: all)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="BLEU, METEOR, ROUGE_L x100 (NIST, CIDEr raw), as in the LoRA paper's Table 3")
    parser.add_argument("--nist", choices=NIST_MODES, default="paper",
                        help="paper (default): measure_scores.py -p, as the LoRA paper; "
                             "mteval: the original mteval-v13a (the scorer's default without -p)")
    args = parser.parse_args(argv)

    try:
        for kind, path in (("reference", args.ref_file), ("prediction", args.pred_file)):
            if not path.is_file():
                raise ValueError(f"{kind} file not found: {path}")
        if args.ref_file.suffix.lower() == ".csv":
            references = _read("reference", args.ref_file, read_e2e_csv)[1]
        else:
            references = _read("reference", args.ref_file, read_reference_file)
        predictions = _read("prediction", args.pred_file, read_prediction_file)
        if not references:
            raise ValueError(f"reference file {args.ref_file} holds no references (empty file?)")
        if len(predictions) != len(references):
            raise ValueError(
                f"{len(predictions)} predictions in {args.pred_file} but {len(references)} "
                f"reference groups (MRs) in {args.ref_file}"
            )
        scores = score_e2e(predictions, references, metrics=args.metrics, nist_mode=args.nist)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        from lora_research.outputs import error_message

        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2

    if args.paper_scale:
        scores = to_paper_scale(scores)
    if "NIST" in scores:
        scores["nist_mode"] = args.nist
    print(json.dumps(_strict(scores), indent=2, allow_nan=False))
    for metric, message in scores.get(ERRORS_KEY, {}).items():
        print(f"error: {metric} not computed: {message}", file=sys.stderr)
    return 1 if ERRORS_KEY in scores else 0


def _strict(obj):
    """NaN / Inf (e.g. a metric of empty outputs) as null: the printed JSON is strict."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
