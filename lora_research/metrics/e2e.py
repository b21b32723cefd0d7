"""E2E NLG Challenge metrics, computed in-process as the official scorer does.

Official scorer: tuetschek/e2e-metrics ``measure_scores.py -p`` (the command LoRA's
``examples/NLG`` README runs). For one hypothesis per MR and a list of references per MR it
reports

* BLEU, NIST: its Python MT-Eval port (re-implemented in :mod:`lora_research.metrics.nist`),
  on the raw texts with mteval-v13a tokenisation, case-insensitive. NIST has a second mode,
  ``nist_mode="mteval"``: the original Perl mteval-v13a that the scorer runs without ``-p``
  (:func:`lora_research.metrics.nist.mteval_pl_nist`; differs on small sets);
* METEOR (1.5, ``-l en -norm``), ROUGE_L (LCS F-measure, beta = 1.2, per-segment max precision
  and max recall over the references, averaged over segments) and CIDEr (CIDEr-D, as in
  coco-caption): the MS-COCO caption evaluation code. Hypotheses and references are first
  tokenised with the Stanford PTBTokenizer (``-preserveLines -lowerCase``) and punctuation tokens
  are removed. We reuse pycocoevalcap's PTBTokenizer, Meteor, Rouge and Cider classes, whose jars
  are byte-identical to the official scorer's. METEOR reads its paraphrase table cut to the pairs
  the scored texts could match (:mod:`lora_research.metrics.meteor_paraphrases`; the same scores).

METEOR, ROUGE_L and CIDEr therefore all need Java (1.8+): the PTB tokeniser and METEOR are Java
programs. Without ``java`` on PATH, :func:`score_e2e` still returns BLEU and NIST and records why
the others are missing under the key ``"errors"`` (see :func:`score_e2e`).
"""

from __future__ import annotations

import shutil
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from lora_research.metrics.nist import NIST_MODES, check_nist_mode, corpus_bleu, corpus_nist

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
COCO_METRICS = ("METEOR", "ROUGE_L", "CIDEr")
ERRORS_KEY = "errors"
JAVA_MISSING = (
    "`java` not found on PATH: METEOR, ROUGE_L and CIDEr need Java 1.8+ (METEOR 1.5 and the "
    "Stanford PTB tokenizer used before all three are Java programs); install it, e.g. "
    "`apt-get install default-jre-headless`"
)
# Scale factors from the official output scale to the LoRA paper's Table 3 scale.
PAPER_SCALE = {"BLEU": 100.0, "NIST": 1.0, "METEOR": 100.0, "ROUGE_L": 100.0, "CIDEr": 1.0}


def score_e2e(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    metrics: Iterable[str] = E2E_METRICS,
    nist_mode: str = "paper",
) -> dict:
    """Score one prediction per MR against that MR's references, like ``measure_scores.py -p``.

    ``nist_mode``: ``"paper"`` (default, ``-p``: pymteval, as the LoRA paper) or ``"mteval"``
    (the original mteval-v13a, ``measure_scores.py`` without ``-p``); see :data:`NIST_MODES`.

    Returns ``{metric: float}`` on the official scale (BLEU 0-1, NIST raw, METEOR 0-1, ROUGE_L
    0-1, CIDEr raw) for the requested ``metrics``. Line breaks inside texts are replaced by
    spaces (the official scorer reads one text per line). If some metric cannot be computed
    because the environment lacks something (no ``java`` on PATH, pycocoevalcap not installed,
    the Java tool failing), the metrics that could be computed are still returned and the dict
    gets an extra key ``"errors"``: ``{metric: message}``. Invalid inputs raise ``ValueError``.
    """
    metrics = _check_metrics(metrics)
    check_nist_mode(nist_mode)
    predictions, references = _check_inputs(predictions, references)
    scores: dict = {}
    errors: dict[str, str] = {}
    if "BLEU" in metrics:
        scores["BLEU"] = corpus_bleu(predictions, references)
    if "NIST" in metrics:
        scores["NIST"] = corpus_nist(predictions, references, mode=nist_mode)
    coco = [m for m in COCO_METRICS if m in metrics]
    if coco:
        _coco_scores(predictions, references, coco, scores, errors)
    ordered = {m: scores[m] for m in E2E_METRICS if m in scores}
    if errors:
        ordered[ERRORS_KEY] = errors
    return ordered


def to_paper_scale(scores: Mapping) -> dict:
    """Official-scale scores -> LoRA paper Table 3 scale (BLEU, METEOR, ROUGE_L x100; NIST, CIDEr raw).

    Unknown keys (e.g. ``"errors"``) are passed through unchanged.
    """
    return {k: v * PAPER_SCALE[k] if k in PAPER_SCALE else v for k, v in scores.items()}


