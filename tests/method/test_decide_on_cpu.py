"""method/decide: *when*, *where*, rerank and the first-negative rule, on hand-made scores."""

from glore_ray.config import ServeConfig
from glore_ray.method.decide import MODES, first_below, locate, orm_score, rerank, should_refine
from glore_ray.method.prefixes import n_prefixes, rolled_out


def test_rerank_prefers_the_draft_on_ties():
    assert rerank([0.4, 0.4, 0.3]) == 0
    assert rerank([0.4, 0.5, 0.6]) == 2
    assert rerank([0.7]) == 0


def test_when_and_where_thresholds():
    assert should_refine(0.49, 0.5) and not should_refine(0.5, 0.5)
    assert locate([0.9, 0.6, 0.2, 0.1], 0.5) == 2
    assert locate([0.9, 0.6], 0.5) is None
    assert locate([], 0.5) is None
    assert orm_score([0.9, 0.3]) == 0.3 and orm_score([]) == 0.0


def test_first_negative_step_of_labels_is_where_at_one_half():
    # the local refiner's [BAD] at training time (labels) and inference (scores): one rule
    labels = [1.0, 1.0, 0.0, 0.0]
    assert first_below(labels) == locate(labels, 0.5) == 2
    assert first_below([0.6, 0.49]) == 1  # soft labels: under 0.5 is negative
    assert first_below([1.0, 1.0]) is None


def test_prefix_rule_skips_only_a_final_answer_line():
    assert list(rolled_out(["a = 1", "b = 2", "#### 2"])) == [0, 1]
    assert list(rolled_out(["a = 1", "b = 2"])) == [0, 1]  # truncated: every prefix
    assert list(rolled_out(["#### 2"])) == [] and n_prefixes([]) == 0


def test_one_list_of_modes_for_config_and_api():
    from glore_ray.serve.api import SolveRequest

    assert MODES == ("draft", "global", "local", "glore", "best_of_n")
    for m in MODES:
        assert ServeConfig(default_mode=m).default_mode == m
        assert SolveRequest(question="q", mode=m).mode == m
