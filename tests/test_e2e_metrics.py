"""Tests for the in-process E2E NLG scorer (lora_research.metrics.{nist,e2e,e2e_files}, CLI).

Oracles: hand computations written out below, sacrebleu's independent 13a tokenizer / BLEU, and
the official scorer's (tuetschek/e2e-metrics ``measure_scores.py -p``) values on devset.csv.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_research.metrics.e2e import E2E_METRICS, score_e2e, to_paper_scale
from lora_research.metrics.e2e_files import read_e2e_csv, read_prediction_file, read_reference_file
from lora_research.metrics.nist import corpus_bleu, corpus_nist, mteval_tokenize, nist_brevity_penalty

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LORA_RESEARCH_DATA", REPO_ROOT.parent / "shared" / "data"))
DEVSET = DATA_DIR / "e2e" / "devset.csv"
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="`java` not on PATH (METEOR/PTB tokenizer need Java 1.8+)")

# Toy corpus used by the hand computations (lowercase words, no punctuation, so mteval and PTB
# tokenisation are both plain whitespace splitting).
HYP1 = "the cat sat on the mat"  # 6 tokens
R1, R2 = "the cat sat on a mat", "a cat was on the red mat"  # 6 and 7 tokens
HYP2 = "a dog barked loudly today"  # 5 tokens
R3 = "the dog barked loudly all day"  # 6 tokens
TOY_HYPS = [HYP1, HYP2]
TOY_REFS = [[R1, R2], [R3]]
DISTINCT = ["the golden curry serves cheap italian food", "blue spice is a riverside coffee shop",
            "zizzi pub has a low customer rating"]


# ---------------------------------------------------------------- mteval tokenisation


def test_mteval_tokenize_by_hand():
    # ':' always split; '.' split unless next to digits ("3.5" kept, "e.g." split);
    # ',' after a digit but before a space is split; '-' after a digit is split; apostrophe kept.
    assert mteval_tokenize("The Eagle's price: £20-25, e.g. 3.5 stars.") == [
        "the", "eagle's", "price", ":", "£20", "-", "25", ",", "e", ".", "g", ".", "3.5", "stars", ".",
    ]
    assert mteval_tokenize("Fish &amp; Chips") == ["fish", "&", "chips"]
    assert mteval_tokenize("") == [""]  # pymteval: an empty output is one empty token


def test_mteval_tokenize_agrees_with_sacrebleu_13a():
    sacrebleu_13a = pytest.importorskip("sacrebleu.tokenizers.tokenizer_13a").Tokenizer13a()
    texts = [
        "The Vaults is a pub (near Café Adriatic) with a 5/5 rating; prices: more than £30!",
        'It\'s "family-friendly" & cheap... 1,000.5 items, 3-4 stars, e.g. {x}[y]<z> ~_^`|@#$%*+=?',
    ]
    if DEVSET.is_file():
        texts += [r for refs in read_e2e_csv(DEVSET)[1] for r in refs]
    for text in texts:
        assert mteval_tokenize(text) == sacrebleu_13a(text.lower()).split(), text


# ---------------------------------------------------------------- BLEU


def test_bleu_by_hand():
    # Segment 1, hyp "the cat sat on the mat" vs R1/R2; clipping uses the max count in ONE ref:
    #   1-grams: the(2 in hyp, max 1 in a ref ->1) cat sat on mat -> 5 of 6
    #   2-grams: the cat, cat sat, sat on (R1), on the (R2); "the mat" misses -> 4 of 5
    #   3-grams: the cat sat, cat sat on -> 2 of 4;  4-grams: the cat sat on -> 1 of 3
    #   closest reference length to 6: R1 (6)
    one = corpus_bleu([HYP1], [[R1, R2]])
    assert one == pytest.approx((5 / 6 * 4 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-12)  # = 1/sqrt(3), BP = 1
    # Segment 2, hyp "a dog barked loudly today" vs R3: 1-grams dog barked loudly 3/5,
    #   2-grams dog barked, barked loudly 2/4, 3-grams dog barked loudly 1/3, 4-grams 0/2.
    # Corpus: p1 = 8/11, p2 = 6/9, p3 = 3/7, p4 = 1/5; c = 11, r = 6 + 6 = 12 -> BP = exp(1 - 12/11)
    expected = math.exp(1 - 12 / 11) * (8 / 11 * 6 / 9 * 3 / 7 * 1 / 5) ** 0.25
    assert corpus_bleu(TOY_HYPS, TOY_REFS) == pytest.approx(expected, abs=1e-12)


def test_bleu_agrees_with_sacrebleu_on_toy():
    sacrebleu = pytest.importorskip("sacrebleu")
    streams = [[R1, R3], [R2, None]]
    expected = sacrebleu.corpus_bleu(TOY_HYPS, streams, lowercase=True, tokenize="13a").score / 100
    assert corpus_bleu(TOY_HYPS, TOY_REFS) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- NIST


def test_nist_brevity_penalty_is_half_at_two_thirds():
    assert nist_brevity_penalty(2, 3) == pytest.approx(0.5, abs=1e-12)
    assert nist_brevity_penalty(5, 4) == 1.0


def test_nist_by_hand():
    # Reference counts over ALL refs of the corpus (R1, R2, R3), 6 + 7 + 6 = 19 tokens:
    #   the 3, cat 2, on 2, a 2, mat 2, sat 1, was 1, red 1, dog 1, barked 1, loudly 1, all 1, day 1
    #   every reference bigram / trigram occurs once.
    # info(w1..wn) = log2(C(w1..wn-1) / C(w1..wn)), C(()) = 19.
    # Segment 1 hits (clipped by R1/R2):
    #   1-grams the(1) cat sat on mat: log2(19/3) + log2(19/2) + log2(19/1) + log2(19/2) + log2(19/2)
    #   2-grams the cat: log2(3/1); cat sat: log2(2/1); sat on: log2(1/1) = 0; on the: log2(2/1)
    #   3-grams the cat sat: log2(1/1); cat sat on: log2(1/1) -> 0;  4-gram the cat sat on -> 0
    # Segment 2 hits (R3): 1-grams dog barked loudly: 3 * log2(19/1); 2-grams dog barked,
    #   barked loudly: log2(1/1) = 0; 3-gram dog barked loudly: 0
    info1 = math.log2(19 / 3) + 3 * math.log2(19 / 2) + math.log2(19) + 3 * math.log2(19)
    info2 = math.log2(3) + math.log2(2) + math.log2(2)
    # n-gram "lengths": sum of (|hyp| - n + 1) = (6 - n + 1) + (5 - n + 1): 11, 9, 7, 5, 3
    nist_sum = info1 / 11 + info2 / 9 + 0 / 7 + 0 / 5 + 0 / 3
    # Brevity: L_sys = 11, L_ref = mean(6, 7) + 6 = 12.5; beta = ln 2 / ln(1.5)^2
    beta = math.log(2) / math.log(1.5) ** 2
    bp = math.exp(-beta * math.log(11 / 12.5) ** 2)
    assert corpus_nist(TOY_HYPS, TOY_REFS) == pytest.approx(bp * nist_sum, abs=1e-12)
    assert bp * nist_sum == pytest.approx(2.86645, abs=1e-4)  # the arithmetic above, evaluated


def test_bleu_nist_are_case_insensitive():
    upper = [h.upper() for h in TOY_HYPS]
    assert corpus_nist(upper, TOY_REFS) == corpus_nist(TOY_HYPS, TOY_REFS)
    assert corpus_bleu(upper, TOY_REFS) == corpus_bleu(TOY_HYPS, TOY_REFS)


# ---------------------------------------------------------------- COCO metrics (Java)


@needs_java
def test_rouge_l_by_hand():
    # Segment 1: LCS("a cat sat on the mat", "the cat sat on a red mat") = "cat sat on mat" = 4
    #   P = 4/6, R = 4/7, F = (1 + 1.2^2) P R / (R + 1.2^2 P)
    p, r = 4 / 6, 4 / 7
    f1 = (1 + 1.44) * p * r / (r + 1.44 * p)
    # Segment 2: coco takes max precision and max recall over the refs SEPARATELY:
    #   vs "a pub": LCS 2 -> P 2/4, R 2/2;  vs "there is a nice pub near the river": LCS 4 -> P 1, R 4/8
    #   max P = 1, max R = 1 -> F = 1
    scores = score_e2e(
        ["a cat sat on the mat", "there is a pub"],
        [["the cat sat on a red mat"], ["a pub", "there is a nice pub near the river"]],
        metrics=("ROUGE_L",),
    )
    assert scores == {"ROUGE_L": pytest.approx((f1 + 1) / 2, abs=1e-12)}


@pytest.mark.slow
@needs_java
def test_meteor_cider_rouge_identical_and_disjoint():
    # Each segment's n-grams are unique to it, so every idf is log(3) > 0; identical hyp and refs
    # give cosine 1 and no length penalty for each n = 1..4 -> CIDEr-D = 10 * 1. METEOR 1.5 gives
    # 1 to an exact copy (no fragmentation penalty); ROUGE-L F = 1.
    scores = score_e2e(DISTINCT, [[s, s] for s in DISTINCT], metrics=("METEOR", "ROUGE_L", "CIDEr"))
    assert scores == {"METEOR": pytest.approx(1.0), "ROUGE_L": pytest.approx(1.0), "CIDEr": pytest.approx(10.0)}
    assert score_e2e(["dog barked"], [["cat sat red mat"]], metrics=("ROUGE_L", "CIDEr")) == {"ROUGE_L": 0.0, "CIDEr": 0.0}


@pytest.mark.slow
@needs_java
def test_meteor_by_hand():
    # METEOR 1.5 (-l en: alpha .85, beta .2, gamma .6, delta .75); content words only, exact matches:
    # hyp "cat sat mat" vs ref "cat sat red mat": m = 3, P = 3/3, R = 3/4, chunks = 2 (cat sat | mat)
    # Fmean = P R / (alpha P + (1 - alpha) R); Pen = gamma (chunks / m)^beta; score = Fmean (1 - Pen)
    p, r = 1.0, 0.75
    fmean = p * r / (0.85 * p + 0.15 * r)
    expected = fmean * (1 - 0.6 * (2 / 3) ** 0.2)
    assert score_e2e(["cat sat mat"], [["cat sat red mat"]], metrics=("METEOR",)) == {
        "METEOR": pytest.approx(expected, abs=1e-9)
    }


# ---------------------------------------------------------------- official values on devset


def devset_as_system():
    """devset.csv: per MR the FIRST reference is the 'system output', the others the references."""
    mrs, refs = read_e2e_csv(DEVSET)
    return [group[0] for group in refs], [group[1:] for group in refs], refs


needs_devset = pytest.mark.skipif(not DEVSET.is_file(), reason=f"E2E devset not found at {DEVSET} (set LORA_RESEARCH_DATA)")


@needs_devset
def test_devset_has_547_mrs_with_at_least_two_references():
    hyps, refs, groups = devset_as_system()
    assert len(hyps) == len(refs) == 547
    # Every MR has >= 2 references (min 2), so no MR is left without references once its first
    # reference becomes the "system output". (An MR with a single reference could not be scored
    # this way, the official scorer needs >= 1 reference, and would have to be dropped.)
    assert min(len(g) for g in groups) == 2
    assert sum(len(g) for g in groups) == 4672


# Official scorer (measure_scores.py -p) on devset.csv, first reference of each MR as the output:
# BLEU 0.5995, NIST 8.5785, METEOR 0.4498, ROUGE_L 0.6528, CIDEr 1.8543. BLEU and NIST alone (both
# NIST modes, several set sizes): tests/test_e2e_nist_modes.py.
@pytest.mark.slow
@needs_devset
@needs_java
def test_devset_matches_official_scorer():
    hyps, refs, _ = devset_as_system()
    scores = score_e2e(hyps, refs)
    assert "errors" not in scores
    assert scores["BLEU"] == pytest.approx(0.5995, abs=5e-5)
    assert scores["NIST"] == pytest.approx(8.5785, abs=2e-3)
    assert scores["METEOR"] == pytest.approx(0.4498, abs=5e-5)
    assert scores["ROUGE_L"] == pytest.approx(0.6528, abs=5e-5)
    assert scores["CIDEr"] == pytest.approx(1.8543, abs=5e-5)
    paper = to_paper_scale(scores)
    assert paper["BLEU"] == pytest.approx(59.95, abs=5e-3)
    assert paper["METEOR"] == pytest.approx(44.98, abs=5e-3)
    assert paper["ROUGE_L"] == pytest.approx(65.28, abs=5e-3)


@needs_devset
def test_devset_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs, _ = devset_as_system()
    width = max(map(len, refs))
    streams = [[g[i] if i < len(g) else None for g in refs] for i in range(width)]
    expected = sacrebleu.corpus_bleu(hyps, streams, lowercase=True, tokenize="13a").score / 100
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- API behaviour


def test_to_paper_scale():
    scores = {"BLEU": 0.5, "NIST": 8.5, "METEOR": 0.25, "ROUGE_L": 0.75, "CIDEr": 2.0, "errors": {"x": "y"}}
    assert to_paper_scale(scores) == {"BLEU": 50.0, "NIST": 8.5, "METEOR": 25.0, "ROUGE_L": 75.0, "CIDEr": 2.0,
                                      "errors": {"x": "y"}}


def test_input_validation_names_bad_values():
    with pytest.raises(ValueError, match=r"predictions \(2\) != number of reference groups \(1\)"):
        score_e2e(["a", "b"], [["a"]], metrics=("BLEU",))
    with pytest.raises(ValueError, match=r"indices \[1\] are empty"):
        score_e2e(["a", "b"], [["a"], []], metrics=("BLEU",))
    with pytest.raises(ValueError, match=r"indices \[0\] are not lists of strings"):
        score_e2e(["a"], ["a ref given as a bare string"], metrics=("BLEU",))
    with pytest.raises(ValueError, match="unknown E2E metric.*'BLEU4'"):
        score_e2e(["a"], [["a"]], metrics=("BLEU4",))


def test_missing_java_still_returns_bleu_nist(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `java`
    assert shutil.which("java") is None
    scores = score_e2e(TOY_HYPS, TOY_REFS)
    assert scores["BLEU"] == corpus_bleu(TOY_HYPS, TOY_REFS)
    assert scores["NIST"] == pytest.approx(2.86645, abs=1e-4)  # test_nist_by_hand
    assert set(scores["errors"]) == {"METEOR", "ROUGE_L", "CIDEr"}
    for message in scores["errors"].values():
        assert "`java` not found" in message and "1.8" in message and "default-jre-headless" in message
    assert not {"METEOR", "ROUGE_L", "CIDEr"} & set(scores)


@needs_java
def test_meteor_failure_is_recorded_and_other_java_metrics_survive(monkeypatch):
    meteor_module = pytest.importorskip("pycocoevalcap.meteor.meteor")
    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")
    scores = score_e2e(DISTINCT, [[s] for s in DISTINCT], metrics=("METEOR", "ROUGE_L", "CIDEr"))
    assert scores["ROUGE_L"] == pytest.approx(1.0) and scores["CIDEr"] == pytest.approx(10.0)
    assert list(scores["errors"]) == ["METEOR"]
    assert "METEOR 1.5 (Java) failed" in scores["errors"]["METEOR"] and "no-such-meteor.jar" in scores["errors"]["METEOR"]


# ---------------------------------------------------------------- file readers


def test_read_reference_and_prediction_files(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text(" r1a \nr1b\n\nr2a\n\n\n", encoding="utf-8")  # trailing blank lines ignored
    assert read_reference_file(ref) == [["r1a", "r1b"], ["r2a"]]
    single = tmp_path / "single.txt"
    single.write_text("x\ny\n", encoding="utf-8")  # no blank line: one reference per MR
    assert read_reference_file(single) == [["x"], ["y"]]
    bad = tmp_path / "bad.txt"
    bad.write_text("a\n\n\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty reference group: line 3"):
        read_reference_file(bad)
    pred = tmp_path / "pred.txt"
    pred.write_text("p1 \n\np3\n", encoding="utf-8")
    assert read_prediction_file(pred) == ["p1", "", "p3"]


def test_read_e2e_csv_groups_by_first_appearance(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_bytes(b'mr,ref\r\nA,a1\r\nB,"b1\r\nwrapped"\r\nA,"a2, quoted"\r\n')
    assert read_e2e_csv(csv_file) == (["A", "B"], [["a1", "a2, quoted"], ["b1 wrapped"]])


# ---------------------------------------------------------------- CLI


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lora_research.e2e_metrics", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)


def write_toy_files(tmp_path):
    ref, pred = tmp_path / "e2e_ref.txt", tmp_path / "e2e_pred.txt"
    ref.write_text(f"{R1}\n{R2}\n\n{R3}\n\n", encoding="utf-8")
    pred.write_text(f"{HYP1}\n{HYP2}\n", encoding="utf-8")
    return ref, pred


def test_cli_bleu_nist_paper_scale(tmp_path):
    ref, pred = write_toy_files(tmp_path)
    proc = run_cli(ref, pred, "--metrics", "BLEU", "NIST", "--paper-scale")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected_bleu = math.exp(1 - 12 / 11) * (8 / 11 * 6 / 9 * 3 / 7 * 1 / 5) ** 0.25  # test_bleu_by_hand
    assert out == {"BLEU": pytest.approx(100 * expected_bleu, abs=1e-9), "NIST": pytest.approx(2.86645, abs=1e-4),
                   "nist_mode": "paper"}


@pytest.mark.slow
@needs_java
def test_cli_all_metrics(tmp_path):
    # A system output identical to its two references: BLEU 1 (all precisions 1, BP 1), METEOR 1,
    # ROUGE_L 1, CIDEr 10 (see test_meteor_cider_rouge_identical_and_disjoint); NIST from corpus_nist.
    ref, pred = tmp_path / "ref.txt", tmp_path / "pred.txt"
    ref.write_text("".join(f"{s}\n{s}\n\n" for s in DISTINCT), encoding="utf-8")
    pred.write_text("".join(f"{s}\n" for s in DISTINCT), encoding="utf-8")
    proc = run_cli(ref, pred)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert list(out) == [*E2E_METRICS, "nist_mode"] and out.pop("nist_mode") == "paper"
    nist = corpus_nist(DISTINCT, [[s, s] for s in DISTINCT])
    assert out == pytest.approx({"BLEU": 1.0, "NIST": nist, "METEOR": 1.0, "ROUGE_L": 1.0, "CIDEr": 10.0}, abs=1e-9)


def test_cli_accepts_e2e_csv_references(tmp_path):
    ref, pred = tmp_path / "refs.csv", tmp_path / "pred.txt"
    ref.write_bytes(f"mr,ref\r\nM1,{R1}\r\nM2,{R3}\r\nM1,{R2}\r\n".encode())  # M1's refs not adjacent
    pred.write_text(f"{HYP1}\n{HYP2}\n", encoding="utf-8")
    proc = run_cli(ref, pred, "--metrics", "NIST")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"NIST": pytest.approx(2.86645, abs=1e-4), "nist_mode": "paper"}  # test_nist_by_hand


def test_cli_errors(tmp_path):
    ref, pred = write_toy_files(tmp_path)
    missing = run_cli(tmp_path / "nope.txt", pred)
    assert missing.returncode == 2 and "reference file not found" in missing.stderr and "nope.txt" in missing.stderr
    pred.write_text(f"{HYP1}\n", encoding="utf-8")
    mismatch = run_cli(ref, pred, "--metrics", "BLEU")
    assert mismatch.returncode == 2 and "1 predictions" in mismatch.stderr and "2 reference groups" in mismatch.stderr


def test_cli_without_java_reports_error_and_partial_scores(tmp_path):
    ref, pred = write_toy_files(tmp_path)
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = run_cli(ref, pred, env=env)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["NIST"] == pytest.approx(2.86645, abs=1e-4)
    assert set(out["errors"]) == {"METEOR", "ROUGE_L", "CIDEr"}
    assert "`java` not found" in proc.stderr
