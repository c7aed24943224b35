"""The report's statistics: plain functions of numbers and curves, nothing about files or the grid.

Mean ± sample std over seeds. Two methods are compared by the paired per-seed difference d_i
(same seed = same partitions, initial model, gates and participants):

- its mean with the 95 % t interval mean ± t_{0.975, n-1} · s / sqrt(n) (s = sample std of d);
- the paired t-test (scipy.stats.ttest_rel) and the Wilcoxon signed-rank test
  (scipy.stats.wilcoxon, exact for small n), two-sided;
- Holm's step-down correction across the comparisons of one table: with the m p-values sorted,
  p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)).

The verdict is decided by the Holm-corrected paired t-test at alpha = 0.05 (`better` / `worse`);
the Wilcoxon p-value is reported beside it and decides nothing: with n = 3 its smallest two-sided
p-value is 2 / 2^3 = 0.25, so it cannot reject at 0.05 whatever the data. Otherwise the verdict is
`no detectable difference`, given with the interval and the minimum detectable effect (MDE): the
true mean difference delta that the paired t-test at alpha = 0.05 detects with power 0.8 given
the observed s, i.e. the delta solving

    P(|T| > t_{0.975, n-1}) = 0.8,  T ~ noncentral t(df = n - 1, nc = delta · sqrt(n) / s)

(about (t_{0.975, n-1} + t_{0.8, n-1}) · s / sqrt(n)). A family pooled over settings (e.g. every
main-grid cell) also gets the signed-rank test over all its pairs (`pooled_signed_rank`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import optimize, stats

TAIL_ROUNDS = 5  # ablations also report the mean accuracy of the last 5 rounds (partial participation is noisy)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan with fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def t_half_width(std: float, n: int) -> float:
    """Half the width of the 95 % t interval of a mean of n values with sample std `std`."""
    return float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int]:
    """Mean and std of a[seed] - b[seed] over the seeds both have, and how many there are."""
    seeds = sorted(set(a) & set(b))
    mean, std = mean_std([a[s] - b[s] for s in seeds])
    return mean, std, len(seeds)


ALPHA = 0.05  # the tests' level, after Holm's correction
POWER = 0.8  # the power at which the minimum detectable effect is stated
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


@dataclass(frozen=True)
class PairedTest:
    """One paired comparison a - b over the seeds both have, and (after `holm`) its verdict."""

    n: int
    mean: float  # mean paired difference
    std: float  # sample std of the differences
    ci: tuple[float, float]  # 95 % t interval of the mean difference
    t_p: float  # paired t-test p-value (nan: fewer than 2 pairs, or no spread)
    wilcoxon_p: float  # Wilcoxon signed-rank p-value (nan: no pairs)
    mde: float  # minimum detectable effect of the paired t-test (alpha 0.05, power 0.8)
    holm_p: float = math.nan  # t_p after Holm's correction across its table
    holm_wilcoxon_p: float = math.nan
    verdict: str = "n/a"


def paired_test(a: Mapping[Any, float], b: Mapping[Any, float]) -> PairedTest:
    """The paired comparison of a[key] - b[key] over the keys both have (seeds, or (setting, seed)
    for a pooled family); uncorrected: see `decide`."""
    seeds = sorted(set(a) & set(b), key=str)
    first, second = np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)
    d = first - second
    n = len(d)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, (math.nan, math.nan), math.nan, math.nan, math.nan)
    mean, std = mean_std(list(d))
    wilcoxon_p = _wilcoxon(d)
    if n < 2:
        return PairedTest(n, mean, std, (math.nan, math.nan), math.nan, wilcoxon_p, math.nan)
    half = t_half_width(std, n)
    # Equal differences (up to float round-off: accuracies are multiples of 1 / test-set size) leave
    # no spread to estimate: no t-test, rather than p = 0 from a round-off std.
    spread = std > 1e-9 * max(1.0, abs(mean))
    t_p = float(stats.ttest_rel(first, second).pvalue) if spread else math.nan
    mde = minimum_detectable_effect(std if spread else 0.0, n)
    return PairedTest(n, mean, std, (mean - half, mean + half), t_p, wilcoxon_p, mde)


def _wilcoxon(d: np.ndarray) -> float:
    """Two-sided signed-rank p-value (scipy's exact distribution for small n); 1 when every d is 0."""
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d).pvalue)


