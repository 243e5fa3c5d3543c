"""The one small interface both engines implement: generate ``n`` completions for each prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

_FINAL_LINE = re.compile(r"^[ \t]*####[^\n]*", re.MULTILINE)


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 96
    seed: int = 0


@dataclass
class Completion:
    text: str
    n_tokens: int


def truncate_at_answer(text: str) -> str:
    """Cut a completion at the end of its first ``#### n`` line: the answer ends the solution."""
    m = _FINAL_LINE.search(text)
    return text[: m.end()] if m else text


class Engine(Protocol):
    name: str
    max_model_len: int  # prompt + generated tokens; callers check with engines.context.fitting

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Prompt tokens as the engine will see them."""
        ...

    def generate(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        """``len(prompts)`` lists of ``spec.n`` completions (continuations only, truncated at the
        answer line)."""
        ...


class ChatPrompts:
    """An engine whose prompts go through the model's chat template first
    (``policy.chat_template``, ``prompts.chat``); everything else is the wrapped engine's."""

    def __init__(self, engine, tokenizer):
        self.engine, self.tokenizer, self.name = engine, tokenizer, engine.name

    def generate(self, prompts: list[str], spec: SamplingSpec,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        from glore_ray.prompts import chat

        return self.engine.generate([chat(p, self.tokenizer) for p in prompts], spec, seeds)

    def count_tokens(self, prompts: list[str]) -> list[int]:
        from glore_ray.prompts import chat

        return self.engine.count_tokens([chat(p, self.tokenizer) for p in prompts])

    def __getattr__(self, name):  # start_seconds, model, llm, ...
        return getattr(self.engine, name)
