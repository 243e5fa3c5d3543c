"""A policy folder on another world's validation questions: greedy accuracy, the oracle's error
kinds and the binding-type share (and pass@k with --pass-k). For a policy trained on an easier
world than it is used on (docs/worlds.md).

    .venv/bin/python scripts/policy_on_world.py glore_ray/assets/policies/c1374c9f39e0526c \
        configs/embedded.yaml data.dependency.min_distractors=4 --pass-k 8
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glore_ray.config import load_config
    from glore_ray.data import worlds
    from glore_ray.data.dependency import validation
    from glore_ray.train import tiny_policy

    ap = argparse.ArgumentParser()
    ap.add_argument("policy")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--pass-k", type=int, default=0)
    args = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.policy).eval()
    tok = AutoTokenizer.from_pretrained(args.policy)
    cfg = load_config(args.config, args.overrides)
    train, test = worlds.generate(cfg.data)
    w = worlds.world_config(cfg.data)
    val = validation(w, w.seed, args.questions, {q.question for q in train + test})
    m = tiny_policy.evaluate_policy(model, tok, val, pass_k=args.pass_k)
    print(json.dumps({k: m[k] for k in ("greedy_accuracy", "binding_share", "error_kinds",
                                         f"pass@{args.pass_k}") if k in m}))


if __name__ == "__main__":
    main()
