"""method/labels: ORM/SORM labels, each cleaning rule on hand-made cases, oracle quality, and
make_labels (the in-memory path of the label stage)."""

from __future__ import annotations

import json

import pytest

from glore_ray.config import LabelConfig
from glore_ray.method.labels import (
    infer_unprobed,
    label_quality,
    label_sample,
    mentions,
    monotone,
    step_result,
)
from glore_ray.records import Question, Rollout, Sample
from glore_ray.stages.label import make_labels

OFF = LabelConfig(monotone=False, intermediate_check=False, balance=False)
STEPS = ["23 + 45 = 68", "68 - 12 = 56", "56 * 2 = 112", "#### 112"]


def rolls(step_idx: int, outcomes: list[bool], texts: list[str] | None = None) -> list[Rollout]:
    texts = texts or ["" for _ in outcomes]
    return [Rollout("q", 0, step_idx, k, t, ok) for k, (ok, t) in enumerate(zip(outcomes, texts))]


def test_step_result_and_mentions():
    assert step_result("23 + 45 = 68") == "68"
    assert step_result("She sold 48/2 = <<48/2=24>>24 clips.") == "24"
    assert step_result("5 - 8 = -3") == "3"
    assert step_result("no number") is None
    assert mentions("68 - 12 = 56", "68") and mentions("total 1,080 apples", "1080")
    assert not mentions("168 - 12 = 156", "68")


def test_sorm_hard_and_soft_from_rollouts_keep_floats():
    r = {0: rolls(0, [True, False, False]), 1: rolls(1, [False, False, False]),
         2: rolls(2, [False, True, True])}
    lab = label_sample(STEPS, False, r, OFF)
    # hard = any success; soft = successes / (rollouts + the sample itself, a failure here)
    assert lab.hard == [1.0, 0.0, 1.0, 0.0]
    assert lab.soft == pytest.approx([1 / 4, 0.0, 2 / 4, 0.0])
    assert all(isinstance(v, float) for v in lab.hard + lab.soft)
    assert lab.n_rollouts == [3, 3, 3, 0]


def test_correct_sample_is_its_own_successful_rollout():
    r = {i: rolls(i, [False, False]) for i in range(3)}
    lab = label_sample(STEPS, True, r, OFF)
    assert lab.hard == [1.0] * 4  # final step = the sample's correctness
    assert lab.soft == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_monotone_last_positive_wins_and_switch():
    r = {0: rolls(0, [True, True]), 1: rolls(1, [False, False]), 2: rolls(2, [True, False])}
    on = label_sample(STEPS, False, r, LabelConfig(intermediate_check=False))
    assert on.hard == [1.0, 1.0, 1.0, 0.0]
    assert on.soft[1] == pytest.approx(on.soft[2])  # the lifted step takes its witness's rate
    assert on.flips["monotone"] == 1
    off = label_sample(STEPS, False, r, OFF)
    assert off.hard == [1.0, 0.0, 1.0, 0.0]
    h, s, lifted = monotone([0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 0.25, 0.0])
    assert h == [1.0, 1.0, 1.0, 1.0, 0.0] and s == [0.5, 0.5, 0.25, 0.25, 0.0] and lifted == 2


def test_intermediate_check_relabels_false_positive():
    # step 1 claims 68 - 12 = 56; the one successful rollout from it recomputes from scratch and
    # never uses 56 -> false positive. Step 0's successful rollout uses 68 -> kept.
    r = {0: rolls(0, [True], ["68 - 12 = 56\n56 * 2 = 112\n#### 112"]),
         1: rolls(1, [True, False], ["23 + 33 = 112\n#### 112", "#### 5"]),
         2: rolls(2, [False])}
    cfg = LabelConfig(monotone=False)
    lab = label_sample(STEPS, False, r, cfg)
    assert lab.hard[:3] == [1.0, 0.0, 0.0] and lab.soft[1] == 0.0
    assert lab.flips["intermediate_check"] == 1
    assert label_sample(STEPS, False, r, OFF).hard[1] == 1.0  # switched off: untouched


def test_intermediate_cut_makes_the_unused_step_the_first_error():
    # step 1's witness never uses 56; step 2's witness does use 112. The paper's order lifts
    # step 1 back from step 2 (last positive wins); the cut keeps it negative and everything after.
    r = {0: rolls(0, [True], ["68 - 12 = 56\n56 * 2 = 112\n#### 112"]),
         1: rolls(1, [True], ["23 + 33 = 112\n#### 112"]),
         2: rolls(2, [True], ["112 = 112\n#### 112"])}
    assert label_sample(STEPS, False, r, LabelConfig()).hard == [1.0, 1.0, 1.0, 0.0]
    cut = label_sample(STEPS, False, r, LabelConfig(intermediate_cut=True))
    assert cut.hard == [1.0, 0.0, 0.0, 0.0] and cut.soft[1:] == [0.0, 0.0, 0.0]
    assert cut.flips["intermediate_check"] == 1 and cut.flips["intermediate_cut"] == 1
    # a correct sample that computes a result nothing uses: cut there too (an extra step)
    extra = ["23 + 45 = 68", "7 + 1 = 8", "68 + 44 = 112", "#### 112"]
    none_probed: dict = {}
    assert label_sample(extra, True, none_probed, LabelConfig(intermediate_cut=True)).hard == \
        [1.0, 0.0, 0.0, 0.0]
    assert label_sample(extra, True, none_probed, LabelConfig()).hard == [1.0] * 4


