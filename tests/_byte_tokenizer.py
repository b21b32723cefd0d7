"""Offline byte-level BPE tokenizer for decoding tests: 256 byte tokens (ids = byte values), optionally
the merge "\\n"+"\\n" -> one token as GPT-2's 628, optionally ``extra_tokens`` two-letter tokens (no merges
make them: they only widen the vocabulary, e.g. beyond the vocabulary-head's pieces), then EOS (also the pad token)."""
from __future__ import annotations

EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def byte_tokenizer(merge_blank_line: bool = True, extra_tokens: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _bytes_to_unicode()
    vocab = {chars[b]: i for i, b in enumerate(range(256))}
    merges = []
    nl = chars[ord("\n")]
    if merge_blank_line:
        vocab[nl + nl] = len(vocab)
        merges.append((nl, nl))
    letters = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    for pair in [a + b for a in letters for b in letters][:extra_tokens]:
        vocab[pair] = len(vocab)
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    return fast