class _EnvironmentProblem(RuntimeError):
    """A Java-based metric could not run in this environment."""


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    metrics = tuple([metrics] if isinstance(metrics, str) else metrics)
    unknown = [m for m in metrics if m not in E2E_METRICS]
    if unknown:
        raise ValueError(f"unknown E2E metric(s) {unknown}; choose from {list(E2E_METRICS)}")
    if not metrics:
        raise ValueError(f"no metric requested; choose from {list(E2E_METRICS)}")
    return metrics


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _check_inputs(predictions, references) -> tuple[list[str], list[list[str]]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be sequences, not a single string")
    if len(predictions) != len(references):
        raise ValueError(
            f"number of predictions ({len(predictions)}) != number of reference groups ({len(references)})"
        )
    if not predictions:
        raise ValueError("no predictions to score (0 predictions and 0 reference groups)")
    bad_preds = [i for i, p in enumerate(predictions) if not isinstance(p, str)]
    if bad_preds:
        raise ValueError(f"predictions at indices {bad_preds[:10]} are not strings")
    bad_groups = [i for i, g in enumerate(references) if isinstance(g, str) or not all(isinstance(r, str) for r in g)]
    if bad_groups:
        raise ValueError(f"reference groups at indices {bad_groups[:10]} are not lists of strings")
    empty = [i for i, g in enumerate(references) if len(g) == 0]
    if empty:
        raise ValueError(f"reference groups at indices {empty[:10]} are empty ({len(empty)} in total)")
    return [_one_line(p) for p in predictions], [[_one_line(r) for r in g] for g in references]


def _coco_scores(predictions: list[str], references: list[list[str]], metrics: list[str],
                 scores: dict[str, float], errors: dict[str, str]) -> None:
    """METEOR / ROUGE_L / CIDEr exactly as the official scorer's COCOEvalCap step, into ``scores``.

    Environment problems go into ``errors`` ({metric: message}): all three metrics if ``java`` or
    pycocoevalcap is missing or the PTB tokenizer fails, only METEOR if just METEOR fails.
    """
    try:
        gts, res = _ptb_tokenize(predictions, references)
    except _EnvironmentProblem as problem:
        errors.update({m: str(problem) for m in metrics})
        return
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if "METEOR" in metrics:
        try:
            scores["METEOR"] = _meteor(gts, res)
        except _EnvironmentProblem as problem:
            errors["METEOR"] = str(problem)
    if "ROUGE_L" in metrics:
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in metrics:
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])


def _ptb_tokenize(predictions: list[str], references: list[list[str]]) -> tuple[dict, dict]:
    """Stanford PTBTokenizer (-preserveLines -lowerCase, punctuation tokens dropped), as COCOEvalCap."""
    if shutil.which("java") is None:
        raise _EnvironmentProblem(JAVA_MISSING)
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as exc:
        raise _EnvironmentProblem(f"pycocoevalcap is not installed ({exc}); `pip install pycocoevalcap`") from exc
    import tempfile

    with tempfile.TemporaryFile() as java_stderr:  # the jar's "PTBTokenizer tokenized N tokens ..." lines: not for the console
        saved = os.dup(2)
        try:
            os.dup2(java_stderr.fileno(), 2)
            tokenizer = PTBTokenizer()
            gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
            res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
        except Exception as exc:  # the Java tokenizer failed or returned garbage
            java_stderr.seek(0)
            said = java_stderr.read().decode("utf-8", "replace").strip()[-400:]
            raise _EnvironmentProblem(f"Stanford PTBTokenizer (Java) failed: {type(exc).__name__}: {exc}"
                                      + (f"; java said: {said}" if said else "")) from exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if len(res) != len(predictions) or len(gts) != len(references):
        raise _EnvironmentProblem("Stanford PTBTokenizer (Java) returned a wrong number of lines")
    return gts, res


def _meteor(gts: dict, res: dict) -> float:
    """Corpus METEOR 1.5 (``-l en -norm``) through pycocoevalcap's wrapper of meteor-1.5.jar, the jar reading
    its paraphrase table cut to the pairs these texts could match (:mod:`lora_research.metrics.meteor_paraphrases`:
    the same scores, ~5 s less per call; its full table where the cut is not available)."""
    import tempfile

    from lora_research.metrics.meteor_paraphrases import cut_table

    with tempfile.TemporaryDirectory(prefix="meteor-") as tmp:
        table = cut_table([t for group in (*gts.values(), *res.values()) for t in group], Path(tmp))
        return _run_meteor(gts, res, table)[0]


def _run_meteor(gts: dict, res: dict, paraphrase_table: Optional[Path]) -> tuple[float, list[float]]:
    """(corpus METEOR, segment scores) from meteor-1.5.jar reading ``paraphrase_table`` (None: its own)."""
    import threading

    import pycocoevalcap.meteor.meteor as module

    class _Meteor(module.Meteor):  # pycocoevalcap's wrapper; its command, plus the jar's -a option for a table
        def __init__(self):
            self.meteor_cmd = ["java", "-jar", "-Xmx2G", module.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm",
                               *(["-a", str(paraphrase_table)] if paraphrase_table is not None else [])]
            self.meteor_p = subprocess.Popen(self.meteor_cmd, cwd=os.path.dirname(os.path.abspath(module.__file__)),
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.lock = threading.Lock()

    try:
        meteor = _Meteor()
    except OSError as exc:
        raise _EnvironmentProblem(f"could not start METEOR 1.5 (Java): {exc}") from exc
    try:
        corpus, segments = meteor.compute_score(gts, res)
        return float(corpus), [float(x) for x in segments]
    except (ValueError, OSError) as exc:  # the jar died / printed no score (e.g. Java too old, no memory)
        if meteor.lock.locked():  # compute_score failed while holding it; Meteor.__del__ would deadlock
            meteor.lock.release()
        try:  # its stdout ended: the process is exiting; collect its reason
            meteor.meteor_p.wait(timeout=10)
            stderr = meteor.meteor_p.stderr.read(2000).decode(errors="replace")
        except subprocess.TimeoutExpired:
            stderr = ""
        raise _EnvironmentProblem(f"METEOR 1.5 (Java) failed: {exc} {stderr}".strip()) from exc
    finally:
        del meteor  # Meteor.__del__ stops the Java process
