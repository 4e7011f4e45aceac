"""Paired statistics: McNemar against hand-computed values, Holm, the seeded bootstrap, equivalence vs "no
significant difference", and the shared resampling of points on one eval set."""

from __future__ import annotations

import numpy as np
import pytest

from taskprune.errors import TaskpruneError
from taskprune.experiments.stats import Comparisons, Point, as_runs, holm, mcnemar_exact, paired_compare


def test_mcnemar_exact_by_hand() -> None:
    # b=10, c=2: P(X <= 2), X ~ Bin(12, 1/2) = (1 + 12 + 66) / 4096; two-sided doubles it
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096, abs=1e-15)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert 0.0 < mcnemar_exact(300, 250) < 0.05 < mcnemar_exact(30, 25)  # large counts: exact integers, no overflow
    with pytest.raises(TaskpruneError):
        mcnemar_exact(-1, 3)


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def _pair(n: int, only_a: int, only_b: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros(n, dtype=int)
    b = np.zeros(n, dtype=int)
    a[:only_a] = 1
    b[only_a:only_a + only_b] = 1
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = 1
    return a, b


def test_one_run_a_side_is_mcnemar_and_the_bootstrap_is_seeded() -> None:
    a, b = _pair(200, 10, 2, 150)
    r = paired_compare(a, b)
    assert r.test == "McNemar exact" and r.discordant == (10, 2)
    assert r.p == pytest.approx(mcnemar_exact(10, 2)) and r.diff == pytest.approx(4.0)  # 8 of 200 examples
    assert r.ci == paired_compare(a, b).ci  # same seed, same interval
    other = paired_compare(a, b, seed=1)
    assert other.p == r.p and not np.array_equal(other.replicates, r.replicates)
    assert r.ci[0] < r.diff < r.ci[1] and r.significant()


def test_several_runs_a_side_use_the_bootstrap() -> None:
    a, b = _pair(300, 40, 0, 200)
    r = paired_compare([a, a], b)
    assert r.test == "paired bootstrap" and r.discordant is None and r.p < 0.01
    same = paired_compare([a, b], [b, a])  # the same runs on both sides: nothing to tell apart
    assert same.diff == 0.0 and same.p > 0.5


def test_replicates_are_exact_so_ties_are_zero_on_any_machine() -> None:
    """A replicate where both sides got the same number of correct draws is exactly 0: sums in float32 (or in an
    order the BLAS thread count picks) left +-1e-8 there, which moved p-values between machines."""
    rng = np.random.default_rng(3)
    a = [rng.integers(0, 2, 277) for _ in range(3)]
    b = [rng.integers(0, 2, 277) for _ in range(3)]
    reps = paired_compare(a, b).replicates
    tiny = (np.abs(reps) < 1e-6) & (reps != 0)
    assert not tiny.any()
    assert (reps == 0).any()  # the data do tie in some replicates
    scaled = reps / 100 * 277 * 3  # difference in correct draws, summed over the resampled runs
    assert np.allclose(scaled, np.round(scaled), atol=1e-6)


def test_no_significant_difference_is_not_equivalence() -> None:
    a, b = _pair(30, 3, 3, 10)  # 30 examples, 6 disagree: equal accuracy, but a small sample
    r = paired_compare(a, b)
    assert r.diff == 0.0 and r.p == 1.0 and not r.significant()
    assert not r.equivalent(3.0)  # the 90 % interval reaches well past ±3 points
    big_a, big_b = _pair(2000, 3, 3, 1500)
    assert paired_compare(big_a, big_b).equivalent(3.0)  # the same disagreement on many examples is shown small


def test_non_inferiority() -> None:
    a, b = _pair(1000, 0, 5, 800)  # A 0.5 points below B
    r = paired_compare(a, b)
    assert r.p_noninferior(3.0) < 0.01  # shown at most 3 points worse
    assert r.p_noninferior(0.1) > 0.5  # but not shown within 0.1
    assert r.p_inferior(0.05) < 0.05 and r.p_inferior(3.0) > 0.5  # shown worse by more than 0.05, not by more than 3


def test_points_on_one_eval_set_share_their_resampling() -> None:
    a, b = _pair(100, 8, 2, 60)
    shared = Comparisons([Point(as_runs(a), as_runs(b), "x"), Point(as_runs(a), as_runs(b), "x")], n_boot=500)
    assert np.array_equal(shared.replicates[:, 0], shared.replicates[:, 1])
    apart = Comparisons([Point(as_runs(a), as_runs(b), "x"), Point(as_runs(a), as_runs(b), "y")], n_boot=500)
    assert not np.array_equal(apart.replicates[:, 0], apart.replicates[:, 1])
    pooled = shared.pooled()
    assert pooled.diff == pytest.approx(6.0) and pooled.test == "paired bootstrap"
    gap, lo, hi = Comparisons([Point(as_runs(a), as_runs(b)), Point(as_runs(b), as_runs(a))]).mean_abs_gap()
    assert gap == pytest.approx(6.0) and lo <= gap <= hi


def test_bad_outcomes_are_refused() -> None:
    with pytest.raises(TaskpruneError, match="0 or 1"):
        paired_compare([0, 1, 2], [0, 1, 1])
    with pytest.raises(TaskpruneError, match="same examples"):
        paired_compare([0, 1, 1], [0, 1])
    with pytest.raises(TaskpruneError, match="not empty"):
        paired_compare([], [])
    with pytest.raises(TaskpruneError, match="no paired points"):
        Comparisons([])
