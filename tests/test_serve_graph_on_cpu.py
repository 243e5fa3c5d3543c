"""The Ray-free inference graph (serve/graph.py) over plain async callables: what it asks the
models for. (The same graph behind real Ray Serve is tested in test_serve_ray.py.)"""

from __future__ import annotations

import asyncio

from glore_ray.config import load_config
from glore_ray.serve.app import ingress_settings
from glore_ray.serve.graph import GraphParams, Models, solve


def _models(seen: list):
    async def policy(prompt, spec):
        seen.append(spec)
        return ["x = 1\n#### 1"] * spec.n

    async def score(question, steps):
        return [[0.5] * len(s) for s in steps]

    return Models(policy=policy, global_refiner=policy, local_refiner=policy, orm=score, sorm=score)


def test_best_of_n_samples_with_the_runs_sampling():
    cfg = load_config(None, ["rollout.temperature=0.7", "rollout.top_p=0.9"])
    s = ingress_settings(cfg.serve, cfg.rollout)
    params = GraphParams(best_of=3, sample_temperature=s["sample_temperature"],
                         sample_top_p=s["sample_top_p"])
    seen: list = []
    out = asyncio.run(solve("x are 1. How many x are there?", "best_of_n", _models(seen), params))
    spec = seen[-1]
    assert (spec.n, spec.temperature, spec.top_p) == (3, 0.7, 0.9)
    assert out.answer == "1"
