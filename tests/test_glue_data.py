"""GLUE loading (real files in shared/data/glue, malformed files, hub call) and feature cache.

Real data: env ``LORA_RESEARCH_DATA`` (default ``<repo root>/../shared/data``); the tests
that need it are skipped with a reason when it is absent. Expected counts are the official
GLUE split sizes and the label counts in ``shared/data/README.md``.
"""

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from lora_research.tasks import glue_features, glue_files  # noqa: E402
from lora_research.tasks.glue_features import prepare_glue_features  # noqa: E402
from lora_research.tasks.glue_files import load_glue  # noqa: E402
from lora_research.tasks.glue_specs import GLUE_TASKS, get_task_spec  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("LORA_RESEARCH_DATA", REPO_ROOT.parent / "shared" / "data"))
GLUE_DIR = DATA_ROOT / "glue"

needs_data = pytest.mark.skipif(
    not GLUE_DIR.is_dir(),
    reason=f"GLUE data not found at {GLUE_DIR} (set LORA_RESEARCH_DATA to the shared/data folder)",
)

_loaded: dict = {}


def real(task, splits=None):
    """Load real data once per (task, splits) for the whole module (keeps the suite fast)."""
    key = (task, tuple(splits) if splits else None)
    if key not in _loaded:
        _loaded[key] = load_glue(task, GLUE_DIR, splits=splits)
    return _loaded[key]


# --------------------------------------------------------------------------- specs


def test_specs_for_the_eight_tasks():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    assert GLUE_TASKS["cola"].main_metric == "matthews_correlation"
    assert GLUE_TASKS["stsb"].main_metric == "pearson"
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    for t in ("sst2", "mrpc", "qqp", "mnli", "qnli", "rte"):
        assert GLUE_TASKS[t].main_metric == "accuracy"
    assert GLUE_TASKS["mrpc"].metric_names == ("accuracy", "f1")
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["mnli"].main_eval_split == "validation_matched"
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert GLUE_TASKS["rte"].eval_splits == ("validation",)
    for spec in GLUE_TASKS.values():
        assert spec.main_metric in spec.metric_names
        assert spec.num_labels == (1 if spec.is_regression else len(spec.label_names))
    with pytest.raises(Exception):
        GLUE_TASKS["rte"].num_labels = 3  # frozen


def test_unknown_task_and_split_errors_name_choices():
    with pytest.raises(ValueError, match=r"'wnli'.*cola, sst2, mrpc"):
        get_task_spec("wnli")
    with pytest.raises(ValueError, match=r"'wnli'"):
        load_glue("wnli", "/nonexistent")
    with pytest.raises(ValueError, match=r"'dev'.*validation"):
        load_glue("rte", "/nonexistent", splits=["dev"])


# --------------------------------------------------------------------------- real files


@needs_data
def test_cola_counts_labels_and_last_dev_row():
    dd = real("cola")
    assert (len(dd["train"]), len(dd["validation"])) == (8551, 1043)
    assert Counter(dd["train"]["label"]) == {1: 6023, 0: 2528}
    assert Counter(dd["validation"]["label"]) == {1: 721, 0: 322}
    last = dd["validation"][-1]  # dev.tsv has no final newline
    assert last == {"sentence": "John talked to Bill about himself.", "label": 1, "idx": 1042}
    assert dd["validation"][18]["sentence"] == "He could not] have been working."  # GLUE, not 1.1


@needs_data
def test_sst2_counts_and_labels():
    dd = real("sst2")
    assert (len(dd["train"]), len(dd["validation"])) == (67349, 872)
    assert Counter(dd["train"]["label"]) == {1: 37569, 0: 29780}
    assert Counter(dd["validation"]["label"]) == {1: 444, 0: 428}
    assert dd["train"][0]["sentence"] == "hide new secretions from the parental units "


