"""The embedded default world: dependency problems with a verification gap (in the spirit of iGSM,
Ye, Xu, Li, Allen-Zhu 2024, "Physics of Language Models" 2.1).

A question states named quantities as shuffled clauses, each a number or defined from one or two
other quantities, some of them distractors the question does not need::

    pears are plums plus 3. kiwis are twice pears. figs are 4. plums are figs plus limes.
    limes are 2. How many pears are there?

The gold solution computes only the needed quantities, in dependency order (depth-first from the
target), one line per quantity naming it, its definition and its value::

    figs = 4
    limes = 2
    plums = figs + limes = 4 + 2 = 6
    pears = plums + 3 = 6 + 3 = 9
    #### 9

Values are small exact integers (0..``max_value``, one token each), so the arithmetic is easy; the
difficulty is *which* quantity can and must be computed next. That is what makes a verifier useful
here: checking that a line's operands were already computed and that it copies the right clause is
local and easy, while writing the plan is not (in the arithmetic world checking a sum is exactly as
hard as writing it, and reranking cannot help: docs/results/arithmetic.md).

``style: symbolic`` writes the same problems as the prototype that learned binding did
(docs/worlds.md): single-letter names, each clause in the solution line's own syntax, so copying
a clause is a plain copy::

    V = T + I . E = 2 . F = E + 5 . Q = V - F . T = 4 . I = 5 . what is Q ?

    T = 4
    I = 5
    V = T + I = 4 + 5 = 9
    E = 2
    F = E + 5 = 2 + 5 = 7
    Q = V - F = 9 - 7 = 2
    #### 2

Its problems grow backwards from the target (each quantity a number, or defined from one or two new
ones, until ``needed`` are named), distractors hang off any stated quantity, and its text is read
by a whitespace tokenizer (``tokenizer.build_space_tokenizer``).

The oracle (``first_wrong_step``) accepts any valid dependency order and names the first wrong line
of a model-written solution and its kind.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from glore_ray.config import DependencyConfig
from glore_ray.records import Question

NAMES = ["apples", "pears", "plums", "figs", "limes", "kiwis", "dates", "grapes", "melons",
         "lemons", "peaches", "mangos", "olives", "beans", "carrots", "onions", "peppers", "nuts",
         "cherries", "berries", "radishes", "leeks", "peas", "yams"]

# kind -> clause template; ``n`` is the clause's number. Clauses read as the solution line will
# write them ("pears are plums plus 3" -> ``pears = plums + 3``): the model's work is choosing what
# to compute next, not translating prose (measured: with two prose phrasings per kind and a random
# topological gold order, a 0.9M policy was still at 6% greedy after 3,000 steps).
CLAUSES = {
    "num": "{x} are {n}.",
    "add": "{x} are {a} plus {n}.",
    "sub": "{x} are {a} minus {n}.",
    "mul": "{x} are twice {a}.",
    "sum": "{x} are {a} plus {b}.",
    "diff": "{x} are {a} minus {b}.",
}
QUESTION = "How many {x} are there?"
LETTERS = [chr(ord("A") + i) for i in range(26)]
SYMBOLIC_QUESTION = "what is {x} ?"


@dataclass
class Quantity:
    name: str
    kind: str  # num | add | sub | mul | sum | diff
    args: list[str]  # the quantities it is defined from
    n: int | None  # the clause's number (num, add, sub)
    value: int

    def expr(self) -> str:
        """The definition as the solution writes it: ``figs + limes``, ``plums + 3``,
        ``2 * pears``."""
        a = self.args
        return {"num": lambda: str(self.n), "add": lambda: f"{a[0]} + {self.n}",
                "sub": lambda: f"{a[0]} - {self.n}", "mul": lambda: f"2 * {a[0]}",
                "sum": lambda: f"{a[0]} + {a[1]}", "diff": lambda: f"{a[0]} - {a[1]}"}[self.kind]()

    def line(self, values: dict[str, int]) -> str:
        if self.kind == "num":
            return f"{self.name} = {self.n}"
        subst = self.expr()
        for arg in self.args:
            subst = re.sub(rf"\b{arg}\b", str(values[arg]), subst, count=1)
        return f"{self.name} = {self.expr()} = {subst} = {self.value}"


def _apply(kind: str, xs: list[int], n: int | None) -> int:
    return {"num": lambda: n, "add": lambda: xs[0] + n, "sub": lambda: xs[0] - n,
            "mul": lambda: 2 * xs[0], "sum": lambda: xs[0] + xs[1],
            "diff": lambda: xs[0] - xs[1]}[kind]()


@dataclass
class Problem:
    question: str
    quantities: dict[str, Quantity]
    order: list[str]  # the needed quantities in the gold dependency order; the last is the target

    @property
    def target(self) -> str:
        return self.order[-1]

    @property
    def answer(self) -> int:
        return self.quantities[self.target].value

    @property
    def solution(self) -> str:
        values = {k: q.value for k, q in self.quantities.items()}
        return "\n".join([self.quantities[k].line(values) for k in self.order]
                         + [f"#### {self.answer}"])

    def oracle(self, strict: bool = False) -> str:
        o = {"world": "dependency", "target": self.target, "needed": self.order,
             "quantities": {k: [q.kind, q.args, q.n, q.value] for k, q in self.quantities.items()}}
        if strict:  # the world grades whole solutions (worlds.grade)
            o["strict"] = True
        return json.dumps(o)


def _define(rng: random.Random, name: str, args: list[str], values: dict[str, int],
            cfg: DependencyConfig) -> Quantity | None:
    """A random definition of ``name`` from exactly ``args`` with a value in range, or None."""
    hi = cfg.max_value
    kinds = {0: ["num"], 1: ["add", "sub", "mul"], 2: ["sum", "diff"]}[len(args)]
    kind = rng.choice(kinds)
    xs = [values[a] for a in args]
    n = None
    if kind == "num":
        n = rng.randint(1, max(1, hi // 2))
    elif kind in ("add", "sub"):
        n = rng.randint(1, 9)
    value = _apply(kind, xs, n)
    if not 0 <= value <= hi:
        return None
    return Quantity(name, kind, list(args), n, value)


def _pick_args(rng: random.Random, arity: int, unused: list[str], defined: list[str]) -> list[str]:
    """``arity`` operands, the not-yet-used quantities first, so every needed one feeds the
    target."""
    first = rng.sample(unused, min(arity, len(unused)))
    rest = [q for q in defined if q not in first]
    args = first + rng.sample(rest, arity - len(first))
    rng.shuffle(args)
    return args


def _define_retry(rng, name, args, values, cfg) -> Quantity | None:
    for _ in range(20):
        if (q := _define(rng, name, args, values, cfg)) is not None:
            return q
    return None


def _post_order(target: str, quantities: dict[str, Quantity]) -> list[str]:
    """The gold order: depth-first from the target, operands in clause order, each quantity after
    its operands (one canonical order; the oracle accepts any valid one)."""
    out: list[str] = []

    def visit(name: str) -> None:
        if name in out:
            return
        for a in quantities[name].args:
            visit(a)
        out.append(name)

    visit(target)
    return out


def _symbolic_try(rng: random.Random, cfg: DependencyConfig) -> Problem | None:
    """One draw of the symbolic world, or None when a value leaves 0..max_value.

    The needed quantities grow breadth-first from the target: while fewer than ``needed`` are
    named, a quantity is defined from two new ones (``sum``/``diff``) or one (``add``/``sub`` with a
    number 1..9, ``mul`` = twice); the rest are numbers 1..9. Distractors are defined from any
    quantity stated before them (or are numbers) and are used by nothing needed."""
    m = rng.randint(cfg.min_needed, cfg.max_needed)
    k = rng.randint(cfg.min_distractors, cfg.max_distractors)
    names = rng.sample(LETTERS, m + k)
    fresh = iter(names)
    target = next(fresh)
    defs: dict[str, tuple[str, list[str], int | None]] = {}
    frontier, count = [target], 1
    while frontier:
        q = frontier.pop(0)
        if count >= m:
            defs[q] = ("num", [], rng.randint(1, 9))
            continue
        kind = rng.choice(["add", "sub", "mul", "sum", "diff", "add", "sub"])
        if kind in ("sum", "diff") and count + 2 <= m:
            args = [next(fresh), next(fresh)]
            defs[q] = (kind, args, None)
        else:
            kind = "add" if kind in ("sum", "diff") else kind
            args = [next(fresh)]
            defs[q] = (kind, args, None if kind == "mul" else rng.randint(1, 9))
        frontier += args
        count += len(args)
    values: dict[str, int] = {}

    def value(q: str) -> int:
        if q not in values:
            kind, args, n = defs[q]
            values[q] = _apply(kind, [value(a) for a in args], n)
        return values[q]

    value(target)
    if not all(0 <= v <= cfg.max_value for v in values.values()):
        return None
    quantities = {q: Quantity(q, kind, args, n, values[q]) for q, (kind, args, n) in defs.items()}
    order = _post_order(target, quantities)
    for name in names[m:]:
        for _ in range(50):
            kind = rng.choice(["add", "sub", "mul", "num"])
            args = [] if kind == "num" else [rng.choice(list(quantities))]
            n = None if kind == "mul" else rng.randint(1, 9)
            v = _apply(kind, [values[a] for a in args], n)
            if 0 <= v <= cfg.max_value:
                break
        else:
            kind, args, n, v = "num", [], 3, 3
        quantities[name], values[name] = Quantity(name, kind, args, n, v), v
    clauses = [f"{q.name} = {q.expr()} ." for q in quantities.values()]
    if cfg.shuffle:
        rng.shuffle(clauses)
    question = " ".join(clauses + [SYMBOLIC_QUESTION.format(x=target)])
    return Problem(question, quantities, order)


def make_problem(rng: random.Random, cfg: DependencyConfig) -> Problem:
    """A problem in the config's style (see the module docstring)."""
    if cfg.style == "symbolic":
        while (p := _symbolic_try(rng, cfg)) is None:
            pass
        return p
    return _worded_problem(rng, cfg)


