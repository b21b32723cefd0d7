"""MT-Eval (mteval-v13a) tokenisation, BLEU and NIST as the E2E NLG Challenge scorer computes them.

The official E2E scorer (tuetschek/e2e-metrics, ``measure_scores.py -p``) computes BLEU and NIST
with its Python port of ``mteval-v13a.pl`` (``metrics/pymteval.py``). This module is an
independent re-implementation of that definition; it must give the same numbers.

Tokenisation (:func:`mteval_tokenize`): mteval-v13a "basic" (non-international) tokenisation,
case-insensitive matching (tokens are lowercased). An empty text becomes a single empty token
(length 1), exactly as in pymteval.

NIST (Doddington 2002, as in mteval-v13a with a variable number of references per segment)::

    NIST = BP * sum_{n=1..5} [ sum_{segments s} sum_{hit n-grams w in s} info(w) * hits_s(w) ]
                             / [ sum_{segments s} (|hyp_s| - n + 1) ]

    hits_s(w)   = min(count of w in hyp_s, max over refs r of s of count of w in r)   (clipping)
    info(w_1..w_n) = log2( C(w_1..w_{n-1}) / C(w_1..w_n) )
    C(.)        = count over ALL reference sentences of ALL segments (every reference counted);
                  C(()) (the empty prefix of a unigram) = total number of reference tokens
    BP          = exp(-beta * ln(min(1, L_sys / L_ref))^2),  L_sys = total hypothesis tokens,
                  L_ref = sum over segments of the MEAN reference length of that segment
    beta        = -ln(0.5) / ln(1.5)^2, so that BP = 0.5 when L_sys / L_ref = 2/3.

Quirks kept for exactness with pymteval: the n-gram "length" of a segment is ``|hyp| - n + 1``
even when it is negative (hypotheses shorter than n-1 tokens); info weights use corpus-level
counts. One deliberate difference: pymteval divides by zero when the summed n-gram length for
some order n is 0 (crash); here that order then contributes 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

# ASCII punctuation that mteval-v13a splits off unconditionally: everything except the
# apostrophe, hyphen, period and comma (those have their own rules below).
_ALWAYS_SPLIT = re.compile(r"([" + re.escape("!\"#$%&()*+/:;<=>?@[\\]^_`{|}~") + r"])")
_PERIOD_COMMA_AFTER_NONDIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NONDIGIT = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_SGML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))

NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def mteval_tokenize(text: str) -> list[str]:
    """Tokenise like mteval-v13a's basic tokenisation (as pymteval does) and lowercase.

    Steps: drop ``<skipped>``; join hyphenated line breaks and lines; unescape the four SGML
    entities; split off ASCII punctuation other than ``' - . ,``; split off ``.``/``,`` unless
    preceded by a digit, and again unless followed by a digit; split ``-`` after a digit;
    collapse whitespace. An empty text yields ``['']``.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _SGML_ENTITIES:
        text = text.replace(entity, char)
    text = f" {text} "
    text = _ALWAYS_SPLIT.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NONDIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NONDIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return [token.lower() for token in text.split(" ")]


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counts of the n-grams (tuples) of one token sequence."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def clipped_ngram_hits(hyp: Sequence[str], refs: Sequence[Sequence[str]], n: int) -> Counter:
    """Per n-gram hit counts: min(hyp count, max count in any single reference); zeros dropped."""
    max_ref = Counter()
    for ref in refs:
        max_ref |= ngram_counts(ref, n)  # Counter union = element-wise max
    return ngram_counts(hyp, n) & max_ref  # Counter intersection = element-wise min


def corpus_nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST of mteval-v13a as computed by the E2E scorer's pymteval (formula: module doc).

    ``references[i]`` is the (non-empty) list of reference texts of ``hypotheses[i]``; the
    number of references may vary between segments.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    ref_counts: list[Counter] = [Counter() for _ in range(max_n + 1)]  # index 0: the empty n-gram
    hits: list[list[Counter]] = [[] for _ in range(max_n + 1)]
    sys_lengths = [0] * (max_n + 1)
    sys_len, ref_len = 0, 0.0
    for hyp_text, ref_texts in zip(hypotheses, references):
        hyp = mteval_tokenize(hyp_text)
        refs = [mteval_tokenize(r) for r in ref_texts]
        for n in range(1, max_n + 1):
            hits[n].append(clipped_ngram_hits(hyp, refs, n))
            sys_lengths[n] += len(hyp) - n + 1
            for ref in refs:
                ref_counts[n].update(ngram_counts(ref, n))
        total_ref_tokens = sum(len(r) for r in refs)
        ref_counts[0][()] += total_ref_tokens
        sys_len += len(hyp)
        ref_len += total_ref_tokens / len(refs)

    def info(ngram: tuple) -> float:
        return math.log2(ref_counts[len(ngram) - 1][ngram[:-1]] / ref_counts[len(ngram)][ngram])

    score = 0.0
    for n in range(1, max_n + 1):
        gained = sum(info(g) * c for seg_hits in hits[n] for g, c in seg_hits.items())
        if sys_lengths[n] != 0:
            score += gained / sys_lengths[n]
    return nist_brevity_penalty(sys_len, ref_len) * score


def nist_brevity_penalty(sys_len: float, ref_len: float) -> float:
    """NIST length penalty exp(-beta * ln(ratio)^2) for ratio = sys_len / ref_len < 1, else 1."""
    ratio = sys_len / ref_len
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU (0-1) of mteval-v13a as computed by the E2E scorer's pymteval.

    BLEU = BP * exp(mean_n log(p_n)), p_n = sum clipped n-gram hits / sum (|hyp| - n + 1),
    with p_n's numerator floored at 1e-15 and denominator at 1e-9 (no other smoothing);
    BP = exp(1 - r/c) if c <= r else 1, c = total hypothesis tokens, r = sum over segments of
    the length of the reference closest in length to the hypothesis (ties: the shorter one).
    Same tokenisation and lowercasing as NIST. Quirk kept from pymteval: the n-gram "length"
    ``|hyp| - n + 1`` is summed even when negative, so a corpus of only very short outputs (summed
    3-/4-gram length <= 0) gets a meaningless value, possibly > 1, exactly as the official
    ``-p`` scorer prints it. Real system outputs (E2E sentences) are far from this regime.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    hits = [0] * (max_n + 1)
    lengths = [0] * (max_n + 1)
    closest_ref_len = 0
    for hyp_text, ref_texts in zip(hypotheses, references):
        hyp = mteval_tokenize(hyp_text)
        refs = [mteval_tokenize(r) for r in ref_texts]
        for n in range(1, max_n + 1):
            hits[n] += sum(clipped_ngram_hits(hyp, refs, n).values())
            lengths[n] += len(hyp) - n + 1
        closest_ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    log_precision = sum(math.log(max(hits[n], 1e-15) / max(lengths[n], 1e-9)) for n in range(1, max_n + 1))
    sys_len = lengths[1] or 1e-5
    bp = math.exp(1.0 - closest_ref_len / sys_len) if sys_len <= closest_ref_len else 1.0
    return bp * math.exp(log_precision / max_n)
