"""The report's statistics: plain functions of numbers and curves, nothing about files or the grid.

Mean ± sample std over seeds; FLEX-MoE is compared with greedy by the paired per-seed difference
(same seed = same partitions, initial model, gates and participants), and a gap is called a tie
unless its mean exceeds the std of the paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

TAIL_ROUNDS = 5  # ablations also report the mean accuracy of the last 5 rounds (partial participation is noisy)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; nan with fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int]:
    """Mean and std of a[seed] - b[seed] over the seeds both have, and how many there are."""
    seeds = sorted(set(a) & set(b))
    mean, std = mean_std([a[s] - b[s] for s in seeds])
    return mean, std, len(seeds)


def verdict(mean: float, std: float, n: int) -> str:
    """`win` / `loss` when the mean paired gap exceeds its spread over seeds, else `tie`."""
    if n < 2 or math.isnan(std):
        return "n/a (1 seed)" if n == 1 else "n/a (no paired runs)"
    if abs(mean) <= std:
        return "tie"
    return "win" if mean > 0 else "loss"


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
