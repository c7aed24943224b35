"""Tests of the per-round balance and accuracy metrics (flexmoe_core.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flexmoe_core.metrics import (
    accuracy_summary,
    coefficient_of_variation,
    expert_load,
    jain_index,
    variance,
)


def test_expert_load_is_column_sums():
    x = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 1, 0]], dtype=np.int8)
    load = expert_load(x)
    assert load.dtype == np.float64
    assert np.array_equal(load, [2.0, 1.0, 3.0, 0.0])
    # routed-sample counts work the same way
    assert np.array_equal(expert_load([[10, 5], [0, 7]]), [10.0, 12.0])


def test_expert_load_does_not_overflow_int8():
    x = np.ones((300, 2), dtype=np.int8)  # 300 > int8 max 127
    assert np.array_equal(expert_load(x), [300.0, 300.0])


def test_balanced_vector():
    v = [2, 2, 2, 2]
    assert variance(v) == 0.0
    assert coefficient_of_variation(v) == 0.0
    assert jain_index(v) == 1.0


def test_single_expert_takes_everything():
    v = [4, 0, 0, 0]
    # mean 1, population variance ((3^2) + 3 * 1^2) / 4 = 3
    assert variance(v) == pytest.approx(3.0, rel=1e-15)
    assert coefficient_of_variation(v) == pytest.approx(math.sqrt(3.0), rel=1e-15)
    assert jain_index(v) == pytest.approx(0.25, rel=1e-15)  # 16 / (4 * 16) = 1/E


def test_one_two_three_by_hand():
    v = [1, 2, 3]
    # mean 2, population variance (1 + 0 + 1) / 3 = 2/3 (not the sample variance 1)
    assert variance(v) == pytest.approx(2.0 / 3.0, rel=1e-15)
    assert coefficient_of_variation(v) == pytest.approx(math.sqrt(2.0 / 3.0) / 2.0, rel=1e-15)
    # (1+2+3)^2 / (3 * (1+4+9)) = 36 / 42 = 6/7
    assert jain_index(v) == pytest.approx(6.0 / 7.0, rel=1e-15)


def test_zero_vector_conventions():
    assert coefficient_of_variation([0, 0, 0]) == 0.0
    assert jain_index([0, 0, 0]) == 1.0
    assert variance([0, 0, 0]) == 0.0


def test_cv_and_jain_are_scale_free():
    v = np.array([1.0, 5.0, 2.0, 0.5])
    assert coefficient_of_variation(7 * v) == pytest.approx(coefficient_of_variation(v), rel=1e-14)
    assert jain_index(7 * v) == pytest.approx(jain_index(v), rel=1e-14)


def test_accuracy_summary_on_known_example():
    acc = [0.5, 0.9, 0.7, 0.1, 0.8]
    examples = [10, 30, 20, 0, 40]
    summary = accuracy_summary(acc, examples)
    # mean = (5 + 27 + 14 + 0 + 32) / 100 = 0.78 (the client with 0 examples has no weight)
    assert summary["mean"] == pytest.approx(0.78, rel=1e-14)
    # unweighted across clients: sorted [0.1, 0.5, 0.7, 0.8, 0.9]
    assert summary["min"] == 0.1
    # p10, linear: position 0.1 * 4 = 0.4 -> 0.1 + 0.4 * (0.5 - 0.1) = 0.26
    assert summary["p10"] == pytest.approx(0.26, rel=1e-14)
    assert summary["median"] == pytest.approx(0.7, rel=1e-15)
    assert set(summary) == {"mean", "min", "p10", "median"}
    assert all(type(value) is float for value in summary.values())


def test_accuracy_summary_single_client():
    assert accuracy_summary([0.42], [7]) == {"mean": 0.42, "min": 0.42, "p10": 0.42, "median": 0.42}


@pytest.mark.parametrize(
    "acc, examples, message",
    [
        ([0.5, 0.6], [10], "same length"),
        ([], [], "non-empty"),
        ([0.5, 0.6], [10, -1], ">= 0"),
        ([0.5, 0.6], [0, 0], "positive sum"),
        ([0.5, float("nan")], [1, 1], "finite"),
    ],
)
def test_accuracy_summary_rejects_bad_input(acc, examples, message):
    with pytest.raises(ValueError, match=message):
        accuracy_summary(acc, examples)


@pytest.mark.parametrize("func", [variance, coefficient_of_variation, jain_index])
@pytest.mark.parametrize("bad", [[], [[1, 2], [3, 4]], [1.0, float("inf")]])
def test_vector_metrics_reject_empty_2d_or_non_finite(func, bad):
    with pytest.raises(ValueError):
        func(bad)


def test_jain_rejects_negative_values_and_expert_load_needs_a_matrix():
    with pytest.raises(ValueError, match="non-negative"):
        jain_index([1, -1])
    with pytest.raises(ValueError, match="2-D"):
        expert_load([1, 0, 1])
