"""Budgeted labelling: the binary search over prefixes, driven by a deterministic generate built
from the synthetic oracle (the search logic is under test here), and once by the real engine."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from glore_ray.config import LabelConfig, SyntheticConfig
from glore_ray.data.grading import is_correct
from glore_ray.data.synthetic import first_wrong_step
from glore_ray.data.synthetic import generate as make_world
from glore_ray.method.budgeted import search
from glore_ray.method.labels import label_sample
from glore_ray.method.prefixes import n_prefixes
from glore_ray.prompts import prefix_text, rollout_prompt
from glore_ray.records import Rollout

OFF = LabelConfig(monotone=False, intermediate_check=False, balance=False)


def world_items(n_q: int = 12) -> list[dict]:
    """Per question: the gold solution (correct) and one slip at every step (wrong samples)."""
    train, _ = make_world(SyntheticConfig(n_train=n_q, n_test=1), seed=0)
    items = []
    for q in train:
        gold = q.gold_solution.split("\n")
        for j in range(len(gold)):
            steps = list(gold)
            if j < len(gold) - 1:
                a, c = steps[j].rsplit("= ", 1)
                steps[j] = f"{a}= {int(c) + 10}"
            else:
                steps[j] = f"#### {int(gold[-1][5:]) + 1}"
            items.append({"qid": q.qid, "sample_id": j, "question": q.question,
                          "answer": q.answer, "steps": steps, "oracle": q.oracle, "gold": gold,
                          "correct": is_correct("\n".join(steps), q.answer)})
        items.append({"qid": q.qid, "sample_id": 99, "question": q.question, "answer": q.answer,
                      "steps": gold, "oracle": q.oracle, "gold": gold, "correct": True})
    return items


class OraclePolicy:
    """From a clean prefix through step i the (i+1)-th draw and later ones finish the gold chain;
    from a prefix holding a wrong step every draw fails. Counts the calls and rollouts."""

    def __init__(self, items: list[dict]):
        self.lookup = {}
        for it in items:
            first, _ = first_wrong_step("\n".join(it["steps"]), it["oracle"])
            for i in range(len(it["steps"])):
                clean = first == -1 or i < first
                self.lookup[rollout_prompt(it["question"], it["steps"], i)] = (it, i, clean)
        self.drawn: Counter = Counter()
        self.calls: list[tuple[int, int]] = []

    def __call__(self, prompts: list[str], n: int) -> list[list[str]]:
        self.calls.append((len(prompts), n))
        out = []
        for p in prompts:
            it, i, clean = self.lookup[p]
            texts = []
            for _ in range(n):
                ok = clean and self.drawn[p] >= i
                self.drawn[p] += 1
                texts.append("\n".join(it["gold"][i + 1:]) if ok else "#### 0")
            out.append(texts)
        return out


def _labels(items: list[dict], rows: list[dict]) -> dict:
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        grouped[(r["qid"], r["sample_id"])][r["step_idx"]].append(Rollout(**r))
    return {(it["qid"], it["sample_id"]): label_sample(it["steps"], it["correct"],
                                                       grouped[(it["qid"], it["sample_id"])], OFF)
            for it in items}


def _exhaustive(items: list[dict], k: int) -> list[dict]:
    policy, rows = OraclePolicy(items), []
    for it in items:
        for i in range(n_prefixes(it["steps"])):
            p = rollout_prompt(it["question"], it["steps"], i)
            for kk, text in enumerate(policy([p], k)[0]):
                rows.append({"qid": it["qid"], "sample_id": it["sample_id"], "step_idx": i,
                             "k": kk, "text": text,
                             "correct": is_correct(prefix_text(it["steps"], i) + text,
                                                   it["answer"])})
    return rows


@pytest.mark.parametrize("k,chunk,split", [(8, 2, 0.25), (5, 2, 0.5), (4, 1, 0.0), (3, 8, 0.9)])
def test_search_finds_the_same_labels_as_exhaustive_with_fewer_rollouts(k, chunk, split):
    items = world_items()
    policy = OraclePolicy(items)
    rows = search(items, policy, k=k, chunk=chunk, split=split)
    exhaustive = _exhaustive(items, k)
    got, want = _labels(items, rows), _labels(items, exhaustive)
    for key in want:
        assert got[key].hard == want[key].hard, key
    assert len(rows) < len(exhaustive) / 2
    # correct samples are never rolled out
    correct = {(it["qid"], it["sample_id"]) for it in items if it["correct"]}
    assert not any((r["qid"], r["sample_id"]) in correct for r in rows)
    # each round is one call per distinct n (a partial last chunk adds the second)
    assert {n for _, n in policy.calls} <= {min(chunk, k), k % min(chunk, k) or min(chunk, k)}
    assert len(policy.calls) <= 2 * (max(n_prefixes(it["steps"]) for it in items) + 1) * (
        -(-k // min(chunk, k)))


def test_probes_stop_at_first_success_and_negatives_use_k():
    items, k, chunk = world_items(6), 8, 2
    rows = search(items, OraclePolicy(items), k=k, chunk=chunk)
    per: dict = defaultdict(list)
    for r in rows:
        per[(r["qid"], r["sample_id"], r["step_idx"])].append(r)
    for (_, _, i), rs in per.items():
        assert sorted(r["k"] for r in rs) == list(range(len(rs)))
        if any(r["correct"] for r in rs):
            # first success is draw i; the chunk holding it is the last one drawn
            assert len(rs) == -(-(i + 1) // chunk) * chunk
        else:
            assert len(rs) == k
    # each prefix is probed at most once, and never more prefixes than a sample has
    probed: Counter = Counter((q, s) for q, s, _ in per)
    m = {(it["qid"], it["sample_id"]): n_prefixes(it["steps"]) for it in items}
    assert all(v <= m[key] for key, v in probed.items())


def test_prefixes_past_the_probe_limit_are_never_probed():
    """A prefix over the context (``probe_limit``) is left to the label stage's inference."""
    items = [dict(it, probe_limit=1) for it in world_items(4)]
    rows = search(items, OraclePolicy(items), k=4, chunk=2)
    assert rows and all(r["step_idx"] == 0 for r in rows)
    assert not search([dict(it, probe_limit=0) for it in items], OraclePolicy(items), k=4, chunk=2)


