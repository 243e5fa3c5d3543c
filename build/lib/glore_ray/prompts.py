"""Prompt templates, in one place: the label/build stage, training and serving all import these,
so a refiner is always asked the question the way it was trained.

Policy:         "Question: {q}\nAnswer:\n"                                   -> solution
Global refiner: "Question: {q}\nWrong draft:\n{draft}\nAnswer:\n"            -> full solution
Local refiner:  "Question: {q}\nDraft:\n{draft with [BAD] before the first
                 bad step}\nAnswer:\n{steps before the bad one}\n"            -> continuation

``policy.chat_template=true`` (instruct models): where a prompt meets a tokenizer (the engines, the
trainers' encoders, the reward scorer) ``chat`` puts everything before ``Answer:\n`` in one user
turn of the tokenizer's chat template; the text after it (a prefix to continue) follows the
assistant header.
"""

from __future__ import annotations

BAD = "[BAD]"
ANSWER = "Answer:\n"  # where every prompt hands over to the model


def policy_prompt(question: str) -> str:
    return f"Question: {question.strip()}\n{ANSWER}"


def chat(prompt: str, tokenizer) -> str:
    """A project prompt in ``tokenizer``'s chat template: the part before the first ``Answer:\n``
    as the user's turn, the rest after the assistant header (SmolLM2-Instruct)::

        chat("Question: 2+3?\nAnswer:\n2 + 3 = 5\n", tok)
        # "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\nQuestion: 2+3?<|im_end|>\n"
        # "<|im_start|>assistant\n2 + 3 = 5\n"
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"policy.chat_template=true, but the tokenizer of "
                         f"{getattr(tokenizer, 'name_or_path', '?')} has no chat template")
    user, sep, prefix = prompt.partition(ANSWER)
    if not sep:
        raise ValueError(f"not a project prompt (no {ANSWER!r}): {prompt[:80]!r}")
    head = tokenizer.apply_chat_template([{"role": "user", "content": user.strip()}],
                                         tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and head.startswith(bos) and tokenizer("a")["input_ids"][:1] == [
            tokenizer.bos_token_id]:
        head = head[len(bos):]  # the tokenizer adds BOS itself (Llama 3): not twice
    return head + prefix


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
    """Ends with the good prefix (steps before ``bad_idx``) so the refiner writes the
    continuation."""
    return (f"Question: {question.strip()}\nDraft:\n{mark_bad(steps, bad_idx)}\nAnswer:\n"
            + prefix_text(steps, bad_idx - 1))
