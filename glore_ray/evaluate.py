"""Stage ``evaluate``: the paper's tables on held-out test questions.

1. Reward models — ORM vs SORM step-level accuracy / AUC against the oracle's step labels
   (synthetic world) and against rollout labels (the label stage's held-out SORM split), and
   final-answer accuracy (the last step's probability > 0.5 vs the solution's correctness), and
   within-question pairwise accuracy (right above wrong among one question's solutions: what a
   reranker needs).
2. Refinement — accuracy of: greedy draft; best-of-N policy samples reranked by the ORM; global
   only; local only (SORM-located); global + local + ORM rerank over {draft, global, local}, always
   (the paper's main table) and gated by the ORM's *when* (``serve.when_threshold``); *oracle-when*
   variants that refine only the drafts that are really wrong; and the *oracle-rerank* ceiling
   (right when any of the three candidates is). For each: the share of wrong drafts it fixes and
   of right drafts it breaks.

Generation runs through the same engines as the rollout stage (vLLM when available), scoring
through the trained reward models. Writes ``report.md``, ``metrics.json`` and PNG plots.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from glore_ray.config import RunConfig
from glore_ray.data import extract_answer, is_correct, split_steps
from glore_ray.data.worlds import first_wrong_step, oracle_step_labels
from glore_ray.engines.base import SamplingSpec
from glore_ray.prompts import global_prompt, local_prompt, policy_prompt, prefix_text
from glore_ray.records import Question, write_json
# the same *when* / *where* / rerank decisions as serving
from glore_ray.serve.graph import locate, orm_score as _final, should_refine
from glore_ray.train.reward import step_metrics

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


def rerank(candidates: list[str], orm_final: list[float]) -> int:
    """Index of the candidate the ORM likes best (ties go to the earliest, i.e. the draft)."""
    return max(range(len(candidates)), key=lambda i: (orm_final[i], -i))


# ------------------------------------------------------------------ generation and scoring

def _generate(cfg: RunConfig, model_path: str, prompts: list[str], spec: SamplingSpec,
              log) -> list[list[str]]:
    """Completions for the prompts with one engine for the whole batch (started once)."""
    from glore_ray.rollout import generate_texts

    t0 = time.time()
    out = generate_texts(cfg, model_path, prompts, spec)
    log(f"[evaluate] generated {len(prompts)}×{spec.n} with {Path(model_path).name} "
        f"in {time.time() - t0:.0f}s")
    return out


def _scores(scorer, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
    out: list[list[float]] = []
    for s in range(0, len(questions), 64):
        out += scorer.score(questions[s : s + 64], steps[s : s + 64])
    return out


# ------------------------------------------------------------------ reward-model metrics

def final_metrics(probs: list[list[float]], correct: list[bool]) -> dict:
    pred = [_final(p) >= 0.5 for p in probs]
    return {"final_answer_accuracy": sum(a == b for a, b in zip(pred, correct)) / max(1, len(pred))}


# ------------------------------------------------------------------ the stage

def run(cfg: RunConfig, paths, log=print) -> dict:
    from glore_ray.data.questions import read
    from glore_ray.policy import policy_path
    from glore_ray.train.reward import RewardScorer

    t_stage = time.time()
    questions: list[Question] = read(paths, "test")[: cfg.evaluate.n_questions]
    if not questions:
        raise ValueError("evaluate: no test questions")
    qs = [q.question for q in questions]
    has_oracle = all(q.oracle for q in questions)
    sv = cfg.serve
    timings: dict[str, float] = {}

    def timed(name, fn, *a):
        t0 = time.time()
        out = fn(*a)
        timings[name] = round(time.time() - t0, 1)
        return out

    pol = policy_path(cfg, paths)
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=sv.max_new_tokens, seed=cfg.seed)
    drafts = [c[0] for c in timed("drafts", _generate, cfg, pol, [policy_prompt(q) for q in qs],
                                  greedy, log)]
    bon_spec = SamplingSpec(n=cfg.evaluate.best_of, temperature=cfg.rollout.temperature,
                            top_p=cfg.rollout.top_p, max_tokens=sv.max_new_tokens, seed=cfg.seed)
    samples = timed("best_of_n_samples", _generate, cfg, pol, [policy_prompt(q) for q in qs],
                    bon_spec, log)
    draft_steps = [split_steps(d) for d in drafts]

    orm, sorm = RewardScorer(str(paths.model("orm"))), RewardScorer(str(paths.model("sorm")))
    sorm_draft = timed("sorm_scores", _scores, sorm, qs, draft_steps)
    located = [locate(p, sv.where_threshold) for p in sorm_draft]

    # Global: every draft (the paper's main table refines always); local: drafts with a located
    # step (no located step = nothing to fix locally, the draft stands).
    g_out = timed("global", _generate, cfg, str(paths.model("global")),
                  [global_prompt(q, d) for q, d in zip(qs, drafts)], greedy, log)
    globals_ = [c[0] for c in g_out]
    loc_idx = [i for i, b in enumerate(located) if b is not None]
    l_out = timed("local", _generate, cfg, str(paths.model("local")),
                  [local_prompt(qs[i], draft_steps[i], located[i]) for i in loc_idx], greedy, log)
    locals_ = list(drafts)
    for i, c in zip(loc_idx, l_out):
        locals_[i] = prefix_text(draft_steps[i], located[i] - 1) + c[0]

    # ORM on every candidate in one pass: drafts, globals, locals, best-of-N samples.
    flat_sols = drafts + globals_ + locals_ + [s for row in samples for s in row]
    flat_q = qs * 3 + [q for q in qs for _ in range(cfg.evaluate.best_of)]
    flat_orm = timed("orm_scores", _scores, orm, flat_q, [split_steps(s) for s in flat_sols])
    n = len(qs)
    orm_d, orm_g, orm_l = flat_orm[:n], flat_orm[n:2 * n], flat_orm[2 * n:3 * n]
    orm_s = flat_orm[3 * n:]

    right = lambda sols: [is_correct(s, q.answer) for s, q in zip(sols, questions)]  # noqa: E731
    d_ok, g_ok, l_ok = right(drafts), right(globals_), right(locals_)
    k = cfg.evaluate.best_of
    bon_choice = [samples[i][rerank(samples[i], [_final(p) for p in orm_s[i * k:(i + 1) * k]])]
                  for i in range(n)]
    glore_choice = [[drafts[i], globals_[i], locals_[i]][
        rerank([drafts[i], globals_[i], locals_[i]],
               [_final(orm_d[i]), _final(orm_g[i]), _final(orm_l[i])])] for i in range(n)]
    # *When* from the ORM as in serving's gated mode; the oracle-rerank ceiling is right whenever
    # any of {draft, global, local} is.
    refine = [should_refine(_final(p), sv.when_threshold) for p in orm_d]
    chosen = {
        "greedy": drafts, "best_of_n": bon_choice, "global": globals_, "local": locals_,
        "glore": glore_choice,
        "glore_when": [c if r else d for d, c, r in zip(drafts, glore_choice, refine)],
        "global_oracle_when": [g if not ok else d for d, g, ok in zip(drafts, globals_, d_ok)],
        "local_oracle_when": [lo if not ok else d for d, lo, ok in zip(drafts, locals_, d_ok)],
        "glore_oracle_when": [c if not ok else d for d, c, ok in zip(drafts, glore_choice, d_ok)],
        "glore_oracle_rerank": [
            next((c for c, ok in zip(cs, oks) if ok), cs[0])
            for cs, oks in zip(zip(drafts, globals_, locals_), zip(d_ok, g_ok, l_ok))],
    }
    assert list(chosen) == STRATEGIES  # the report's row order
    sample_ok = [[is_correct(s, q.answer) for s in row] for row, q in zip(samples, questions)]
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

    # Reward models against the oracle (synthetic world): drafts and best-of-N samples.
    reward: dict = {}
    pool_sols = drafts + [s for row in samples for s in row]
    pool_q = questions + [q for q in questions for _ in range(k)]
    pool_steps = [split_steps(s) for s in pool_sols]
    orm_pool = orm_d + orm_s
    sorm_pool = timed("sorm_pool_scores", _scores, sorm, [q.question for q in pool_q], pool_steps)
    pool_ok = [is_correct(s, q.answer) for s, q in zip(pool_sols, pool_q)]
    if has_oracle:
        oracle = [oracle_step_labels("\n".join(st), q.oracle) for st, q in zip(pool_steps, pool_q)]
        reward["vs_oracle"] = {"orm": step_metrics(orm_pool, oracle),
                               "sorm": step_metrics(sorm_pool, oracle)}
    reward["final_answer"] = {"orm": final_metrics(orm_pool, pool_ok),
                              "sorm": final_metrics(sorm_pool, pool_ok)}
    groups = list(range(n)) + [i for i in range(n) for _ in range(k)]
    reward["within_question"] = {
        m: within_question_pairwise([_final(p) for p in probs], pool_ok, groups)
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
        "reward_models": reward, "located_share": len(loc_idx) / n,
        "thresholds": {"when": sv.when_threshold, "where": sv.where_threshold},
        "refined_share_when": sum(refine) / n,
        "evaluate_timings_s": timings, "stage_seconds": _stage_seconds(paths),
    }
    examples = [{"question": qs[i], "draft_steps": draft_steps[i], "sorm": sorm_draft[i],
                 "orm": orm_d[i], "located": located[i], "draft_correct": d_ok[i],
                 "oracle": oracle_step_labels(drafts[i], questions[i].oracle) if has_oracle else None}
                for i in range(n)]
    out = paths.report
    out.mkdir(parents=True, exist_ok=True)
    from glore_ray import report

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

    f = paths.training_set("sorm") / "eval.parquet"
    if not f.exists():
        return {}
    df = pd.read_parquet(f)
    if df.empty:
        return {}
    qs, steps = df["question"].tolist(), [list(s) for s in df["steps"]]
    labels = [list(x) for x in df["labels"]]
    return {"orm": step_metrics(_scores(orm, qs, steps), labels),
            "sorm": step_metrics(_scores(sorm, qs, steps), labels), "n_solutions": len(df)}


def _stage_seconds(paths) -> dict:
    from glore_ray.pipeline import STAGE_NAMES

    out = {}
    for name in STAGE_NAMES:
        f = paths.stage(name) / "_DONE.json"
        if f.exists():
            out[name] = json.loads(f.read_text()).get("seconds")
    return out


__all__ = ["run", "rerank", "within_question_pairwise", "STRATEGIES", "extract_answer"]
