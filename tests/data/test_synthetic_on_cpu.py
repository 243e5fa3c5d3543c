"""The synthetic world: reproducible, disjoint splits, gold solutions that grade right, and an
oracle that finds the first wrong step of every kind of mistake."""

from __future__ import annotations

import json

import pytest

from glore_ray.config import SyntheticConfig
from glore_ray.data import is_correct, split_steps
from glore_ray.data.synthetic import first_wrong_step, generate, oracle_step_labels

CFG = SyntheticConfig(n_train=500, n_test=100)


def test_seeded_and_disjoint():
    tr1, te1 = generate(CFG, seed=3)
    tr2, te2 = generate(CFG, seed=3)
    assert [q.question for q in tr1] == [q.question for q in tr2]
    assert [q.question for q in te1] == [q.question for q in te2]
    assert {q.question for q in tr1}.isdisjoint({q.question for q in te1})
    other, _ = generate(CFG, seed=4)
    assert [q.question for q in other] != [q.question for q in tr1]


def test_gold_solutions_are_consistent():
    train, test = generate(CFG, seed=0)
    for q in train + test:
        steps = split_steps(q.gold_solution)
        gold = json.loads(q.oracle)
        assert CFG.min_ops <= len(gold) <= CFG.max_ops
        assert len(steps) == len(gold) + 1 and steps[-1].startswith("####")
        assert is_correct(q.gold_solution, q.answer)
        assert first_wrong_step(q.gold_solution, q.oracle) == (-1, "correct")
        for a, op, b, c in gold:
            assert 1 <= c <= CFG.max_value
            assert eval(f"{a} {op} {b}") == c  # exact ÷ by construction


def test_knobs_are_respected():
    cfg = SyntheticConfig(min_ops=3, max_ops=3, ops=["add"], max_operand=20, n_train=50, n_test=10)
    train, _ = generate(cfg, seed=1)
    for q in train:
        gold = json.loads(q.oracle)
        assert len(gold) == 3 and all(op == "+" for _, op, _, _ in gold)
        assert all(2 <= b <= 20 for _, _, b, _ in gold)


ORACLE = json.dumps([[23, "+", 45, 68], [68, "-", 12, 56], [56, "*", 2, 112]])


@pytest.mark.parametrize("text, expected", [
    ("23 + 45 = 68\n68 - 12 = 56\n56 * 2 = 112\n#### 112", (-1, "correct")),
    ("45 + 23 = 68\n68 - 12 = 56\n56 * 2 = 112\n#### 112", (-1, "correct")),  # commutes
    ("23 + 45 = 78\n78 - 12 = 66\n66 * 2 = 132\n#### 132", (0, "arithmetic")),
    ("23 + 45 = 68\n68 - 21 = 47\n47 * 2 = 94\n#### 94", (1, "wrong_operand")),
    ("23 + 45 = 68\n68 - 12 = 56\n#### 56", (2, "missing_step")),
    ("23 + 45 = 68\n68 - 12 = 56\n56 * 2 = 112\n112 + 1 = 113\n#### 113", (3, "extra_step")),
    ("23 + 45 = 68\n68 - 12 = 56\n56 * 2 = 112\n#### 111", (3, "wrong_answer")),
    ("23 + 45 = 68\n68 - 12 = 56", (2, "truncated")),
    ("23 + 45 = 68\nsixty-eight minus twelve\n", (1, "format")),
    ("23 + 45 = 68\n68 - 12 = 56\n56 * 2 = 112\n#### 112\n#### 112", (4, "extra_step")),
    # A wrong step followed by a recovered answer is still wrong at that step.
    ("23 + 45 = 69\n68 - 12 = 56\n56 * 2 = 112\n#### 112", (0, "arithmetic")),
])
def test_oracle_first_wrong_step(text, expected):
    assert first_wrong_step(text, ORACLE) == expected


def test_oracle_step_labels():
    assert oracle_step_labels("23 + 45 = 68\n68 - 21 = 47\n47 * 2 = 94\n#### 94", ORACLE) == \
        [1.0, 0.0, 0.0, 0.0]
    assert oracle_step_labels("23 + 45 = 68\n68 - 12 = 56\n56 * 2 = 112\n#### 112", ORACLE) == \
        [1.0] * 4


def test_worlds_dispatches_arithmetic_oracles_to_this_world():
    from glore_ray.data import worlds

    train, _ = generate(CFG, seed=0)
    q = train[0]
    wrong = q.gold_solution.replace(" = ", " = 1", 1)  # a slip in the first line's result
    for text in (q.gold_solution, wrong):
        assert worlds.first_wrong_step(text, q.oracle) == first_wrong_step(text, q.oracle)
        assert worlds.oracle_step_labels(text, q.oracle) == oracle_step_labels(text, q.oracle)
    assert worlds.first_wrong_step(wrong, q.oracle)[1] == "arithmetic"
    assert worlds.n_solution_steps(q.oracle) == len(json.loads(q.oracle))
