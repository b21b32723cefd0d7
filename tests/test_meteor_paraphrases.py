"""METEOR's paraphrase table cut to what a corpus could match (lora_research.metrics.meteor_paraphrases).

The oracle is meteor-1.5.jar itself reading its full table: every segment score must be the same with
the cut table. The texts are sent to the jar as they are (not PTB-tokenised first), so its own ``-norm``
normalisation sees capitals, curly quotes, entities, hyphens, accents and contractions.
"""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from lora_research.metrics import meteor_paraphrases as mp
from lora_research.metrics.e2e import _run_meteor
from lora_research.metrics.e2e_files import read_e2e_csv

from tests.test_e2e_metrics import DEVSET

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="`java` not on PATH")


def test_word_keys_and_possible_keys():
    assert mp.word_key("Café-Au") == "cafeau" and mp.word_key("n't") == "nt" and mp.word_key("--") == ""
    keys = mp.possible_keys(["Don’t go", "x"])
    assert keys == {"", "d", "o", "n", "t", "do", "on", "nt", "don", "ont", "dont", "g", "go", "x"}


def _table(tmp_path, pairs):
    path = tmp_path / "table.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for p, a, b in pairs:
            fh.write(f"{p}\n{a}\n{b}\n")
    return path


def test_cut_keeps_in_order_exactly_the_pairs_whose_words_can_occur(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_RESEARCH_CACHE", str(tmp_path / "cache"))
    pairs = [("0.5", "cheap", "inexpensive"), ("0.25", "cheap food", "low-priced food"), ("0.1", "pub", "bar"),
             ("0.2", "isn 't", "is not"), ("0.3", ", and", "&"), ("0.4", "food", "meal")]
    table = _table(tmp_path, pairs)
    texts = ["The Eagle isn't a cheap, low-priced pub.", "Inexpensive FOOD and a meal & bar"]
    out = mp.cut_table(texts, tmp_path, table=table)
    got = gzip.open(out, "rt", encoding="utf-8").read().split("\n")[:-1]
    # "low-priced" passes as "lowpriced" (the key of the token "low-priced"), "isn" as part of "isnt"; "not" is
    # nowhere, so "isn 't" / "is not" goes
    kept = [pairs[i] for i in (0, 1, 2, 4, 5)]
    assert got == [x for p in kept for x in p]
    out = mp.cut_table(["a cheap pub"], tmp_path, table=table)
    got = gzip.open(out, "rt", encoding="utf-8").read().split("\n")[:-1]
    assert got == []  # every pair has a word ("inexpensive", "food", "bar", "isn", "and", "meal") not there
    out = mp.cut_table(["cheap inexpensive pub bar and"], tmp_path, table=table)
    got = gzip.open(out, "rt", encoding="utf-8").read().split("\n")[:-1]
    assert got == [x for p in (pairs[0], pairs[2], pairs[4]) for x in p]  # ", and" / "&": punctuation always passes


def test_index_is_built_once_and_a_broken_table_falls_back_to_the_full_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LORA_RESEARCH_CACHE", str(tmp_path / "cache"))
    table = _table(tmp_path, [("0.5", "cheap", "inexpensive")])
    mp.cut_table(["cheap"], tmp_path, table=table)
    entry = mp.index_dir(table)
    stamp = (entry / "pairs.txt").stat().st_mtime_ns
    mp.cut_table(["cheap"], tmp_path, table=table)
    assert (entry / "pairs.txt").stat().st_mtime_ns == stamp
    broken = tmp_path / "broken.gz"
    with gzip.open(broken, "wt") as fh:
        fh.write("0.5\ncheap\n")  # a pair without its second phrase
    assert mp.cut_table(["cheap"], tmp_path, table=broken) is None
    assert "full paraphrase table" in caplog.text and "truncated" in caplog.text
    assert [p.name for p in mp.index_dir(broken).parent.iterdir()] == [entry.name]  # nothing half-built left


def _stress_corpus():
    """E2E dev MRs: one reference as the hypothesis, the others as references, and variants that make
    METEOR's normaliser work (and that paraphrases must still match through)."""
    _, refs = read_e2e_csv(DEVSET)
    res, gts = {}, {}
    for i, group in enumerate(refs[:40]):
        res[i], gts[i] = [group[0]], group[1:]
    extra = [
        ("The Wrestlers isn’t “family-friendly”; it&apos;s an expensive café &amp; bar.",
         ["The Wrestlers is not kid friendly, it is a high-priced coffee shop and pub."]),
        ("Near Café Rouge, the £20-25 Italian place doesn't serve cheap food!!",
         ["Close to Cafe Rouge is an Italian restaurant with prices of 20-25 pounds that does not offer low cost meals."]),
        ("ZIZZI IS A PUB -- WITH AN AVERAGE RATING AND IT'S LOCATED IN THE CITY CENTRE",
         ["Zizzi, a public house in the centre of the city, is rated average."]),
    ]
    for j, (h, r) in enumerate(extra, start=len(res)):
        res[j], gts[j] = [h], r
    return gts, res


@pytest.mark.slow
@needs_java
@pytest.mark.skipif(not DEVSET.is_file(), reason=f"E2E devset not found at {DEVSET}")
def test_cut_table_gives_meteors_own_segment_scores(tmp_path):
    gts, res = _stress_corpus()
    texts = [t for group in (*gts.values(), *res.values()) for t in group]
    cut = mp.cut_table(texts, tmp_path)
    assert cut is not None
    n_cut = len(gzip.open(cut, "rt", encoding="utf-8").read().split("\n")) // 3
    empty = tmp_path / "empty.gz"
    gzip.open(empty, "wb").close()
    full_score, full_segments = _run_meteor(gts, res, None)
    cut_score, cut_segments = _run_meteor(gts, res, cut)
    none_score, none_segments = _run_meteor(gts, res, empty)
    assert cut_segments == full_segments and cut_score == full_score
    # the corpus does use paraphrases: without any, scores change (so the equality above is not vacuous)
    assert sum(a != b for a, b in zip(none_segments, full_segments)) >= 5 and none_score < full_score
    assert 1000 < n_cut < 500_000  # of 5.3M pairs
    entry = mp.index_dir(mp.full_table())
    assert np.load(entry / "pair_starts.npy").shape[0] - 1 > 5_000_000  # the index holds the whole table
