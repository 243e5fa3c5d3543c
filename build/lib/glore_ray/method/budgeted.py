"""Budgeted SORM labelling (beyond the paper, after OmegaPRM): binary search for the first negative
step instead of rolling out every prefix K times.

Hard SORM labels are monotone — once no rollout from a prefix succeeds, longer prefixes fail too —
so the first negative step of a wrong sample can be found by bisection over its prefixes (binary
by default; ``split`` can skew it towards early steps, where a negative probe costs k rollouts),
and a probe stops at its first successful rollout (a positive hard label needs only one witness).
A correct sample needs no rollouts at all: it is itself a successful rollout from every prefix.

    rows = search(items, generate, k=8, chunk=2)

``items``: one dict per sample ``{qid, sample_id, question, answer, steps, correct}`` and,
optionally, ``oracle`` (the question's, for a world that grades whole solutions: ``worlds.grade``)
and ``probe_limit`` (only prefixes ``0 .. probe_limit - 1`` may be probed: the rest do not
fit the context).
``generate(prompts, n) -> list[list[str]]``: ``n`` continuations per prompt (the rollout actor's
engine). The search advances every sample of the batch together, in rounds: each round is one
``generate`` call over all active probes (two calls when probes need different ``n``, i.e. the
last, partial chunk when ``k % chunk != 0``). Returns Rollout-shaped dicts (qid, sample_id,
step_idx, k, text, correct, final_answer) for every rollout drawn; the label stage infers the
unprobed steps by monotonicity (``method.labels.infer_unprobed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from glore_ray.data.grading import extract_answer
from glore_ray.data.worlds import grade
from glore_ray.method.prefixes import n_prefixes
from glore_ray.prompts import prefix_text, rollout_prompt

Generate = Callable[[list[str], int], list[list[str]]]
# Where a probe bisects its interval: 0.5 = plain binary search (what P2 measured). A negative
# prefix costs k rollouts, a positive one about a chunk, and first errors cluster early, so a
# smaller split (e.g. 0.25) should cost fewer rollouts: not yet measured on the real engine.
SPLIT = 0.5
_REQUIRED = ("qid", "sample_id", "question", "answer", "steps", "correct")


@dataclass
class _Probe:
    """Binary search state of one wrong sample: the first negative prefix lies in [lo, hi]."""

    item: dict
    lo: int
    hi: int  # hi == n_prefixes means "no rolled-out prefix is negative" (the sample's own end)
    drawn: int = 0  # rollouts drawn so far from prefix ``mid``
    rows: list[dict] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.lo < self.hi

    split: float = 0.5

    @property
    def mid(self) -> int:
        # a skewed bisection point: negatives cost k rollouts, positives about one chunk
        return self.lo + min(self.hi - self.lo - 1, int((self.hi - self.lo) * self.split))


def _check(item: dict) -> None:
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise ValueError(f"budgeted.search: item {item.get('qid')}/{item.get('sample_id')} "
                         f"lacks {missing}")
    if not isinstance(item["steps"], list):
        raise ValueError(f"budgeted.search: item {item['qid']}/{item['sample_id']}: steps must be "
                         f"a list of strings")


def search(items: list[dict], generate: Generate, k: int, chunk: int,
           split: float = SPLIT) -> list[dict]:
    """Rollouts that decide each wrong sample's first negative step (see the module docstring).
    ``split`` places each probe in the open search interval [lo, hi): 0.5 is a plain binary
    search, smaller values probe earlier prefixes first (0 = a linear scan from step 0)."""
    if k < 1 or chunk < 1:
        raise ValueError(f"budgeted.search: k and chunk must be >= 1 (got k={k}, chunk={chunk})")
    if not 0 <= split < 1:
        raise ValueError(f"budgeted.search: split must be in [0, 1) (got {split})")
    chunk = min(chunk, k)
    for it in items:
        _check(it)
    # ``probe_limit``: prefixes past it cannot be rolled out (over the context): never probed, so
    # the label stage infers them like any unprobed step
    probes = [_Probe(it, 0, min(n_prefixes(it["steps"]), it.get("probe_limit", len(it["steps"]))),
                     split=split)
              for it in items if not it["correct"]]
    while True:
        active = [p for p in probes if p.active]
        if not active:
            break
        by_n: dict[int, list[_Probe]] = {}
        for p in active:
            by_n.setdefault(min(chunk, k - p.drawn), []).append(p)
        for n, group in by_n.items():
            prompts = [rollout_prompt(p.item["question"], p.item["steps"], p.mid) for p in group]
            outs = generate(prompts, n)
            if len(outs) != len(group) or any(len(o) != n for o in outs):
                raise RuntimeError(f"generate returned {[len(o) for o in outs]} continuations "
                                   f"for {len(group)} prompts x n={n}")
            for p, texts in zip(group, outs):
                _advance(p, texts, k)
    return [r for p in probes for r in p.rows]


def _advance(p: _Probe, texts: list[str], k: int) -> None:
    """Record one chunk of rollouts from prefix ``p.mid`` (all of them: they were generated) and
    move the search once the prefix is decided: positive at the first success, negative at k."""
    it, mid = p.item, p.mid
    prefix = prefix_text(it["steps"], mid)
    success = False
    for text in texts:
        full = prefix + text
        ok = grade(full, it["answer"], it.get("oracle", ""))
        success |= ok
        p.rows.append({"qid": it["qid"], "sample_id": int(it["sample_id"]), "step_idx": mid,
                       "k": p.drawn, "text": text, "correct": ok,
                       "final_answer": extract_answer(full) or ""})
        p.drawn += 1
    if success:  # one witness decides a positive hard label
        p.lo, p.drawn = mid + 1, 0
    elif p.drawn >= k:
        p.hi, p.drawn = mid, 0
