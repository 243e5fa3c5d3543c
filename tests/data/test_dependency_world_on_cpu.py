"""The dependency world (the embedded default): reproducible, disjoint splits; gold solutions that
compute only the needed quantities in dependency order; an oracle that accepts any valid order and
names the first wrong line and its kind, tested on hand-written solutions of one problem."""

from __future__ import annotations

import json

import pytest

from glore_ray.config import DependencyConfig
from glore_ray.data import is_correct, split_steps, worlds
from glore_ray.data.dependency import ERROR_KINDS, NAMES, first_wrong_step, generate, validation

CFG = DependencyConfig(n_train=400, n_test=100)

# A hand-made problem: figs = 4, limes = 2, plums = figs + limes, pears = plums + 3 (target),
# kiwis = 2 * pears (a distractor: defined from a needed quantity, needed by nothing).
ORACLE = json.dumps({"world": "dependency", "target": "pears",
                     "needed": ["figs", "limes", "plums", "pears"],
                     "quantities": {"figs": ["num", [], 4, 4], "limes": ["num", [], 2, 2],
                                    "plums": ["sum", ["figs", "limes"], None, 6],
                                    "pears": ["add", ["plums"], 3, 9],
                                    "kiwis": ["mul", ["pears"], None, 18]}})
GOLD = ["figs = 4", "limes = 2", "plums = figs + limes = 4 + 2 = 6",
        "pears = plums + 3 = 6 + 3 = 9", "#### 9"]


def wrong(lines: list[str]) -> tuple[int, str]:
    return first_wrong_step("\n".join(lines), ORACLE)


def test_gold_and_any_valid_order_are_correct():
    assert wrong(GOLD) == (-1, "correct")
    other_order = [GOLD[1], GOLD[0], "plums = limes + figs = 2 + 4 = 6", GOLD[3], GOLD[4]]
    assert wrong(other_order) == (-1, "correct")  # a sum's operands commute, leaves reorder


@pytest.mark.parametrize("lines, expected", [
    (["figs is 4", *GOLD[1:]], (0, "format")),
    (["figs = 4", "dates = 2", *GOLD[2:]], (1, "unknown_quantity")),
    (["figs = 4", "kiwis = 2 * figs = 2 * 4 = 8", *GOLD[1:]], (1, "extra_step")),  # not needed
    (["figs = 4", "figs = 4", *GOLD[1:]], (1, "extra_step")),  # computed twice
    (["figs = 4", "limes = 2", "plums = figs - limes = 4 - 2 = 2", *GOLD[3:]], (2, "wrong_clause")),
    (["figs = 4", "limes = 2", "pears = figs + 3 = 4 + 3 = 7", *GOLD[3:]], (2, "wrong_clause")),
    (["figs = 4", "limes = 2", "plums = figs + limes = 4 + 2 = 6", "pears = plums - 3 = 6 - 3 = 3",
      "#### 3"], (3, "wrong_clause")),  # the right operand, the wrong operation
    (["figs = 4", "plums = figs + limes = 4 + 2 = 6", "limes = 2", *GOLD[3:]], (1, "premature")),
    (["figs = 5", *GOLD[1:]], (0, "copy")),  # a clause number copied wrong
    (["figs = 4", "limes = 2", "plums = figs + limes = 4 + 3 = 7", *GOLD[3:]], (2, "copy")),
    (["figs = 4", "limes = 2", "plums = figs + limes = 4 + 2 = 6", "pears = plums + 3 = 6 + 4 = 10",
      "#### 10"], (3, "copy")),  # the clause's number changed between definition and values
    (["figs = 4", "limes = 2", "plums = figs + limes = 4 + 2 = 7", *GOLD[3:]], (2, "arithmetic")),
    (["figs = 4", "limes = 2", "plums = figs + limes = 4 + 2 = 6", "#### 6"], (3, "missing_step")),
    ([*GOLD[:4], "#### 6"], (4, "wrong_final")),
    (GOLD[:4], (4, "truncated")),
    ([*GOLD, "#### 9"], (5, "extra_step")),
])
def test_each_error_kind_on_hand_written_solutions(lines, expected):
    assert wrong(lines) == expected
    assert expected[1] in ERROR_KINDS


def test_oracle_step_labels_and_dispatch():
    text = "\n".join(["figs = 4", "plums = figs + limes = 4 + 2 = 6", "limes = 2", *GOLD[3:]])
    assert worlds.oracle_step_labels(text, ORACLE) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert worlds.first_wrong_step("\n".join(GOLD), ORACLE) == (-1, "correct")
    assert worlds.n_solution_steps(ORACLE) == 4


