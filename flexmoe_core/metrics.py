"""Per-round metrics of FLEX-MoE: expert load balance and client accuracy spread.

Balance is reported three ways because each answers a different question: the
variance is in the load's own units, the coefficient of variation (std / mean) is
scale-free and is the figure the paper quotes (greedy > 0.29 vs about 0.003 balanced),
and Jain's index reads as "fraction of experts used fairly" (1 = perfectly even,
1/E = a single expert takes everything).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _vector(name: str, values: Any) -> np.ndarray:
    """A non-empty, finite, 1-D float64 copy of `values`."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def expert_load(x: Any) -> np.ndarray:
    """(E,) float64 load per expert: the column sums of an (N, E) assignment matrix.

    With a 0/1 assignment this is the number of clients holding each expert; with a
    matrix of routed-sample counts it is the routed-sample load.
    """
    matrix = np.asarray(x)
    if matrix.ndim != 2:
        raise ValueError(f"assignment matrix x must be 2-D (clients, experts), got shape {matrix.shape}")
    load = matrix.sum(axis=0, dtype=np.float64)
    if not np.all(np.isfinite(load)):
        raise ValueError("assignment matrix x must be finite")
    return load


def variance(v: Any) -> float:
    """Population variance (ddof=0): the load vector is the whole population of experts."""
    return float(np.var(_vector("v", v)))


def coefficient_of_variation(v: Any) -> float:
    """Population std / mean; 0.0 when the mean is 0 (no load at all is not imbalance)."""
    array = _vector("v", v)
    mean = array.mean()
    if mean == 0.0:
        return 0.0
    return float(array.std() / mean)


def jain_index(v: Any) -> float:
    """Jain's fairness index (sum v)^2 / (n * sum v^2), in [1/n, 1]; 1.0 for all zeros."""
    array = _vector("v", v)
    if np.any(array < 0):
        raise ValueError(f"jain_index needs non-negative values, got {array.tolist()}")
    squares = float(np.dot(array, array))
    if squares == 0.0:
        return 1.0  # nothing allocated to anyone: equally (un)served
    return float(array.sum() ** 2 / (array.size * squares))


def accuracy_summary(accuracies: Any, num_examples: Any) -> dict[str, float]:
    """Federation accuracy and its spread across clients.

    mean is weighted by each client's number of test examples (the accuracy over all
    test samples pooled); min, p10 (10th percentile, linear interpolation) and median
    are taken across clients unweighted, because they describe how the worst-served
    clients fare, whatever their size.
    """
    acc = _vector("accuracies", accuracies)
    counts = _vector("num_examples", num_examples)
    if counts.shape != acc.shape:
        raise ValueError(f"accuracies and num_examples must have the same length, got {acc.size} and {counts.size}")
    if np.any(counts < 0):
        raise ValueError(f"num_examples must be >= 0, got {counts.tolist()}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("num_examples must have a positive sum")
    return {
        "mean": float(np.dot(acc, counts) / total),
        "min": float(acc.min()),
        "p10": float(np.percentile(acc, 10, method="linear")),
        "median": float(np.median(acc)),
    }


# ------------------------------------------------------------------ mechanism

STARVED_AFTER = 3  # an expert held by no participant for this many consecutive rounds is starved


def class_entropy(counts: Any) -> np.ndarray:
    """(E,) entropy in bits of each expert's class mix, from an (E, C) matrix of sample counts.

    H_e = -sum_y p(y|e) log2 p(y|e) with p(y|e) = counts[e, y] / sum_y counts[e, y] (0 log 0 = 0):
    0 for an expert that saw one class only, log2(C) for an even mix of all C classes; nan for an
    expert that saw no sample (no mix to measure).
    """
    matrix = np.asarray(counts, dtype=np.float64)
    if matrix.ndim != 2 or not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError(f"counts must be a finite, non-negative (E, C) matrix, got shape {matrix.shape}")
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = matrix / totals
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    entropy = terms.sum(axis=1)
    entropy[totals[:, 0] == 0] = np.nan
    return entropy


def starvation_streaks(previous: Any, load: Any) -> np.ndarray:
    """(E,) consecutive rounds up to now in which each expert was held by nobody: the previous
    streak plus one where this round's load is 0, reset to 0 where anyone held it."""
    held = _vector("load", load)
    before = np.zeros_like(held) if previous is None else _vector("previous", previous)
    if before.shape != held.shape:
        raise ValueError(f"previous streaks and load must have the same length, got {before.size} and {held.size}")
    return np.where(held > 0, 0.0, before + 1.0)
