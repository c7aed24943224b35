"""Tests for flexmoe_core.assignment.

The flexmoe optimum is checked against two independent references: scipy's HiGHS on the
same LP built here from scipy.sparse, and brute-force enumeration on tiny instances.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import linprog

from flexmoe_core import assignment as asg
from flexmoe_core.assignment import LoadTracker, assign, check_load_bounds, load_bounds

# ------------------------------------------------------------------------------ helpers


def skewed_scores(num_clients: int, num_experts: int, seed: int) -> np.ndarray:
    """Non-IID-like fitness: a shared popular-expert component plus per-client noise."""
    rng = np.random.default_rng(seed)
    popularity = np.exp(-np.arange(num_experts) / 2.0)
    return 0.3 + 0.6 * popularity[None, :] + 0.05 * rng.standard_normal((num_clients, num_experts))


def reference_optimum(weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> float:
    """Optimal value of the balanced-assignment LP via scipy HiGHS (independent build)."""
    n, e = weights.shape
    row_sum = sparse.kron(sparse.eye(n), np.ones((1, e)))  # (n, n*e)
    col_sum = sparse.kron(np.ones((1, n)), sparse.eye(e))  # (e, n*e)
    result = linprog(
        -weights.reshape(-1),
        A_ub=sparse.vstack([col_sum, -col_sum]),
        b_ub=np.r_[np.full(e, float(l_max)), np.full(e, -float(l_min))],
        A_eq=row_sum,
        b_eq=capacity.astype(float),
        bounds=[(0.0, 1.0)] * (n * e),
        method="highs",
    )
    assert result.status == 0, result.message
    return -result.fun


def brute_force_optimum(weights: np.ndarray, k: int, l_min: int, l_max: int) -> float:
    n, e = weights.shape
    rows = [np.isin(np.arange(e), c).astype(int) for c in itertools.combinations(range(e), k)]
    best = -math.inf
    for choice in itertools.product(rows, repeat=n):
        x = np.array(choice)
        load = x.sum(axis=0)
        if load.min() >= l_min and load.max() <= l_max:
            best = max(best, float(np.sum(weights * x)))
    return best


def assert_valid(x: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> None:
    assert set(np.unique(x)) <= {0, 1}
    assert np.issubdtype(x.dtype, np.integer)
    np.testing.assert_array_equal(x.sum(axis=1), capacity)
    load = x.sum(axis=0)
    assert l_min <= load.min() and load.max() <= l_max


def cv(x: np.ndarray) -> float:
    load = x.sum(axis=0).astype(float)
    return float(load.std() / load.mean())


# ------------------------------------------------------------------ flexmoe optimality

LP_CASES = [
    # (N, E, capacity spec, slack, deficit weight)
    (5, 4, 2, 0.0, 0.0),
    (20, 8, 2, 0.0, 0.0),
    (20, 8, 2, 0.2, 0.0),
    (50, 8, "hetero", 0.0, 0.0),
    (50, 8, "hetero", 0.2, 0.0),
    (50, 8, "hetero", 0.0, 0.5),
    (30, 6, 3, 0.1, 0.3),
]


@pytest.mark.parametrize("kind", ["random", "skewed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,e,cap,slack,lam", LP_CASES)
def test_flexmoe_matches_scipy_reference(kind, seed, n, e, cap, slack, lam):
    rng = np.random.default_rng(100 + seed)
    scores = rng.random((n, e)) if kind == "random" else skewed_scores(n, e, seed)
    capacity = rng.choice([1, 2, 4], size=n) if cap == "hetero" else np.full(n, cap)
    deficit = rng.normal(0.0, 2.0, size=e)

    x = assign(scores, capacity, load_slack=slack, deficit=deficit, deficit_weight=lam, solver="cvxpy")

    l_min, l_max = load_bounds(capacity, e, slack)
    assert_valid(x, capacity, l_min, l_max)
    weights = scores + lam * deficit[None, :]
    reference = reference_optimum(weights, capacity, l_min, l_max)
    achieved = float(np.sum(weights * x))
    assert abs(achieved - reference) <= 1e-6 * max(1.0, abs(reference))


@pytest.mark.parametrize("seed", range(4))
def test_flexmoe_matches_brute_force_on_tiny_instances(seed):
    rng = np.random.default_rng(seed)
    scores = skewed_scores(4, 4, seed) if seed % 2 else rng.random((4, 4))
    x = assign(scores, 2, solver="cvxpy")
    l_min, l_max = load_bounds(np.full(4, 2), 4)
    assert (l_min, l_max) == (2, 2)
    assert_valid(x, np.full(4, 2), l_min, l_max)
    best = brute_force_optimum(scores, 2, l_min, l_max)
    assert abs(float(np.sum(scores * x)) - best) <= 1e-9


def test_brute_force_with_slack_allows_unbalanced_optimum():
    # 3 clients, 3 experts, k=1: L* = 1; slack 1.0 -> bounds [0, 2].
    scores = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert load_bounds(np.full(3, 1), 3, 1.0) == (0, 2)
    x = assign(scores, 1, load_slack=1.0, solver="cvxpy")
    assert x[:, 0].sum() == 2  # two clients take the popular expert, the cap stops the third
    assert abs(float(np.sum(scores * x)) - brute_force_optimum(scores, 1, 0, 2)) <= 1e-9


def test_interior_point_fractional_point_is_repaired():
    # All-equal scores: the optimal face is the whole polytope and Clarabel (interior
    # point) returns its fractional centre; the repair must turn it into a vertex.
    scores = np.ones((6, 4))
    capacity = np.full(6, 2)
    raw = asg._solve_lp_cvxpy(scores, capacity, 3, 3, cvxpy_solver="CLARABEL")
    assert not asg._is_integral(raw)  # guards that this test really exercises the repair
    vertex = asg._repair_to_vertex(raw, scores, capacity, 3, 3)
    assert asg._is_integral(vertex)
    assert_valid(np.rint(vertex).astype(int), capacity, 3, 3)


def test_flexmoe_balances_skewed_scores_where_greedy_does_not():
    scores = skewed_scores(200, 8, seed=3)  # N*k/E = 50, an integer
    x_flex = assign(scores, 2, "flexmoe", solver="cvxpy")
    x_greedy = assign(scores, 2, "greedy", rng=0)
    assert cv(x_flex) == 0.0
    assert cv(x_greedy) > 0.2


# -------------------------------------------------------------------------- fast path


def test_fast_solver_matches_reference():
    rng = np.random.default_rng(7)
    scores = skewed_scores(60, 8, seed=7)
    capacity = rng.choice([1, 2, 4], size=60)
    x = assign(scores, capacity, solver="fast", load_slack=0.1)
    l_min, l_max = load_bounds(capacity, 8, 0.1)
    assert_valid(x, capacity, l_min, l_max)
    reference = reference_optimum(scores, capacity, l_min, l_max)
    assert abs(float(np.sum(scores * x)) - reference) <= 1e-6 * max(1.0, abs(reference))


def test_auto_dispatches_on_size(monkeypatch):
    calls = []

    def fake_fast(weights, capacity, l_min, l_max):
        calls.append(weights.shape)
        return asg._assign_static(weights.shape, capacity)  # balanced, valid for slack 0

    monkeypatch.setattr(asg, "_solve_fast", fake_fast)
    monkeypatch.setattr(asg, "FAST_SOLVER_THRESHOLD", 40)
    assign(np.random.default_rng(0).random((5, 8)), 2, solver="auto")  # 40 vars: cvxpy
    assert calls == []
    assign(np.random.default_rng(0).random((6, 8)), 2, solver="auto")  # 48 vars: fast
    assert calls == [(6, 8)]
    assign(np.random.default_rng(0).random((2, 4)), 2, solver="fast")
    assert calls == [(6, 8), (2, 4)]


def test_invalid_fast_solver_output_is_rejected(monkeypatch):
    monkeypatch.setattr(asg, "_solve_fast", lambda w, c, lo, hi: np.ones(w.shape))
    with pytest.raises(RuntimeError, match="row sums"):
        assign(np.random.default_rng(0).random((4, 4)), 2, solver="fast")


# -------------------------------------------------------------------------- baselines


def test_greedy_is_per_row_top_k():
    rng = np.random.default_rng(5)
    scores = rng.permutation(40 * 8).reshape(40, 8).astype(float)  # distinct -> unique top-k
    capacity = rng.choice([1, 2, 3, 8], size=40)
    x = assign(scores, capacity, "greedy", rng=1)
    for row, k in zip(range(40), capacity):
        expected = set(np.argsort(-scores[row])[:k])
        assert set(np.flatnonzero(x[row])) == expected


def test_greedy_ignores_the_deficit_and_breaks_ties_at_random():
    # A deficit that would pull every client onto expert 2 under FLEX-MoE's objective must not
    # move greedy: it is top-k by Q alone.
    scores = np.zeros((200, 4))
    deficit = np.array([0.0, 0.0, 5.0, 0.0])
    with_deficit = assign(scores, 1, "greedy", rng=0, deficit=deficit, deficit_weight=1.0)
    without = assign(scores, 1, "greedy", rng=0)
    np.testing.assert_array_equal(with_deficit, without)
    assert (without.sum(axis=0) > 20).all()  # ties broken at random, not always expert 0
    flexmoe = assign(scores, 1, "flexmoe", deficit=deficit, deficit_weight=1.0, load_slack=10.0)
    np.testing.assert_array_equal(flexmoe[:, 2], 1)  # ... whereas FLEX-MoE follows it


@pytest.mark.parametrize("method", ["greedy", "random", "static", "dense"])
def test_baselines_do_not_read_the_deficit(method):
    rng = np.random.default_rng(3)
    scores = rng.random((30, 8))
    capacity = rng.choice([1, 2, 4], size=30)
    deficit = rng.normal(0.0, 10.0, size=8)
    plain = assign(scores, capacity, method, rng=7)
    with_deficit = assign(scores, capacity, method, rng=7, deficit=deficit, deficit_weight=2.5)
    np.testing.assert_array_equal(with_deficit, plain)
    if method == "greedy":
        for row, k in enumerate(capacity):  # distinct scores: top-k by Q, exactly
            assert set(np.flatnonzero(plain[row])) == set(np.argsort(-scores[row])[:k])


def test_random_rows_hold_exactly_k_distinct_experts_and_depend_on_seed():
    capacity = np.array([1, 2, 3, 4, 5] * 10)
    scores = np.zeros((50, 8))
    x0 = assign(scores, capacity, "random", rng=0)
    x1 = assign(scores, capacity, "random", rng=1)
    assert set(np.unique(x0)) <= {0, 1}
    np.testing.assert_array_equal(x0.sum(axis=1), capacity)
    np.testing.assert_array_equal(assign(scores, capacity, "random", rng=0), x0)
    assert not np.array_equal(x0, x1)


def test_static_is_balanced_round_robin_and_deterministic():
    capacity = np.array([2, 3, 1, 2])
    x = assign(np.random.default_rng(0).random((4, 4)), capacity, "static")
    expected = np.array([[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(x, expected)
    other_scores = assign(np.random.default_rng(9).random((4, 4)), capacity, "static")
    np.testing.assert_array_equal(other_scores, x)
    big = assign(np.zeros((37, 8)), 3, "static")
    load = big.sum(axis=0)
    assert load.max() - load.min() <= 1
    np.testing.assert_array_equal(big.sum(axis=1), 3)


def test_dense_is_all_ones():
    x = assign(np.zeros((3, 5)), 2, "dense")
    np.testing.assert_array_equal(x, np.ones((3, 5)))


# ------------------------------------------------------------------------ load bounds


def test_load_bounds_formula():
    assert load_bounds(np.full(10, 2), 8) == (2, 3)  # L* = 2.5
    assert load_bounds(np.full(40, 2), 8, 0.1) == (9, 11)  # L* = 10, exact decimal slack
    assert load_bounds(np.array([1, 2, 4]), 8, 0.5) == (0, 2)  # L* = 7/8
    assert load_bounds(np.full(4, 1), 4, 3.0) == (0, 4)  # slack > 1 clamps L_min at 0


# ------------------------------------------------------------------------ load tracker


def test_load_tracker_accumulates_target_minus_actual():
    tracker = LoadTracker(4)
    x1 = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]])  # target 6/4 = 1.5
    tracker.update(x1, np.array([2, 2, 2]))
    np.testing.assert_allclose(tracker.deficit, [1.5 - 3, 1.5 - 2, 1.5 - 1, 1.5 - 0])
    x2 = np.array([[0, 0, 1, 1], [0, 0, 0, 1]])  # target 3/4 = 0.75
    tracker.update(x2, np.array([2, 1]))
    # previous + 0.75 - column sums (0, 0, 1, 2)
    expected = np.array([-1.5 + 0.75 - 0, -0.5 + 0.75 - 0, 0.5 + 0.75 - 1, 1.5 + 0.75 - 2])
    np.testing.assert_allclose(tracker.deficit, expected)
    x3 = np.ones((1, 4), dtype=int)  # capacity defaults to row sums: target 1
    tracker.update(x3)
    np.testing.assert_allclose(tracker.deficit, expected)
    assert tracker.rounds == 3

    copy = tracker.deficit
    copy[0] = 99.0
    assert tracker.deficit[0] != 99.0  # property returns a copy

    restored = LoadTracker.from_dict(json.loads(json.dumps(tracker.to_dict())))
    np.testing.assert_array_equal(restored.deficit, tracker.deficit)
    assert restored.rounds == 3 and restored.num_experts == 4


def test_load_tracker_deficit_steers_flexmoe_towards_underused_experts():
    # 3 clients, 4 experts, k=1: L* = 0.75 -> bounds [0, 1]; one expert stays empty.
    # Without memory the least fit expert is always left out; the deficit rotates it in.
    scores = np.tile([0.4, 0.3, 0.2, 0.1], (3, 1))
    tracker = LoadTracker(4)
    held = np.zeros(4, dtype=int)
    for _ in range(8):
        x = assign(scores, 1, deficit=tracker.deficit, deficit_weight=1.0, solver="cvxpy")
        tracker.update(x)
        held += x.sum(axis=0)
    assert held.min() >= 5  # 24 slots over 4 experts = 6 each; nobody starved


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(capacity=5), "capacity"),  # k_c > E
        (dict(capacity=0), "capacity"),  # k_c < 1
        (dict(capacity=np.array([1, 2])), "capacity"),  # shape mismatch
        (dict(capacity=2.0), "capacity"),  # not an integer
        (dict(scores=np.array([[0.1, np.nan, 0.2, 0.3]] * 3)), "scores"),
        (dict(scores=np.ones(4)), "scores"),
        (dict(scores=np.ones((0, 4))), "scores"),
        (dict(method="topk"), "method"),
        (dict(solver="gurobi"), "solver"),
        (dict(deficit=np.ones(3)), "deficit"),
        (dict(deficit=np.array([0.0, np.inf, 0.0, 0.0])), "deficit"),
        (dict(deficit_weight=float("nan")), "deficit_weight"),
        (dict(load_slack=-0.1), "load_slack"),
        (dict(load_slack=float("inf")), "load_slack"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, match):
    args = dict(scores=np.ones((3, 4)), capacity=2)
    args.update(kwargs)
    scores = args.pop("scores")
    capacity = args.pop("capacity")
    with pytest.raises(ValueError, match=match):
        assign(scores, capacity, **args)


def test_infeasible_load_bounds_raise_value_error():
    capacity = np.full(4, 1)  # sum k = 4
    with pytest.raises(ValueError, match="L_min"):
        check_load_bounds(capacity, 4, 3, 4)  # needs 12 slots
    with pytest.raises(ValueError, match="L_max"):
        check_load_bounds(np.full(4, 3), 4, 0, 2)  # 12 slots, room for 8
    check_load_bounds(np.full(2, 4), 4, 2, 2)  # tight but feasible: every client holds all
    with pytest.raises(ValueError, match="capacity"):
        load_bounds(np.full(3, 5), 4)  # k_c > E: no row can pick 5 distinct experts
    with pytest.raises(ValueError, match="load_slack"):
        load_bounds(np.full(3, 2), 4, -0.5)


@pytest.mark.parametrize("kind", ["random", "skewed", "ties"])
def test_fast_and_cvxpy_paths_reach_the_same_optimum_with_a_deficit(kind):
    """Both solvers behind assign() optimise Q + lambda*d under the same bounds."""
    rng = np.random.default_rng(11)
    scores = {
        "random": rng.random((300, 16)),
        "skewed": skewed_scores(300, 16, seed=11),
        "ties": rng.integers(0, 3, size=(300, 16)).astype(float),
    }[kind]
    capacity = rng.choice([1, 2, 3], size=300)
    deficit = rng.normal(size=16)
    kwargs = dict(load_slack=0.2, deficit=deficit, deficit_weight=0.3)
    x_fast = assign(scores, capacity, solver="fast", **kwargs)
    x_cvxpy = assign(scores, capacity, solver="cvxpy", **kwargs)
    l_min, l_max = load_bounds(capacity, 16, 0.2)
    assert_valid(x_fast, capacity, l_min, l_max)
    weights = scores + 0.3 * deficit[None, :]
    assert float(np.sum(weights * x_fast)) == pytest.approx(float(np.sum(weights * x_cvxpy)), rel=1e-9)
    assert float(np.sum(weights * x_fast)) == pytest.approx(
        reference_optimum(weights, capacity, l_min, l_max), rel=1e-9
    )


def test_prepare_solver_names_the_setting_for_an_unknown_solver_and_loads_cvxpy():
    import sys

    from flexmoe_core.assignment import prepare_solver

    with pytest.raises(ValueError, match="solver"):
        prepare_solver("simplex")
    prepare_solver("auto")
    assert "cvxpy" in sys.modules
