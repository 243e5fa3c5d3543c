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
    """The shipped tiny Llama policy for seed 0 (an HF folder: config, weights, tokenizer)."""
    from glore_ray.config import load_config
    from glore_ray.policy import ASSETS, recipe_hash

    path = ASSETS / recipe_hash(load_config(REPO / "configs" / "smoke.yaml"))
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
