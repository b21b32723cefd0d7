"""The LoRA paper's published numbers (Hu et al. 2021, arXiv:2106.09685 v2), transcribed from
../shared/PAPER.md §6–7, for printing beside our runs. Nothing here is computed from runs.

Every table says what its cells are (metric, scale, aggregate, seeds) as the paper states it.
``None`` = the paper has no such number (rendered as "–"). Standard deviations are kept where
PAPER.md gives them (as ``STD``); Table 2-large's are omitted there.
"""
from __future__ import annotations

GLUE_TASKS = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]
GLUE_TASK_TITLES = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "qqp": "QQP",
                    "rte": "RTE", "stsb": "STS-B"}
GLUE_METRIC = {"mnli": "matched acc", "sst2": "acc", "mrpc": "acc", "cola": "Matthews corr", "qnli": "acc",
               "qqp": "acc", "rte": "acc", "stsb": "Pearson"}

#: how the paper aggregates seeds (D.1: median of 5 for GLUE; D.3: mean of 3 for E2E)
AGGREGATE = {"glue": ("median", 5), "e2e": ("mean", 3)}

# --- Table 2 --------------------------------------------------------------------------------------
# rows: label -> (params, [MNLI, SST-2, MRPC, CoLA, QNLI, QQP, RTE, STS-B], Avg); * = prior work's numbers

def _glue(values):
    return dict(zip(GLUE_TASKS, values))


TABLE2_BASE = {
    "FT*": ("125.0M", _glue([87.6, 94.8, 90.2, 63.6, 92.8, 91.9, 78.7, 91.2]), 86.4),
    "BitFit*": ("0.1M", _glue([84.7, 93.7, 92.7, 62.0, 91.8, 84.0, 81.5, 90.8]), 85.2),
    "Adpt^D* 0.3M": ("0.3M", _glue([87.1, 94.2, 88.5, 60.8, 93.1, 90.2, 71.5, 89.7]), 84.4),
    "Adpt^D* 0.9M": ("0.9M", _glue([87.3, 94.7, 88.4, 62.6, 93.0, 90.6, 75.9, 90.3]), 85.4),
    "LoRA": ("0.3M", _glue([87.5, 95.1, 89.7, 63.4, 93.3, 90.8, 86.6, 91.5]), 87.2),
}
TABLE2_BASE_STD = {
    "Adpt^D* 0.3M": _glue([0.0, 0.1, 1.1, 0.4, 0.1, 0.0, 2.7, 0.3]),
    "Adpt^D* 0.9M": _glue([0.1, 0.3, 0.1, 0.9, 0.2, 0.0, 2.2, 0.1]),
    "LoRA": _glue([0.3, 0.2, 0.7, 1.2, 0.3, 0.1, 0.7, 0.2]),
}
TABLE2_LARGE = {
    "FT*": ("355M", _glue([90.2, 96.4, 90.9, 68.0, 94.7, 92.2, 86.6, 92.4]), 88.9),
    "LoRA": ("0.8M", _glue([90.6, 96.2, 90.9, 68.2, 94.9, 91.6, 87.4, 92.6]), 89.0),
    "Adpt^P† 3.0M": ("3.0M", _glue([90.2, 96.1, 90.2, 68.3, 94.8, 91.9, 83.8, 92.1]), 88.4),
    "Adpt^P† 0.8M": ("0.8M", _glue([90.5, 96.6, 89.7, 67.8, 94.8, 91.7, 80.1, 91.9]), 87.9),
    "Adpt^H† 6.0M": ("6.0M", _glue([89.9, 96.2, 88.7, 66.5, 94.7, 92.1, 83.4, 91.0]), 87.8),
    "Adpt^H† 0.8M": ("0.8M", _glue([90.3, 96.3, 87.7, 66.3, 94.7, 91.5, 72.9, 91.5]), 86.4),
    "LoRA†": ("0.8M", _glue([90.6, 96.2, 90.2, 68.2, 94.8, 91.6, 85.2, 92.3]), 88.6),
}

