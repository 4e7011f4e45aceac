"""Paired statistics over eval examples: is run A better than run B, or equivalent to it, beyond the noise of
which examples happened to be in the eval set?

Two runs evaluated on the SAME examples are compared example by example (paired), which is far more sensitive
than comparing two accuracies: examples both get right or both get wrong say nothing about the difference.

- **One run per side** (0/1 per example): the exact two-sided McNemar test, a binomial test on the discordant
  examples (b = A right and B wrong, c = the reverse) at 1/2: p = min(1, 2 P(X <= min(b, c))), X ~ Bin(b + c, 1/2).
  We use the plain exact test, not the mid-p variant: it never rejects more often than it should (the mid-p
  one can, slightly), and at the sizes here (tens of discordant examples) the two differ little.
- **Several runs on a side** (seeds of a random method, draws of the fit examples): the side's accuracy is the
  mean over its runs, and the test is a two-level paired bootstrap: each replicate resamples the eval examples
  (one draw shared by both sides, so the pairing is kept) and, on each side, its runs (so the spread over seeds
  counts as uncertainty too, not only the spread over examples). The p-value inverts the percentile interval:
  p = 2 min(P*(diff <= 0), P*(diff >= 0)), with the usual +1 correction.
- **Intervals**: percentile bootstrap, always (also for one run per side), seeded, so a report is reproducible.
- **Several points at once** (rates, modules, tasks): :class:`Comparisons` draws ONE bootstrap for all of them,
  with one example resampling per eval set (points on the same eval set share it: an example that is hard at
  rate 0.3 is hard at 0.5 too) and eval sets resampled independently (stratified). Per-point results are the
  marginals of that draw; pooled results (the mean difference, the mean absolute gap) read all its columns.
- **Many points, one claim**: :func:`holm` adjusts a family of p-values (Holm's step-down: controls the chance
  of any false "significant" in the family, and is never less powerful than Bonferroni); :func:`significance`,
  :func:`margin_tests` and :func:`pooled_tests` apply it to the points (or groups of points) of a
  :class:`Comparisons`.
- **Equivalence is not "no significant difference"**: two noisy runs are never significantly different.
  "A ≈ B within ±m" is shown by an interval, TOST-style: the (1 - 2 alpha) interval of the difference lies inside
  ±m (two one-sided tests at alpha). Over several points, :meth:`Comparisons.mean_abs_gap` bounds the mean
  absolute gap; its upper bound <= m shows the points close on average.
- **Non-inferiority** ("A costs at most m points against B"): the one-sided test of diff <= -m,
  :meth:`Comparison.p_noninferior`; its mirror, "A costs more than m", is :meth:`Comparison.p_inferior`.

All differences are in accuracy points (percent), A minus B. :func:`paired_compare` is the one-call entry point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import TaskpruneError

ALPHA = 0.05
N_BOOT = 10_000
_CHUNK = 2_000  # bootstrap replicates drawn at a time (bounds memory: chunk x examples weights per eval set)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (b = only A right, c = only B right)."""
    if b < 0 or c < 0:
        raise TaskpruneError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: compare each with alpha to control the family-wise error."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))  # step-down: never decreasing
        adjusted[i] = running
    return adjusted


