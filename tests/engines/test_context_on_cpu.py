"""The engines' context: the model's own, capped; what fits is decided before submitting."""

from __future__ import annotations

import pytest

from glore_ray.engines.context import fitting, model_context, resolve_max_model_len
from glore_ray.engines.hf import HFEngine


def test_context_comes_from_the_model_and_is_capped(tiny_policy):
    assert model_context(tiny_policy) == 512
    assert resolve_max_model_len(tiny_policy, None, cap=4096) == 512
    assert resolve_max_model_len(tiny_policy, None, cap=256) == 256
    assert resolve_max_model_len(tiny_policy, 300, cap=256) == 300  # set: taken as is
    with pytest.raises(ValueError, match="longer than the context"):
        resolve_max_model_len(tiny_policy, 1024, cap=4096)


def test_fitting_counts_the_engines_own_tokens(tiny_policy):
    engine = HFEngine(tiny_policy, max_model_len=40)
    short, long_ = "Question: x\nAnswer:\n", "Question: " + "x " * 60 + "\nAnswer:\n"
    n_short = engine.count_tokens([short])[0]
    assert fitting(engine, [short, long_], max_tokens=40 - n_short) == [True, False]
    assert fitting(engine, [short], max_tokens=41 - n_short) == [False]