#: which paper row a run stands for: the row id of our study presets (experiment_name's last part),
#: else the method name. Order = the paper's row order.
TABLE2_BASE_ROWS = {"full_ft": "FT*", "bitfit": "BitFit*", "adapter_drop_0.3m": "Adpt^D* 0.3M",
                    "adapter_drop_0.9m": "Adpt^D* 0.9M", "adapter_drop": "Adpt^D* 0.3M", "lora": "LoRA"}
TABLE2_LARGE_ROWS = {"full_ft": "FT*", "lora": "LoRA", "adapter_p_3m": "Adpt^P† 3.0M", "adapter_p_0.8m": "Adpt^P† 0.8M",
                     "adapter_p": "Adpt^P† 0.8M", "adapter_h_6m": "Adpt^H† 6.0M", "adapter_h_0.8m": "Adpt^H† 0.8M",
                     "adapter_h": "Adpt^H† 0.8M", "lora_restricted": "LoRA†"}
#: cpu/table2 (one small model): each row beside the paper row it stands for, from either half
TABLE2_CPU_ROWS = {"full_ft": ("base", "FT*"), "ft_top2": (None, None), "bitfit": ("base", "BitFit*"),
                   "adapter_drop": ("base", "Adpt^D* 0.3M"), "adapter_p": ("large", "Adpt^P† 0.8M"),
                   "adapter_h": ("large", "Adpt^H† 0.8M"), "prefix_layer": (None, None), "prefix_embed": (None, None),
                   "lora": ("base", "LoRA")}

# --- Table 3 (E2E, GPT-2 M rows; the GPT-2 L rows below) ---------------------------------------------

E2E_METRICS = ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
E2E_TITLES = {"BLEU": "BLEU", "NIST": "NIST", "METEOR": "MET", "ROUGE_L": "R-L", "CIDEr": "CIDEr"}


def _e2e(values):
    return dict(zip(E2E_METRICS, values))


TABLE3 = {  # GPT-2 Medium
    "FT*": ("354.92M", _e2e([68.2, 8.62, 46.2, 71.0, 2.47])),
    "Adapter^L* 0.37M": ("0.37M", _e2e([66.3, 8.41, 45.0, 69.8, 2.40])),
    "Adapter^L* 11.09M": ("11.09M", _e2e([68.9, 8.71, 46.1, 71.3, 2.47])),
    "Adapter^H 11.09M": ("11.09M", _e2e([67.3, 8.50, 46.0, 70.7, 2.44])),
    "FT^Top2*": ("25.19M", _e2e([68.1, 8.59, 46.0, 70.8, 2.41])),
    "PreLayer*": ("0.35M", _e2e([69.7, 8.81, 46.1, 71.4, 2.49])),
    "PreEmbed": (None, _e2e([None] * 5)),  # no PreEmbed row in Table 3 (only GPT-3, Table 4)
    "LoRA": ("0.35M", _e2e([70.4, 8.85, 46.8, 71.8, 2.53])),
}
TABLE3_STD = {"Adapter^H 11.09M": _e2e([0.6, 0.07, 0.2, 0.2, 0.01]), "LoRA": _e2e([0.1, 0.02, 0.2, 0.1, 0.02])}
TABLE3_LARGE = {
    "FT*": ("774.03M", _e2e([68.5, 8.78, 46.0, 69.9, 2.45])),
    "Adapter^L 0.88M": ("0.88M", _e2e([69.1, 8.68, 46.3, 71.4, 2.49])),
    "Adapter^L 23.00M": ("23.00M", _e2e([68.9, 8.70, 46.1, 71.3, 2.45])),
    "PreLayer*": ("0.77M", _e2e([70.3, 8.85, 46.2, 71.7, 2.47])),
    "LoRA": ("0.77M", _e2e([70.4, 8.89, 46.8, 72.0, 2.47])),
}
TABLE3_ROWS = {"full_ft": "FT*", "adapter_l_0.37m": "Adapter^L* 0.37M", "adapter_l": "Adapter^L* 0.37M",
               "adapter_l_11m": "Adapter^L* 11.09M", "adapter_l_large": "Adapter^L* 11.09M",
               "adapter_h_11m": "Adapter^H 11.09M", "adapter_h": "Adapter^H 11.09M", "ft_top2": "FT^Top2*",
               "prefix_layer": "PreLayer*", "prefix_embed": "PreEmbed", "lora": "LoRA"}

