"""min-holders: the MIP against brute force and scipy.optimize.milp; h = 1 leaves the assignment unchanged."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from flexmoe_core.assignment import LoadTracker, assign, load_bounds
from flexmoe_core.config import Settings, SettingsError
from flexmoe_core.redundancy import assign_min_holders, plan


def brute_force(weights, capacity, min_holders, load_slack=0.0):
    """Best objective over every assignment whose experts are untrained or held low..high times."""
    n, e = weights.shape
    r = plan(capacity, e, min_holders, load_slack)
    rows = [[np.isin(np.arange(e), c) for c in itertools.combinations(range(e), k)] for k in capacity]
    best = -np.inf
    for choice in itertools.product(*rows):
        x = np.array(choice, dtype=int)
        load = x.sum(axis=0)
        trained = load > 0
        if trained.sum() == r.trained and np.all(load[trained] >= r.low) and np.all(load[trained] <= r.high):
            best = max(best, float(np.sum(weights * x)))
    return best


def scipy_reference(weights, capacity, min_holders, load_slack=0.0):
    """The same program written for scipy.optimize.milp (HiGHS through scipy, not cvxpy)."""
    n, e = weights.shape
    r = plan(capacity, e, min_holders, load_slack)
    size = n * e + e  # x flattened row-major, then z
    rows = np.zeros((n, size))
    for c in range(n):
        rows[c, c * e : (c + 1) * e] = 1
    cols = np.zeros((e, size))
    for j in range(e):
        cols[j, j : n * e : e] = 1
    low, high = cols.copy(), cols.copy()
    low[:, n * e :] = -r.low * np.eye(e)  # load - low z >= 0
    high[:, n * e :] = -r.high * np.eye(e)  # load - high z <= 0
    count = np.zeros((1, size))
    count[0, n * e :] = 1
    constraints = [
        LinearConstraint(rows, capacity, capacity),
        LinearConstraint(low, 0, np.inf),
        LinearConstraint(high, -np.inf, 0),
        LinearConstraint(count, r.trained, r.trained),
    ]
    cost = np.concatenate([-weights.ravel(), np.zeros(e)])
    result = milp(cost, constraints=constraints, integrality=np.ones(size), bounds=Bounds(0, 1))
    assert result.success, result.message
    return -result.fun


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n", "e", "k", "h"), [(4, 4, 2, 3), (5, 4, 1, 2), (3, 5, 2, 3), (6, 4, 1, 3)])
def test_the_mip_is_optimal_against_brute_force_and_scipy_milp(seed, n, e, k, h):
    weights = np.random.default_rng(seed).random((n, e))
    capacity = np.full(n, k)
    x = assign_min_holders(weights, capacity, h)
    got = float(np.sum(weights * x))
    assert got == pytest.approx(brute_force(weights, capacity, h), abs=1e-9)
    assert got == pytest.approx(scipy_reference(weights, capacity, h), abs=1e-9)
    load = x.sum(axis=0)
    assert np.all((load == 0) | (load >= min(h, n)))  # every trained expert has >= h holders
    np.testing.assert_array_equal(x.sum(axis=1), capacity)


def test_the_main_federation_gets_three_holders_per_trained_expert_and_rotates_the_untrained():
    # 10 clients x 2 experts over E = 8: plain bounds give loads 2..3; with h = 3, 6 experts are trained.
    rng = np.random.default_rng(0)
    capacity = np.full(10, 2)
    tracker = LoadTracker(8)
    trained_ever = np.zeros(8, dtype=bool)
    for _ in range(4):
        q = rng.random((10, 8))
        x = assign(q, capacity, "flexmoe", deficit=tracker.deficit, deficit_weight=0.5, min_holders=3)
        load = x.sum(axis=0)
        assert sorted(load.tolist()) == [0, 0, 3, 3, 3, 3, 4, 4]
        trained_ever |= load > 0
        before = tracker.deficit
        tracker.update(x, capacity)
        # the untrained experts' deficit is kept: it grows by the round's target load 20 / 8
        np.testing.assert_allclose((tracker.deficit - before)[load == 0], 2.5)
    assert trained_ever.all()  # the deficit term brings every expert back


def test_min_holders_one_or_within_the_plain_bounds_is_the_plain_lp():
    rng = np.random.default_rng(1)
    q, capacity = rng.random((10, 8)), np.full(10, 2)
    plain = assign(q, capacity, "flexmoe", solver="cvxpy")
    assert load_bounds(capacity, 8)[0] == 2
    for h in (1, 2):  # h <= L_min: the plain bounds already give every expert h holders
        np.testing.assert_array_equal(assign(q, capacity, "flexmoe", solver="cvxpy", min_holders=h), plain)


def test_fewer_participants_than_h_asks_for_all_of_them_and_impossible_capacities_are_clear_errors():
    x = assign_min_holders(np.random.default_rng(2).random((2, 4)), np.array([1, 1]), 3)
    assert x.sum(axis=0).max() == 2  # h' = min(h, N) = 2: the one trained expert is held by both
    with pytest.raises(ValueError, match="min-holders=3: only 1 experts can have 3 holders"):
        plan(np.array([1, 1, 2]), 8, 3)  # 4 slots at 3 holders: one expert, but a client holds 2
    with pytest.raises(SettingsError, match="min-holders"):
        Settings.from_run_config({"min-holders": 0})
    with pytest.raises(SettingsError, match="min-holders > 1 needs assignment = 'flexmoe'"):
        Settings.from_run_config({"min-holders": 3, "assignment": "greedy"})
