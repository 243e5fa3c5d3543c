"""One source for the refine-and-rerank graph's parameters: what Serve is handed and what the
evaluate stage runs come from the ``refine`` section and the run's seed, so Serve's best-of-n
samples with the same seed and count as evaluate's table. Captured at the call sites (Serve's
``build_app``, evaluate's ``solve`` calls); no Ray started."""

from __future__ import annotations

import pytest

import glore_ray.serve.app as serve_app
import glore_ray.stages.evaluate as evaluate
from glore_ray.config import ConfigError, load_config
from glore_ray.records import Question

OVERRIDES = ["seed=7", "refine.best_of=5", "refine.where_threshold=0.3", "rollout.temperature=0.7"]


class _Stop(Exception):
    pass


def _serve_params(cfg, monkeypatch):
    seen = {}

    def capture(settings, params):
        seen["params"] = params
        raise _Stop

    monkeypatch.setattr(serve_app, "build_ingress", capture)
    paths = {k: "/nonexistent" for k in serve_app.MODEL_KEYS}
    with pytest.raises(_Stop):
        serve_app.build_app(cfg, paths)
    return seen["params"]


def _evaluate_params(cfg, monkeypatch):
    seen = {}

    async def fake_solve(questions, mode, models, params, **kw):
        seen[mode] = params
        if mode == "best_of_n":
            raise _Stop
        return []

    monkeypatch.setattr(evaluate, "solve", fake_solve)

    class _Backends:
        models = orm = sorm = None

    q = Question(qid="q0", question="a = 1 . what is a ?", answer="1", gold_solution="")
    with pytest.raises(_Stop):
        evaluate._evaluate(cfg, None, print, [q], _Backends(), 0.0)
    return seen


def test_serve_and_evaluate_sample_best_of_n_with_the_same_seed_and_count(monkeypatch):
    cfg = load_config("configs/embedded.yaml", OVERRIDES)
    served = _serve_params(cfg, monkeypatch)
    evaluated = _evaluate_params(cfg, monkeypatch)
    assert evaluated["best_of_n"] == served
    assert (served.seed, served.best_of, served.sample_temperature) == (7, 5, 0.7)
    assert served.where_threshold == evaluated["glore"].where_threshold == 0.3
    # the paper's main table refines every draft; the rest of the graph is Serve's
    assert evaluated["glore"].always_refine


def test_max_new_tokens_defaults_to_the_length_the_reward_models_learned_on():
    cfg = load_config("configs/embedded.yaml", ["rollout.max_tokens=150"])
    assert evaluate.GraphParams.from_config(cfg).max_tokens == 150
    cfg = load_config("configs/embedded.yaml", ["refine.max_new_tokens=64"])
    assert evaluate.GraphParams.from_config(cfg).max_tokens == 64


@pytest.mark.parametrize("old,new", [("serve.best_of=4", "refine.best_of"),
                                     ("evaluate.best_of=4", "refine.best_of"),
                                     ("serve.when_threshold=0.2", "refine.when_threshold"),
                                     ("serve.max_new_tokens=64", "refine.max_new_tokens")])
def test_a_moved_key_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=f"moved to '{new}'"):
        load_config("configs/embedded.yaml", [old])
