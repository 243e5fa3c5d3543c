"""Stage ``label``: ORM and SORM step labels from the samples and their step rollouts, then the four
training sets (``build.py``).

One StepLabel row per (sample, step):

- **ORM**: every step gets the sample's final correctness.
- **SORM** from the rollouts of the prefix through step i (``Rollout.step_idx == i``). The sample's
  own continuation is one more draw from every one of its prefixes, so with ``s`` correct rollouts
  out of ``n``: hard = 1 if ``s + correct > 0``, soft = ``(s + correct) / (n + 1)``. The final
  ``####`` step is never rolled out: its label is the sample's correctness. A step with no rollouts
  (budgeted labelling did not probe it) is inferred by monotonicity: positive iff a later step is
  positive; soft = hard, ``n_rollouts = 0``.
- **Cleaning** (each switchable in ``cfg.label``), in this order:
  1. ``intermediate_check``: a positive step whose successful continuations (correct rollouts, and
     the sample itself when correct) never mention the step's result (``step_result``) succeeded
     *despite* the step — a false positive: relabelled negative (soft 0).
  2. ``monotone``: a positive hard label is a witness (a continuation from that prefix reaches the
     answer, so every shorter prefix can reach it too), a negative is only K failures. So the last
     positive step wins: every earlier step becomes positive (soft = that of the next positive
     step), every later one is already negative. For a correct sample the final step is positive,
     so all its steps end positive: the check in 1. only bites on wrong samples when this is on.
  3. ``balance`` works on the whole SORM set, per prefix length: see ``build.balance``.

Oracle (synthetic world): ``oracle_label`` per step from ``worlds.oracle_step_labels``, and the
summary reports precision/recall of ORM, raw SORM and cleaned SORM labels against it.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from glore_ray.budgeted import n_prefixes
from glore_ray.config import LabelConfig, RunConfig
from glore_ray.data.grading import calculator_results, normalize_number, strip_calculator
from glore_ray.records import Question, Rollout, Sample, StepLabel, read_rows, write_rows

_NUM = re.compile(r"\d(?:[\d,]*\d)?(?:\.\d+)?")


# ------------------------------------------------------------------ the intermediate-result check

def step_result(step: str) -> str | None:
    """A step's result, unsigned and normalised: the last calculator result ``<<a=b>>`` -> b when
    the step has one, else the last number of the line (``23 + 45 = 68`` -> ``68``)."""
    calc = calculator_results(step)
    text = calc[-1] if calc else strip_calculator(step)
    nums = _NUM.findall(text)
    return normalize_number(nums[-1]) if nums else None


def mentions(text: str, number: str) -> bool:
    """Whether ``text`` contains ``number`` (unsigned, compared after normalisation)."""
    return any(normalize_number(t) == number for t in _NUM.findall(text))


# ------------------------------------------------------------------ labelling one sample

@dataclass
class SampleLabels:
    hard: list[float]  # cleaned
    soft: list[float]  # cleaned
    raw_hard: list[float]  # before cleaning (unprobed steps inferred)
    n_rollouts: list[int]
    flips: Counter = field(default_factory=Counter)


def label_sample(steps: list[str], correct: bool, rollouts: dict[int, list[Rollout]],
                 cfg: LabelConfig) -> SampleLabels:
    """SORM labels of one sample from its rollouts, grouped by ``step_idx`` (see module doc)."""
    n, m = len(steps), n_prefixes(steps)
    c = 1.0 if correct else 0.0
    hard: list[float | None] = [None] * n
    soft: list[float] = [0.0] * n
    n_roll = [0] * n
    wins: dict[int, list[str]] = {}  # successful continuations from prefix i
    for i in range(m):
        rs = rollouts.get(i, [])
        if not rs and not correct:
            continue  # unprobed: inferred below
        succ = sum(r.correct for r in rs) + c
        hard[i] = 1.0 if succ > 0 else 0.0
        soft[i] = succ / (len(rs) + 1)
        n_roll[i] = len(rs)
        own = ["\n".join(steps[i + 1:])] if correct else []
        wins[i] = [r.text for r in rs if r.correct] + own
    for i in range(m, n):  # the final answer line: the sample's own correctness
        hard[i], soft[i] = c, c
    flips: Counter = Counter()
    if cfg.intermediate_check:
        for i in range(m):
            if hard[i] != 1.0 or not wins.get(i):
                continue
            res = step_result(steps[i])
            if res is not None and not any(mentions(w, res) for w in wins[i]):
                hard[i], soft[i] = 0.0, 0.0
                flips["intermediate_check"] += 1
    raw = infer_unprobed(hard)
    flips["inferred"] = sum(h is None for h in hard)
    for i, h in enumerate(hard):
        if h is None:
            soft[i] = raw[i]
    labels = list(raw)
    if cfg.monotone:
        labels, soft, lifted = monotone(labels, soft)
        flips["monotone"] += lifted
    return SampleLabels(labels, soft, raw, n_roll, flips)


def infer_unprobed(hard: list[float | None]) -> list[float]:
    """Fill steps without rollouts: positive iff some later known step is positive."""
    out = [0.0] * len(hard)
    later_pos = False
    for i in range(len(hard) - 1, -1, -1):
        if hard[i] is not None:
            later_pos = later_pos or hard[i] == 1.0
            out[i] = float(hard[i])
        else:
            out[i] = 1.0 if later_pos else 0.0
    return out


def monotone(hard: list[float], soft: list[float]) -> tuple[list[float], list[float], int]:
    """Last positive wins: every step before the last positive one becomes positive (its soft label
    = the next positive step's); returns (hard, soft, number of steps lifted)."""
    hard, soft = list(hard), list(soft)
    lifted, next_soft, seen_pos = 0, 0.0, False
    for i in range(len(hard) - 1, -1, -1):
        if hard[i] == 1.0:
            seen_pos, next_soft = True, soft[i]
        elif seen_pos:
            hard[i], soft[i] = 1.0, next_soft
            lifted += 1
    return hard, soft, lifted


# ------------------------------------------------------------------ label quality vs the oracle

def _prf(pred: list[float], true: list[float], cls: float) -> dict:
    tp = sum(p == cls and t == cls for p, t in zip(pred, true))
    n_pred, n_true = sum(p == cls for p in pred), sum(t == cls for t in true)
    return {"precision": tp / n_pred if n_pred else None,
            "recall": tp / n_true if n_true else None}


def _first_neg(labels: list[float]) -> int:
    return next((i for i, v in enumerate(labels) if v < 0.5), -1)


def label_quality(per_sample: list[tuple[list[float], list[float]]]) -> dict:
    """Step labels vs oracle labels, over samples with an oracle: accuracy, precision/recall of the
    negative class ("this step is wrong", what SORM is used to find) and of the positive class, and
    how often the first negative step is exactly the oracle's first wrong step."""
    pred = [p for ps, _ in per_sample for p in ps]
    true = [t for _, ts in per_sample for t in ts]
    if not pred:
        return {"n_steps": 0}
    pred = [1.0 if p >= 0.5 else 0.0 for p in pred]
    out = {"n_samples": len(per_sample), "n_steps": len(pred),
           "accuracy": sum(p == t for p, t in zip(pred, true)) / len(pred),
           "negative": _prf(pred, true, 0.0), "positive": _prf(pred, true, 1.0)}
    out["first_wrong_step_match"] = sum(
        _first_neg([1.0 if p >= 0.5 else 0.0 for p in ps]) == _first_neg(ts)
        for ps, ts in per_sample) / len(per_sample)
    return out


# ------------------------------------------------------------------ the stage

def _group_rollouts(rollouts: list[Rollout], samples: dict[tuple[str, int], Sample]
                    ) -> dict[tuple[str, int], dict[int, list[Rollout]]]:
    grouped: dict[tuple[str, int], dict[int, list[Rollout]]] = defaultdict(lambda: defaultdict(list))
    for r in rollouts:
        key = (r.qid, int(r.sample_id))
        s = samples.get(key)
        if s is None:
            raise ValueError(f"rollout for unknown sample {key}: rollouts and samples disagree "
                             f"(rerun the rollout stage)")
        if not 0 <= r.step_idx < len(s.steps):
            raise ValueError(f"rollout {key} step_idx {r.step_idx} outside the sample's "
                             f"{len(s.steps)} steps")
        grouped[key][r.step_idx].append(r)
    return grouped


def make_labels(questions: dict[str, Question], samples: list[Sample], rollouts: list[Rollout],
                cfg: LabelConfig, log=print) -> tuple[list[StepLabel], dict, dict]:
    """StepLabel rows for every sample, the label quality report and the cleaning counts."""
    by_key = {(s.qid, int(s.sample_id)): s for s in samples}
    if len(by_key) != len(samples):
        raise ValueError("samples: duplicate (qid, sample_id) rows")
    unknown = sorted({s.qid for s in samples} - set(questions))
    if unknown:
        raise ValueError(f"samples for {len(unknown)} questions not in the train split, "
                         f"e.g. {unknown[0]!r}")
    grouped = _group_rollouts(rollouts, by_key)
    rows: list[StepLabel] = []
    flips: Counter = Counter()
    quality_in: dict[str, list] = {"orm": [], "sorm_raw": [], "sorm": []}
    t0 = time.time()
    for done, s in enumerate(samples, 1):
        if not s.steps:
            raise ValueError(f"sample {s.qid}/{s.sample_id} has no steps")
        lab = label_sample(list(s.steps), bool(s.correct), grouped.get((s.qid, int(s.sample_id)),
                                                                        {}), cfg)
        flips.update(lab.flips)
        q = questions[s.qid]
        oracle = _oracle(q, s)
        orm = [1.0 if s.correct else 0.0] * len(s.steps)
        for i in range(len(s.steps)):
            rows.append(StepLabel(s.qid, int(s.sample_id), i, orm[i], lab.hard[i], lab.soft[i],
                                  lab.n_rollouts[i], oracle[i] if oracle else -1.0))
        if oracle:
            quality_in["orm"].append((orm, oracle))
            quality_in["sorm_raw"].append((lab.raw_hard, oracle))
            quality_in["sorm"].append((lab.hard, oracle))
        if done % 500 == 0 or done == len(samples):
            log(f"[label] labelled {done}/{len(samples)} samples ({time.time() - t0:.1f}s)")
    quality = {k: label_quality(v) for k, v in quality_in.items()} if quality_in["orm"] else {}
    return rows, quality, dict(flips)


def _oracle(q: Question, s: Sample) -> list[float] | None:
    if not q.oracle:
        return None
    from glore_ray.data.worlds import oracle_step_labels

    labels = oracle_step_labels("\n".join(s.steps), q.oracle)
    return labels if len(labels) == len(s.steps) else None


def run(cfg: RunConfig, paths, log=print) -> dict:
    """samples + rollouts -> ``paths.labels`` (StepLabel rows) and the four training sets."""
    from glore_ray import build
    from glore_ray.data.questions import read

    for p, what in ((paths.samples, "samples"), (paths.rollouts, "rollouts")):
        if not Path(p).exists():
            raise FileNotFoundError(f"label stage: {what} not found at {p} (run the "
                                    f"{'sample' if what == 'samples' else 'rollout'} stage)")
    questions = {q.qid: q for q in read(paths, "train")}
    samples = read_rows(paths.samples, Sample)
    rollouts = _read_rollouts(Path(paths.rollouts))
    if not samples:
        raise ValueError(f"label stage: no samples in {paths.samples}")
    right = sum(s.correct for s in samples)
    if right == 0:
        # Nothing to learn from: no positive ORM label and no refiner target. Say so here, before
        # four models train on one class and the refiner sets come out empty.
        gradable = sum(bool(s.final_answer) for s in samples)
        raise ValueError(
            f"label stage: none of the {len(samples)} samples answered correctly ({gradable} "
            "ended with a gradable `#### n` answer line); the reward models need right and wrong "
            "samples and the refiners need right ones. Fine-tune the policy on gold solutions in "
            "the project's prompt format first, or sample more (rollout.k_samples, "
            "rollout.n_questions).")
    log(f"[label] {len(samples)} samples, {len(rollouts)} rollouts "
        f"({'budgeted' if cfg.rollout.budgeted else 'exhaustive'} rollouts)")
    labels, quality, flips = make_labels(questions, samples, rollouts, cfg.label, log)
    write_rows(paths.labels, labels, StepLabel)
    sets = build.build_all(cfg, paths, questions, samples, rollouts, labels, log)
    hard = [r.sorm_hard for r in labels]
    summary = {
        "n_samples": len(samples), "n_rollouts": len(rollouts), "n_steps": len(labels),
        "sample_accuracy": sum(s.correct for s in samples) / len(samples),
        "orm_positive_steps": sum(r.orm_label for r in labels),
        "sorm_positive_steps": sum(hard), "sorm_negative_steps": len(hard) - sum(hard),
        "cleaning": flips, "sets": sets, "oracle_quality": quality,
    }
    if quality:
        s = quality["sorm"]
        log(f"[label] vs oracle: SORM accuracy {s['accuracy']:.3f}, wrong-step precision "
            f"{_fmt(s['negative']['precision'])} recall {_fmt(s['negative']['recall'])}; ORM "
            f"accuracy {quality['orm']['accuracy']:.3f}")
    return summary


def _read_rollouts(path: Path) -> list[Rollout]:
    # budgeted labelling of an all-correct batch may leave a rollout folder with no parts
    if path.is_dir() and not any(path.rglob("*.parquet")):
        return []
    return read_rows(path, Rollout)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
