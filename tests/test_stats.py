"""The report's tests of a paired comparison against scipy and hand computations on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flexmoe_bench.report.stats import (
    decide,
    holm,
    minimum_detectable_effect,
    paired_test,
    pooled_signed_rank,
    t_test_power,
)

A = {1: 0.812, 2: 0.805, 3: 0.820, 4: 0.801, 5: 0.818}
B = {1: 0.800, 2: 0.799, 3: 0.806, 4: 0.797, 5: 0.801, 9: 0.5}  # seed 9 has no pair: ignored


def test_paired_test_matches_scipy_on_fixed_inputs():
    test = paired_test(A, B)
    a, b = np.array([A[s] for s in range(1, 6)]), np.array([B[s] for s in range(1, 6)])
    d = a - b
    assert test.n == 5
    assert test.mean == pytest.approx(d.mean()) and test.std == pytest.approx(d.std(ddof=1))
    assert test.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert test.wilcoxon_p == pytest.approx(stats.wilcoxon(d).pvalue)
    low, high = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert test.ci == pytest.approx((low, high))


def test_wilcoxon_cannot_reject_with_three_seeds():
    # the most extreme data possible: every difference positive -> exact two-sided p = 2 / 2^3
    test = paired_test({1: 0.9, 2: 0.8, 3: 0.7}, {1: 0.1, 2: 0.2, 3: 0.3})
    assert test.wilcoxon_p == pytest.approx(0.25)
    assert decide([test])[0].verdict == "better"  # the paired t-test decides (p = 0.003 here)


def test_holm_against_a_hand_computation():
    # sorted 0.01, 0.02, 0.03, 0.04 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (monotone), 0.04 -> 0.06
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.9 stays at 1.0: monotone
    adjusted = holm([math.nan, 0.02, 0.04])  # nan is not counted as a comparison
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.04, 0.04])


def test_a_verdict_needs_the_corrected_t_test_to_reject():
    strong = paired_test({1: 0.80, 2: 0.81, 3: 0.82}, {1: 0.70, 2: 0.711, 3: 0.72})  # t-test p ~ 1e-4
    weak = paired_test({1: 0.80, 2: 0.75, 3: 0.82}, {1: 0.78, 2: 0.77, 3: 0.79})
    worse = paired_test({1: 0.70, 2: 0.711, 3: 0.72}, {1: 0.80, 2: 0.81, 3: 0.82})
    tests = decide([strong, weak, worse])
    assert [t.verdict for t in tests] == ["better", "no detectable difference", "worse"]
    assert tests[0].holm_p == pytest.approx(holm([strong.t_p, weak.t_p, worse.t_p])[0])
    # a p-value below 0.05 that Holm lifts above it is not a verdict
    borderline = paired_test({1: 0.82, 2: 0.83, 3: 0.816}, {1: 0.80, 2: 0.80, 3: 0.80})  # p = 0.034
    assert borderline.t_p < 0.05 and decide([borderline])[0].verdict == "better"
    assert decide([borderline, weak, weak])[0].verdict == "no detectable difference"
    assert decide([paired_test({1: 0.8}, {1: 0.7})])[0].verdict == "n/a (1 seed)"
    assert decide([paired_test({1: 0.8, 2: 0.9}, {1: 0.7, 2: 0.8})])[0].verdict == "n/a (no spread to test)"


def test_the_minimum_detectable_effect_has_power_08_under_scipys_noncentral_t():
    for std, n in ((0.0094, 3), (0.01, 5), (0.0136, 18)):
        mde = minimum_detectable_effect(std, n)
        critical = stats.t.ppf(0.975, n - 1)
        nc = mde * math.sqrt(n) / std
        power = stats.nct.sf(critical, n - 1, nc) + stats.nct.cdf(-critical, n - 1, nc)
        assert power == pytest.approx(0.8, abs=1e-6)
        # and close to the textbook approximation (t_{0.975} + t_{0.8}) s / sqrt(n)
        approx = (critical + stats.t.ppf(0.8, n - 1)) * std / math.sqrt(n)
        assert mde == pytest.approx(approx, rel=0.1)
    assert t_test_power(0.0, 1.0, 5) == pytest.approx(0.05, abs=1e-6)  # no effect: the level
    assert minimum_detectable_effect(0.0, 3) == 0.0 and math.isnan(minimum_detectable_effect(0.01, 1))


def test_pooled_signed_rank_over_a_family():
    pairs = [(0.81, 0.80), (0.79, 0.80), (0.85, 0.82), (0.90, 0.86), (0.77, 0.78), (0.88, 0.84)]
    n, p = pooled_signed_rank(pairs)
    assert n == 6 and p == pytest.approx(stats.wilcoxon([a - b for a, b in pairs]).pvalue)
    assert pooled_signed_rank([(0.5, 0.5)]) == (1, 1.0)
