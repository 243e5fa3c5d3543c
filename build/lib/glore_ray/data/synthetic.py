"""The arithmetic world (the control, configs/arithmetic.yaml): GSM8K-shaped word problems with
a known answer at every step.

A problem is a start value and a chain of operations told in words; its gold solution is one line
``a op b = c`` per operation and a final ``#### c`` line::

    Mia has 23 shells. She finds 45 more shells. Then she gives away 12 shells.
    Then the number of shells doubles. How many shells does Mia have now?
    23 + 45 = 68
    68 - 12 = 56
    56 * 2 = 112
    #### 112

Because the world is generated, the *oracle* (``first_wrong_step``) can say for any model-written
solution which step is the first wrong one — the ground truth that the GLoRe paper had to estimate
by hand-checking labels.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from glore_ray.config import SyntheticConfig
from glore_ray.records import Question

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Ben", "Eva", "Max", "Lily", "Noah",
         "Emma", "Jack", "Ruby", "Owen"]
SHE = {"Mia", "Ava", "Zoe", "Ivy", "Eva", "Lily", "Emma", "Ruby"}
OBJECTS = ["apples", "shells", "stickers", "coins", "marbles", "books", "cards", "pens", "cookies",
           "stamps", "beads", "toys"]
FRIENDS = ["a friend", "a cousin", "a classmate", "a neighbor", "the teacher"]
OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

START = ["{name} has {a} {obj}.", "{name} starts with {a} {obj}.",
         "There are {a} {obj} in {name}'s box."]
PHRASES = {
    "add": ["{Pro} buys {b} more {obj}.", "{Pro} finds {b} more {obj}.",
            "Then {pro} gets {b} more {obj} from {friend}.", "{Pro} wins {b} {obj}."],
    "sub": ["{Pro} gives away {b} {obj}.", "Then {pro} loses {b} {obj}.",
            "{Pro} sells {b} {obj}.", "{Pro} gives {b} {obj} to {friend}."],
    "mul2": ["Then the number of {obj} doubles.", "{Pro} doubles the {obj}.",
             "{Pro} ends up with 2 times as many {obj}."],
    "mul3": ["Then the number of {obj} triples.", "{Pro} triples the {obj}.",
             "{Pro} ends up with 3 times as many {obj}."],
    "div2": ["{Pro} keeps half of the {obj}.", "Then {pro} gives half of the {obj} to {friend}.",
             "{Pro} splits the {obj} into 2 equal groups and keeps one."],
    "div3": ["{Pro} keeps a third of the {obj}.",
             "{Pro} splits the {obj} into 3 equal groups and keeps one."],
}
QUESTION = ["How many {obj} does {name} have now?", "How many {obj} are left?",
            "How many {obj} does {name} end with?"]

Step = tuple[int, str, int, int]  # (a, symbol, b, c)


@dataclass
class Problem:
    question: str
    steps: list[Step]

    @property
    def answer(self) -> int:
        return self.steps[-1][3]

    @property
    def solution(self) -> str:
        lines = [f"{a} {op} {b} = {c}" for a, op, b, c in self.steps]
        return "\n".join(lines + [f"#### {self.answer}"])


def _choose_op(rng: random.Random, value: int, cfg: SyntheticConfig) -> tuple[str, str, int] | None:
    """Pick a feasible (kind, phrase key, operand) for the current value, or None."""
    options: list[tuple[str, str, int]] = []
    lo, hi = cfg.min_operand, cfg.max_operand
    if "add" in cfg.ops and value + lo <= cfg.max_value:
        options.append(("add", "add", rng.randint(lo, min(hi, cfg.max_value - value))))
    if "sub" in cfg.ops and value - lo >= 1:
        options.append(("sub", "sub", rng.randint(lo, min(hi, value - 1))))
    if "mul" in cfg.ops:
        ks = [k for k in (2, 3) if value * k <= cfg.max_value]
        if ks:
            k = rng.choice(ks)
            options.append(("mul", f"mul{k}", k))
    if "div" in cfg.ops:
        ks = [k for k in (2, 3) if value % k == 0 and value // k >= 1]
        if ks:
            k = rng.choice(ks)
            options.append(("div", f"div{k}", k))
    return rng.choice(options) if options else None


def make_problem(rng: random.Random, cfg: SyntheticConfig) -> Problem:
    while True:
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        pro = "she" if name in SHE else "he"
        value = rng.randint(cfg.min_operand, cfg.max_operand)
        sentences = [rng.choice(START).format(name=name, a=value, obj=obj)]
        steps: list[Step] = []
        for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
            choice = _choose_op(rng, value, cfg)
            if choice is None:
                break
            kind, key, b = choice
            c = {"add": value + b, "sub": value - b, "mul": value * b, "div": value // b}[kind]
            friend = rng.choice(FRIENDS)
            sentences.append(rng.choice(PHRASES[key]).format(
                Pro=pro.capitalize(), pro=pro, b=b, obj=obj, friend=friend))
            steps.append((value, OP_SYMBOL[kind], b, c))
            value = c
        if len(steps) >= cfg.min_ops:
            sentences.append(rng.choice(QUESTION).format(obj=obj, name=name))
            return Problem(" ".join(sentences), steps)


def generate(cfg: SyntheticConfig, seed: int) -> tuple[list[Question], list[Question]]:
    """Seeded train and test splits; no test problem shares its text with a train problem."""
    train = _generate(cfg.n_train, random.Random(f"train-{seed}"), cfg, "syn-train", set())
    seen = {q.question for q in train}
    test = _generate(cfg.n_test, random.Random(f"test-{seed}"), cfg, "syn-test", seen)
    return train, test


def _generate(n: int, rng: random.Random, cfg: SyntheticConfig, prefix: str,
              exclude: set[str]) -> list[Question]:
    out, texts = [], set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"synthetic world too small for {n} distinct problems; "
                             "widen the knobs")
        p = make_problem(rng, cfg)
        if p.question in exclude or p.question in texts:
            continue
        texts.add(p.question)
        out.append(Question(qid=f"{prefix}-{len(out):05d}", question=p.question,
                            answer=str(p.answer), gold_solution=p.solution,
                            oracle=json.dumps(p.steps)))
    return out


# ---------------------------------------------------------------- the oracle

_EQ = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_FINAL = re.compile(r"^\s*####\s*(-?\d+)\s*$")


def _apply(x: int, op: str, y: int) -> int | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return x // y if y != 0 and x % y == 0 else None


def first_wrong_step(solution_text: str, oracle: str | list) -> tuple[int, str]:
    """Where a model-written solution first goes wrong, by the world's ground truth.

    Returns ``(-1, "correct")`` for a flawless solution, else ``(i, kind)`` where ``i`` indexes the
    solution's non-empty lines and kind is one of: ``format`` (not an equation), ``wrong_operand``,
    ``arithmetic`` (x op y != z), ``missing_step`` (the answer line comes too early),
    ``extra_step``, ``wrong_answer`` (the final line disagrees with a right chain),
    ``truncated`` (no final line; i == number of lines).
    """
    gold = [tuple(s) for s in (json.loads(oracle) if isinstance(oracle, str) else oracle)]
    lines = [ln.strip() for ln in solution_text.split("\n") if ln.strip()]
    n = len(gold)
    for i, line in enumerate(lines):
        if i < n:
            a, op, b, c = gold[i]
            if _FINAL.match(line):
                return i, "missing_step"
            m = _EQ.match(line)
            if not m:
                return i, "format"
            x, mop, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            same = (x, y) == (a, b) or (op in "+*" and (y, x) == (a, b))
            if mop != op or not same:
                return i, "wrong_operand"
            if z != c:
                return i, "arithmetic"
        elif i == n:
            m = _FINAL.match(line)
            if not m:
                return i, "extra_step" if _EQ.match(line) else "format"
            if int(m.group(1)) != gold[-1][3]:
                return i, "wrong_answer"
        else:
            return i, "extra_step"
    if len(lines) <= n:
        return len(lines), "truncated"
    return -1, "correct"


def oracle_step_labels(solution_text: str, oracle: str | list) -> list[float]:
    """1.0 for every step before the first wrong one, 0.0 from it on."""
    n_lines = len([ln for ln in solution_text.split("\n") if ln.strip()])
    first, _ = first_wrong_step(solution_text, oracle)
    return [1.0 if first == -1 or j < first else 0.0 for j in range(n_lines)]


# ---------------------------------------------------------------- the tokenizer vocabulary

def vocabulary() -> list[str]:
    """Every word the world can write, for the locally built word-level tokenizer."""
    words: set[str] = set(NAMES) | set(OBJECTS) | {"he", "she", "He", "She"}
    texts = START + QUESTION + FRIENDS + [p for v in PHRASES.values() for p in v]
    for t in texts:
        words.update(re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", " ", t)))
    # the words of the prompt templates in prompts.py
    words.update(["Question", "Answer", "Draft", "Wrong", "draft", "the", "a"])
    return sorted(words)
