"""The evaluate stage's metrics, on hand-made scores."""

import math

from glore_ray.stages.evaluate import within_question_pairwise


def test_pairwise_counts_only_pairs_inside_a_question():
    # q0: right 0.9 vs wrong 0.2 -> win; q1: right 0.1 vs wrong 0.8 -> loss. Across questions the
    # right 0.9 beats the wrong 0.8 too, but that pair must not count.
    out = within_question_pairwise([0.9, 0.2, 0.1, 0.8], [True, False, True, False], [0, 0, 1, 1])
    assert out == {"pairwise_accuracy": 0.5, "n_pairs": 2}


def test_pairwise_ties_count_half_and_no_pairs_is_nan():
    out = within_question_pairwise([0.5, 0.5, 0.5], [True, False, False], [7, 7, 7])
    assert out == {"pairwise_accuracy": 0.5, "n_pairs": 2}
    none = within_question_pairwise([0.3, 0.4], [True, True], [0, 0])
    assert none["n_pairs"] == 0 and math.isnan(none["pairwise_accuracy"])


def test_a_perfect_reranker_scores_one():
    out = within_question_pairwise([0.9, 0.1, 0.2, 0.6, 0.7], [True, False, False, True, True],
                                   [0, 0, 0, 1, 1])
    assert out == {"pairwise_accuracy": 1.0, "n_pairs": 2}
