"""The four training sets, built from samples, rollouts and step labels (called by the label stage).

Each set lives at ``paths.training_set(which)`` with ``train.parquet``, ``eval.parquet`` (held out
by qid: ``split_qids``) and ``hf/`` (a ``datasets.DatasetDict`` saved with ``save_to_disk``):

- ``orm``:  ``{qid, sample_id, question, steps: list[str], labels: list[float]}`` — every label is
  the sample's correctness.
- ``sorm``: the same plus ``soft_labels: list[float]`` and ``mask: list[float]``; ``labels`` are
  the cleaned SORM labels (hard by default, ``label.sorm_labels=soft`` for soft). ``mask[i] = 0``
  marks a step dropped by balancing: the trainer multiplies step i's loss by ``mask[i]``. Rows whose
  steps were all dropped are left out. ``sorm/trl/{train,eval}.parquet`` is the same set in TRL's
  stepwise-supervision format ``{prompt, completions: list[str], labels: list[bool]}`` (cleaned
  hard labels; TRL has no mask, so the balancing is not carried there).
- ``global``: ``{qid, prompt, target}`` with ``prompt = prompts.global_prompt(question, wrong
  draft)`` and ``target`` a correct solution to the same question (the policy's own samples first,
  then its correct rollouts, prefix + continuation).
- ``local``: ``{qid, prompt, target}`` with ``prompt = prompts.local_prompt(question, steps,
  bad_idx)`` (``bad_idx`` = first SORM-negative step) and ``target`` the continuation of a correct
  solution from the prefix before ``bad_idx``: a correct rollout of that very prefix first, else a
  correct sample/rollout of the question that starts with the same steps.

Every target ends with its ``#### n`` line. Pairs are deduplicated, capped per question
(``label.max_{global,local}_pairs_per_question``) and chosen with seeded RNGs.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glore_ray import prompts
from glore_ray.data.grading import is_correct, split_steps
from glore_ray.records import Question, Rollout, Sample, StepLabel, atomic_dir, commit_dir

SETS = ("orm", "sorm", "global", "local")
_STR, _FLOATS = pa.string(), pa.list_(pa.float64())
SCHEMAS: dict[str, pa.Schema] = {
    "orm": pa.schema([("qid", _STR), ("sample_id", pa.int64()), ("question", _STR),
                      ("steps", pa.list_(_STR)), ("labels", _FLOATS)]),
    "sorm": pa.schema([("qid", _STR), ("sample_id", pa.int64()), ("question", _STR),
                       ("steps", pa.list_(_STR)), ("labels", _FLOATS), ("soft_labels", _FLOATS),
                       ("mask", _FLOATS)]),
    "global": pa.schema([("qid", _STR), ("prompt", _STR), ("target", _STR)]),
    "local": pa.schema([("qid", _STR), ("prompt", _STR), ("target", _STR)]),
    "trl": pa.schema([("prompt", _STR), ("completions", pa.list_(_STR)),
                      ("labels", pa.list_(pa.bool_()))]),
}


# ------------------------------------------------------------------ reward-model sets

def orm_rows(samples: list[Sample], questions: dict[str, Question]) -> list[dict]:
    return [{"qid": s.qid, "sample_id": int(s.sample_id), "question": questions[s.qid].question,
             "steps": list(s.steps), "labels": [1.0 if s.correct else 0.0] * len(s.steps)}
            for s in samples]


def sorm_rows(samples: list[Sample], questions: dict[str, Question],
              labels: dict[tuple[str, int], list[StepLabel]], use_soft: bool = False) -> list[dict]:
    """One row per sample; ``labels`` maps (qid, sample_id) to its StepLabel rows."""
    rows = []
    for s in samples:
        ls = sorted(labels[(s.qid, int(s.sample_id))], key=lambda r: r.step_idx)
        if len(ls) != len(s.steps):
            raise ValueError(f"sample {s.qid}/{s.sample_id}: {len(ls)} labels for "
                             f"{len(s.steps)} steps")
        hard, soft = [r.sorm_hard for r in ls], [r.sorm_soft for r in ls]
        rows.append({"qid": s.qid, "sample_id": int(s.sample_id),
                     "question": questions[s.qid].question, "steps": list(s.steps),
                     "labels": soft if use_soft else hard, "soft_labels": soft,
                     "mask": [1.0] * len(ls), "_hard": hard})
    return rows


def balance(rows: list[dict], seed: int) -> tuple[list[dict], dict]:
    """Balance positive/negative step labels per prefix length (step index) by subsampling the
    majority class down to the minority's count, seeded per index. A dropped step keeps its row
    and gets ``mask = 0``; rows with every step dropped are removed. An index where one class is
    absent is left as is (nothing to balance against). Classes come from the hard labels
    (``_hard`` when present, else ``labels``, threshold 0.5). Returns (rows, per-index counts)."""
    by_idx: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r, row in enumerate(rows):
        for i, v in enumerate(row.get("_hard", row["labels"])):
            by_idx[i][0 if v >= 0.5 else 1].append((r, i))
    stats = {}
    for i in sorted(by_idx):
        pos, neg = by_idx[i]
        stats[i] = {"pos": len(pos), "neg": len(neg), "kept": len(pos) + len(neg)}
        if not pos or not neg or len(pos) == len(neg):
            continue
        major, minor = (pos, neg) if len(pos) > len(neg) else (neg, pos)
        keep = set(random.Random(f"balance-{seed}-{i}").sample(major, len(minor)))
        for r, j in major:
            if (r, j) not in keep:
                rows[r]["mask"][j] = 0.0
        stats[i]["kept"] = 2 * len(minor)
    return [row for row in rows if any(row["mask"])], stats


def trl_rows(rows: list[dict]) -> list[dict]:
    """TRL stepwise supervision: the policy prompt, the steps, one bool per step."""
    return [{"prompt": prompts.policy_prompt(r["question"]), "completions": r["steps"],
             "labels": [v >= 0.5 for v in r.get("_hard", r["labels"])]} for r in rows]


# ------------------------------------------------------------------ refinement pairs

def _solution(text: str) -> str | None:
    """A solution as newline-joined steps, or None when it does not end with a ``####`` line."""
    steps = split_steps(text)
    return "\n".join(steps) if steps and "####" in steps[-1] else None


