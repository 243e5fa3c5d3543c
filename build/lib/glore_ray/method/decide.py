"""*When*, *where* and rerank (GLoRe §4): the three decisions of refinement, one rule each.

    orm_score([0.9, 0.7, 0.2])       # 0.2: a solution's ORM score is its last step's probability
    should_refine(0.2, 0.5)          # True: *when* = ORM score under the threshold
    first_below([0.9, 0.4, 0.8], .5) # 1: *where* = the first step under the threshold
    rerank([0.3, 0.8, 0.8])          # 1: the best score, ties to the earliest (the draft)

``first_below`` is also the first-negative-step rule of the labels: a step label under 0.5 is
negative, and the local refiner's ``[BAD]`` goes before the first one, at training time (pairs)
and at inference (SORM scores), so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

# The modes of ``solve`` (serve.default_mode, the HTTP API's ``mode``), in the order listed.
Mode = Literal["draft", "global", "local", "glore", "best_of_n"]
MODES: tuple[str, ...] = get_args(Mode)
NEGATIVE_BELOW = 0.5  # a step label (hard or soft) under this is a negative step


def orm_score(step_probs: Sequence[float]) -> float:
    """A solution's ORM score is its last step's probability (0 for an empty solution)."""
    return float(step_probs[-1]) if len(step_probs) else 0.0


def should_refine(draft_orm_score: float, when_threshold: float) -> bool:
    """*When* (gated mode): refine a draft whose ORM score is under the threshold."""
    return draft_orm_score < when_threshold


def first_below(values: Sequence[float], threshold: float = NEGATIVE_BELOW) -> int | None:
    """Index of the first value under ``threshold`` (None when all pass): *where* on SORM scores,
    the first negative step on labels."""
    return next((i for i, v in enumerate(values) if v < threshold), None)


def locate(sorm_scores: Sequence[float], where_threshold: float) -> int | None:
    """*Where*: the first step whose SORM probability is under the threshold (None = all pass)."""
    return first_below(sorm_scores, where_threshold)


def rerank(scores: Sequence[float]) -> int:
    """Index of the best-scored candidate; ties go to the earliest, i.e. the draft."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
