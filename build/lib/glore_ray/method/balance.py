"""Balancing SORM steps per prefix length (step index), from counts, so it streams.

At each step index the majority class (positive or negative hard label) is subsampled down to
the minority's count with an RNG seeded by (seed, index); a dropped step keeps its row and gets
``mask = 0`` (the trainer multiplies that step's loss by its mask), a row whose every step is
dropped leaves the set, an index where one class is absent is left as it is.

The choice depends only on the counts and on each step's rank among its index's majority steps
in row order, so it is made in two passes over the rows without holding them: ``count`` every
row, ``plan``, then ``mask`` every row again in the same order. ``random.sample`` picks positions
from the population's length alone, so sampling ranks here keeps exactly the steps that sampling
the list of steps would.

    b = Balancer(seed=0)
    for hard in rows: b.count(hard)       # pass 1
    stats = b.plan()                      # {index: {"pos": 3, "neg": 1, "kept": 2}}
    for hard in rows: mask = b.mask(hard) # pass 2: [1.0, 0.0, ...] per step
"""

from __future__ import annotations

import bisect
import random

from glore_ray.method.decide import NEGATIVE_BELOW


class Balancer:
    def __init__(self, seed: int):
        self.seed = seed
        self.counts: dict[int, list[int]] = {}  # index -> [positives, negatives]
        self._keep: dict[int, tuple[int, list[int]]] = {}  # index -> (majority class, kept ranks)
        self._seen: dict[int, int] = {}  # index -> majority steps masked so far (pass 2)

    def count(self, hard: list[float]) -> None:
        for i, v in enumerate(hard):
            self.counts.setdefault(i, [0, 0])[0 if v >= NEGATIVE_BELOW else 1] += 1

    def plan(self) -> dict[int, dict]:
        """Choose the kept majority ranks of every index; returns per-index counts."""
        stats = {}
        for i in sorted(self.counts):
            pos, neg = self.counts[i]
            stats[i] = {"pos": pos, "neg": neg, "kept": pos + neg}
            if not pos or not neg or pos == neg:
                continue
            major, n_major, n_minor = (0, pos, neg) if pos > neg else (1, neg, pos)
            ranks = random.Random(f"balance-{self.seed}-{i}").sample(range(n_major), n_minor)
            self._keep[i] = (major, sorted(ranks))
            stats[i]["kept"] = 2 * n_minor
        return stats

    def mask(self, hard: list[float]) -> list[float]:
        """The next row's step mask (rows in the order they were counted)."""
        out = [1.0] * len(hard)
        for i, v in enumerate(hard):
            if i not in self._keep:
                continue
            major, kept = self._keep[i]
            if (0 if v >= NEGATIVE_BELOW else 1) != major:
                continue
            rank = self._seen.get(i, 0)
            self._seen[i] = rank + 1
            j = bisect.bisect_left(kept, rank)
            if j == len(kept) or kept[j] != rank:
                out[i] = 0.0
        return out


def balance(rows: list[dict], seed: int) -> tuple[list[dict], dict]:
    """In-memory form: set ``mask`` on rows ``{..., labels, mask, [_hard]}`` (classes from
    ``_hard`` when present, else ``labels``) and drop fully masked rows. Returns (rows, stats)."""
    b = Balancer(seed)
    for row in rows:
        b.count(row.get("_hard", row["labels"]))
    stats = b.plan()
    for row in rows:
        m = b.mask(row.get("_hard", row["labels"]))
        row["mask"] = [a * x for a, x in zip(row["mask"], m)]
    return [row for row in rows if any(row["mask"])], stats
