"""Benchmark P2: budgeted vs exhaustive SORM labelling on the same samples, in one run.

    .venv/bin/python benchmarks/labelling.py [--config configs/embedded.yaml] [--questions 32]
        [--k-samples 4] [--out benchmarks/results/labelling.json] [key=value ...]

One real engine (``rollout.engine``: vLLM when importable, else HF) inside the rollout stage's own
actor class (``glore_ray.stages.rollout.RolloutActor``, used in-process: the same code the Ray Data
pool runs, without the pool): it writes ``k_samples`` samples per question, then labels the same
samples twice, batch by batch as the stage does — every prefix × ``k_rollouts`` (exhaustive) and
the binary search of ``glore_ray.method.budgeted`` (budgeted) — and compares rollouts per labelled
sample and step label agreement (after the same cleaning), plus both label sets against the
synthetic oracle.
Goal: >= 3x fewer rollouts at >= 97% agreement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _agreement(a: list, b: list) -> dict:
    ka = {(r.qid, r.sample_id, r.step_idx): r.sorm_hard for r in a}
    kb = {(r.qid, r.sample_id, r.step_idx): r.sorm_hard for r in b}
    assert ka.keys() == kb.keys()
    same = sum(ka[k] == kb[k] for k in ka)
    wrong = {(r.qid, r.sample_id) for r in a if r.orm_label == 0.0}
    on_wrong = [k for k in ka if (k[0], k[1]) in wrong]
    return {"steps": len(ka), "agreement": round(same / len(ka), 4),
            "agreement_on_wrong_samples": round(sum(ka[k] == kb[k] for k in on_wrong)
                                                / max(1, len(on_wrong)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "embedded.yaml"))
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--k-samples", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "labelling.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from glore_ray.config import LabelConfig, load_config
    from glore_ray.method import budgeted
    from glore_ray.prompts import policy_prompt
    from glore_ray.records import Rollout, Sample
    from glore_ray.stages.data import load
    from glore_ray.stages.generation import request_seed
    from glore_ray.stages.label import make_labels
    from glore_ray.stages.rollout import RolloutActor
    from glore_ray.stages.sample import grade_sample
    from glore_ray.train.tiny_policy import ASSETS, recipe_hash

    cfg = load_config(args.config, args.overrides)
    model = cfg.policy.model or str(ASSETS / recipe_hash(cfg))
    if not (Path(model) / "config.json").exists() and cfg.policy.model is None:
        raise SystemExit(f"no shipped policy at {model}: run `glore policy {args.config}` first")
    train, _ = load(cfg)
    qs = train[: args.questions]
    r = cfg.rollout
    print(f"P2: {len(qs)} questions x {args.k_samples} samples, K={r.k_rollouts}, "
          f"chunk={r.budget_chunk}, engine={r.engine}", flush=True)
    t0 = time.perf_counter()
    actor = RolloutActor(r.model_dump(mode="json"), model, cfg.seed,
                         questions={q.qid: (q.question, q.answer, q.oracle) for q in qs})
    engine_start = time.perf_counter() - t0
    print(f"engine {actor.engine.name} started in {engine_start:.1f}s", flush=True)

    outs = actor._generate([policy_prompt(q.question) for q in qs], args.k_samples,
                           [request_seed(cfg.seed, "sample", q.qid) for q in qs])
    rows = [grade_sample({"qid": q.qid, "answer": q.answer, "oracle": q.oracle}, i, c.text,
                         c.n_tokens) for q, comps in zip(qs, outs) for i, c in enumerate(comps)]
    samples = [Sample(**{k: v for k, v in s.items() if k != "n_tokens"}) for s in rows]
    batches = [rows[i: i + r.batch_size] for i in range(0, len(rows), r.batch_size)]

    results, labels = {}, {}
    qmap = {q.qid: q for q in qs}
    for mode, fn in (("exhaustive", actor._exhaustive), ("budgeted", actor._budgeted)):
        t = time.perf_counter()
        rolled = [x for b in batches for x in fn(b)]
        secs = time.perf_counter() - t
        rolls = [Rollout(**{k: v for k, v in x.items() if k != "n_tokens"}) for x in rolled]
        labels[mode] = {}
        for name, lc in (("default", cfg.label),
                         ("monotone_only", LabelConfig(intermediate_check=False)),
                         ("raw", LabelConfig(monotone=False, intermediate_check=False))):
            labels[mode][name], quality, _ = make_labels(qmap, samples, rolls, lc,
                                                         log=lambda m: None)
            if name == "default":
                oracle = quality
        results[mode] = {"rollouts": len(rolls),
                         "rollouts_per_labelled_sample": round(len(rolls) / len(samples), 3),
                         "generate_seconds": round(secs, 2), "oracle_quality": oracle}
        print(f"{mode}: {len(rolls)} rollouts ({len(rolls) / len(samples):.2f} per sample) "
              f"in {secs:.1f}s", flush=True)

    ratio = results["exhaustive"]["rollouts"] / max(1, results["budgeted"]["rollouts"])
    agreement = {name: _agreement(labels["exhaustive"][name], labels["budgeted"][name])
                 for name in labels["exhaustive"]}
    out = {
        "benchmark": "P2 budgeted vs exhaustive labelling",
        "config": args.config, "overrides": args.overrides, "engine": actor.engine.name,
        "engine_start_s": round(engine_start, 1), "machine": platform.machine(),
        "cpu_note": "2 shared cores (other jobs running): timings are indicative only",
        "n_questions": len(qs), "n_samples": len(samples),
        "sample_accuracy": round(sum(s.correct for s in samples) / len(samples), 4),
        "k_rollouts": r.k_rollouts, "budget_chunk": r.budget_chunk, "split": budgeted.SPLIT,
        "exhaustive": results["exhaustive"], "budgeted": results["budgeted"],
        "rollout_reduction": round(ratio, 2), "step_label_agreement": agreement,
        "goal": ">= 3x fewer rollouts at >= 97% agreement (default cleaning)",
        "goal_met": bool(ratio >= 3 and agreement["default"]["agreement"] >= 0.97),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("rollout_reduction", "step_label_agreement",
                                          "goal_met")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
