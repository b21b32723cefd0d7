"""Hub datasets without the hub (lora_research.tasks.hub_data): GLUE and E2E fail with an error that names the
local-files setting, instead of datasets' ConnectionError alone."""
from __future__ import annotations

import datasets
import pytest

from lora_research.tasks import e2e
from lora_research.tasks.glue_files import load_glue

CASES = {
    "glue": (lambda: load_glue("sst2"),
             r"could not load nyu-mll/glue/sst2 from the Hugging Face hub \(ConnectionError: Couldn't reach.*"
             r"set GLUE_DIR \(or task.data_dir\)"),
    "e2e": (lambda: e2e.load_pairs("dev", source="hub"),
            r"could not load tuetschek/e2e_nlg \(dev\) from the Hugging Face hub \(ConnectionError: Couldn't reach.*"
            r"task.source=csv with E2E_DIR"),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_unreachable_hub_is_a_clear_error_naming_the_local_files(task, monkeypatch):
    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the dataset on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    load, message = CASES[task]
    with pytest.raises(ConnectionError, match=message):
        load()