def test_rows_are_rollout_shaped_and_graded_on_prefix_plus_continuation():
    items = world_items(3)
    rows = search(items, OraclePolicy(items), k=4, chunk=2)
    by_key = {(it["qid"], it["sample_id"]): it for it in items}
    for r in rows:
        Rollout(**r)  # every field of the record, nothing else
        it = by_key[(r["qid"], r["sample_id"])]
        assert r["correct"] == is_correct(prefix_text(it["steps"], r["step_idx"]) + r["text"],
                                          it["answer"])


def test_bad_input_is_rejected():
    items = world_items(1)
    with pytest.raises(ValueError, match="lacks"):
        search([{"qid": "x", "steps": []}], OraclePolicy(items), k=2, chunk=1)
    with pytest.raises(ValueError, match="split"):
        search(items, OraclePolicy(items), k=2, chunk=1, split=1.0)
    with pytest.raises(ValueError, match="k and chunk"):
        search(items, OraclePolicy(items), k=0, chunk=1)
    with pytest.raises(RuntimeError, match="continuations"):
        search(items, lambda prompts, n: [["#### 0"]], k=2, chunk=2)
    assert search([], OraclePolicy(items), k=2, chunk=1) == []


def test_search_with_the_real_engine(tiny_policy):
    """The shipped tiny policy through HFEngine: real continuations, graded and searched."""
    from glore_ray.engines.base import SamplingSpec
    from glore_ray.engines.hf import HFEngine

    engine = HFEngine(str(tiny_policy), batch_size=32)
    seed = [0]

    def generate(prompts: list[str], n: int) -> list[list[str]]:
        seed[0] += 1  # fresh draws every round
        outs = engine.generate(prompts, SamplingSpec(n=n, temperature=1.0, max_tokens=48,
                                                     seed=seed[0]))
        return [[c.text for c in o] for o in outs]

    items = [it for it in world_items(2) if not it["correct"]][:3]
    rows = search(items, generate, k=2, chunk=1)
    assert rows and {r["qid"] for r in rows} <= {it["qid"] for it in items}
    by_key = {(it["qid"], it["sample_id"]): it for it in items}
    for r in rows:
        it = by_key[(r["qid"], r["sample_id"])]
        assert 0 <= r["step_idx"] < n_prefixes(it["steps"])
        assert r["correct"] == is_correct(prefix_text(it["steps"], r["step_idx"]) + r["text"],
                                          it["answer"])