def _worded_problem(rng: random.Random, cfg: DependencyConfig) -> Problem:
    """Needed quantities in topological order (rejection-sampled until exactly one, the target,
    is used by nothing), then distractors defined from them and used by none of them."""
    while True:
        n_needed = rng.randint(cfg.min_needed, cfg.max_needed)
        n_distract = rng.randint(cfg.min_distractors, cfg.max_distractors)
        names = rng.sample(NAMES, n_needed + n_distract)
        quantities: dict[str, Quantity] = {}
        values: dict[str, int] = {}
        unused: list[str] = []
        for i, name in enumerate(names[:n_needed]):
            if i == 0:
                arity = 0
            elif i == n_needed - 1:  # the target absorbs whatever is still unused
                arity = max(1, len(unused))
            else:  # operands only from the not-yet-used: the needed quantities form a tree
                arity = min(rng.choice([0, 1, 2, 2]), len(unused))
            if arity > 2:
                break
            args = _pick_args(rng, arity, unused, list(quantities))
            if (q := _define_retry(rng, name, args, values, cfg)) is None:
                break
            quantities[name], values[name] = q, q.value
            unused = [u for u in unused if u not in args] + [name]
        if len(quantities) != n_needed or len(unused) != 1:
            continue
        needed = list(quantities)
        for name in names[n_needed:]:
            args = rng.sample(list(quantities), min(rng.choice([0, 1, 1, 2]), len(quantities)))
            if (q := _define_retry(rng, name, args, values, cfg)) is None:
                break
            quantities[name], values[name] = q, q.value
        if len(quantities) != n_needed + n_distract:
            continue
        clauses = [CLAUSES[q.kind].format(
            x=q.name, n=q.n, a=q.args[0] if q.args else "", b=q.args[1] if len(q.args) > 1 else "")
            for q in quantities.values()]
        if cfg.shuffle:
            rng.shuffle(clauses)
        question = " ".join(clauses + [QUESTION.format(x=needed[-1])])
        return Problem(question, quantities, _post_order(needed[-1], quantities))