def test_strict_world_grades_every_line_and_the_plain_world_only_the_answer():
    extra = ["figs = 4", "kiwis = 2 * figs = 2 * 4 = 8", *GOLD[1:]]  # right answer, unneeded line
    strict = json.dumps({**json.loads(ORACLE), "strict": True})
    assert worlds.grade("\n".join(extra), "9", ORACLE)  # the final answer decides
    assert not worlds.grade("\n".join(extra), "9", strict)  # the first wrong line is fatal
    assert worlds.grade("\n".join(GOLD), "9", strict)
    assert not worlds.grade("\n".join([*GOLD[:4], "#### 6"]), "9", ORACLE)
    assert worlds.grade("\n".join(GOLD), "9")  # no oracle (GSM8K): the final answer
    # the flag travels in every question's oracle; the problems themselves do not change
    plain, _ = generate(DependencyConfig(n_train=20, n_test=5), 0)
    marked, _ = generate(DependencyConfig(n_train=20, n_test=5, strict=True), 0)
    assert [q.question for q in plain] == [q.question for q in marked]
    assert all(json.loads(q.oracle).get("strict") is True for q in marked)
    assert all("strict" not in json.loads(q.oracle) for q in plain)


def test_seeded_disjoint_and_validation_is_separate():
    tr1, te1 = generate(CFG, seed=3)
    tr2, _ = generate(CFG, seed=3)
    assert [q.question for q in tr1] == [q.question for q in tr2]
    assert {q.question for q in tr1}.isdisjoint({q.question for q in te1})
    val = validation(CFG, 3, 50, {q.question for q in tr1 + te1})
    assert len(val) == 50 and not {q.question for q in val} & {q.question for q in tr1 + te1}


def test_gold_solutions_compute_exactly_the_needed_quantities_in_order():
    train, test = generate(CFG, seed=0)
    for q in train + test:
        o = json.loads(q.oracle)
        steps = split_steps(q.gold_solution)
        needed, quantities = o["needed"], o["quantities"]
        assert CFG.min_needed <= len(needed) <= CFG.max_needed
        n_distract = len(quantities) - len(needed)
        assert CFG.min_distractors <= n_distract <= CFG.max_distractors
        assert [s.split(" = ")[0] for s in steps[:-1]] == needed  # one line per needed quantity
        for name in needed:  # depth-first from the target: each line right after its operands
            args = quantities[name][1]
            if args:
                assert needed.index(args[-1]) < needed.index(name)
        assert needed[-1] == o["target"] and steps[-1] == f"#### {q.answer}"
        assert is_correct(q.gold_solution, q.answer)
        assert first_wrong_step(q.gold_solution, q.oracle) == (-1, "correct")
        seen: set[str] = set()
        for name in needed:  # dependency order: operands before use; every value in range
            kind, args, n, value = quantities[name]
            assert set(args) <= seen and 0 <= value <= CFG.max_value
            seen.add(name)
        used = {a for k in needed for a in quantities[k][1]}
        assert set(needed) - used == {o["target"]}  # every needed quantity feeds the target
        assert not used & (set(quantities) - set(needed))  # distractors feed nothing needed
        clauses = q.question.split(". ")
        for name in quantities:  # each quantity is defined by exactly one clause
            assert sum(c.startswith(f"{name} are ") for c in clauses) == 1, (name, q.question)
        assert q.question.endswith(f"How many {o['target']} are there?")


def test_knobs_move_the_problem():
    easy = DependencyConfig(min_needed=2, max_needed=2, min_distractors=0, max_distractors=0,
                            shuffle=False, n_train=20, n_test=1)
    train, _ = generate(easy, seed=1)
    for q in train:
        o = json.loads(q.oracle)
        assert len(o["needed"]) == 2 and len(o["quantities"]) == 2
        # unshuffled: the clauses come in dependency order, so the leaf is stated first
        assert q.question.startswith(f"{o['needed'][0]} are ")
    with pytest.raises(ValueError):
        DependencyConfig(min_needed=6, max_needed=3)
    with pytest.raises(ValueError):
        DependencyConfig(max_needed=17)  # the config's bounds keep needed + distractors <= 24 names
    assert len(set(NAMES)) == len(NAMES) == 24
