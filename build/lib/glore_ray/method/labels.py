"""ORM and SORM step labels of one sample from its rollouts, the cleaning rules, and label
quality against an oracle. Plain Python: the label stage runs it per question on Ray Data.

- **ORM**: every step gets the sample's final correctness.
- **SORM** from the rollouts of the prefix through step i (``Rollout.step_idx == i``). The sample's
  own continuation is one more draw from every one of its prefixes, so with ``s`` correct rollouts
  out of ``n``: hard = 1 if ``s + correct > 0``, soft = ``(s + correct) / (n + 1)``. The final
  ``####`` step is never rolled out (``prefixes.rolled_out``): its label is the sample's
  correctness. A step with no rollouts (budgeted labelling did not probe it) is inferred by
  monotonicity: positive iff a later step is positive; soft = hard, ``n_rollouts = 0``.
- **Cleaning** (each switchable in ``cfg.label``), in this order:
  1. ``intermediate_check``: a positive step whose successful continuations (correct rollouts, and
     the sample itself when correct) never mention the step's result (``step_result``) succeeded
     *despite* the step — a false positive: relabelled negative (soft 0). With
     ``intermediate_cut`` the first such step is the sample's first error: every later step is
     negative too (soft 0), so 2. cannot lift it back from a later positive step.
  2. ``monotone``: a positive hard label is a witness (a continuation from that prefix reaches the
     answer, so every shorter prefix can reach it too), a negative is only K failures. So the last
     positive step wins: every earlier step becomes positive (soft = that of the next positive
     step), every later one is already negative. For a correct sample the final step is positive,
     so all its steps end positive: the check in 1. only bites on wrong samples when this is on.
  3. ``balance`` works on the whole SORM set, per prefix length: see ``balance.py``.

    label_sample(["2 + 3 = 5", "5 * 4 = 21", "#### 21"], correct=False,
                 rollouts={0: [<Rollout correct>], 1: [<Rollout wrong>]}, cfg=LabelConfig())
    # SampleLabels(hard=[1.0, 0.0, 0.0], soft=[0.5, 0.0, 0.0], n_rollouts=[1, 1, 0], ...)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from glore_ray.config import LabelConfig
from glore_ray.data.grading import calculator_results, normalize_number, strip_calculator
from glore_ray.method.decide import NEGATIVE_BELOW, first_below
from glore_ray.method.prefixes import n_prefixes
from glore_ray.records import Rollout

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
                if cfg.intermediate_cut:
                    for j in range(i + 1, n):
                        flips["intermediate_cut"] += hard[j] == 1.0
                        hard[j], soft[j] = 0.0, 0.0
                    break
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

def quality_counts(pred: list[float], true: list[float]) -> Counter:
    """One sample's step labels vs its oracle labels, as counts that add up over samples."""
    p = [1.0 if v >= NEGATIVE_BELOW else 0.0 for v in pred]
    c: Counter = Counter(samples=1, steps=len(p), agree=sum(a == b for a, b in zip(p, true)))
    for cls, name in ((0.0, "neg"), (1.0, "pos")):
        c[f"{name}_tp"] = sum(a == cls and b == cls for a, b in zip(p, true))
        c[f"{name}_pred"] = sum(a == cls for a in p)
        c[f"{name}_true"] = sum(b == cls for b in true)
    c["first_match"] = int(first_below(p) == first_below(true))
    return c


def quality_report(c: Counter) -> dict:
    """Accuracy, precision/recall of the negative class ("this step is wrong", what SORM is used
    to find) and of the positive class, and how often the first negative step is exactly the
    oracle's first wrong step, from summed ``quality_counts``."""
    if not c.get("steps"):
        return {"n_steps": 0}

    def prf(name: str) -> dict:
        tp, n_pred, n_true = c[f"{name}_tp"], c[f"{name}_pred"], c[f"{name}_true"]
        return {"precision": tp / n_pred if n_pred else None,
                "recall": tp / n_true if n_true else None}

    return {"n_samples": c["samples"], "n_steps": c["steps"], "accuracy": c["agree"] / c["steps"],
            "negative": prf("neg"), "positive": prf("pos"),
            "first_wrong_step_match": c["first_match"] / c["samples"]}


def label_quality(per_sample: Iterable[tuple[list[float], list[float]]]) -> dict:
    """``quality_report`` over (predicted, oracle) label pairs, one per sample."""
    total: Counter = Counter()
    for pred, true in per_sample:
        total.update(quality_counts(pred, true))
    return quality_report(total)
