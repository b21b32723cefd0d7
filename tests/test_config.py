"""The real conf/ tree composes and validates; typos fail at start-up with the valid choices."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CONF, compose
from lora_research.config import validate

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("task", GLUE)
def test_every_glue_task_composes(task):
    cfg = validate(compose([f"task={task}", "logger=none"]))
    assert cfg.task.name == task and cfg.task.kind == "glue"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_validates(experiment):
    cfg = validate(compose([f"experiment={experiment}"]))
    assert cfg.method.name


def test_table9_presets_pin_the_paper_and_scripts_settings():
    paper = validate(compose(["experiment=roberta_base_lora_rte"]))
    scripts = validate(compose(["experiment=roberta_base_lora_rte_scripts"]))
    assert (paper.model.name_or_path, paper.task.name) == ("roberta-base", "rte")
    assert (paper.trainer.batch_size, paper.trainer.epochs, paper.trainer.lr) == (32, 80, 5e-4)
    assert paper.task.max_length == 512 and paper.trainer.warmup_ratio == 0.06
    assert paper.method.r == 8 and paper.method.targets == ["q", "v"]
    assert paper.method.alpha == 8 and scripts.method.alpha == 16  # microsoft/LoRA#37
    large = validate(compose(["experiment=roberta_large_lora_cola"]))
    large_scripts = validate(compose(["experiment=roberta_large_lora_cola_scripts"]))
    assert large.trainer.lr == 2e-4 and large_scripts.trainer.lr == 3e-4  # microsoft/LoRA#149


def test_mnli_init_comes_from_environment(monkeypatch):
    monkeypatch.setenv("MNLI_LORA_RUN", "/runs/mnli")
    assert validate(compose(["experiment=roberta_base_lora_mrpc"])).init_from == "/runs/mnli"
    assert validate(compose(["experiment=roberta_base_lora_sst2"])).init_from is None


def test_glue_dir_setting_reaches_the_task(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    assert validate(compose(["task=rte"])).task.data_dir == "/data/glue"
    monkeypatch.delenv("GLUE_DIR")
    assert validate(compose(["task=rte"])).task.data_dir is None  # → the hub


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["+trainer.learning_rate=1e-4"], r"unknown key\(s\) \['learning_rate'\] in 'trainer' config; valid keys: \[.*'lr'"),
        (["method.rr=4"], None),  # Hydra itself rejects keys absent from the YAML
        (["+method.rank=4"], r"unknown option\(s\) \['rank'\] for method 'lora'"),
        (["trainer.eval_strategy=often"], r"trainer.eval_strategy='often' is not valid; valid choices: \['epoch', 'steps'\]"),
        (["trainer.device=tpu"], r"unknown device 'tpu'; valid choices"),
        (["model.family=t5"], r"unknown model family 't5'; valid choices: \['bert', 'gpt2', 'llama', 'roberta'\]"),
        (["task.name=wnli"], r"task.name='wnli' is not valid; valid choices: \['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2', 'stsb'\]"),
        (["trainer.batch_size=abc"], r"invalid value in 'trainer' config"),
        (["logger.mode=sometimes"], r"logger.mode='sometimes' is not valid"),
    ],
)
def test_typos_fail_at_startup_naming_value_and_choices(overrides, match):
    from hydra.errors import ConfigCompositionException

    if match is None:
        with pytest.raises(ConfigCompositionException, match="rr"):
            compose(overrides)
        return
    with pytest.raises(ValueError, match=match):
        validate(compose(overrides))


def test_unknown_group_option_lists_the_available_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'task/sst3'.*sst2"):
        compose(["task=sst3"])
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'method/loraa'.*lora"):
        compose(["method=loraa"])


def test_cuda_requested_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match=r"device 'cuda' requested but CUDA is not available"):
        validate(compose(["trainer.device=cuda"]))


def test_presets_generator_matches_committed_files(tmp_path, monkeypatch):
    """conf/experiment/roberta_* are generated from Table 9; regenerate and compare."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mk", Path(CONF).parent / "experiments" / "make_glue_presets.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    before = {p.name: p.read_text() for p in (CONF / "experiment").glob("roberta_*.yaml")}
    assert len(before) == 32
    mk.main()
    after = {p.name: p.read_text() for p in (CONF / "experiment").glob("roberta_*.yaml")}
    assert before == after


@pytest.mark.parametrize("method", ["full_ft", "bitfit", "adapter_h", "prefix_layer"])
def test_quickstart_preset_accepts_any_method(method):
    cfg = validate(compose(["experiment=quickstart", f"method={method}"]))
    assert cfg.method.name == method and cfg.task.name == "sst2"


def test_a_config_written_before_a_key_existed_is_the_same_run():
    """Run folders and result rows compare configs in canonical form (config.canonical): a config.yaml
    that lacks a later key (at its default) or spells 16.0 as 16 is the same run; a changed value is not."""
    import copy

    from omegaconf import OmegaConf

    from lora_research import outputs
    from lora_research.config import canonical

    new = OmegaConf.to_container(compose(["experiment=cpu/table18", "logger=none"]), resolve=True)
    old = copy.deepcopy(new)
    del old["task"]["decode"]["engine"], old["model"]["cache_converted"], old["trainer"]["eval_order"]
    old["method"]["alpha"] = int(old["method"]["alpha"])
    assert outputs.fingerprint(old) != outputs.fingerprint(new)
    assert outputs.fingerprint(canonical(old)) == outputs.fingerprint(canonical(new))
    for group, key, value in (("method", "alpha", 8), ("task", "decode", {"engine": "hf"}), ("trainer", "lr", 0.5)):
        changed = copy.deepcopy(old)
        changed[group][key] = value
        assert outputs.fingerprint(canonical(changed)) != outputs.fingerprint(canonical(new)), key