def as_runs(correct: Sequence[int] | Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """0/1 outcomes as a [runs, examples] array: one run (a flat sequence) or several (one row each)."""
    arr = np.asarray(correct, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise TaskpruneError("outcomes must be 0/1 per example: one run or a list of runs, not empty")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise TaskpruneError("outcomes must be 0 or 1 per example")
    return arr


@dataclass(frozen=True)
class Point:
    """One comparison: A's and B's runs ([runs, examples] 0/1) on the eval set named ``examples``."""

    a: np.ndarray
    b: np.ndarray
    examples: str = ""

    def __post_init__(self) -> None:
        if self.a.shape[1] != self.b.shape[1]:
            raise TaskpruneError(f"paired outcomes need the same examples: {self.a.shape[1]} vs {self.b.shape[1]}")

    @property
    def n(self) -> int:
        return int(self.a.shape[1])

    def diff(self) -> float:
        return 100.0 * (float(self.a.mean()) - float(self.b.mean()))

    def discordant(self) -> tuple[int, int] | None:
        """(only A right, only B right) when each side is one run; None otherwise."""
        if len(self.a) != 1 or len(self.b) != 1:
            return None
        a, b = self.a[0].astype(bool), self.b[0].astype(bool)
        return int((a & ~b).sum()), int((~a & b).sum())


@dataclass(frozen=True)
class Comparison:
    """A minus B in accuracy points, with its bootstrap interval and a two-sided p-value."""

    diff: float
    ci: tuple[float, float]
    p: float
    n: int
    test: str  # "McNemar exact" or "paired bootstrap"
    discordant: tuple[int, int] | None = None
    alpha: float = ALPHA
    replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided percentile interval at ``level`` (0.90 for TOST at alpha 0.05)."""
        lo, hi = np.quantile(self.replicates, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def significant(self) -> bool:
        return self.p < self.alpha

    def equivalent(self, margin: float) -> bool:
        """TOST: the (1 - 2 alpha) interval lies inside ±margin, i.e. both one-sided tests reject at alpha."""
        lo, hi = self.interval(1 - 2 * self.alpha)
        return -margin < lo and hi < margin

    def p_noninferior(self, margin: float) -> float:
        """One-sided bootstrap p-value of "A is worse than B by margin or more" (small: A costs less than margin)."""
        r = self.replicates
        return float((np.count_nonzero(r <= -margin) + 1) / (len(r) + 1))

    def p_inferior(self, margin: float) -> float:
        """One-sided bootstrap p-value of "A is at most margin below B" (small: A is shown worse by more)."""
        r = self.replicates
        return float((np.count_nonzero(r >= -margin) + 1) / (len(r) + 1))

    def brief(self) -> str:
        """"+1.23 [-0.40, 2.90], p=0.041" for an evidence column."""
        return f"{self.diff:+.2f} [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}], {fmt_p(self.p)}"


def fmt_p(p: float) -> str:
    """"p=0.041", or "p<0.001" below what 10,000 replicates resolve."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value by inverting the percentile interval (+1 so it is never 0)."""
    n = len(replicates)
    low = (np.count_nonzero(replicates <= 0) + 1) / (n + 1)
    high = (np.count_nonzero(replicates >= 0) + 1) / (n + 1)
    return float(min(1.0, 2 * min(low, high)))


class Comparisons:
    """Several paired points sharing one seeded bootstrap (see the module docstring for the resampling)."""

    def __init__(self, points: Sequence[Point], *, n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA) -> None:
        if not points:
            raise TaskpruneError("nothing to compare: no paired points")
        self.points, self.alpha = list(points), alpha
        self.diffs = np.array([p.diff() for p in self.points])
        self.replicates = self._draw(n_boot, seed)  # [n_boot, points]

    def _draw(self, n_boot: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        strata: dict[tuple[str, int], list[int]] = {}
        for k, p in enumerate(self.points):
            strata.setdefault((p.examples, p.n), []).append(k)
        out = np.empty((n_boot, len(self.points)))
        for start in range(0, n_boot, _CHUNK):
            size = min(_CHUNK, n_boot - start)
            for (_, n), members in strata.items():
                picks = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
                # how often each example was drawn, as float64: sums of these integers are exact in any order, so
                # a replicate does not depend on the BLAS thread count, and a tie is exactly 0 (not +-1e-8, which
                # would move the p-value with the machine)
                counts = np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
                per_run: dict[int, np.ndarray] = {}  # a side shared by several points (AP vs each baseline): once
                for k in members:
                    p = self.points[k]
                    sides = []
                    for runs in (p.a, p.b):
                        if id(runs) not in per_run:
                            per_run[id(runs)] = counts @ runs.T.astype(np.float64)  # [size, runs]: correct, drawn
                        sides.append(self._side(rng, per_run[id(runs)], n))
                    out[start:start + size, k] = 100.0 * (sides[0] - sides[1])
        return out

    @staticmethod
    def _side(rng: np.random.Generator, per_run: np.ndarray, n: int) -> np.ndarray:
        """A side's accuracy in every replicate from its runs' counts of correct draws (out of ``n``), its runs
        resampled when it has several; one division at the end, so equal accuracies give equal floats."""
        if per_run.shape[1] == 1:
            return per_run[:, 0] / n
        n_runs = per_run.shape[1]
        picks = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=len(per_run))
        return (picks * per_run).sum(1) / (n_runs * n)

    def _ci(self, replicates: np.ndarray) -> tuple[float, float]:
        lo, hi = np.quantile(replicates, [self.alpha / 2, 1 - self.alpha / 2])
        return float(lo), float(hi)

    def point(self, k: int) -> Comparison:
        """Point k alone: exact McNemar when each side is one run, else the bootstrap p-value."""
        p, reps = self.points[k], self.replicates[:, k]
        disc = p.discordant()
        if disc is not None:
            pval, test = mcnemar_exact(*disc), "McNemar exact"
        else:
            pval, test = _bootstrap_p(reps), "paired bootstrap"
        return Comparison(float(self.diffs[k]), self._ci(reps), pval, p.n, test, disc, self.alpha, reps)

    def pooled(self, members: Sequence[int] | None = None) -> Comparison:
        """The mean difference over points (all, or ``members``): one test for "A beats B over these points"."""
        idx = list(range(len(self.points))) if members is None else list(members)
        if len(idx) == 1:
            return self.point(idx[0])
        reps = self.replicates[:, idx].mean(1)
        return Comparison(float(self.diffs[idx].mean()), self._ci(reps), _bootstrap_p(reps),
                          sum(self.points[k].n for k in idx), "paired bootstrap", None, self.alpha, reps)

    def mean_abs_gap(self, members: Sequence[int] | None = None) -> tuple[float, float, float]:
        """(mean |A - B| over the points, its one-sided (1 - alpha) lower bound, its one-sided upper bound).

        The upper bound at or below a margin shows the points are close on average (the equivalence test of a
        claim over many points); it is conservative, since |noise| only adds to a gap.
        """
        idx = list(range(len(self.points))) if members is None else list(members)
        reps = np.abs(self.replicates[:, idx]).mean(1)
        lo, hi = np.quantile(reps, [self.alpha, 1 - self.alpha])
        return float(np.abs(self.diffs[idx]).mean()), float(lo), float(hi)


def paired_compare(correct_a: Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
                   correct_b: Sequence[int] | Sequence[Sequence[int]] | np.ndarray, *,
                   alpha: float = ALPHA, n_boot: int = N_BOOT, seed: int = 0) -> Comparison:
    """Compare two methods on the same eval examples, in order: 0/1 per example, one run or a list of runs each.

    Returns A - B in accuracy points with a (1 - alpha) bootstrap interval and a two-sided p-value (exact
    McNemar for one run each); ``.equivalent(margin)`` and ``.p_noninferior(margin)`` answer "≈" and "at most
    m worse". Example: ``paired_compare(pruned_correct, dense_correct).p < 0.05``.
    """
    return Comparisons([Point(as_runs(correct_a), as_runs(correct_b))], n_boot=n_boot, seed=seed, alpha=alpha).point(0)


def point_pvalues(cmp: Comparisons) -> tuple[list[float], list[float]]:
    """(two-sided p per point, Holm-adjusted over the points): the points of one claim are one family."""
    ps = [cmp.point(k).p for k in range(len(cmp.points))]
    return ps, holm(ps)


def significance(cmp: Comparisons) -> tuple[list[bool], list[bool], int]:
    """(A significantly above B per point, significantly below, how many above at unadjusted p < alpha), Holm over
    the points; the unadjusted count shows what the adjustment took away."""
    ps, adj = point_pvalues(cmp)
    d = cmp.diffs
    above = [bool(d[k] > 0 and adj[k] < ALPHA) for k in range(len(ps))]
    below = [bool(d[k] < 0 and adj[k] < ALPHA) for k in range(len(ps))]
    return above, below, sum(bool(d[k] > 0 and ps[k] < ALPHA) for k in range(len(ps)))


def margin_tests(cmp: Comparisons, margin: float) -> tuple[list[bool], list[bool]]:
    """Per point: A shown at most ``margin`` below B, and A shown more than ``margin`` below B (each one-sided,
    Holm-adjusted over the points): non-inferiority and its mirror, so "not shown either way" can be told apart."""
    points = [cmp.point(k) for k in range(len(cmp.points))]
    good = holm([c.p_noninferior(margin) for c in points])
    bad = holm([c.p_inferior(margin) for c in points])
    return [a < ALPHA for a in good], [a < ALPHA for a in bad]


def pooled_tests(cmp: Comparisons, members: Sequence[Sequence[int]]) -> tuple[list[bool], list[str]]:
    """Per test (a group of points, e.g. one comparison at several rates): A significantly above B pooled over its
    points (Holm over the tests), and its brief."""
    pooled = [cmp.pooled(m) for m in members]
    adj = holm([c.p for c in pooled])
    return [c.diff > 0 and a < ALPHA for c, a in zip(pooled, adj)], [c.brief() for c in pooled]
