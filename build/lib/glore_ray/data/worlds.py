"""The two generated worlds behind one face: questions, tokenizer and oracle by config or oracle.

``dependency`` (the embedded default) has a verification gap; ``synthetic`` (arithmetic chains) is
its control. A question's ``oracle`` field says which world wrote it (a JSON object for the
dependency world, a JSON list of ``(a, op, b, c)`` for the arithmetic one), so labels, evaluation
and benchmarks grade any model-written solution without knowing the run's config.
"""

from __future__ import annotations

import json

from glore_ray.config import DataConfig
from glore_ray.data.grading import is_correct
from glore_ray.records import Question

GENERATED = ("dependency", "synthetic")


def world_config(d: DataConfig):
    """The active generated world's own config section (``data.dependency`` /
    ``data.synthetic``)."""
    if d.source not in GENERATED:
        raise ValueError(f"data.source {d.source!r} is not a generated world")
    return getattr(d, d.source)


def generate(d: DataConfig, n_train: int | None = None, seed: int | None = None
             ) -> tuple[list[Question], list[Question]]:
    """(train, test) of the active world; ``n_train``/``seed`` override the config's."""
    w = world_config(d)
    if n_train is not None:
        w = w.model_copy(update={"n_train": n_train})
    seed = w.seed if seed is None else seed
    if d.source == "dependency":
        from glore_ray.data import dependency

        return dependency.generate(w, seed)
    from glore_ray.data import synthetic

    return synthetic.generate(w, seed)


def build_world_tokenizer(d: DataConfig):
    from glore_ray.tokenizer import build_tokenizer

    if d.source == "dependency":
        from glore_ray.data import dependency

        if d.dependency.style == "symbolic":
            from glore_ray.tokenizer import build_space_tokenizer

            return build_space_tokenizer(dependency.symbolic_vocabulary(d.dependency.max_value))
        return build_tokenizer(dependency.vocabulary(), whole_numbers=d.dependency.max_value)
    from glore_ray.data import synthetic

    return build_tokenizer(synthetic.vocabulary())


def grade(solution_text: str, answer: str, oracle: str | list | dict = "") -> bool:
    """Whether a solution is right, by the grader of the world that wrote the question: its final
    answer (GSM8K, the arithmetic world, the dependency world), or, for a question of a strict
    dependency world (``data.dependency.strict``), every line (``first_wrong_step`` finds none)."""
    if oracle:
        o = _load(oracle)
        if isinstance(o, dict) and o.get("strict"):
            return first_wrong_step(solution_text, o)[0] == -1
    return is_correct(solution_text, answer)


def _load(oracle: str | list | dict):
    return json.loads(oracle) if isinstance(oracle, str) else oracle


def first_wrong_step(solution_text: str, oracle: str | list | dict) -> tuple[int, str]:
    """``(-1, "correct")`` or ``(first wrong line, kind)`` by the world that wrote the question."""
    o = _load(oracle)
    if isinstance(o, dict):
        from glore_ray.data import dependency

        return dependency.first_wrong_step(solution_text, o)
    from glore_ray.data import synthetic

    return synthetic.first_wrong_step(solution_text, o)


def n_solution_steps(oracle: str | list | dict) -> int:
    """Lines of the gold solution before ``#### n``."""
    o = _load(oracle)
    return len(o["needed"]) if isinstance(o, dict) else len(o)


def oracle_step_labels(solution_text: str, oracle: str | list | dict) -> list[float]:
    """1.0 for every step before the first wrong one, 0.0 from it on."""
    n_lines = len([ln for ln in solution_text.split("\n") if ln.strip()])
    first, _ = first_wrong_step(solution_text, oracle)
    return [1.0 if first == -1 or j < first else 0.0 for j in range(n_lines)]
