"""method/solve: the refine-and-rerank graph over a batch of questions, on plain async callables
standing in for the models (what it asks them for and what it does with the answers). The same
graph behind real Ray Serve and evaluate's actor pools: tests/serve/test_serve_ray.py."""

from __future__ import annotations

import asyncio

from glore_ray.config import load_config
from glore_ray.method.solve import GraphParams, Models, solve

# Each question says which answers its draft and refinements give and how the ORM/SORM score.
RIGHT = "x = 1\n#### 1"


def _models(calls: list):
    async def policy(prompts, spec):
        calls.append(("policy", len(prompts), spec))
        return [["x = 2\ny = 3\n#### 3"] * spec.n for _ in prompts]

    async def global_refiner(prompts, spec):
        calls.append(("global", len(prompts), spec))
        return [["x = 1\n#### 1"] for _ in prompts]

    async def local_refiner(prompts, spec):
        calls.append(("local", len(prompts), spec))
        return [["y = 1\n#### 1"] for _ in prompts]

    async def orm(questions, steps):
        calls.append(("orm", len(questions), None))
        # questions containing "sure" like the draft; refinements ending in 1 score 0.9
        return [[0.9 if ("sure" in q and s[-1] == "#### 3") or s[-1] == "#### 1" else 0.1]
                * len(s) for q, s in zip(questions, steps)]

    async def sorm(questions, steps):
        calls.append(("sorm", len(questions), None))
        return [[0.8, 0.2, 0.2] if "bad" in q else [0.8] * len(s) for q, s in zip(questions, steps)]

    return Models(policy=policy, global_refiner=global_refiner, local_refiner=local_refiner,
                  orm=orm, sorm=sorm)


def _solve(questions, mode, **params):
    calls: list = []
    out = asyncio.run(solve(questions, mode, _models(calls), GraphParams(**params)))
    return out, calls


def test_glore_batch_refines_locates_and_reranks_per_question():
    out, calls = _solve(["q bad", "q fine"], "glore")
    bad, fine = out
    assert [c.name for c in bad.candidates] == ["draft", "global", "local"]
    assert bad.located_step == 1 and bad.candidates[2].text == "x = 2\ny = 1\n#### 1"
    assert [c.name for c in fine.candidates] == ["draft", "global"]  # SORM found nothing to fix
    assert bad.chosen == "global" and bad.answer == "1"  # ties between refinements: the first
    # one call per model for the whole batch: draft, ORM, SORM, global, local, rerank ORM
    assert [(name, n) for name, n, _ in calls] == [
        ("policy", 2), ("orm", 2), ("sorm", 2), ("global", 2), ("local", 1), ("orm", 3)]


def test_gated_mode_refines_only_drafts_the_orm_doubts():
    out, calls = _solve(["q bad sure", "q bad"], "glore", always_refine=False)
    sure, doubted = out
    assert not sure.refined and [c.name for c in sure.candidates] == ["draft"]
    assert doubted.refined and doubted.chosen in ("global", "local")
    assert [(name, n) for name, n, _ in calls][2:] == [("sorm", 1), ("global", 1), ("local", 1),
                                                       ("orm", 2)]


def test_a_batch_gives_what_each_question_gives_alone():
    qs = ["q bad", "q fine", "q bad sure"]
    batch, _ = _solve(qs, "glore")
    alone = [_solve([q], "glore")[0][0] for q in qs]
    for b, a in zip(batch, alone):
        assert [(c.name, c.text, c.orm_score) for c in b.candidates] == \
            [(c.name, c.text, c.orm_score) for c in a.candidates]
        assert (b.chosen, b.located_step, b.sorm_scores) == (a.chosen, a.located_step,
                                                              a.sorm_scores)


def test_draft_and_single_refiner_modes():
    (d,), calls = _solve(["q bad"], "draft")
    assert d.chosen == "draft" and {name for name, _, _ in calls} == {"policy", "orm"}
    (g,), _ = _solve(["q bad"], "global")
    assert g.chosen == "global" and g.sorm_scores is None
    (lo,), _ = _solve(["q fine"], "local")
    assert lo.chosen == "draft"  # nothing located: the draft stands


def test_ties_keep_the_draft():
    (r,), _ = _solve(["q fine sure"], "glore")
    assert r.candidates[0].orm_score == r.candidates[1].orm_score == 0.9 and r.chosen == "draft"


def test_best_of_n_samples_with_the_runs_sampling():
    cfg = load_config(None, ["rollout.temperature=0.7", "rollout.top_p=0.9"])
    params = GraphParams.from_config(cfg)
    assert (params.sample_temperature, params.sample_top_p) == (0.7, 0.9)
    calls: list = []
    out = asyncio.run(solve(["x are 1.", "y are 2."], "best_of_n", _models(calls), params,
                            best_of=3))
    spec = calls[0][2]
    assert (calls[0][1], spec.n, spec.temperature, spec.top_p) == (2, 3, 0.7, 0.9)
    assert [len(r.candidates) for r in out] == [3, 3] and calls[1][:2] == ("orm", 6)