def t_test_power(delta: float, std: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at `alpha` for a true mean difference `delta`, n pairs
    and differences' std `std`: P(|T| > t_crit) with T = (Z + nc) / sqrt(V / df), V ~ chi2(df),
    nc = delta sqrt(n) / std, integrated over V's quantiles (scipy's noncentral t loses precision
    at df = 1, the 2-seed case; elsewhere the two agree, see tests/test_stats.py)."""
    from scipy import integrate

    df, nc = n - 1, delta * math.sqrt(n) / std
    critical = float(stats.t.ppf(1 - alpha / 2, df))

    def given(u: float) -> float:
        scale = critical * math.sqrt(float(stats.chi2.ppf(u, df)) / df)
        return float(stats.norm.cdf(nc - scale) + stats.norm.cdf(-nc - scale))

    return float(integrate.quad(given, 0.0, 1.0, limit=200, epsabs=1e-10)[0])


def minimum_detectable_effect(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The mean difference the two-sided paired t-test at `alpha` detects with `power`, given the
    differences' std and n pairs (noncentral t; see the module docstring). 0 without spread."""
    if n < 2 or math.isnan(std):
        return math.nan
    if std == 0:
        return 0.0

    def shortfall(delta: float) -> float:
        return t_test_power(delta, std, n, alpha) - power

    upper = std
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-9 * std))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (nan stays nan and is not counted)."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def decide(tests: Sequence[PairedTest]) -> list[PairedTest]:
    """The comparisons of one table, Holm-corrected together, each with its verdict: `better` or
    `worse` (a - b > 0 or < 0) where the corrected paired t-test rejects at ALPHA, else
    `no detectable difference`; `n/a` below 2 pairs (or with no spread to test)."""
    t_adjusted = holm([t.t_p for t in tests])
    w_adjusted = holm([t.wilcoxon_p for t in tests])
    out = []
    for test, p, w in zip(tests, t_adjusted, w_adjusted):
        if test.n < 2:
            word = "n/a (1 seed)" if test.n == 1 else "n/a (no paired runs)"
        elif math.isnan(p):
            word = "n/a (no spread to test)"
        elif p < ALPHA:
            word = BETTER if test.mean > 0 else WORSE
        else:
            word = NO_DIFFERENCE
        out.append(replace(test, holm_p=p, holm_wilcoxon_p=w, verdict=word))
    return out


def pooled_signed_rank(pairs: Sequence[tuple[float, float]]) -> tuple[int, float]:
    """(pairs, two-sided Wilcoxon signed-rank p-value of a - b) over a whole family of (a, b) pairs."""
    d = np.array([x - y for x, y in pairs], dtype=float)
    return len(d), (_wilcoxon(d) if len(d) else math.nan)


def rounds_to_target(curve: Sequence[float], target: float) -> int | None:
    """First round (1-based) whose value reaches `target`, or None."""
    for index, value in enumerate(curve, 1):
        if value is not None and value >= target:
            return index
    return None


def last_rounds_mean(curve: Sequence[float | None], rounds: int | None = None) -> float:
    """Mean of a curve's last `rounds` values (default TAIL_ROUNDS): a final figure less sensitive to
    one round's draw than the last value alone."""
    tail = [v for v in curve[-(rounds or TAIL_ROUNDS) :] if v is not None]
    return float(np.mean(tail)) if tail else math.nan


def curve_change(curve: Sequence[float | None], rounds: int) -> float | None:
    """Last value minus the value `rounds` rounds before it (None if the curve is shorter or has gaps)."""
    if len(curve) <= rounds or curve[-1] is None or curve[-1 - rounds] is None:
        return None
    return curve[-1] - curve[-1 - rounds]  # type: ignore[operator]


def mean_curve(curves: Iterable[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-round mean and std over runs (curves cut to the shortest)."""
    stacked = list(curves)
    length = min(len(c) for c in stacked)
    array = np.array([[np.nan if v is None else v for v in c[:length]] for c in stacked], dtype=float)
    std = array.std(axis=0, ddof=1) if len(array) > 1 else np.zeros(length)
    return array.mean(axis=0), std
