"""Training-set construction on hand-made rows: split, balancing, refinement pairs, export."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from glore_ray import prompts
from glore_ray.method.balance import balance
from glore_ray.method.pairs import correct_solutions, global_pairs, local_pairs
from glore_ray.records import Question, Rollout, Sample
from glore_ray.stages.build import SCHEMAS, orm_row, split_qids, trl_row, write_set

Q = Question("q1", "Mia has 23 shells. She finds 45 more. She gives away 12. How many?", "56",
             "23 + 45 = 68\n68 - 12 = 56\n#### 56")
RIGHT = ["23 + 45 = 68", "68 - 12 = 56", "#### 56"]


def sample(sid: int, steps: list[str], correct: bool) -> Sample:
    return Sample("q1", sid, "\n".join(steps), steps, steps[-1][5:], correct)


def orm_rows(samples: list[Sample], q: Question) -> list[dict]:
    return [orm_row({"qid": s.qid, "sample_id": s.sample_id, "question": q.question,
                     "steps": s.steps, "correct": s.correct}) for s in samples]


def trl_rows(rows: list[dict]) -> list[dict]:
    return [trl_row(Q.question, r["steps"], r["labels"]) for r in rows]


def test_split_is_by_qid_deterministic_and_never_empty_or_everything():
    qids = [f"q{i}" for i in range(20)]
    a, b = split_qids(qids, 0.25, 0), split_qids(list(reversed(qids)), 0.25, 0)
    assert a == b and len(a) == 5 and a < set(qids)
    assert split_qids(qids, 0.25, 1) != a  # the seed moves it
    assert len(split_qids(qids[:3], 0.01, 0)) == 1  # a tiny fraction still holds one out
    assert split_qids(qids[:2], 0.9, 0) != set(qids[:2])
    assert split_qids(qids, 0.0, 0) == set()


def _sorm(labels: list[list[float]]) -> list[dict]:
    return [{"qid": f"q{i}", "labels": ls, "mask": [1.0] * len(ls)} for i, ls in enumerate(labels)]


def test_balance_per_prefix_length():
    rows = _sorm([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0],
                  [1.0, 1.0, 1.0], [1.0, 0.0]])
    kept, stats = balance([dict(r, mask=list(r["mask"])) for r in rows], seed=0)
    for i in range(3):
        pos = sum(r["mask"][i] for r in kept if len(r["labels"]) > i and r["labels"][i] >= 0.5)
        neg = sum(r["mask"][i] for r in kept if len(r["labels"]) > i and r["labels"][i] < 0.5)
        assert pos == neg, (i, pos, neg)
        assert stats[i]["kept"] == pos + neg
    # index 0: 5 positives vs 1 negative -> 4 positives masked; labels themselves are untouched
    assert sum(r["mask"][0] == 0.0 for r in kept) + (len(rows) - len(kept)) >= 4
    assert all(r["labels"] == rows[int(r["qid"][1:])]["labels"] for r in kept)
    again, _ = balance([dict(r, mask=list(r["mask"])) for r in rows], seed=0)
    assert [r["mask"] for r in again] == [r["mask"] for r in kept]  # deterministic


def test_balance_drops_fully_masked_rows_and_leaves_one_class_indices():
    rows = _sorm([[1.0], [1.0], [1.0], [0.0]])
    kept, _ = balance(rows, seed=3)
    assert len(kept) == 2 and sorted(r["labels"][0] for r in kept) == [0.0, 1.0]
    only_pos = _sorm([[1.0, 1.0], [1.0, 0.0]])
    kept, stats = balance(only_pos, seed=0)
    assert [r["mask"][0] for r in kept] == [1.0, 1.0]  # index 0 has no negatives: left as is


def test_orm_rows_and_trl_rows():
    s = [sample(0, RIGHT, True), sample(1, ["23 + 45 = 78", "#### 78"], False)]
    rows = orm_rows(s, Q)
    assert rows[0]["labels"] == [1.0, 1.0, 1.0] and rows[1]["labels"] == [0.0, 0.0]
    trl = trl_rows([dict(rows[1], labels=[0.6, 0.0])])
    assert trl == [{"prompt": prompts.policy_prompt(Q.question), "completions": rows[1]["steps"],
                    "labels": [True, False]}]


def _world():
    wrong_a = sample(1, ["23 + 45 = 78", "78 - 12 = 66", "#### 66"], False)
    wrong_b = sample(2, ["23 + 45 = 68", "68 - 12 = 46", "#### 46"], False)
    dup_b = sample(3, list(wrong_b.steps), False)
    right = sample(0, RIGHT, True)
    # from wrong_b's prefix through step 0: one rollout repeats the bad step (not a fix)
    rolls = [Rollout("q1", 2, 0, 0, "68 - 12 = 56\n#### 56", True),
             Rollout("q1", 2, 0, 1, "68 - 12 = 46\n#### 56", True),
             Rollout("q1", 2, 1, 0, "#### 46", False)]
    return [right, wrong_a, wrong_b, dup_b], rolls


def test_global_pairs_dedup_cap_and_targets():
    samples, rolls = _world()
    by_key = {(s.qid, s.sample_id): s for s in samples}
    sols = correct_solutions(Q, samples, rolls, by_key)
    # samples first, rollouts (prefix + continuation) after, each with its source
    assert list(sols.items())[0] == ("\n".join(RIGHT), "sample")
    assert set(sols.values()) == {"sample", "rollout"}
    pairs = global_pairs(Q, samples, sols, cap=10, seed=0)
    assert len(pairs) == 2  # wrong_b and its duplicate give one draft
    drafts = {p["prompt"] for p in pairs}
    assert drafts == {prompts.global_prompt(Q.question, "\n".join(s.steps)) for s in samples[1:3]}
    # the paper's pairs: the target is a correct *sample* whenever the question has one
    assert all(p["target"] == "\n".join(RIGHT) and p["source"] == "sample" for p in pairs)
    assert len(global_pairs(Q, samples, sols, cap=1, seed=0)) == 1
    assert global_pairs(Q, samples, {}, cap=4, seed=0) == []  # no correct solution: no pair


def test_global_targets_are_rollouts_only_for_questions_without_a_right_sample():
    samples, rolls = _world()
    wrong = [s for s in samples if not s.correct]
    by_key = {(s.qid, s.sample_id): s for s in samples}
    sols = correct_solutions(Q, wrong, rolls, by_key)
    assert set(sols.values()) == {"rollout"}
    pairs = global_pairs(Q, wrong, sols, cap=10, seed=0)
    assert pairs and all(p["source"] == "rollout" and p["target"] in sols for p in pairs)
    assert global_pairs(Q, wrong, sols, cap=10, seed=0, rollouts=False) == []


def test_gold_solution_is_a_target_only_when_the_policy_solved_nothing():
    samples, rolls = _world()
    by_key = {(s.qid, s.sample_id): s for s in samples}
    assert correct_solutions(Q, samples, rolls, by_key, gold=True) == \
        correct_solutions(Q, samples, rolls, by_key)  # the policy's own solutions win
    wrong = [s for s in samples if not s.correct]
    assert correct_solutions(Q, wrong, [], by_key) == {}
    assert correct_solutions(Q, wrong, [], by_key, gold=True) == {Q.gold_solution: "gold"}
    bad_gold = Question(Q.qid, Q.question, "57", Q.gold_solution)  # gold that does not grade
    assert correct_solutions(bad_gold, wrong, [], by_key, gold=True) == {}


def test_local_pairs_from_prefix_rollouts_and_fallbacks():
    samples, rolls = _world()
    by_key = {(s.qid, s.sample_id): s for s in samples}
    sols = correct_solutions(Q, samples, rolls, by_key)
    labels = {("q1", 0): [1.0, 1.0, 1.0], ("q1", 1): [0.0, 0.0, 0.0],
              ("q1", 2): [1.0, 0.0, 0.0], ("q1", 3): [1.0, 0.0, 0.0]}
    by_s = {("q1", 2): rolls}
    pairs = local_pairs(Q, samples, labels, by_s, sols, cap=10, seed=0)
    assert len(pairs) == 2
    got = {p["prompt"]: p["target"] for p in pairs}
    # wrong_b: bad step 1, target = the rollout from step 0 that changes step 1
    pb = prompts.local_prompt(Q.question, list(samples[2].steps), 1)
    assert pb.endswith("Answer:\n23 + 45 = 68\n") and "[BAD] 68 - 12 = 46" in pb
    assert got[pb] == "68 - 12 = 56\n#### 56"
    # wrong_a: bad step 0, no prefix: a correct solution's full text
    pa_ = prompts.local_prompt(Q.question, list(samples[1].steps), 0)
    assert got[pa_] in sols and got[pa_].endswith("#### 56")
    assert len(local_pairs(Q, samples, labels, by_s, sols, cap=1, seed=0)) == 1


def test_local_pairs_skip_drafts_without_a_fix():
    samples, _ = _world()
    labels = {("q1", s.sample_id): [1.0, 0.0, 0.0] for s in samples}
    # no rollouts and the only correct solution repeats the draft's bad step 1? (it does not:
    # RIGHT has 68 - 12 = 56) -> the fallback through the shared prefix works for wrong_b,
    # and wrong_a (prefix 23 + 45 = 78) shares no prefix with any correct solution
    pairs = local_pairs(Q, samples, labels, {}, ["\n".join(RIGHT)], cap=10, seed=0)
    assert [p["target"] for p in pairs] == ["68 - 12 = 56\n#### 56"]


def test_write_set_and_trl_export_load_with_datasets(tmp_path):
    import datasets

    samples, _ = _world()
    rows = orm_rows(samples, Q) + [dict(r, qid="q2") for r in orm_rows(samples, Q)]
    counts = write_set(tmp_path / "orm", rows, SCHEMAS["orm"], {"q2"})
    assert counts == {"train": 4, "eval": 4}
    dd = datasets.load_from_disk(str(tmp_path / "orm" / "hf"))
    assert dd["eval"].unique("qid") == ["q2"]
    trl = trl_rows(rows)
    write_set(tmp_path / "trl", trl, SCHEMAS["trl"], {"q2"}, [r["qid"] for r in rows], hf=False)
    ds = datasets.load_dataset("parquet", data_files={
        s: str(tmp_path / "trl" / f"{s}.parquet") for s in ("train", "eval")})
    assert ds["train"].column_names == ["prompt", "completions", "labels"]
    assert ds["train"][1]["labels"] == [False, False, False]
    # an empty split still has the schema
    write_set(tmp_path / "empty", [], SCHEMAS["local"], set())
    assert pq.read_table(tmp_path / "empty" / "eval.parquet").column_names == [
        "qid", "prompt", "target"]
    assert Counter(r["qid"] for r in rows) == {"q1": 4, "q2": 4}


def test_an_empty_completion_is_a_wrong_sample_with_no_steps():
    """One empty or whitespace completion among paid-for rollouts: labelled, counted, in no
    reward set, still a draft for the global refiner; the stage does not stop."""
    from glore_ray.config import LabelConfig
    from glore_ray.stages import label

    samples, rolls = _world()
    empty = Sample("q1", 7, "  \n", [], None, False)
    rows = label.label_question(Q, [*samples, empty], rolls, LabelConfig(), seed=0)
    row = next(r for r in rows if r["sample_id"] == 7)
    assert row["steps"] == [] and row["hard"] == [] and not row["correct"]
    assert label.step_label_rows(row) == []
    tally = label._Tally()
    for r in rows:
        tally.add(r)
    assert tally.c["empty"] == 1 and tally.c["samples"] == len(samples) + 1
    first = min(rows, key=lambda r: r["pos"])
    assert prompts.global_prompt(Q.question, "") in first["global_prompt"]


def test_a_question_outside_the_rollout_subset_feeds_the_orm_and_global_refiner_only(tmp_path):
    """rollout.rollout_questions: a question without rollouts keeps its ORM rows and global pairs;
    it has no SORM labels, no local pairs, no step-label rows; a stray rollout for it is an
    error."""
    import pytest

    from glore_ray.config import LabelConfig
    from glore_ray.stages import label

    samples, rolls = _world()
    full = label.label_question(Q, samples, rolls, LabelConfig(), seed=0)
    bare = label.label_question(Q, samples, [], LabelConfig(), seed=0, rolled_out=False)
    assert all(r["rolled_out"] for r in full) and not any(r["rolled_out"] for r in bare)
    assert [r["hard"] for r in bare] == [[]] * len(samples)
    assert all(label.step_label_rows(r) == [] for r in bare)
    first = min(bare, key=lambda r: r["pos"])
    assert first["global_prompt"] and not first["local_prompt"]
    assert min(full, key=lambda r: r["pos"])["local_prompt"]
    with pytest.raises(ValueError, match="rollout_questions"):
        label.label_question(Q, samples, rolls, LabelConfig(), seed=0, rolled_out=False)
    # the sets: every sample in orm, only rolled-out ones in sorm
    from types import SimpleNamespace

    from glore_ray.config import RunConfig
    from glore_ray.stages.build import SetWriter

    cfg = RunConfig.model_validate({"name": "t", "label": {"balance": False}})
    paths = SimpleNamespace(training_set=lambda w: tmp_path / w)
    writer = SetWriter(cfg, paths, set(), None)
    q2 = [dict(r, qid="q2") for r in bare]
    writer.add_samples(full + q2)
    sets = writer.close()
    assert sets["orm"]["train"] == 2 * len(samples)
    assert sets["sorm"]["train"] == len(samples)
    assert set(pq.read_table(tmp_path / "sorm" / "train.parquet").column("qid").to_pylist()) == {
        "q1"}
    # the tally compares ORM and SORM on the same (rolled-out) steps
    tally = label._Tally()
    for r in full + q2:
        tally.add(r)
    assert tally.c["samples"] == 2 * len(samples) and tally.c["sorm_samples"] == len(samples)