def generate(cfg: DependencyConfig, seed: int) -> tuple[list[Question], list[Question]]:
    """Seeded train and test splits; no test problem shares its text with a train problem."""
    train = _generate(cfg.n_train, random.Random(f"dep-train-{seed}"), cfg, "dep-train", set())
    test = _generate(cfg.n_test, random.Random(f"dep-test-{seed}"), cfg, "dep-test",
                     {q.question for q in train})
    return train, test


def validation(cfg: DependencyConfig, seed: int, n: int, exclude: set[str]) -> list[Question]:
    """Held-out *train-distribution* questions (own stream) for choosing recipes and checkpoints."""
    return _generate(n, random.Random(f"dep-val-{seed}"), cfg, "dep-val", exclude)


def _generate(n: int, rng: random.Random, cfg: DependencyConfig, prefix: str,
              exclude: set[str]) -> list[Question]:
    out, texts = [], set()
    while len(out) < n:
        p = make_problem(rng, cfg)
        if p.question in exclude or p.question in texts:
            continue
        texts.add(p.question)
        out.append(Question(qid=f"{prefix}-{len(out):05d}", question=p.question,
                            answer=str(p.answer), gold_solution=p.solution,
                            oracle=p.oracle(cfg.strict)))
    return out


# ---------------------------------------------------------------- the oracle

ERROR_KINDS = ("format", "unknown_quantity", "extra_step", "wrong_clause", "premature", "copy",
               "arithmetic", "missing_step", "wrong_final", "truncated")
