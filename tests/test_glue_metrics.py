"""GLUE metrics against hand computations written out here (GLUE paper / HF ``glue`` metric)."""

import math

import numpy as np
import pytest

from lora_research.metrics.glue import (
    GLUE_METRIC_NAMES,
    compute_glue_metrics,
    logits_to_predictions,
)

REFS = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1]
PREDS = [1, 0, 0, 1, 1, 0, 1, 1, 1, 1]


def confusion(preds, refs):
    tp = sum(p == 1 and r == 1 for p, r in zip(preds, refs))
    tn = sum(p == 0 and r == 0 for p, r in zip(preds, refs))
    fp = sum(p == 1 and r == 0 for p, r in zip(preds, refs))
    fn = sum(p == 0 and r == 1 for p, r in zip(preds, refs))
    return tp, tn, fp, fn


def test_confusion_counts_of_fixture():
    assert confusion(PREDS, REFS) == (5, 2, 2, 1)


def test_cola_matthews_from_2x2_confusion_matrix():
    tp, tn, fp, fn = 5, 2, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    out = compute_glue_metrics("cola", PREDS, REFS)
    assert set(out) == {"matthews_correlation"}
    assert out["matthews_correlation"] == pytest.approx(mcc, abs=1e-12)
    assert mcc == pytest.approx(8 / math.sqrt(7 * 6 * 4 * 3))


def test_cola_constant_predictions_give_zero_mcc():
    out = compute_glue_metrics("cola", [1] * 6, [1, 0, 1, 0, 1, 1])
    assert out["matthews_correlation"] == 0.0


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_mrpc_qqp_accuracy_and_f1_of_positive_class(task):
    tp, tn, fp, fn = 5, 2, 2, 1
    out = compute_glue_metrics(task, PREDS, REFS)
    assert list(out) == ["accuracy", "f1"]
    assert out["accuracy"] == pytest.approx((tp + tn) / 10)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert out["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert out["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte"])
def test_accuracy_only_tasks(task):
    assert compute_glue_metrics(task, PREDS, REFS) == {"accuracy": pytest.approx(0.7)}


def test_mnli_three_class_accuracy():
    refs = [0, 1, 2, 2, 1, 0]
    preds = [0, 2, 2, 2, 1, 1]
    assert compute_glue_metrics("mnli", preds, refs) == {"accuracy": pytest.approx(4 / 6)}


def test_stsb_pearson_and_spearman_from_definitions():
    x = np.array([0.5, 2.0, 3.5, 1.0, 4.8, 2.6])  # predictions, no ties
    y = np.array([0.0, 2.4, 3.0, 1.6, 5.0, 2.2])  # gold scores, no ties
    dx, dy = x - x.mean(), y - y.mean()
    pearson = (dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum())
    rx = np.argsort(np.argsort(x)).astype(float)  # ranks (no ties)
    ry = np.argsort(np.argsort(y)).astype(float)
    n = len(x)
    spearman = 1 - 6 * ((rx - ry) ** 2).sum() / (n * (n**2 - 1))
    out = compute_glue_metrics("stsb", x, y)
    assert list(out) == ["pearson", "spearmanr"]
    assert out["pearson"] == pytest.approx(pearson, abs=1e-12)
    assert out["spearmanr"] == pytest.approx(spearman, abs=1e-12)
    assert all(type(v) is float for v in out.values())


def test_stsb_accepts_column_vector_predictions():
    x = np.array([[0.1], [0.7], [0.3]])
    assert compute_glue_metrics("stsb", x, [0.0, 1.0, 0.5])["spearmanr"] == pytest.approx(1.0)


def test_logits_to_predictions():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    np.testing.assert_array_equal(logits_to_predictions("rte", logits), [1, 0, 1])
    three = np.array([[0.1, 0.2, 0.9], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(logits_to_predictions("mnli", three), [2, 0])
    reg = logits_to_predictions("stsb", np.array([[1.5], [2.5]]))
    assert reg.shape == (2,) and reg.dtype == np.float64
    np.testing.assert_allclose(reg, [1.5, 2.5])
    with pytest.raises(ValueError, match=r"\(n, num_labels\)"):
        logits_to_predictions("sst2", np.array([0.1, 0.2]))


def test_logits_from_torch_tensor():
    torch = pytest.importorskip("torch")
    t = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    np.testing.assert_array_equal(logits_to_predictions("sst2", t), [1, 0])


def test_errors_name_bad_values():
    with pytest.raises(ValueError, match=r"'wnli'.*cola"):
        compute_glue_metrics("wnli", [1], [1])
    with pytest.raises(ValueError, match=r"'foo'"):
        logits_to_predictions("foo", [[1.0, 0.0]])
    with pytest.raises(ValueError, match="3 vs 2"):
        compute_glue_metrics("sst2", [1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        compute_glue_metrics("sst2", [], [])


def test_metric_names_cover_the_eight_tasks():
    assert set(GLUE_METRIC_NAMES) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    for task, names in GLUE_METRIC_NAMES.items():
        preds = [0.1, 0.5, 0.9] if task == "stsb" else [0, 1, 1]
        refs = [0.0, 0.4, 1.0] if task == "stsb" else [0, 1, 0]
        assert tuple(compute_glue_metrics(task, preds, refs)) == names
