"""Shared fixtures: the tiny policy checkpoint and one real local Ray cluster per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions"))


@pytest.fixture(scope="session")
def smoke_config_path() -> Path:
    return REPO / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def tiny_policy() -> Path:
    """The smoke config's shipped tiny Llama policy (an HF folder: config, weights, tokenizer)."""
    from glore_ray.config import load_config
    from glore_ray.hub import resolve_model
    from glore_ray.train.tiny_policy import ASSETS, recipe_hash

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    path = Path(resolve_model(cfg.policy.model)) if cfg.policy.model else (
        ASSETS / recipe_hash(cfg))
    assert (path / "config.json").exists(), f"shipped policy missing at {path}"
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by every test that asks for it."""
    import ray

    from glore_ray.ray_env import init_ray

    init_ray()
    yield ray
    ray.shutdown()
