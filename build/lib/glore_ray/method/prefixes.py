"""The prefix rule: which prefixes of a sample are rolled out for its SORM labels.

Every step is, except a final ``#### n`` answer line: rolling out from a finished solution has
nothing left to write, so that step's label is the sample's own correctness. The rollout stage,
budgeted search and the label stage all use this one rule, so rollouts and labels line up.

    rolled_out(["a = 1", "b = 2", "#### 2"])  # range(0, 2)
    rolled_out(["a = 1", "b = 2"])            # range(0, 2): truncated, every prefix
"""

from __future__ import annotations


def rolled_out(steps: list[str]) -> range:
    """Step indices whose prefix ``steps[: i + 1]`` gets rollouts."""
    n = len(steps)
    return range(n - 1) if n and steps[-1].lstrip().startswith("####") else range(n)


def n_prefixes(steps: list[str]) -> int:
    """How many prefixes of ``steps`` are rolled out (``len(rolled_out(steps))``)."""
    return len(rolled_out(steps))
