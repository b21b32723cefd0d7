"""MT-Eval (mteval-v13a) tokenisation, BLEU and NIST as the E2E NLG Challenge scorer computes them.

The official E2E scorer (tuetschek/e2e-metrics ``measure_scores.py``) computes BLEU and NIST in
one of two ways, both re-implemented here independently (:data:`NIST_MODES`):

* ``paper`` (``measure_scores.py -p``, the command microsoft/LoRA's README runs, hence the LoRA
  paper's numbers): its Python port of ``mteval-v13a.pl`` (``metrics/pymteval.py``). Formula below.
* ``mteval`` (``measure_scores.py`` without ``-p``, the challenge's default): the original Perl
  ``mteval-v13a-sig.pl`` itself. Differences: see :func:`mteval_pl_nist`. BLEU is the same in both
  on real outputs, so only NIST has a mode.

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
import string
from collections import Counter
from collections.abc import Sequence

# ASCII punctuation that mteval-v13a splits off unconditionally: everything except the
# apostrophe, hyphen, period and comma (those have their own rules below).
_ALWAYS_SPLIT = re.compile(r"([" + re.escape("!\"#$%&()*+/:;<=>?@[\\]^_`{|}~") + r"])")
_PERIOD_COMMA_AFTER_NONDIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NONDIGIT = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_SGML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))

# Perl's \s on character strings (Python's \s also matches \x1c-\x1f).
_PERL_SPACES = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # Perl's tr/A-Z/a-z/

NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2
NIST_MODES = ("paper", "mteval")


def check_nist_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`NIST_MODES`, else ``ValueError`` naming the choices."""
    if mode not in NIST_MODES:
        raise ValueError(f"NIST mode {mode!r} is not valid; valid choices: {list(NIST_MODES)}")
    return mode


def _split_punctuation(text: str) -> str:
    """mteval-v13a's basic (non-international) punctuation rules, on a space-padded text."""
    text = _ALWAYS_SPLIT.sub(r" \1 ", f" {text} ")
    text = _PERIOD_COMMA_AFTER_NONDIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NONDIGIT.sub(r" \1 \2", text)
    return _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)


def _unescape(text: str) -> str:
    for entity, char in _SGML_ENTITIES:
        text = text.replace(entity, char)
    return text


def mteval_tokenize(text: str) -> list[str]:
    """Tokenise like mteval-v13a's basic tokenisation as pymteval does (``paper`` mode), lowercased.

    Steps: drop ``<skipped>``; join hyphenated line breaks and lines; unescape the four SGML
    entities; split off ASCII punctuation other than ``' - . ,``; split off ``.``/``,`` unless
    preceded by a digit, and again unless followed by a digit; split ``-`` after a digit;
    collapse whitespace; lowercase (Unicode). An empty text yields ``['']``.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = _split_punctuation(_unescape(text))
    text = re.sub(r"\s+", " ", text).strip()
    return [token.lower() for token in text.split(" ")]


def mteval_pl_tokenize(text: str) -> list[str]:
    """Tokenise as the original ``mteval-v13a.pl`` does (``mteval`` mode) on a scorer segment.

    The scorer's SGML reader first joins each document's whitespace runs into one space (so a
    line break inside a text is a space); then the same rules as :func:`mteval_tokenize`, except:
    lowercasing is ASCII-only (``tr/A-Z/a-z/``: "É" stays "É"), whitespace is Perl's ``\s``, and
    an empty text has no tokens (``[]``, length 0).
    """
    text = _PERL_SPACES.sub(" ", text).replace("<skipped>", "")
    text = _split_punctuation(_unescape(text).translate(_ASCII_LOWER))
    text = _PERL_SPACES.sub(" ", text).strip(" ")
    return text.split(" ") if text else []


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counts of the n-grams (tuples) of one token sequence."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def clipped_ngram_hits(
    hyp: Sequence[str], refs: Sequence[Sequence[str]], n: int, ref_counts: Sequence[Counter] | None = None
) -> Counter:
    """Per n-gram hit counts: min(hyp count, max count in any single reference); zeros dropped.

    ``ref_counts``: the references' n-gram counts (:func:`ngram_counts`) if already computed.
    """
    max_ref: dict[tuple, int] = {}
    for counts in ref_counts if ref_counts is not None else (ngram_counts(ref, n) for ref in refs):
        for ngram, count in counts.items():
            if count > max_ref.get(ngram, 0):
                max_ref[ngram] = count
    return Counter({g: min(c, max_ref[g]) for g, c in ngram_counts(hyp, n).items() if g in max_ref})


def corpus_nist(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5, *, mode: str = "paper"
) -> float:
    """Corpus NIST as the E2E scorer computes it: ``mode="paper"`` (``-p``, pymteval; formula in
    the module doc) or ``mode="mteval"`` (the original Perl mteval-v13a, :func:`mteval_pl_nist`).

    ``references[i]`` is the (non-empty) list of reference texts of ``hypotheses[i]``; the
    number of references may vary between segments.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    if check_nist_mode(mode) == "mteval":
        return mteval_pl_nist(hypotheses, references, max_n)
    ref_counts: list[Counter] = [Counter() for _ in range(max_n + 1)]  # index 0: the empty n-gram
    hits: list[list[Counter]] = [[] for _ in range(max_n + 1)]
    sys_lengths = [0] * (max_n + 1)
    sys_len, ref_len = 0, 0.0
    for hyp_text, ref_texts in zip(hypotheses, references):
        hyp = mteval_tokenize(hyp_text)
        refs = [mteval_tokenize(r) for r in ref_texts]
        for n in range(1, max_n + 1):
            ref_ngrams = [ngram_counts(ref, n) for ref in refs]
            hits[n].append(clipped_ngram_hits(hyp, refs, n, ref_ngrams))
            sys_lengths[n] += len(hyp) - n + 1
            for counts in ref_ngrams:
                ref_counts[n].update(counts)
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