def test_intermediate_check_uses_calculator_notes():
    steps = ["He sells 48/2 = <<48/2=24>>24 clips.", "#### 72"]
    ok = {0: rolls(0, [True], ["Total 48+24 = <<48+24=72>>72\n#### 72"])}
    bad = {0: rolls(0, [True], ["He sold 72 in all\n#### 72"])}
    cfg = LabelConfig(monotone=False)
    assert label_sample(steps, False, ok, cfg).hard[0] == 1.0
    assert label_sample(steps, False, bad, cfg).hard[0] == 0.0


def test_check_runs_before_monotone_so_a_false_witness_does_not_propagate():
    r = {0: rolls(0, [False]), 1: rolls(1, [True], ["56 * 2 = 112\n#### 112"]),
         2: rolls(2, [False])}
    assert label_sample(STEPS, False, r, LabelConfig()).hard == [1.0, 1.0, 0.0, 0.0]
    # the success from step 1 never uses 56: with the check first, nothing is lifted
    r[1] = rolls(1, [True], ["40 + 72 = 112\n#### 112"])
    assert label_sample(STEPS, False, r, LabelConfig()).hard == [0.0, 0.0, 0.0, 0.0]
    assert label_sample(STEPS, False, r, LabelConfig(intermediate_check=False)).hard == \
        [1.0, 1.0, 0.0, 0.0]


def test_unprobed_steps_are_inferred_by_monotonicity():
    # budgeted shape: step 1 probed positive, step 2 probed negative, step 0 never rolled out
    r = {1: rolls(1, [False, True]), 2: rolls(2, [False] * 4)}
    lab = label_sample(STEPS, False, r, OFF)  # inference happens even with monotone off
    assert lab.hard == [1.0, 1.0, 0.0, 0.0]
    assert lab.n_rollouts == [0, 2, 4, 0] and lab.soft[0] == 1.0  # inferred: soft = hard
    assert infer_unprobed([None, 0.0, None, 1.0, None, 0.0]) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    # a correct sample with no rollouts at all: every step positive
    assert label_sample(STEPS, True, {}, OFF).hard == [1.0] * 4


def test_label_quality_counts():
    per = [([1.0, 0.0, 0.0], [1.0, 1.0, 0.0]),  # first negative one step early
           ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])]
    q = label_quality(per)
    assert q["n_steps"] == 6 and q["accuracy"] == pytest.approx(5 / 6)
    assert q["negative"]["precision"] == pytest.approx(1 / 2)
    assert q["negative"]["recall"] == pytest.approx(1.0)
    assert q["positive"]["recall"] == pytest.approx(4 / 5)
    assert q["first_wrong_step_match"] == pytest.approx(1 / 2)


def test_make_labels_orm_and_oracle():
    gold = [[23, "+", 45, 68], [68, "-", 12, 56]]
    q = Question("q", "Q?", "56", "23 + 45 = 68\n68 - 12 = 56\n#### 56", json.dumps(gold))
    good = Sample("q", 0, "", ["23 + 45 = 68", "68 - 12 = 56", "#### 56"], "56", True)
    bad = Sample("q", 1, "", ["23 + 45 = 78", "78 - 12 = 66", "#### 66"], "66", False)
    rs = [Rollout("q", 1, 0, 0, "68 - 12 = 56\n#### 56", True)]  # a lucky false positive
    rs += [Rollout("q", 1, 1, 0, "#### 66", False)]
    rows, quality, _ = make_labels({"q": q}, [good, bad], rs, LabelConfig(), log=lambda m: None)
    orm = {(r.sample_id, r.step_idx): r.orm_label for r in rows}
    assert all(orm[(0, i)] == 1.0 and orm[(1, i)] == 0.0 for i in range(3))
    oracle = [r.oracle_label for r in rows if r.sample_id == 1]
    assert oracle == [0.0, 0.0, 0.0]
    # the rollout from "23 + 45 = 78" never uses 78 -> the check removes the false positive
    assert [r.sorm_hard for r in rows if r.sample_id == 1] == [0.0, 0.0, 0.0]
    assert quality["sorm"]["accuracy"] == 1.0 and quality["orm"]["accuracy"] == 1.0


def test_make_labels_rejects_inconsistent_rollouts():
    q = Question("q", "Q?", "1", "#### 1")
    s = Sample("q", 0, "", ["1 + 0 = 1", "#### 1"], "1", True)
    with pytest.raises(ValueError, match="unknown sample"):
        make_labels({"q": q}, [s], [Rollout("q", 7, 0, 0, "", False)], LabelConfig())
    with pytest.raises(ValueError, match="step_idx"):
        make_labels({"q": q}, [s], [Rollout("q", 0, 5, 0, "", False)], LabelConfig())
    with pytest.raises(ValueError, match="not in the train split"):
        make_labels({}, [s], [], LabelConfig())


# ------------------------------------------------------------------ the stage on hand-made rows