@needs_data
def test_mrpc_join_rule():
    dd = real("mrpc", ["train", "validation", "test"])
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (3668, 408, 1725)
    first = dd["train"][0]
    assert first["sentence1"].startswith(
        'Amrozi accused his brother , whom he called " the witness "'
    )
    assert first["label"] == 1 and first["idx"] == 0
    assert Counter(dd["train"]["label"]) == {1: 2474, 0: 1194}
    assert Counter(dd["validation"]["label"]) == {1: 279, 0: 129}
    # The pair missing from some train.tsv copies (2750203 / 2750153) is in train.
    assert any(s.startswith("Officials at Brandeis said") for s in dd["train"]["sentence1"])
    # Validation equals the shipped dev.tsv (same rows, order and labels).
    dev = glue_files._read_glue_tsv("mrpc", "validation", GLUE_DIR / "mrpc" / "dev.tsv")
    assert [(t["sentence1"], t["sentence2"], lab) for _, t, lab in dev] == list(
        zip(dd["validation"]["sentence1"], dd["validation"]["sentence2"], dd["validation"]["label"])
    )
    # idx = row number in msr_paraphrase_train.txt (hub builder); the two splits partition it.
    assert sorted([*dd["train"]["idx"], *dd["validation"]["idx"]]) == list(range(4076))
    # Test split: the labelled msr_paraphrase_test.txt (the hub's MRPC test has labels).
    assert set(dd["test"]["label"]) == {0, 1}


@needs_data
def test_mrpc_prefers_train_tsv_when_present(tmp_path):
    d = tmp_path / "MRPC"  # GLUE download layout, upper-case folder name
    d.mkdir()
    shutil.copy(GLUE_DIR / "mrpc" / "msi_untokenized" / "train.tsv", d / "train.tsv")
    shutil.copy(GLUE_DIR / "mrpc" / "msi_untokenized" / "dev.tsv", d / "dev.tsv")
    dd = load_glue("mrpc", tmp_path)
    assert (len(dd["train"]), len(dd["validation"])) == (3668, 408)
    assert dd["train"][0]["sentence1"].startswith('Amrozi accused his brother, whom he called "the')
    assert dd["validation"]["idx"] == list(range(408))


@needs_data
def test_stsb_counts_and_float_scores():
    dd = real("stsb", ["train", "validation", "test"])
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (5749, 1500, 1379)
    assert dd["train"].features["label"].dtype == "float32"
    assert dd["train"][1]["label"] == pytest.approx(3.8)
    labels = dd["validation"]["label"]
    assert min(labels) >= 0.0 and max(labels) <= 5.0
    assert set(dd["test"]["label"]) == {-1.0}


@needs_data
def test_rte_counts_and_hub_label_encoding():
    dd = real("rte", ["train", "validation", "test"])
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (2490, 277, 3000)
    assert dd["train"].features["label"].names == ["entailment", "not_entailment"]
    assert Counter(dd["train"]["label"]) == {0: 1249, 1: 1241}  # entailment -> 0
    assert Counter(dd["validation"]["label"]) == {0: 146, 1: 131}
    assert set(dd["test"]["label"]) == {-1}
    assert dd["train"].column_names == ["sentence1", "sentence2", "label", "idx"]
    assert dd["train"][0]["label"] == 1  # "not_entailment" in row 0


@needs_data
def test_qnli_dev_only_and_unbalanced_quote_row():
    dd = real("qnli", ["validation"])
    dev = dd["validation"]
    assert len(dev) == 5463
    assert Counter(dev["label"]) == {0: 2702, 1: 2761}
    row = dev[694]  # sentence starts with a stray, unbalanced '"'
    assert row["idx"] == 694 and row["question"] == "Who discovered the Compton Effect?"
    assert row["sentence"].startswith('" Luis Walter Alvarez') and row["label"] == 1
    assert dev[695]["idx"] == 695 and not dev[695]["sentence"].startswith("Who")


