"""The dependency world's symbolic style (the format a 0.9M policy learns binding in): problems
grown back from the target, clauses in the solution line's own syntax, a whitespace tokenizer whose
ids are one per name wherever it stands and whose decoding gives the text back."""

from __future__ import annotations

import random

import pytest

from glore_ray.config import DataConfig, DependencyConfig
from glore_ray.data import dependency, worlds
from glore_ray.prompts import global_prompt, local_prompt, policy_prompt

CFG = DependencyConfig(style="symbolic", min_needed=3, max_needed=10, min_distractors=2,
                       max_distractors=5, max_value=20, n_train=300, n_test=50)


@pytest.fixture(scope="module")
def problems():
    rng = random.Random(0)
    return [dependency.make_problem(rng, CFG) for _ in range(300)]


@pytest.fixture(scope="module")
def tok():
    return worlds.build_world_tokenizer(DataConfig(source="dependency", dependency=CFG))


def test_problems_follow_the_knobs_and_grade_their_gold(problems):
    for p in problems:
        needed, stated = len(p.order), len(p.quantities)
        assert CFG.min_needed <= needed <= CFG.max_needed
        assert CFG.min_distractors <= stated - needed <= CFG.max_distractors
        assert all(0 <= q.value <= CFG.max_value for q in p.quantities.values())
        assert all(len(q.name) == 1 and q.name.isupper() for q in p.quantities.values())
        assert p.question.endswith(f"what is {p.target} ?")
        # every clause is written as its solution line begins: "V = T + I ."
        for q in p.quantities.values():
            assert f"{q.name} = {q.expr()} ." in p.question
        assert dependency.first_wrong_step(p.solution, p.oracle()) == (-1, "correct")
        # distractors are needed by nothing that is needed
        used = {a for k in p.order for a in p.quantities[k].args}
        assert used <= set(p.order)


def test_sizes_spread_over_the_range(problems):
    sizes = {len(p.order) for p in problems}
    assert sizes == set(range(CFG.min_needed, CFG.max_needed + 1))


def test_splits_are_reproducible_and_disjoint():
    a_train, a_test = dependency.generate(CFG, 0)
    b_train, _ = dependency.generate(CFG, 0)
    assert [q.question for q in a_train] == [q.question for q in b_train]
    assert not {q.question for q in a_train} & {q.question for q in a_test}
    assert [q.question for q in dependency.generate(CFG, 1)[0]] != [q.question for q in a_train]


def test_oracle_names_the_binding_and_planning_errors_in_symbolic_lines(problems):
    p = next(p for p in problems if len(p.order) >= 4)
    lines, o = p.solution.split("\n"), p.oracle()
    # planning: the target's line first, before its operands exist
    early = [lines[len(p.order) - 1], *lines[: len(p.order) - 1], *lines[len(p.order):]]
    assert dependency.first_wrong_step("\n".join(early), o) == (0, "premature")
    # binding: the first line's name with another quantity's clause
    first = p.quantities[p.order[0]]
    other = next(q for q in p.quantities.values() if q.args)
    values = {k: q.value for k, q in p.quantities.items()}
    bad = [first.name + other.line(values)[len(other.name):], *lines[1:]]
    assert dependency.first_wrong_step("\n".join(bad), o) == (0, "wrong_clause")
    # binding: the right clause, a number copied wrong
    bad = [f"{first.name} = {first.n % 9 + 1}", *lines[1:]]
    assert dependency.first_wrong_step("\n".join(bad), o) == (0, "copy")


def test_every_name_is_one_id_wherever_it_stands(tok, problems):
    p = problems[0]
    text = policy_prompt(p.question) + p.solution
    pieces = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert " " not in "".join(pieces)
    for name in p.quantities:
        assert tok.convert_tokens_to_ids(name) != tok.unk_token_id
    assert tok.unk_token not in pieces


def test_decode_gives_every_template_back(tok, problems):
    for p in problems[:100]:
        steps = p.solution.split("\n")
        for text in [policy_prompt(p.question) + p.solution, global_prompt(p.question, p.solution),
                     local_prompt(p.question, steps, 2)]:
            ids = tok(text)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids, skip_special_tokens=True) == text


def test_decoding_grows_by_appending(tok, problems):
    """An incremental detokenizer (vLLM) emits the difference of successive decodings."""
    ids = tok(policy_prompt(problems[1].question) + problems[1].solution)["input_ids"]
    prev = ""
    for i in range(1, len(ids) + 1):
        cur = tok.decode(ids[:i], skip_special_tokens=True)
        assert cur.startswith(prev)
        prev = cur


def test_the_tokenizer_survives_a_save(tok, problems, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = policy_prompt(problems[2].question) + problems[2].solution
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.decode(again(text)["input_ids"], skip_special_tokens=True) == text
