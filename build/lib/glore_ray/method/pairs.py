"""Refinement pairs reused from the samples and SORM rollouts of one question (GLoRe §3.3).

- **global**: ``{qid, prompt, target, source}`` with ``prompt = prompts.global_prompt(question,
  wrong draft)`` and ``target`` a correct *sample* of the same question, as the paper pairs them.
  Only a question with no correct sample takes a correct rollout (prefix + continuation;
  ``rollouts=False`` — ``label.global_from_rollouts`` — turns that off), and with ``gold=True`` the
  gold solution when the policy has neither (``label.gold_targets``, for weak policies).
  ``source`` says which: ``sample``, ``rollout`` or ``gold``. (Rollouts outnumber samples ~K x
  steps: mixed in, they would make the global refiner learn mostly local-looking rewrites.)
- **local**: ``{qid, prompt, target}`` with ``prompt = prompts.local_prompt(question, steps,
  bad_idx)`` (``bad_idx`` = first SORM-negative step, ``decide.first_below``) and ``target`` the
  continuation of a correct solution from the prefix before ``bad_idx``: a correct rollout of that
  very prefix first, else a correct sample/rollout of the question that starts with the same steps.

Every target ends with its ``#### n`` line; pairs are deduplicated, capped per question and chosen
with RNGs seeded by (seed, qid), so a question's pairs do not depend on any other question.

    global_pairs(q, samples, solutions, cap=4, seed=0)
    # [{"qid": "q7", "prompt": "Question: ...\nWrong draft:\n...\nAnswer:\n",
    #   "target": "2 + 3 = 5\n5 * 4 = 20\n#### 20", "source": "sample"}]
"""

from __future__ import annotations

import random

from glore_ray import prompts
from glore_ray.data.grading import split_steps
from glore_ray.data.worlds import grade
from glore_ray.method.decide import first_below
from glore_ray.records import Question, Rollout, Sample


def _solution(text: str) -> str | None:
    """A solution as newline-joined steps, or None when it does not end with a ``####`` line."""
    steps = split_steps(text)
    return "\n".join(steps) if steps and "####" in steps[-1] else None


def correct_solutions(q: Question, samples: list[Sample], rollouts: list[Rollout],
                      by_key: dict[tuple[str, int], Sample], gold: bool = False) -> dict[str, str]:
    """Distinct correct full solutions to ``q``, each with where it came from, in this order: its
    correct samples (``"sample"``), then its correct rollouts (the sample's prefix + the
    continuation, ``"rollout"``); ``gold``: the gold solution (``"gold"``) when there are none."""
    out: dict[str, str] = {}
    for s in samples:
        if s.correct:
            sol = _solution("\n".join(s.steps))
            if sol and grade(sol, q.answer, q.oracle):
                out.setdefault(sol, "sample")
    for r in rollouts:
        if r.correct:
            s = by_key[(r.qid, int(r.sample_id))]
            sol = _solution(prompts.prefix_text(list(s.steps), r.step_idx) + r.text)
            if sol and grade(sol, q.answer, q.oracle):
                out.setdefault(sol, "rollout")
    if gold and not out:
        sol = _solution(q.gold_solution)
        if sol and grade(sol, q.answer, q.oracle):
            out.setdefault(sol, "gold")
    return out


def _unique_wrong(samples: list[Sample]) -> list[Sample]:
    seen, out = set(), []
    for s in samples:
        key = "\n".join(s.steps)
        if not s.correct and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def global_pairs(q: Question, samples: list[Sample], solutions: dict[str, str], cap: int,
                 seed: int, rollouts: bool = True) -> list[dict]:
    """(question, wrong draft) -> a correct sample of the question (a rollout or the gold
    solution only when it has none, see the module docstring); distinct drafts, targets taken
    in turn."""
    by_source: dict[str, list[str]] = {}
    for sol, src in solutions.items():
        by_source.setdefault(src, []).append(sol)
    source = next((s for s in ("sample", "rollout", "gold")
                   if by_source.get(s) and (rollouts or s != "rollout")), None)
    if source is None:
        return []
    drafts = _unique_wrong(samples)
    rng = random.Random(f"global-{seed}-{q.qid}")
    rng.shuffle(drafts)
    targets = list(by_source[source])
    rng.shuffle(targets)
    return [{"qid": q.qid, "prompt": prompts.global_prompt(q.question, "\n".join(d.steps)),
             "target": targets[i % len(targets)], "source": source}
            for i, d in enumerate(drafts[:cap])]


def local_targets(steps: list[str], bad: int, own: list[Rollout],
                  solutions: dict[str, str] | list[str]) -> list[str]:
    """Continuations that fix the draft from step ``bad`` on: correct rollouts from the prefix
    through ``bad - 1`` (``own``), then any correct solution starting with ``steps[:bad]``. A
    continuation that repeats the bad step is not a fix and is skipped."""
    out: dict[str, None] = {}
    for r in own:
        if r.correct and r.step_idx == bad - 1:
            cont = _solution(r.text)
            if cont and split_steps(cont)[0] != steps[bad]:
                out.setdefault(cont)
    for sol in solutions:
        lines = split_steps(sol)
        if lines[:bad] == steps[:bad] and len(lines) > bad and lines[bad] != steps[bad]:
            out.setdefault("\n".join(lines[bad:]))
    return list(out)


def local_pairs(q: Question, samples: list[Sample], labels: dict[tuple[str, int], list[float]],
                rollouts: dict[tuple[str, int], list[Rollout]],
                solutions: dict[str, str] | list[str], cap: int,
                seed: int) -> list[dict]:
    """(question, draft with [BAD] before its first SORM-negative step) -> a correct continuation
    from the prefix before that step. ``labels`` maps (qid, sample_id) to cleaned hard labels."""
    drafts = _unique_wrong(samples)
    rng = random.Random(f"local-{seed}-{q.qid}")
    rng.shuffle(drafts)
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for d in drafts:
        if len(out) >= cap:
            break
        steps = list(d.steps)
        bad = first_below(labels[(d.qid, int(d.sample_id))])
        if bad is None:
            continue
        targets = local_targets(steps, bad, rollouts.get((d.qid, int(d.sample_id)), []),
                                solutions)
        if not targets:
            continue
        pair = (prompts.local_prompt(q.question, steps, bad), rng.choice(targets))
        if pair not in seen:
            seen.add(pair)
            out.append({"qid": q.qid, "prompt": pair[0], "target": pair[1]})
    return out