@needs_data
def test_missing_train_split_fails_only_when_requested():
    with pytest.raises(FileNotFoundError) as err:
        load_glue("qnli", GLUE_DIR)  # default splits include train
    msg = str(err.value)
    assert "'train'" in msg and "train.tsv" in msg and "validation" in msg
    for task in ("qqp", "mnli"):
        with pytest.raises(FileNotFoundError, match=task):
            load_glue(task, GLUE_DIR, splits=GLUE_TASKS[task].eval_splits)


# --------------------------------------------------------------------------- malformed files


def write_task(root: Path, folder: str, files: dict) -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return root


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_tiny_rte_in_glue_layout(tmp_path):
    write_task(tmp_path, "RTE", {"dev.tsv": RTE_HEADER + "0\tA b.\tA.\tentailment\n"
                                              "1\tC \"d.\tE.\tnot_entailment"})
    dd = load_glue("rte", tmp_path, splits="validation")
    assert dd["validation"][:] == {"sentence1": ["A b.", 'C "d.'], "sentence2": ["A.", "E."],
                                   "label": [0, 1], "idx": [0, 1]}


def test_tiny_mnli_and_qqp_in_glue_layout(tmp_path):
    """The GLUE MNLI/QQP column layouts (not in shared/data, so written here)."""
    mnli_cols = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
                 "sentence1_parse sentence2_parse sentence1 sentence2 label1 label2 label3 "
                 "label4 label5 gold_label").split()
    row = ["0", "1", "2", "fiction", "(a)", "(b)", "(A)", "(B)", "Premise .", "Hypo .",
           "neutral", "neutral", "contradiction", "neutral", "neutral", "neutral"]
    text = "\t".join(mnli_cols) + "\n" + "\t".join(row) + "\n"
    write_task(tmp_path, "MNLI", {"dev_matched.tsv": text,
                                  "dev_mismatched.tsv": text.replace("\tneutral\n", "\tcontradiction\n")})
    dd = load_glue("mnli", tmp_path, splits=GLUE_TASKS["mnli"].eval_splits)
    assert dd["validation_matched"][0] == {"premise": "Premise .", "hypothesis": "Hypo .",
                                           "label": 1, "idx": 0}
    assert dd["validation_mismatched"][0]["label"] == 2
    qqp = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tWhy?\tHow?\t1\n"
    write_task(tmp_path, "QQP", {"dev.tsv": qqp})
    assert load_glue("qqp", tmp_path, splits="validation")["validation"][0] == {
        "question1": "Why?", "question2": "How?", "label": 1, "idx": 0}


def test_wrong_column_count_names_file_line_and_value(tmp_path):
    write_task(tmp_path, "rte", {"dev.tsv": RTE_HEADER + "0\ta\tb\tentailment\n1\tonly-two\tentailment\n"})
    with pytest.raises(ValueError) as err:
        load_glue("rte", tmp_path, splits=["validation"])
    msg = str(err.value)
    assert "dev.tsv" in msg and "line 3" in msg and "only-two" in msg and "expected 4" in msg


def test_bad_label_names_file_line_value_and_choices(tmp_path):
    write_task(tmp_path, "rte", {"dev.tsv": RTE_HEADER + "0\ta\tb\tmaybe\n"})
    with pytest.raises(ValueError) as err:
        load_glue("rte", tmp_path, splits=["validation"])
    msg = str(err.value)
    assert "dev.tsv" in msg and "line 2" in msg and "'maybe'" in msg and "not_entailment" in msg


def test_cola_headerless_bad_label_and_column_count(tmp_path):
    write_task(tmp_path, "CoLA", {"dev.tsv": "gj04\t1\t\tGood.\ngj04\t2\t*\tBad label.\n"})
    with pytest.raises(ValueError, match=r"dev\.tsv: line 2: bad label '2'"):
        load_glue("cola", tmp_path, splits=["validation"])
    write_task(tmp_path, "CoLA", {"dev.tsv": "gj04\t1\tGood.\n"})
    with pytest.raises(ValueError, match=r"line 1: expected 4 tab-separated columns, got 3"):
        load_glue("cola", tmp_path, splits=["validation"])