def correct_solutions(q: Question, samples: list[Sample], rollouts: list[Rollout],
                      by_key: dict[tuple[str, int], Sample]) -> list[str]:
    """Distinct correct full solutions to ``q``: its correct samples, then its correct rollouts
    (the sample's prefix + the continuation)."""
    out: dict[str, None] = {}
    for s in samples:
        if s.correct:
            sol = _solution("\n".join(s.steps))
            if sol and is_correct(sol, q.answer):
                out.setdefault(sol)
    for r in rollouts:
        if r.correct:
            s = by_key[(r.qid, int(r.sample_id))]
            sol = _solution(prompts.prefix_text(list(s.steps), r.step_idx) + r.text)
            if sol and is_correct(sol, q.answer):
                out.setdefault(sol)
    return list(out)


def _unique_wrong(samples: list[Sample]) -> list[Sample]:
    seen, out = set(), []
    for s in samples:
        key = "\n".join(s.steps)
        if not s.correct and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def global_pairs(q: Question, samples: list[Sample], solutions: list[str], cap: int,
                 seed: int) -> list[dict]:
    """(question, wrong draft) -> a correct solution; distinct drafts, targets taken in turn."""
    if not solutions:
        return []
    drafts = _unique_wrong(samples)
    rng = random.Random(f"global-{seed}-{q.qid}")
    rng.shuffle(drafts)
    targets = list(solutions)
    rng.shuffle(targets)
    return [{"qid": q.qid, "prompt": prompts.global_prompt(q.question, "\n".join(d.steps)),
             "target": targets[i % len(targets)]} for i, d in enumerate(drafts[:cap])]


def first_negative(labels: list[float]) -> int | None:
    return next((i for i, v in enumerate(labels) if v < 0.5), None)


def local_targets(steps: list[str], bad: int, own: list[Rollout], solutions: list[str]) -> list[str]:
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
                rollouts: dict[tuple[str, int], list[Rollout]], solutions: list[str], cap: int,
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
        bad = first_negative(labels[(d.qid, int(d.sample_id))])
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


# ------------------------------------------------------------------ split and write