def mteval_pl_nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST of the original ``mteval-v13a-sig.pl`` as ``measure_scores.py`` (no ``-p``) runs it.

    Same definition as the module doc's (``paper``), except:

    * tokens from :func:`mteval_pl_tokenize` (an empty output has 0 tokens, not 1; ASCII-only
      lowercasing);
    * the n-gram "length" of a segment is ``max(0, |hyp| - n + 1)`` and each order divides by
      ``max(sum of lengths, 1)``;
    * brevity: ``L_ref = (all reference tokens) / (mean number of references per segment)``
      instead of the sum of per-segment mean reference lengths. The two agree when every MR has
      the same number of references; E2E MRs have 2 to 16, so small sets differ most;
    * info weights are the same counts over all references, with one Perl quirk kept: an n-gram
      whose prefix is the single token ``0`` (Perl-false) is weighed against the total number of
      reference tokens, like a unigram, instead of the prefix count.

    The scorer pads MRs with fewer references with empty ones; those change none of the counts
    (an empty reference is not counted as a reference). Raises ``ValueError`` if all references
    are empty (mteval divides by zero).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    hyps = [mteval_pl_tokenize(h) for h in hypotheses]
    groups = [[mteval_pl_tokenize(r) for r in refs] for refs in references]
    ref_ngrams: Counter = Counter()  # n-grams of every order, over all references
    hits: list[list[Counter]] = [[] for _ in range(max_n + 1)]
    lengths = [0] * (max_n + 1)
    for hyp, refs in zip(hyps, groups):
        for n in range(1, max_n + 1):
            counts = [ngram_counts(ref, n) for ref in refs]
            hits[n].append(clipped_ngram_hits(hyp, refs, n, counts))
            lengths[n] += max(0, len(hyp) - n + 1)
            for c in counts:
                ref_ngrams.update(c)
    ref_tokens = sum(len(ref) for refs in groups for ref in refs)
    n_refs = sum(1 for refs in groups for ref in refs if ref)
    if ref_tokens == 0:
        raise ValueError("mteval NIST needs at least one non-empty reference (all references are empty)")

    def info(ngram: tuple) -> float:
        prefix = ngram[:-1]
        total = ref_tokens if prefix in ((), ("0",)) else ref_ngrams[prefix]
        return -math.log(ref_ngrams[ngram] / total) / math.log(2)

    gained = [sum(info(g) * c for seg_hits in hits[n] for g, c in seg_hits.items()) for n in range(max_n + 1)]
    score = sum(gained[n] / max(lengths[n], 1) for n in range(1, max_n + 1))
    mean_refs = n_refs / len(hyps)
    return score * nist_brevity_penalty(lengths[1], ref_tokens / mean_refs)


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
