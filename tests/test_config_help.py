"""python -m lora_research.config_help: every key of a group with its type, default and help, from the schema."""
from __future__ import annotations

from dataclasses import fields

import pytest

from lora_research.config_help import FIXED, describe, field_comments, main, schema_for
from lora_research.decoding import DecodeConfig
from lora_research.methods import METHODS
from lora_research.methods.lora import LoRAConfig
from lora_research.tasks import TASKS

SCHEMAS = [*FIXED.values(), *(m.Config for m in METHODS.values()), *(t.Config for t in TASKS.values()), DecodeConfig]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_key_has_its_help_in_the_schema(schema):
    help_ = field_comments(schema)
    missing = [f.name for f in fields(schema) if f.name not in help_ and f.name not in ("name", "kind")]
    assert missing == [], f"{schema.__name__}: add a comment to {missing}"
    text = describe(schema)
    for f in fields(schema):
        assert sum(line.lstrip().startswith(f"{f.name}:") for line in text.splitlines()) >= 1, f.name


def test_lines_read_the_dataclass_line_and_the_block_above():
    text = describe(LoRAConfig)
    assert "  r: int = 8  # rank of every adapted matrix (paper r; Table 9: 8 for RoBERTa, 4 for GPT-2)" in text
    assert "  alpha: float = 16.0  # α; ΔW is scaled by α/r" in text
    assert "engine: str = 'fast'  # fast: prompts in order of length" in describe(DecodeConfig)


def test_cli_groups_names_and_bad_names(capsys):
    assert schema_for("task", "sst2") is TASKS["glue"].Config and schema_for("task", "e2e") is TASKS["e2e"].Config
    assert main(["method", "vera"]) == 0 and "d_initial: float = 0.1" in capsys.readouterr().out
    assert main(["method", "nope"]) == 2
    assert "unknown method 'nope'; valid choices: ['adapter_drop'" in capsys.readouterr().err
    assert main(["task", "wnli"]) == 2 and "unknown task 'wnli'; valid choices: ['cola'" in capsys.readouterr().err
    assert main(["optimizer"]) == 2 and "unknown config group 'optimizer'" in capsys.readouterr().err