def test_stsb_non_numeric_score(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write_task(tmp_path, "STS-B", {"dev.tsv": header + "0\tg\tf\t2012\t1\tn\tn\tA.\tB.\tfive\n"})
    with pytest.raises(ValueError, match=r"dev\.tsv: line 2: bad STS-B score 'five'.*\[0\.0, 5\.0\]"):
        load_glue("stsb", tmp_path, splits=["validation"])


def test_missing_header_column(tmp_path):
    write_task(tmp_path, "qnli", {"dev.tsv": "index\tquestion\ttext\tlabel\n0\tq\ts\tentailment\n"})
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['sentence'\]"):
        load_glue("qnli", tmp_path, splits=["validation"])
    write_task(tmp_path, "qnli", {"dev.tsv": "index\tquestion\tsentence\n0\tq\ts\n"})
    with pytest.raises(ValueError, match=r"dev\.tsv: line 1: .*lacks column\(s\) \['label'\]"):
        load_glue("qnli", tmp_path, splits=["validation"])


def test_missing_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_glue("rte", tmp_path / "nope", splits=["validation"])
    with pytest.raises(FileNotFoundError) as err:
        load_glue("rte", tmp_path, splits=["validation"])
    assert str(tmp_path / "RTE") in str(err.value) and str(tmp_path / "rte") in str(err.value)


def test_mrpc_missing_pieces_message(tmp_path):
    write_task(tmp_path, "mrpc", {"dev_ids.tsv": "1\t2\n"})
    with pytest.raises(FileNotFoundError, match=r"msr_paraphrase_train\.txt.*dev_ids\.tsv"):
        load_glue("mrpc", tmp_path, splits=["train"])


# --------------------------------------------------------------------------- hub path


def test_hub_path_calls_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        one = datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"],
                                          "label": [0], "idx": [0]})
        return datasets.DatasetDict({"train": one, "validation": one, "test": one})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dd = load_glue("rte")
    assert calls == [(("nyu-mll/glue", "rte"), {})]
    assert list(dd) == ["train", "validation"]
    load_glue("rte", splits=["test"], revision="abc123")
    assert calls[-1] == (("nyu-mll/glue", "rte"), {"revision": "abc123"})
    with pytest.raises(ValueError, match="validation_matched"):
        load_glue("mnli", splits=["validation_matched"])


# --------------------------------------------------------------------------- feature cache

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "the", "dog", "runs", "."]


def tiny_tokenizer(extra=()):
    """A BERT WordPiece tokenizer from an in-memory vocab: no downloads."""
    from transformers import BertTokenizerFast

    vocab = VOCAB + list(extra)
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})


def tiny_rte(root: Path, n_train=20) -> Path:
    train = RTE_HEADER + "".join(
        f"{i}\tthe man is {'a dog ' * (i % 5)}.\tthe dog runs .\t"
        f"{'entailment' if i % 3 else 'not_entailment'}\n" for i in range(n_train)
    )
    dev = RTE_HEADER + "0\ta man runs .\ta dog .\tentailment\n1\tthe dog .\tis .\tnot_entailment\n"
    return write_task(root, "rte", {"train.tsv": train, "dev.tsv": dev})


def as_lists(dd):
    return {s: dd[s][:] for s in dd}