_NAME = r"[A-Za-z]+"
_LEAF = re.compile(rf"^({_NAME}) = (\d+)$")
_OP1 = re.compile(rf"^({_NAME}) = ({_NAME}) ([-+]) (\d+) = (\d+) [-+] (\d+) = (-?\d+)$")
_MUL = re.compile(rf"^({_NAME}) = 2 \* ({_NAME}) = 2 \* (\d+) = (-?\d+)$")
_OP2 = re.compile(rf"^({_NAME}) = ({_NAME}) ([-+]) ({_NAME}) = (\d+) [-+] (\d+) = (-?\d+)$")
_FINAL = re.compile(r"^#### (-?\d+)$")


def _parse(line: str):
    """(name, kind, args, clause number as named, operand values written, clause number as
    computed, result written) for a solution line, or None if it is not one."""
    if m := _LEAF.match(line):
        return m[1], "num", [], int(m[2]), [], int(m[2]), int(m[2])
    if m := _MUL.match(line):
        return m[1], "mul", [m[2]], None, [int(m[3])], None, int(m[4])
    if m := _OP1.match(line):
        kind = "add" if m[3] == "+" else "sub"
        return m[1], kind, [m[2]], int(m[4]), [int(m[5])], int(m[6]), int(m[7])
    if m := _OP2.match(line):
        kind = "sum" if m[3] == "+" else "diff"
        return m[1], kind, [m[2], m[4]], None, [int(m[5]), int(m[6])], None, int(m[7])
    return None


def first_wrong_step(solution_text: str, oracle: str | dict) -> tuple[int, str]:
    """Where a model-written solution first goes wrong, accepting any valid dependency order.

    Returns ``(-1, "correct")`` or ``(i, kind)``, ``i`` indexing the non-empty lines; kinds:
    ``format`` (not a solution line), ``unknown_quantity`` (a name the question never states),
    ``extra_step`` (a quantity not needed, or computed twice), ``wrong_clause`` (the definition is
    not the quantity's clause), ``premature`` (an operand not yet computed), ``copy`` (a value
    copied wrong: a clause number or an earlier result), ``arithmetic``, ``missing_step`` (the
    answer line before every needed quantity is computed), ``wrong_final`` (all computed, the
    answer line gives another number), ``truncated`` (no answer line; i == number of lines).
    """
    o = json.loads(oracle) if isinstance(oracle, str) else oracle
    qs = {k: {"kind": v[0], "args": v[1], "n": v[2], "value": v[3]}
          for k, v in o["quantities"].items()}
    needed, target = set(o["needed"]), o["target"]
    lines = [ln.strip() for ln in solution_text.split("\n") if ln.strip()]
    done: set[str] = set()
    for i, line in enumerate(lines):
        if m := _FINAL.match(line):
            if done != needed:
                return i, "missing_step"
            if int(m[1]) != qs[target]["value"]:
                return i, "wrong_final"
            return (-1, "correct") if i == len(lines) - 1 else (i + 1, "extra_step")
        parsed = _parse(line)
        if parsed is None:
            return i, "format"
        name, kind, args, n, written, n_again, result = parsed
        if name not in qs or any(a not in qs for a in args):
            return i, "unknown_quantity"
        if name not in needed or name in done:
            return i, "extra_step"
        q = qs[name]
        same_args = args == q["args"] or (kind == "sum" and sorted(args) == sorted(q["args"]))
        if kind != q["kind"] or not same_args:
            return i, "wrong_clause"
        if any(a not in done for a in args):
            return i, "premature"
        if n != q["n"] or n_again != q["n"] or written != [qs[a]["value"] for a in args]:
            return i, "copy"
        if result != q["value"]:
            return i, "arithmetic"
        done.add(name)
    return len(lines), "truncated"


def symbolic_vocabulary(max_value: int) -> list[str]:
    """Every whitespace-separated token the symbolic world and the prompt templates can write."""
    from glore_ray.prompts import global_prompt, local_prompt, policy_prompt

    templates = [policy_prompt("Q"), global_prompt("Q", "D"), local_prompt("Q", ["D", "D"], 1)]
    words = {w for t in templates for w in t.split()}
    symbols = ["=", "+", "-", "*", ".", "?", "what", "is", "####"]
    numbers = [str(i) for i in range(max(40, max_value) + 1)]
    return sorted(words | set(symbols) | set(LETTERS)) + numbers


def vocabulary() -> list[str]:
    """Every word the worded world can write, for the locally built word-level tokenizer."""
    words: set[str] = set(NAMES)
    for t in [*CLAUSES.values(), QUESTION]:
        words.update(re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", " ", t)))
    words.update(["Question", "Answer", "Draft", "Wrong", "draft", "the", "a"])
    return sorted(words)
