"""Shared fixtures: where the real data lives, composing the real Hydra configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA = Path(os.environ.get("LORA_RESEARCH_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import lora_research.config  # noqa: E402,F401  registers the schema/ bases that conf/*/*.yaml build on


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    d = DATA / "glue"
    if not d.is_dir():
        pytest.skip(f"real GLUE data not found at {d} (set LORA_RESEARCH_DATA)")
    return d


@pytest.fixture(autouse=True)
def _isolated_feature_cache(tmp_path_factory, monkeypatch):
    """Tokenised-feature cache per test session, never the user's ~/.cache."""
    monkeypatch.setenv("LORA_RESEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def compose(overrides: list[str]):
    """Compose conf/ exactly as ``python -m lora_research.train`` would, with overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=False)


@pytest.fixture
def one_torch_thread():
    """Small LAPACK calls: one thread avoids OpenMP oversubscription on shared CPUs (10-100x slowdowns)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
