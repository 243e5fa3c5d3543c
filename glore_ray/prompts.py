"""Prompt templates, in one place: the label/build stage, training and serving all import these,
so a refiner is always asked the question the way it was trained.

Policy:         "Question: {q}\nAnswer:\n"                                   -> solution
Global refiner: "Question: {q}\nWrong draft:\n{draft}\nAnswer:\n"            -> full solution
Local refiner:  "Question: {q}\nDraft:\n{draft with [BAD] before the first
                 bad step}\nAnswer:\n{steps before the bad one}\n"            -> continuation
"""

from __future__ import annotations

BAD = "[BAD]"


def policy_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:\n"


def prefix_text(steps: list[str], upto: int) -> str:
    """The solution text through step ``upto`` (inclusive), newline-terminated, to continue from."""
    return "".join(s + "\n" for s in steps[: upto + 1])


def rollout_prompt(question: str, steps: list[str], upto: int) -> str:
    """The policy prompt plus the prefix of a sample through step ``upto``."""
    return policy_prompt(question) + prefix_text(steps, upto)


def global_prompt(question: str, draft: str) -> str:
    return f"Question: {question.strip()}\nWrong draft:\n{draft.strip()}\nAnswer:\n"


def mark_bad(steps: list[str], bad_idx: int) -> str:
    """The draft with the ``[BAD]`` marker in front of its first bad step."""
    return "\n".join(f"{BAD} {s}" if i == bad_idx else s for i, s in enumerate(steps))


def local_prompt(question: str, steps: list[str], bad_idx: int) -> str:
    """Ends with the good prefix (steps before ``bad_idx``) so the refiner writes the continuation."""
    return (f"Question: {question.strip()}\nDraft:\n{mark_bad(steps, bad_idx)}\nAnswer:\n"
            + prefix_text(steps, bad_idx - 1))
