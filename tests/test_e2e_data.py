"""E2E data (lora_research.tasks.e2e): the real CSVs, MR linearisation vs microsoft/LoRA's files,
completion-only labels, collator padding, subsampling, malformed input, the hub path (monkeypatched).

The data tests need the official CSVs in ``$E2E_DIR`` (default: $LORA_RESEARCH_DATA/e2e, i.e. ../shared/data/e2e) and skip otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lora_research.tasks import e2e as E

from conftest import DATA as _DATA_ROOT

DATA = Path(os.environ.get("E2E_DIR", _DATA_ROOT / "e2e"))
needs_data = pytest.mark.skipif(not (DATA / "trainset.csv").is_file(), reason=f"E2E CSVs not in {DATA}")


class CharTokenizer:
    """Offline stand-in: one id per character, EOS = 0 (encode_pair needs only __call__ + eos_token_id)."""

    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@needs_data
def test_official_csv_counts_and_grouping():
    expected = {"train": (42061, 4862), "dev": (4672, 547), "test": (4693, 630)}
    for split, (n_pairs, n_mrs) in expected.items():
        pairs = E.load_pairs(split, data_dir=DATA)
        mrs, refs = E.group_by_mr(pairs)
        assert (len(pairs), len(mrs)) == (n_pairs, n_mrs), split
        assert sum(len(r) for r in refs) == n_pairs
    # order of first appearance; the first dev MR has its references in file order
    mrs, refs = E.group_by_mr(E.load_pairs("dev", data_dir=DATA))
    assert mrs[0] == "name : Alimentum | area : city centre | family friendly : no"
    assert refs[0][0] == "There is a place in the city centre, Alimentum, that is not family-friendly."


@needs_data
def test_embedded_newline_references_parsed():
    rows = E.read_csv(DATA / "trainset.csv")
    assert len(rows) == 42061
    multiline = [r for r in rows if "\n" in r[2]]
    assert len(multiline) == 2
    for _line, mr, ref in multiline:
        assert mr.startswith("name[Giraffe]") and ref.endswith("This coffee shop is a high customer rating")
    pairs = E.load_pairs("train", data_dir=DATA)
    cleaned = [p for p in pairs if p.completion.startswith("Giraffe is a coffee shop providing take a service")]
    assert len(cleaned) == 2
    assert all("\n" not in p.completion and "Bakers. This coffee shop" in p.completion for p in cleaned)


@needs_data
@pytest.mark.parametrize("split,txt", [("dev", "valid.txt"), ("test", "test.txt")])
def test_linearisation_matches_lora_txt(split, txt):
    ours = E.load_pairs(split, data_dir=DATA, mr_style="lora")
    theirs = E.read_lora_txt(DATA / "lora_format" / txt)
    assert len(ours) == len(theirs)
    assert [p.context for p in ours] == [p.context for p in theirs]  # every MR, exactly
    # raw style differs only in the value tokenisation of LoRA's files (£20-25 -> £ 20 - 25)
    raw = E.load_pairs(split, data_dir=DATA, mr_style="raw")
    diff = {(r.context, t.context) for r, t in zip(raw, theirs) if r.context != t.context}
    assert diff and all("£" in a and a.replace("£", "£ ").replace("-", " - ") == b for a, b in diff)
    # the lora_txt source reads the same file
    assert E.load_pairs(split, source="lora_txt", data_dir=DATA)[0] == theirs[0]


def test_linearise_mr_mapping_and_errors():
    mr = "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]"
    assert E.linearise_mr(mr) == (
        "name : The Vaults | Type : pub | price : more than £30 | customer rating : 5 out of 5 | near : Café Adriatic"
    )
    assert E.linearise_mr("name[X], familyFriendly[yes], food[Fast food], area[riverside]") == (
        "name : X | family friendly : yes | food : Fast food | area : riverside"
    )
    assert E.linearise_mr("priceRange[£20-25]", style="lora") == "price : £ 20 - 25"
    for bad in ("name[The Vaults", "name The Vaults", "name[A] eatType[pub]", "", "name[A],, food[B]"):
        with pytest.raises(ValueError, match="MR"):
            E.linearise_mr(bad, where="f.csv: line 7")
    with pytest.raises(ValueError, match="f.csv: line 7"):
        E.linearise_mr("name[A], eatType pub", where="f.csv: line 7")


def test_malformed_csv_errors(tmp_path):
    (tmp_path / "devset.csv").write_text("meaning,text\r\n\"name[A]\",hello\r\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"devset\.csv: line 1: header .*'mr'"):
        E.load_pairs("dev", data_dir=tmp_path)
    (tmp_path / "devset.csv").write_text('mr,ref\r\n"name[A], eatType[pub]",ok\r\n"name[B], eatType pub",bad\r\n',
                                         encoding="utf-8")
    with pytest.raises(ValueError, match=r"devset\.csv: line 3: malformed MR 'name\[B\], eatType pub'"):
        E.load_pairs("dev", data_dir=tmp_path)
    (tmp_path / "devset.csv").write_text('mr,ref\r\n"name[A]",ok,extra\r\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected 2 fields"):
        E.load_pairs("dev", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        E.load_pairs("test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="valid choices"):
        E.load_pairs("dev", source="tsv", data_dir=tmp_path)


def test_unset_data_dir_is_a_clear_error_before_the_feature_cache(tmp_path):
    """E2E_DIR unset: the error names the setting (it was a TypeError from the cache key, an 'internal error')."""
    tok = type("Tok", (), {"name_or_path": "t"})()
    for source in ("csv", "lora_txt"):
        with pytest.raises(ValueError, match=r"E2E data_dir is not set \(task.data_dir or env E2E_DIR\)"):
            E.prepare_e2e_features(tok, splits=("train", "dev"), max_length=32, source=source, data_dir=None,
                                   cache_dir=tmp_path)
        with pytest.raises(ValueError, match="E2E_DIR"):
            E.load_pairs("dev", source=source, data_dir=None)


def test_hub_source_monkeypatched(monkeypatch):
    rows = [
        {"meaning_representation": "name[A], eatType[pub]", "human_reference": "A is a pub."},
        {"meaning_representation": "name[A], eatType[pub]", "human_reference": "There is a pub, A."},
        {"meaning_representation": "name[B], area[riverside]", "human_reference": "B is by the river."},
    ]
    calls = []

    def fake_load_dataset(path, split=None, revision=None):
        calls.append((path, split))
        return rows

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs = E.load_pairs("dev", source="hub")
    assert calls == [(E.HUB_DATASET_ID, "validation")]
    mrs, refs = E.group_by_mr(pairs)
    assert mrs == ["name : A | Type : pub", "name : B | area : riverside"]
    assert refs == [["A is a pub.", "There is a pub, A."], ["B is by the river."]]


def test_completion_only_labels_and_truncation():
    tok = CharTokenizer()
    ctx, comp = "name : A", "A is nice."
    f = E.encode_pair(tok, ctx, comp, max_length=512)
    n_ctx = len(ctx) + 1  # context + EOS
    assert f["input_ids"] == [ord(c) for c in ctx] + [0] + [ord(c) for c in " " + comp] + [0]
    assert f["labels"][:n_ctx] == [-100] * n_ctx  # no loss on the MR and its EOS
    assert f["labels"][n_ctx:] == f["input_ids"][n_ctx:]  # loss on " " + completion + EOS
    assert f["attention_mask"] == [1] * len(f["input_ids"])
    short = E.encode_pair(tok, ctx, comp, max_length=12)
    assert short["input_ids"] == f["input_ids"][:12] and short["labels"] == f["labels"][:12]


def test_completion_mask_with_a_real_bpe_tokenizer():
    """Same check with a byte-level BPE (the GPT-2 scheme): the MR part is exactly the masked prefix."""
    tok = _byte_bpe()
    ctx = "name : Café | price : £20-25"
    f = E.encode_pair(tok, ctx, "Café is cheap.", max_length=200)
    ctx_ids = E.encode_context(tok, ctx)
    assert ctx_ids[-1] == tok.eos_token_id
    assert f["input_ids"][: len(ctx_ids)] == ctx_ids
    masked = [i for i, l in enumerate(f["labels"]) if l == -100]
    assert masked == list(range(len(ctx_ids)))
    assert tok.decode([i for i, l in zip(f["input_ids"], f["labels"]) if l != -100]) == " Café is cheap.<|endoftext|>"


def test_collator_pads_right_with_minus_100_labels(tmp_path, monkeypatch):
    """The E2E task's collator (transformers' DataCollatorForSeq2Seq) on a tokenizer from load_tokenizer,
    whose own default side is left: batches are still padded on the right."""
    from lora_research.models import ModelConfig, load_tokenizer
    from lora_research.tasks.e2e_task import E2ETask, E2ETaskConfig

    import json

    tok = _byte_bpe()
    tok.pad_token = tok.convert_ids_to_tokens(7)
    tok.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "tok").padding_side == "left"
    tok = load_tokenizer(ModelConfig(name="t", name_or_path=str(tmp_path / "tok")))
    assert tok.pad_token_id == 7
    monkeypatch.setattr("lora_research.tasks.e2e_task.prepare_e2e_features",
                        lambda *a, **k: ({"train": [], "dev": []}, False))
    col = E2ETask(E2ETaskConfig()).prepare(tok, seed=0).collator
    batch = col([
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3]},
        {"input_ids": [4], "attention_mask": [1], "labels": [4]},
    ])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert all(v.dtype == torch.long for v in batch.values())


def test_subsampling_is_seeded_and_keeps_whole_mrs():
    pairs = [E.E2EPair(f"m{i // 3}", f"r{i}") for i in range(30)]  # 10 MRs x 3 refs
    a = E.subsample_pairs(pairs, 7, seed=1)
    assert a == E.subsample_pairs(pairs, 7, seed=1) and len(a) == 7
    assert [pairs.index(p) for p in a] == sorted(pairs.index(p) for p in a)  # file order kept
    assert E.subsample_pairs(pairs, None, 0) == pairs
    b = E.subsample_mrs(pairs, 4, seed=3)
    mrs, refs = E.group_by_mr(b)
    assert len(mrs) == 4 and all(len(r) == 3 for r in refs)
    assert b == E.subsample_mrs(pairs, 4, seed=3) and b != E.subsample_mrs(pairs, 4, seed=4)


@pytest.mark.slow
@needs_data
def test_prepare_features_cache(tmp_path):
    tok = _byte_bpe()
    kw = dict(splits=("train", "dev"), max_length=64, data_dir=DATA, max_train_samples=20, max_eval_mrs=3,
              seed=0, cache_dir=tmp_path)
    feats, hit = E.prepare_e2e_features(tok, **kw)
    assert not hit and len(feats["train"]) == 20
    dev_pairs = E.subsample_mrs(E.load_pairs("dev", data_dir=DATA), 3, 0)
    assert len(feats["dev"]) == len(dev_pairs)
    again, hit = E.prepare_e2e_features(tok, **kw)
    assert hit and again["train"][0] == feats["train"][0]
    assert max(len(x) for x in feats["train"]["input_ids"]) <= 64


def _byte_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>")
