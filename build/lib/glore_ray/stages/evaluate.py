"""Stage ``evaluate``: the paper's tables on held-out test questions.

1. Reward models — ORM vs SORM step-level accuracy / AUC against the oracle's step labels
   (synthetic world) and against rollout labels (the label stage's held-out SORM split), and
   final-answer accuracy (the last step's probability > 0.5 vs the solution's correctness), and
   within-question pairwise accuracy (right above wrong among one question's solutions: what a
   reranker needs).
2. Refinement — accuracy of: greedy draft; best-of-N policy samples reranked by the ORM; global
   only; local only (SORM-located); global + local + ORM rerank over {draft, global, local}, always
   (the paper's main table) and gated by the ORM's *when* (``refine.when_threshold``); *oracle-when*
   variants that refine only the drafts that are really wrong; and the *oracle-rerank* ceiling
   (right when any of the three candidates is). For each: the share of wrong drafts it fixes and
   of right drafts it breaks.

Refinement is ``method.solve``, the graph Serve runs, over every test question at once. Its
models run on Ray actors: generation on the sampling stages' Ray Data pools (``generation``; vLLM
when available, ``rollout.num_cpus`` / ``num_gpus`` per actor), ORM/SORM scoring on a
``ScorerPool`` per reward model sized like the service's reward replicas; the driver only joins
the small result lists. Reads ``data/test.parquet``, the policy, the four trained models and the
label stage's held-out SORM split; writes ``evaluate/``: ``report.md``, ``metrics.json`` and PNG
plots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

from glore_ray.config import RunConfig
from glore_ray.data import split_steps
from glore_ray.data.worlds import first_wrong_step, grade, oracle_step_labels
from glore_ray.engines.base import SamplingSpec
from glore_ray.method.decide import orm_score, should_refine
from glore_ray.method.solve import GraphParams, Models, SolveResult, solve
from glore_ray.records import Question, write_json
from glore_ray.stages.generation import SAMPLING_READS

# The graph as Serve runs it (`refine`: thresholds, best-of-n, lengths, with the sampler's
# temperature/top_p and rollout.max_tokens as the default length); `serve` is serving only.
READS = ("evaluate", "refine", "rollout.max_tokens") + SAMPLING_READS
WHAT = "the paper's tables"
STRATEGIES = ["greedy", "best_of_n", "global", "local", "glore", "glore_when", "global_oracle_when",
              "local_oracle_when", "glore_oracle_when", "glore_oracle_rerank"]


def within_question_pairwise(final: list[float], ok: list[bool], groups: list[int]) -> dict:
    """How often a reward model scores a right solution above a wrong one *of the same question*
    (ties count half): the accuracy of reranking, which AUC over all solutions hides when the
    model mostly tells easy questions from hard ones."""
    by: dict[int, list[tuple[float, bool]]] = {}
    for f, o, g in zip(final, ok, groups):
        by.setdefault(g, []).append((f, o))
    wins = pairs = 0.0
    for items in by.values():
        for fr, okr in items:
            for fw, okw in items:
                if okr and not okw:
                    pairs += 1
                    wins += 1.0 if fr > fw else 0.5 if fr == fw else 0.0
    return {"pairwise_accuracy": wins / pairs if pairs else float("nan"), "n_pairs": int(pairs)}


# ------------------------------------------------------------------ the models, on actor pools

def _generator(cfg: RunConfig, model_path: str, log):
    """A batch generator for ``solve``: one Ray Data actor pool per call
    (``generation.generate_texts``, the rollout section's pool settings). Blocking on purpose:
    global and local then run one after the other, each with the whole pool."""
    from glore_ray.stages.generation import generate_texts

    async def call(prompts: list[str], spec: SamplingSpec) -> list[list[str]]:
        t0 = time.time()
        out = generate_texts(cfg, model_path, prompts, spec, log)
        log(f"[evaluate] generated {len(prompts)}×{spec.n} with {Path(model_path).name} "
            f"in {time.time() - t0:.0f}s")
        return out
    return call


class ScorerPool:
    """A reward model on Ray actors, sized like the service's reward replicas
    (``serve.reward_replicas`` actors of ``serve.replica_cpus`` / ``replica_gpus``: GPUs on a
    cluster), started once for the stage. ``score`` sends chunks of 64 solutions to the actors
    and joins the small result lists in order."""

    CHUNK = 64

    def __init__(self, cfg: RunConfig, model_path: str):
        import ray

        s = cfg.serve
        actor = ray.remote(_ScoreActor).options(num_cpus=s.replica_cpus, num_gpus=s.replica_gpus)
        self.actors = [actor.remote(model_path, max(1, round(s.replica_cpus)),
                                    cfg.policy.chat_template, cfg.evaluate.scorer)
                       for _ in range(s.reward_replicas)]

    def score(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        import ray

        chunks = [(questions[s : s + self.CHUNK], steps[s : s + self.CHUNK])
                  for s in range(0, len(questions), self.CHUNK)]
        refs = [self.actors[i % len(self.actors)].score.remote(*c) for i, c in enumerate(chunks)]
        return [p for part in ray.get(refs) for p in part]

    def fn(self):
        async def call(questions: list[str], steps: list[list[str]]) -> list[list[float]]:
            return self.score(questions, steps)
        return call

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


class _ScoreActor:
    def __init__(self, model_path: str, threads: int, chat: bool = False, which: str = "hf"):
        import torch

        from glore_ray.train.vllm_scorer import make_scorer

        torch.set_num_threads(threads)  # first: vLLM's CPU worker makes it a no-op afterwards
        self.scorer = make_scorer(model_path, which, chat=chat)

    def score(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        return self.scorer.score(questions, steps)


# ------------------------------------------------------------------ reward-model metrics

def final_metrics(probs: list[list[float]], correct: list[bool]) -> dict:
    pred = [orm_score(p) >= 0.5 for p in probs]
    return {"final_answer_accuracy": sum(a == b for a, b in zip(pred, correct)) / max(1, len(pred))}


# ------------------------------------------------------------------ the stage

def run(cfg: RunConfig, paths, log=print) -> dict:
    from glore_ray.ray_env import init_ray
    from glore_ray.stages.data import read

    t_stage = time.time()
    questions: list[Question] = read(paths, "test")[: cfg.evaluate.n_questions]
    if not questions:
        raise ValueError("evaluate: no test questions")
    init_ray()
    with Backends(cfg, paths, log) as backends:
        return _evaluate(cfg, paths, log, questions, backends, t_stage)


class Backends:
    """The five models of ``solve`` for a run's trained folders, on actor pools; a context
    manager that stops the scorer actors on exit (``with Backends(cfg, paths) as b: b.models``)."""

    def __init__(self, cfg: RunConfig, paths, log=print):
        self.orm = ScorerPool(cfg, str(paths.model("orm")))
        self.sorm = ScorerPool(cfg, str(paths.model("sorm")))
        self.models = Models(policy=_generator(cfg, paths.policy_model, log),
                             global_refiner=_generator(cfg, str(paths.model("global")), log),
                             local_refiner=_generator(cfg, str(paths.model("local")), log),
                             orm=self.orm.fn(), sorm=self.sorm.fn())

    def __enter__(self) -> "Backends":
        return self

    def __exit__(self, *_) -> None:
        self.orm.close()
        self.sorm.close()


def solve_offline(cfg: RunConfig, paths, questions: list[str], mode: str,
                  log=print) -> list[SolveResult]:
    """``method.solve`` on a run's trained models with the run's graph settings, as Serve runs it
    (same params), here on actor pools: what ``glore serve`` answers, without HTTP."""
    from glore_ray.ray_env import init_ray

    init_ray()
    with Backends(cfg, paths, log) as b:
        return asyncio.run(solve(questions, mode, b.models, GraphParams.from_config(cfg)))


def _evaluate(cfg: RunConfig, paths, log, questions: list[Question], backends: Backends,
              t_stage: float) -> dict:
    from glore_ray.train.reward import step_metrics  # imports torch: only when the stage runs

    qs = [q.question for q in questions]
    has_oracle = all(q.oracle for q in questions)
    params, n = GraphParams.from_config(cfg), len(questions)
    k = params.best_of
    models, orm, sorm = backends.models, backends.orm, backends.sorm
    # The serving graph on every test question at once: refine always (the paper's main table;
    # the ORM-gated rows below apply *when* to the same candidates), then best-of-n.
    solved = asyncio.run(solve(qs, "glore", models,
                               dataclasses.replace(params, always_refine=True)))
    sampled = asyncio.run(solve(qs, "best_of_n", models, params))
    timings = {f"glore_{s}": round(v / 1000, 1) for s, v in solved[0].timings_ms.items()}
    timings.update({f"best_of_n_{s}": round(v / 1000, 1)
                    for s, v in sampled[0].timings_ms.items()})

    draft_c = [r.candidate("draft") for r in solved]
    drafts = [c.text for c in draft_c]
    globals_ = [r.candidate("global").text for r in solved]
    locals_ = [(r.candidate("local") or r.candidate("draft")).text for r in solved]
    draft_steps = [c.steps for c in draft_c]
    sorm_draft = [r.sorm_scores or [] for r in solved]
    located = [r.located_step for r in solved]
    samples = [[c.text for c in r.candidates] for r in sampled]

    right = lambda sols: [grade(s, q.answer, q.oracle) for s, q in zip(sols, questions)]  # noqa: E731
    d_ok, g_ok, l_ok = right(drafts), right(globals_), right(locals_)
    glore_choice = [r.candidate(r.chosen).text for r in solved]
    # *When* from the ORM as in serving's gated mode; the oracle-rerank ceiling is right whenever
    # any of {draft, global, local} is.
    refine = [should_refine(c.orm_score, params.when_threshold) for c in draft_c]
    chosen = {
        "greedy": drafts, "best_of_n": [r.candidate(r.chosen).text for r in sampled],
        "global": globals_, "local": locals_, "glore": glore_choice,
        "glore_when": [c if r else d for d, c, r in zip(drafts, glore_choice, refine)],
        "global_oracle_when": [g if not ok else d for d, g, ok in zip(drafts, globals_, d_ok)],
        "local_oracle_when": [lo if not ok else d for d, lo, ok in zip(drafts, locals_, d_ok)],
        "glore_oracle_when": [c if not ok else d for d, c, ok in zip(drafts, glore_choice, d_ok)],
        "glore_oracle_rerank": [
            next((c for c, ok in zip(cs, oks) if ok), cs[0])
            for cs, oks in zip(zip(drafts, globals_, locals_), zip(d_ok, g_ok, l_ok))],
    }
    assert list(chosen) == STRATEGIES  # the report's row order
    sample_ok = [[grade(s, q.answer, q.oracle) for s in row] for row, q in zip(samples, questions)]
    sampling = {"sample_accuracy": sum(map(sum, sample_ok)) / max(1, n * k),
                f"pass_at_{k}": sum(any(r) for r in sample_ok) / n}
    refinement = {}
    n_wrong = max(1, n - sum(d_ok))
    for name, sols in chosen.items():
        ok = right(sols)
        refinement[name] = {
            "accuracy": sum(ok) / n,
            "fixes_wrong_drafts": sum(o and not d for o, d in zip(ok, d_ok)) / n_wrong,
            "breaks_right_drafts": sum(d and not o for o, d in zip(ok, d_ok)) / max(1, sum(d_ok)),
        }
    orm_d = [c.orm_steps for c in draft_c]
    orm_s = [c.orm_steps for r in sampled for c in r.candidates]

    # Reward models against the oracle (synthetic world): drafts and best-of-N samples.
    reward: dict = {}
    pool_sols = drafts + [s for row in samples for s in row]
    pool_q = questions + [q for q in questions for _ in range(k)]
    pool_steps = [split_steps(s) for s in pool_sols]
    orm_pool = orm_d + orm_s
    t0 = time.time()
    sorm_pool = sorm.score([q.question for q in pool_q], pool_steps)
    timings["sorm_pool_scores"] = round(time.time() - t0, 1)
    pool_ok = [grade(s, q.answer, q.oracle) for s, q in zip(pool_sols, pool_q)]
    if has_oracle:
        oracle = [oracle_step_labels("\n".join(st), q.oracle) for st, q in zip(pool_steps, pool_q)]
        reward["vs_oracle"] = {"orm": step_metrics(orm_pool, oracle),
                               "sorm": step_metrics(sorm_pool, oracle)}
    reward["final_answer"] = {"orm": final_metrics(orm_pool, pool_ok),
                              "sorm": final_metrics(sorm_pool, pool_ok)}
    groups = list(range(n)) + [i for i in range(n) for _ in range(k)]
    reward["within_question"] = {
        m: within_question_pairwise([orm_score(p) for p in probs], pool_ok, groups)
        for m, probs in (("orm", orm_pool), ("sorm", sorm_pool))}
    reward["vs_rollout_labels"] = _vs_rollout_labels(paths, orm, sorm)

    # How the greedy drafts go wrong, by the oracle's first wrong line (synthetic worlds only).
    draft_errors = dict(Counter(first_wrong_step(d, q.oracle)[1]
                                for d, q, ok in zip(drafts, questions, d_ok) if not ok)) \
        if has_oracle else {}
    metrics = {
        "n_questions": n, "has_oracle": has_oracle, "refinement": refinement,
        "draft_error_kinds": dict(sorted(draft_errors.items(), key=lambda kv: -kv[1])),
        "best_of_n_samples": sampling,
        "reward_models": reward,
        "located_share": sum(b is not None for b in located) / n,
        "thresholds": {"when": params.when_threshold, "where": params.where_threshold},
        "refined_share_when": sum(refine) / n,
        "evaluate_timings_s": timings, "stage_seconds": _stage_seconds(paths),
    }
    examples = [{"question": qs[i], "draft_steps": draft_steps[i], "sorm": sorm_draft[i],
                 "orm": orm_d[i], "located": located[i], "draft_correct": d_ok[i],
                 "oracle": (oracle_step_labels(drafts[i], questions[i].oracle) if has_oracle
                            else None)}
                for i in range(n)]
    out = paths.report
    out.mkdir(parents=True, exist_ok=True)
    from glore_ray.stages import report

    plots = report.make_plots(out, metrics, examples, orm_pool, sorm_pool,
                              oracle if has_oracle else None, cfg.evaluate.n_plot_examples)
    metrics["plots"] = [p.name for p in plots]
    metrics["stage_seconds"]["evaluate"] = round(time.time() - t_stage, 1)
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(report.render(cfg, metrics))
    log(report.summary_table(metrics))
    return {"accuracy": {k: v["accuracy"] for k, v in refinement.items()},
            "report": str(out / "report.md")}


def _vs_rollout_labels(paths, orm, sorm) -> dict:
    """ORM/SORM on the label stage's held-out SORM split, against its (cleaned) rollout labels."""
    import pandas as pd

    from glore_ray.train.reward import step_metrics

    f = paths.training_set("sorm") / "eval.parquet"
    if not f.exists():
        return {}
    df = pd.read_parquet(f)
    if df.empty:
        return {}
    qs, steps = df["question"].tolist(), [list(s) for s in df["steps"]]
    labels = [list(x) for x in df["labels"]]
    return {"orm": step_metrics(orm.score(qs, steps), labels),
            "sorm": step_metrics(sorm.score(qs, steps), labels), "n_solutions": len(df)}


def _stage_seconds(paths) -> dict:
    out = {}
    for name in paths.stage_names:
        f = paths.stage(name) / "_DONE.json"
        if f.exists():
            out[name] = json.loads(f.read_text()).get("seconds")
    return out


__all__ = ["run", "within_question_pairwise", "ScorerPool", "STRATEGIES"]
