"""Train the tiny policy for the given policy seeds and ship the checkpoints in the package.

    .venv/bin/python scripts/ship_policy.py 0

Each lands in glore_ray/assets/policies/<recipe hash>/ with its greedy accuracy and error
breakdown in glore_policy.json; the policy stage reuses a shipped checkpoint whose recipe hash
matches the run config (world, architecture, schedule, seed) and trains one otherwise.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from glore_ray import policy
from glore_ray.config import load_config
from glore_ray.data import synthetic

if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[1]
    for seed in [int(s) for s in sys.argv[1:]] or [0]:
        cfg = load_config(repo / "configs" / "embedded.yaml",
                          [f"policy.seed={seed}", "policy.shipped=false"])
        train, test = synthetic.generate(cfg.data.synthetic, cfg.data.synthetic.seed)
        dest = policy.ASSETS / policy.recipe_hash(cfg)
        out = policy.run(cfg, train, test, dest.with_name(dest.name + ".new"),
                         log=lambda m: print(m, flush=True))
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
        print(seed, dest, json.loads((dest / "glore_policy.json").read_text())["metrics"])