def split_qids(qids: set[str] | list[str], fraction: float, seed: int) -> set[str]:
    """The held-out qids: a seeded shuffle, ``round(fraction * n)`` of them (at least one when
    ``fraction > 0`` and there are two or more questions, never all)."""
    ordered = sorted(set(qids))
    if fraction <= 0 or len(ordered) < 2:
        return set()
    random.Random(f"split-{seed}").shuffle(ordered)
    n_eval = min(len(ordered) - 1, max(1, round(fraction * len(ordered))))
    return set(ordered[:n_eval])


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {n: [r[n] for r in rows] for n in schema.names}
    return pa.table(cols, schema=schema)


def write_set(folder: Path, rows: list[dict], schema: pa.Schema, eval_qids: set[str],
              qids: list[str] | None = None, hf: bool = True) -> dict:
    """``train.parquet`` / ``eval.parquet`` (+ ``hf/`` DatasetDict) in ``folder``, atomically.
    ``qids`` gives each row's qid when the schema has no qid column (the TRL export)."""
    qids = qids if qids is not None else [r["qid"] for r in rows]
    parts = {"train": [r for r, q in zip(rows, qids) if q not in eval_qids],
             "eval": [r for r, q in zip(rows, qids) if q in eval_qids]}
    tmp = atomic_dir(folder)
    tables = {}
    for split, part in parts.items():
        tables[split] = _table(part, schema)
        pq.write_table(tables[split], tmp / f"{split}.parquet")
    if hf:
        import datasets

        datasets.DatasetDict({k: datasets.Dataset(t) for k, t in tables.items()}).save_to_disk(
            str(tmp / "hf"))
    commit_dir(tmp, folder)
    return {k: len(v) for k, v in parts.items()}


def build_all(cfg, paths, questions: dict[str, Question], samples: list[Sample],
              rollouts: list[Rollout], labels: list[StepLabel], log=print) -> dict:
    """Every set from the label stage's rows; returns {set: {train: n, eval: n, ...}}."""
    lc = cfg.label
    by_key = {(s.qid, int(s.sample_id)): s for s in samples}
    label_map: dict[tuple[str, int], list[StepLabel]] = defaultdict(list)
    for r in labels:
        label_map[(r.qid, int(r.sample_id))].append(r)
    samples_by_q: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        samples_by_q[s.qid].append(s)
    rollouts_by_q: dict[str, list[Rollout]] = defaultdict(list)
    rollouts_by_s: dict[tuple[str, int], list[Rollout]] = defaultdict(list)
    for r in rollouts:
        rollouts_by_q[r.qid].append(r)
        rollouts_by_s[(r.qid, int(r.sample_id))].append(r)
    eval_qids = split_qids(samples_by_q, lc.holdout_fraction, cfg.seed)

    sorm = sorm_rows(samples, questions, label_map, use_soft=lc.sorm_labels == "soft")
    balance_stats = None
    if lc.balance:
        sorm, balance_stats = balance(sorm, cfg.seed)
    hard = {k: [r.sorm_hard for r in sorted(v, key=lambda r: r.step_idx)]
            for k, v in label_map.items()}
    glob, loc = [], []
    for qid in sorted(samples_by_q):
        q, qs = questions[qid], samples_by_q[qid]
        sols = correct_solutions(q, qs, rollouts_by_q.get(qid, []), by_key)
        glob += global_pairs(q, qs, sols, lc.max_global_pairs_per_question, cfg.seed)
        loc += local_pairs(q, qs, hard, rollouts_by_s, sols, lc.max_local_pairs_per_question,
                           cfg.seed)
    out = {
        "orm": write_set(paths.training_set("orm"), orm_rows(samples, questions), SCHEMAS["orm"],
                         eval_qids),
        "sorm": write_set(paths.training_set("sorm"), sorm, SCHEMAS["sorm"], eval_qids),
        "global": write_set(paths.training_set("global"), glob, SCHEMAS["global"], eval_qids),
        "local": write_set(paths.training_set("local"), loc, SCHEMAS["local"], eval_qids),
    }
    out["sorm"]["trl"] = write_set(paths.training_set("sorm") / "trl", trl_rows(sorm),
                                   SCHEMAS["trl"], eval_qids, [r["qid"] for r in sorm], hf=False)
    out["eval_questions"] = len(eval_qids)
    if balance_stats is not None:
        out["sorm"]["balance"] = balance_stats
    log(f"[label] sets: " + ", ".join(f"{k} {v['train']}+{v['eval']}" for k, v in out.items()
                                        if isinstance(v, dict)) + " (train+eval rows)")
    return out
