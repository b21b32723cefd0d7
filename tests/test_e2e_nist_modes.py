"""NIST both ways (issue #14): ``paper`` = e2e-metrics ``measure_scores.py -p`` (pymteval, the LoRA
paper's pipeline) and ``mteval`` = the same scorer without ``-p`` (the original mteval-v13a Perl).

Oracle: the official scorer, tuetschek/e2e-metrics at commit 1b9c4d8, run offline (its jars taken
from the pycocoevalcap wheel, Debian's libxml-twig-perl for the Perl script, pip's ``future``, and
an empty stand-in for ``skimage.draw``, which pycocotools imports only to draw masks), on the
files below (the dev cases written as a blank-line-separated REF file and a PRED file):

    python measure_scores.py -p REF PRED     # -> OFFICIAL[case]["-p"]
    python measure_scores.py REF PRED        # -> OFFICIAL[case]["default"]

It prints 4 decimals, so we assert |ours - official| <= 5e-5 (+ float slack).
Cases: ``quirks`` (5 MRs written below: an empty output, a token "0", non-ASCII capitals, 1 to 3
references), the 16 MRs of ``results/e2e_smollm2`` (copied to ``tests/fixtures/e2e_smollm2_16mrs``;
after LoRA and zero-shot = mostly empty outputs) and, with the E2E data, the first 12 / 40 / all 547
dev MRs with each MR's first reference as the "output" and the others as its references.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from lora_research import e2e_metrics
from lora_research.metrics.e2e import score_e2e
from lora_research.metrics.e2e_files import read_e2e_csv, read_prediction_file, read_reference_file
from lora_research.metrics.nist import (
    NIST_MODES,
    corpus_bleu,
    corpus_nist,
    mteval_pl_nist,
    mteval_pl_tokenize,
    mteval_tokenize,
    nist_brevity_penalty,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "e2e_smollm2_16mrs"
DATA_DIR = Path(os.environ.get("LORA_RESEARCH_DATA", REPO_ROOT.parent / "shared" / "data"))
DEVSET = DATA_DIR / "e2e" / "devset.csv"
needs_devset = pytest.mark.skipif(not DEVSET.is_file(), reason=f"E2E devset not found at {DEVSET} (set LORA_RESEARCH_DATA)")
TOL = 5e-5 + 1e-9

QUIRK_HYPS = ["The price is 0 - 20 pounds, 0 stars.", "ÉCOLE Café serves FOOD &amp; drinks", "", "Yes",
              "The Golden Curry is an Indian restaurant rated 5/5 (family-friendly)."]
QUIRK_REFS = [["The price range is 0 - 20 pounds and it has 0 stars.", "It costs 0 to 20 pounds; rated 0 stars out of 5."],
              ["École Café serves food &amp; drinks.", "The école café serves food and drinks near the river.",
               "ÉCOLE CAFÉ: food & drinks."],
              ["Blue Spice is a pub."],
              ["Yes.", "Yes, it is family friendly.", "No."],
              ["The Golden Curry is a family-friendly Indian restaurant with a 5/5 rating."]]

# Official scorer output (BLEU, NIST) per case and mode. Only NIST has a mode here: our BLEU is the
# "-p" BLEU in both modes. The Perl BLEU equals it on real sentences (dev12/dev40/dev547/smollm2)
# but not where outputs are empty or contain non-ASCII capitals (quirks, zero_shot).
OFFICIAL = {
    "quirks": {"-p": (0.3886, 3.1786), "default": (0.3518, 4.0597)},
    "smollm2_16": {"-p": (0.4474, 4.9136), "default": (0.4474, 4.9575)},
    "zero_shot_16": {"-p": (0.0452, 0.2508), "default": (0.0398, 0.1932)},
    "dev12": {"-p": (0.5328, 6.6038), "default": (0.5328, 6.6059)},
    "dev40": {"-p": (0.5627, 7.2434), "default": (0.5627, 7.3130)},
    "dev547": {"-p": (0.5995, 8.5785), "default": (0.5995, 8.5789)},
}
MODE_TO_SCORER = {"paper": "-p", "mteval": "default"}


def load_case(name: str) -> tuple[list[str], list[list[str]]]:
    if name == "quirks":
        return QUIRK_HYPS, QUIRK_REFS
    if name.endswith("_16"):
        preds = "predictions.txt" if name == "smollm2_16" else "zero_shot.predictions.txt"
        return read_prediction_file(FIXTURE / preds), read_reference_file(FIXTURE / "references.txt")
    if not DEVSET.is_file():
        pytest.skip(f"E2E devset not found at {DEVSET} (set LORA_RESEARCH_DATA)")
    groups = read_e2e_csv(DEVSET)[1][: int(name[3:])]
    return [g[0] for g in groups], [g[1:] for g in groups]


# ---------------------------------------------------------------- official values


@pytest.mark.parametrize("mode", NIST_MODES)
@pytest.mark.parametrize("case", list(OFFICIAL))
def test_nist_matches_official_scorer(case, mode):
    hyps, refs = load_case(case)
    metrics = ("BLEU", "NIST") if mode == "paper" else ("NIST",)
    scores = score_e2e(hyps, refs, metrics=metrics, nist_mode=mode)
    assert scores["NIST"] == pytest.approx(OFFICIAL[case][MODE_TO_SCORER[mode]][1], abs=TOL)
    if mode == "paper":
        assert scores["BLEU"] == pytest.approx(OFFICIAL[case]["-p"][0], abs=TOL)


@pytest.mark.parametrize("case", ["quirks", "zero_shot_16"])
def test_bleu_does_not_depend_on_the_nist_mode(case):
    hyps, refs = load_case(case)
    paper, mteval = (score_e2e(hyps, refs, metrics=("BLEU", "NIST"), nist_mode=m) for m in ("paper", "mteval"))
    assert paper["BLEU"] == mteval["BLEU"] == corpus_bleu(hyps, refs)
    assert paper["NIST"] != mteval["NIST"]


def test_official_default_bleu_is_the_p_bleu_on_real_sentences():
    # The record above: the scorer's two BLEUs agree except on the two sets with empty outputs.
    same = {case for case, v in OFFICIAL.items() if v["-p"][0] == v["default"][0]}
    assert same == {"smollm2_16", "dev12", "dev40", "dev547"}
    assert "" in load_case("zero_shot_16")[0] and "" in QUIRK_HYPS


def test_the_16_mr_case_of_the_issue():
    hyps, refs = load_case("smollm2_16")
    assert len(hyps) == 16 and sum(map(len, refs)) == 117
    assert round(corpus_nist(hyps, refs, mode="paper"), 4) == 4.9136
    assert round(corpus_nist(hyps, refs, mode="mteval"), 4) == 4.9575


# ---------------------------------------------------------------- mteval rules by hand


def test_mteval_pl_tokenize_by_hand():
    # Same splitting rules as pymteval; the Perl lowercases ASCII only and an empty text has no token.
    assert mteval_pl_tokenize("The Eagle's price: £20-25, e.g. 3.5 stars.") == mteval_tokenize(
        "The Eagle's price: £20-25, e.g. 3.5 stars.")
    assert mteval_pl_tokenize("ÉCOLE Café") == ["École", "café"]
    assert mteval_tokenize("ÉCOLE Café") == ["école", "café"]
    assert mteval_pl_tokenize("") == [] and mteval_pl_tokenize("  \n ") == []
    assert mteval_tokenize("") == [""]
    assert mteval_pl_tokenize("a-\nb\xa0c") == ["a-", "b", "c"]  # the SGML reader joins lines first
    assert mteval_pl_tokenize("a\x1cb") == ["a\x1cb"]  # not whitespace for Perl


def test_mteval_nist_by_hand():
    # Toy corpus of test_e2e_metrics.test_nist_by_hand: the info sums and n-gram lengths are the
    # same in both modes (no short outputs); only the brevity reference length differs:
    #   paper : L_ref = mean(6, 7) + 6 = 12.5
    #   mteval: L_ref = 19 reference tokens / (3 references / 2 segments) = 12.667
    hyps = ["the cat sat on the mat", "a dog barked loudly today"]
    refs = [["the cat sat on a mat", "a cat was on the red mat"], ["the dog barked loudly all day"]]
    info1 = math.log2(19 / 3) + 3 * math.log2(19 / 2) + math.log2(19) + 3 * math.log2(19)
    info2 = math.log2(3) + math.log2(2) + math.log2(2)
    nist_sum = info1 / 11 + info2 / 9
    beta = math.log(2) / math.log(1.5) ** 2
    assert corpus_nist(hyps, refs, mode="paper") == pytest.approx(
        nist_sum * math.exp(-beta * math.log(11 / 12.5) ** 2), abs=1e-12)
    assert corpus_nist(hyps, refs, mode="mteval") == pytest.approx(
        nist_sum * math.exp(-beta * math.log(11 / (19 / 1.5)) ** 2), abs=1e-12)


def test_mteval_nist_short_and_empty_outputs_by_hand():
    # Outputs "yes" and "" against refs "yes" / "no": 1 reference token each, 2 refs, 2 segments.
    # info(yes) = log2(2/1) = 1. mteval: lengths max(0, |hyp| - n + 1) -> n=1: 1, n>=2: 0 (-> /1);
    # L_sys = 1, L_ref = 2 / (2/2) = 2 -> NIST = 1 * BP(1/2).
    assert mteval_pl_nist(["yes", ""], [["yes"], ["no"]]) == pytest.approx(nist_brevity_penalty(1, 2), abs=1e-12)
    # pymteval: "" is one token "", lengths 2, 0, -2, -4, -6; the unigram term 1/2; n >= 2 gain 0.
    # L_sys = 2 = L_ref -> BP 1.
    assert corpus_nist(["yes", ""], [["yes"], ["no"]], mode="paper") == pytest.approx(0.5, abs=1e-12)


def test_mteval_zero_prefix_quirk_by_hand():
    # Perl's `$mgram ? ... : total` treats the prefix "0" as false: the bigram "0 stars" is weighed
    # against all reference tokens (4) instead of C("0") = 1, unlike "a stars" (against C("a") = 1).
    hyps, refs = ["0 stars", "a stars"], [["0 stars"], ["a stars"]]
    # unigrams: 0, a: log2(4/1) = 2; stars: log2(4/2) = 1 -> 6 over 4 tokens;
    # bigrams: "0 stars": log2(4/1) = 2 (quirk), "a stars": log2(C(a)/1) = 0 -> 2 over 2
    assert mteval_pl_nist(hyps, refs) == pytest.approx(6 / 4 + 2 / 2, abs=1e-12)
    assert corpus_nist(hyps, refs, mode="paper") == pytest.approx(6 / 4 + 0 / 2, abs=1e-12)


def test_nist_mode_is_validated():
    with pytest.raises(ValueError, match=r"NIST mode 'perl' is not valid; valid choices: \['paper', 'mteval'\]"):
        corpus_nist(["a"], [["a"]], mode="perl")
    with pytest.raises(ValueError, match="NIST mode 'perl'"):
        score_e2e(["a"], [["a"]], metrics=("BLEU",), nist_mode="perl")
    with pytest.raises(ValueError, match="all references are empty"):
        mteval_pl_nist(["a"], [[""]])


# ---------------------------------------------------------------- CLI and task config


def test_cli_nist_flag(capsys):
    # The issue's "must show": 4.9575 with --nist mteval, 4.9136 without the flag.
    args = [str(FIXTURE / "references.txt"), str(FIXTURE / "predictions.txt"), "--metrics", "BLEU", "NIST"]
    assert e2e_metrics.main(args + ["--nist", "mteval"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["NIST"], 4) == 4.9575 and out["nist_mode"] == "mteval"
    assert out["BLEU"] == pytest.approx(0.4474, abs=TOL)
    assert e2e_metrics.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["NIST"], 4) == 4.9136 and out["nist_mode"] == "paper"
    assert e2e_metrics.main(args[:2] + ["--metrics", "BLEU"]) == 0
    assert "nist_mode" not in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:
        e2e_metrics.main(args + ["--nist", "perl"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--nist: invalid choice: 'perl'" in err and "'paper', 'mteval'" in err


def test_task_config_nist_option():
    from conftest import compose
    from lora_research.tasks.e2e_task import E2ETask, E2ETaskConfig

    yaml_default = compose(["task=e2e", "logger=none"]).task.nist
    assert E2ETaskConfig().nist == yaml_default == "paper"
    assert E2ETask(E2ETaskConfig(nist="mteval")).cfg.nist == "mteval"
    with pytest.raises(ValueError, match=r"task.nist='perl' is not valid; valid choices: \['paper', 'mteval'\]"):
        E2ETask(E2ETaskConfig(nist="perl"))