def test_feature_cache_hit_and_miss(tmp_path):
    data, cache, tok = tiny_rte(tmp_path / "glue"), tmp_path / "cache", tiny_tokenizer()
    f1, hit1 = prepare_glue_features("rte", tok, max_length=12, data_dir=data, cache_dir=cache)
    f2, hit2 = prepare_glue_features("rte", tok, max_length=12, data_dir=data, cache_dir=cache)
    assert (hit1, hit2) == (False, True)
    assert as_lists(f1) == as_lists(f2)
    assert f1["train"].column_names == ["input_ids", "attention_mask", "token_type_ids", "labels"]
    assert f1["train"].features["labels"].dtype == "int64"
    lengths = [len(x) for x in f1["train"]["input_ids"]]
    assert max(lengths) == 12 and min(lengths) < 12  # truncated, not padded
    assert f1["validation"][0]["labels"] == 0
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]  # atomic write
    assert len(list(cache.iterdir())) == 1

    # max_length, tokenizer vocab, or the data file changing -> miss
    _, hit = prepare_glue_features("rte", tok, max_length=16, data_dir=data, cache_dir=cache)
    assert not hit
    _, hit = prepare_glue_features("rte", tiny_tokenizer(["runs##"]), max_length=12,
                                   data_dir=data, cache_dir=cache)
    assert not hit
    # the seed does not matter without subsampling -> hit
    _, hit = prepare_glue_features("rte", tok, max_length=12, data_dir=data, cache_dir=cache, seed=7)
    assert hit
    tiny_rte(tmp_path / "glue", n_train=21)
    f3, hit = prepare_glue_features("rte", tok, max_length=12, data_dir=data, cache_dir=cache)
    assert not hit and len(f3["train"]) == 21


def test_feature_cache_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_RESEARCH_CACHE", str(tmp_path / "root"))
    data = tiny_rte(tmp_path / "glue")
    _, hit = prepare_glue_features("rte", tiny_tokenizer(), max_length=8, data_dir=data,
                                   splits=["validation"])
    assert not hit
    entries = list((tmp_path / "root" / "features").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("rte-")
    assert (entries[0] / "key.json").is_file()


def test_seeded_subsample(tmp_path):
    data, cache, tok = tiny_rte(tmp_path / "glue", n_train=40), tmp_path / "cache", tiny_tokenizer()
    kw = dict(max_length=32, data_dir=data, cache_dir=cache, max_train_samples=10, max_eval_samples=1)
    a, _ = prepare_glue_features("rte", tok, seed=1, **kw)
    b, hit = prepare_glue_features("rte", tok, seed=1, **kw)
    c, hit_c = prepare_glue_features("rte", tok, seed=2, **kw)
    assert hit and not hit_c
    assert (len(a["train"]), len(a["validation"])) == (10, 1)
    assert as_lists(a) == as_lists(b) and a["train"][:] != c["train"][:]


def test_subsample_is_seeded_uniform_and_keeps_file_order():
    ds = datasets.Dataset.from_dict({"idx": list(range(100))})
    a = glue_features._subsample(ds, 10, seed=3)["idx"]
    assert a == glue_features._subsample(ds, 10, seed=3)["idx"]
    assert a != glue_features._subsample(ds, 10, seed=4)["idx"]
    assert len(set(a)) == 10 and a == sorted(a) and a != list(range(10))
    assert len(glue_features._subsample(ds, None, seed=3)) == 100
    assert len(glue_features._subsample(ds, 500, seed=3)) == 100


@needs_data
def test_stsb_features_float_labels(tmp_path):
    tok = tiny_tokenizer()
    feats, hit = prepare_glue_features("stsb", tok, max_length=16, data_dir=GLUE_DIR,
                                       splits=["validation"], cache_dir=tmp_path,
                                       max_eval_samples=50)
    assert not hit and len(feats["validation"]) == 50
    assert feats["validation"].features["labels"].dtype == "float32"
    assert all(0.0 <= x <= 5.0 for x in feats["validation"]["labels"])


def test_roberta_style_tokenizer_has_no_token_type_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", "the", "man", "dog", "."])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
    )
    data = tiny_rte(tmp_path / "glue")
    feats, _ = prepare_glue_features("rte", tok, max_length=64, data_dir=data,
                                     splits="validation", cache_dir=tmp_path / "c")
    assert feats["validation"].column_names == ["input_ids", "attention_mask", "labels"]
    assert feats["validation"][1]["input_ids"] == [0, 4, 6, 7, 2, 2, 3, 7, 2]  # <s> A </s></s> B </s>
