"""The serving graph of a finished run on *validation* questions: what evaluate's table says on the
test split, measured where choices may be made (never tune on the test split).

    .venv/bin/python benchmarks/graph_on_validation.py runs/embedded [--questions 300]
        [--out benchmarks/results/graph_on_validation.json]

The run's five trained folders on actor pools (``evaluate.solve_offline``, the graph Serve runs),
always refining as in the paper's main table, on ``--questions`` held-out questions of the run's
dependency world (``dependency.validation``: the train distribution, disjoint from the train and
test splits), graded by the world's grader (``worlds.grade``). Prints and writes accuracy of the
greedy draft, global only, local only, global + local + ORM rerank, and the oracle-rerank ceiling,
with fixes / breaks of the rerank, and (as evaluate's "ORM / SORM step accuracy vs oracle" row)
both reward models' step accuracy and AUC against the oracle on the greedy drafts and the
best-of-n samples. A few minutes on 2 cores for 300 questions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def table(rows: list[dict]) -> dict:
    """Accuracy per strategy from per-question ``{draft, global, local: right?}`` rows."""
    n = len(rows)
    pick = {"greedy": "draft", "global": "global", "local": "local", "glore": "chosen"}
    out = {k: sum(r[v] for r in rows) / n for k, v in pick.items()}
    out["ceiling"] = sum(r["draft"] or r["global"] or r["local"] for r in rows) / n
    wrong = [r for r in rows if not r["draft"]]
    right = [r for r in rows if r["draft"]]
    out["glore_fixes_wrong_drafts"] = sum(r["chosen"] for r in wrong) / max(1, len(wrong))
    out["glore_breaks_right_drafts"] = sum(not r["chosen"] for r in right) / max(1, len(right))
    out["glore_minus_greedy"] = out["glore"] - out["greedy"]
    return {k: round(v, 4) for k, v in out.items()} | {"n_questions": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run folder (train done)")
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import asyncio

    from glore_ray.config import load_config
    from glore_ray.data import dependency
    from glore_ray.data.worlds import grade, oracle_step_labels
    from glore_ray.method.solve import GraphParams, solve
    from glore_ray.pipeline import RunPaths
    from glore_ray.ray_env import init_ray
    from glore_ray.stages.data import read
    from glore_ray.stages.evaluate import Backends
    from glore_ray.train.reward import step_metrics

    cfg = load_config(args.run / "config.yaml", ["refine.always_refine=true"])  # as evaluate
    if cfg.data.source != "dependency":
        raise SystemExit(f"{args.run}: validation questions exist for the dependency world only")
    paths = RunPaths(cfg)
    seen = {q.question for split in ("train", "test") for q in read(paths, split)}
    w = cfg.data.dependency
    val = dependency.validation(w, w.seed, args.questions, seen)
    qs, params = [q.question for q in val], GraphParams.from_config(cfg)
    init_ray()
    with Backends(cfg, paths) as b:  # the graph evaluate and Serve run (solve_offline's)
        results = asyncio.run(solve(qs, "glore", b.models, params))
        sampled = asyncio.run(solve(qs, "best_of_n", b.models, params))
        # evaluate's pool: each greedy draft and the best-of-n samples, the ORM's scores from
        # the graph, the SORM's scored here
        pool = [(r.candidate("draft"), q) for r, q in zip(results, val)] + \
            [(c, q) for r, q in zip(sampled, val) for c in r.candidates]
        sorm = b.sorm.score([q.question for _, q in pool], [c.steps for c, _ in pool])
    oracle = [oracle_step_labels("\n".join(c.steps), q.oracle) for c, q in pool]
    rewards = {"orm": step_metrics([c.orm_steps for c, _ in pool], oracle),
               "sorm": step_metrics(sorm, oracle)}
    rewards["sorm_minus_orm_step_accuracy"] = round(
        rewards["sorm"]["step_accuracy"] - rewards["orm"]["step_accuracy"], 4)
    rows = []
    for q, r in zip(val, results):
        ok = {c.name: grade(c.text, q.answer, q.oracle) for c in r.candidates}
        rows.append({"draft": ok["draft"], "global": ok.get("global", ok["draft"]),
                     "local": ok.get("local", ok["draft"]), "chosen": ok[r.chosen]})
    report = {"run": str(args.run), "strict": w.strict, **table(rows),
              "reward_vs_oracle": rewards}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