# --- Tables 5 and 6 (GPT-3 175B; validation accuracy) ----------------------------------------------

# Tables 5, 6 and 18 vary LoRA's own settings (targets, r): their rows are runs of this method.
RANK_STUDY_METHOD = "lora"
TABLE5_COLUMNS = [("q",), ("k",), ("v",), ("o",), ("q", "k"), ("q", "v"), ("q", "k", "v", "o")]
TABLE5_R = {("q",): 8, ("k",): 8, ("v",): 8, ("o",): 8, ("q", "k"): 4, ("q", "v"): 4, ("q", "k", "v", "o"): 2}
TABLE5 = {
    "WikiSQL": dict(zip(TABLE5_COLUMNS, [70.4, 70.0, 73.0, 73.2, 71.4, 73.7, 73.7])),
    "MNLI": dict(zip(TABLE5_COLUMNS, [91.0, 90.8, 91.0, 91.3, 91.3, 91.3, 91.7])),
}
TABLE5_BUDGET = "18M"

TABLE6_R = [1, 2, 4, 8, 64]
TABLE6_SETS = [("q",), ("q", "v"), ("q", "k", "v", "o")]
TABLE6 = {
    ("WikiSQL", ("q",)): [68.8, 69.6, 70.5, 70.4, 70.0],
    ("WikiSQL", ("q", "v")): [73.4, 73.3, 73.7, 73.8, 73.5],
    ("WikiSQL", ("q", "k", "v", "o")): [74.1, 73.7, 74.0, 74.0, 73.9],
    ("MNLI", ("q",)): [90.7, 90.9, 91.1, 90.7, 90.7],
    ("MNLI", ("q", "v")): [91.3, 91.4, 91.3, 91.6, 91.4],
    ("MNLI", ("q", "k", "v", "o")): [91.2, 91.7, 91.7, 91.5, 91.4],
}
TABLE6_STD = {"WikiSQL": 0.5, "MNLI": 0.1}
#: the paper dataset a GLUE reproduction is set beside (the paper's other dataset is WikiSQL)
SECTION7_COUNTERPART = "MNLI"

# --- Table 18 (GPT-2 M, E2E, after 26,000 steps; METEOR/ROUGE-L as fractions in the paper) ----------

TABLE18_COLUMNS = ["val_loss", "BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
TABLE18 = {
    1: [1.23, 68.72, 8.7215, .4565, .7052, 2.4329],
    2: [1.21, 69.17, 8.7413, .4590, .7052, 2.4639],
    4: [1.18, 70.38, 8.8439, .4689, .7186, 2.5349],
    8: [1.17, 69.57, 8.7457, .4636, .7196, 2.5196],
    16: [1.16, 69.61, 8.7483, .4629, .7177, 2.4985],
    32: [1.16, 69.33, 8.7736, .4642, .7105, 2.5255],
    64: [1.16, 69.24, 8.7174, .4651, .7180, 2.5070],
    128: [1.16, 68.73, 8.6718, .4628, .7127, 2.5030],
    256: [1.16, 68.92, 8.6982, .4629, .7128, 2.5012],
    512: [1.16, 68.78, 8.6857, .4637, .7128, 2.5025],
    1024: [1.17, 69.37, 8.7495, .4659, .7149, 2.5090],
}


def table18(r: int) -> dict:
    """Table 18's row for rank ``r`` on the scale our runs report (METEOR, ROUGE-L x100), or {}."""
    row = TABLE18.get(int(r))
    if row is None:
        return {}
    out = dict(zip(TABLE18_COLUMNS, row))
    out["METEOR"] = round(out["METEOR"] * 100, 2)
    out["ROUGE_L"] = round(out["ROUGE_L"] * 100, 2)
    return out


def targets_title(targets) -> str:
    """("q", "v") -> "W_q,W_v"; all four -> "W_q,W_k,W_v,W_o"."""
    return ",".join(f"W_{t}" for t in targets)


def table2_avg(values: dict, tasks) -> float | None:
    """The mean of a Table 2 row over ``tasks`` (derived: the paper's Avg is over all 8)."""
    vals = [values.get(t) for t in tasks]
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)
