"""GSM8K loading: local jsonl files, the Hugging Face hub, and OpenAI's
labelled example model solutions.

Every GSM8K loader returns rows of the same shape::

    {"qid": "train-00000", "question": str,
     "answer": "72",            # normalised final number
     "gold_solution": str}      # full reference solution ending in "#### 72"
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .grading import extract_answer

__all__ = [
    "EXAMPLE_MODEL_KEYS",
    "default_gsm8k_dir",
    "load_example_solutions",
    "load_gsm8k_hub",
    "load_gsm8k_jsonl",
]

# Models whose sampled solutions are stored per question in
# example_model_solutions.jsonl (fine-tuned vs. verifier-reranked, 6B / 175B).
EXAMPLE_MODEL_KEYS: tuple[str, ...] = (
    "6b_finetuning",
    "6b_verification",
    "175b_finetuning",
    "175b_verification",
)

_ENV_DIR = "GLORE_GSM8K_DIR"


def default_gsm8k_dir() -> Path:
    """Directory holding GSM8K's train/test/example_model_solutions jsonl.

    ``$GLORE_GSM8K_DIR`` wins.  Otherwise ``shared/data/gsm8k`` is looked for
    beside the repository (``<repo>/../shared``, the dev and CI layout) and
    then inside it (``<repo>/shared``, the layout of copied working trees);
    the sibling path is returned when neither exists so errors name it.
    """
    env = os.environ.get(_ENV_DIR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    sibling = repo.parent / "shared" / "data" / "gsm8k"
    inside = repo / "shared" / "data" / "gsm8k"
    for candidate in (sibling, inside):
        if candidate.is_dir():
            return candidate
    return sibling


def _gsm8k_row(qid: str, question: Any, solution: Any, where: str) -> dict[str, str]:
    """Validate one GSM8K record and build the common row; ``where`` locates errors."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(solution, str) or not solution.strip():
        raise ValueError(f"{where}: 'answer' must be a non-empty string")
    answer = extract_answer(solution)
    if answer is None:
        raise ValueError(f"{where}: 'answer' has no parsable final '#### n' line")
    return {"qid": qid, "question": question, "answer": answer, "gold_solution": solution}


def _read_jsonl(path: str | os.PathLike[str]) -> Iterable[tuple[str, int, dict[str, Any]]]:
    """Yield (location, line number, object) for each non-blank line of a jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # tolerate blank lines, e.g. a trailing newline
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, lineno, obj


def load_gsm8k_jsonl(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Load a GSM8K jsonl split (``{"question", "answer"}`` per line).

    qids are ``f"{file stem}-{index:05d}"`` with index counting records, so
    ``train.jsonl`` gives ``train-00000`` ... matching :func:`load_gsm8k_hub`.
    """
    path = Path(path)
    split_name = path.stem
    rows: list[dict[str, str]] = []
    for where, _, obj in _read_jsonl(path):
        qid = f"{split_name}-{len(rows):05d}"
        rows.append(_gsm8k_row(qid, obj.get("question"), obj.get("answer"), where))
    if not rows:
        raise ValueError(f"GSM8K file is empty: {path}")
    return rows


def load_gsm8k_hub(
    split: str, name: str = "openai/gsm8k", config: str = "main"
) -> list[dict[str, str]]:
    """Load a GSM8K split from the Hugging Face hub (needs network and ``datasets``)."""
    # Imported lazily: `datasets` is heavy and optional; local jsonl needs none of it.
    from datasets import load_dataset

    dataset = load_dataset(name, config, split=split)
    rows: list[dict[str, str]] = []
    for index, record in enumerate(dataset):
        where = f"{name}[{config}] {split} #{index}"
        rows.append(
            _gsm8k_row(f"{split}-{index:05d}", record["question"], record["answer"], where)
        )
    if not rows:
        raise ValueError(f"{name}[{config}] split {split!r} is empty")
    return rows


def load_example_solutions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Flatten OpenAI's ``example_model_solutions.jsonl`` into one row per solution.

    Each line holds a question, a ``ground_truth`` solution ending in ``A: n``
    and, per model key in :data:`EXAMPLE_MODEL_KEYS`, ``{"is_correct", "solution"}``.
    Rows: ``{"question", "gold_answer" (normalised number), "model", "solution",
    "is_correct" (OpenAI's label)}``, in file order then model-key order.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    for where, _, obj in _read_jsonl(path):
        question = obj.get("question")
        ground_truth = obj.get("ground_truth")
        if not isinstance(question, str) or not isinstance(ground_truth, str):
            raise ValueError(f"{where}: needs string 'question' and 'ground_truth'")
        gold = extract_answer(ground_truth)
        if gold is None:
            raise ValueError(f"{where}: 'ground_truth' has no parsable final answer")
        for model in EXAMPLE_MODEL_KEYS:
            entry = obj.get(model)
            if not isinstance(entry, Mapping) or not isinstance(entry.get("solution"), str):
                raise ValueError(f"{where}: missing or malformed entry {model!r}")
            label = entry.get("is_correct")
            if not isinstance(label, bool):
                raise ValueError(f"{where}: {model!r}.is_correct must be a bool")
            rows.append(
                {
                    "question": question,
                    "gold_answer": gold,
                    "model": model,
                    "solution": entry["solution"],
                    "is_correct": label,
                }
            )
    if not rows:
        raise ValueError(f"example solutions file is empty: {path}")
    return rows
