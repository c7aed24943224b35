"""Tests for flexmoe_core.transport: the exact fast balanced-assignment solver.

Every optimality check compares against an independent reference: brute-force
enumeration on tiny instances, and scipy's HiGHS on the LP relaxation otherwise (the
constraint matrix is totally unimodular, so the LP optimum is the integer optimum).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from flexmoe_core import transport
from flexmoe_core.transport import solve_balanced_assignment

# ---------------------------------------------------------------------------------------
# References and helpers
# ---------------------------------------------------------------------------------------


def lp_optimum(w: np.ndarray, k: np.ndarray, l_min: int, l_max: int) -> float:
    """Optimal value of the LP relaxation, solved by HiGHS (independent of our code)."""
    n, e = w.shape
    rows = sp.kron(sp.eye(n, format="csr"), np.ones((1, e)), format="csr")
    cols = sp.kron(np.ones((1, n)), sp.eye(e, format="csr"), format="csr")
    result = linprog(
        -w.ravel(),
        A_ub=sp.vstack([cols, -cols], format="csr"),
        b_ub=np.concatenate([np.full(e, l_max), np.full(e, -l_min)]),
        A_eq=rows,
        b_eq=k,
        bounds=(0, 1),
        method="highs",
    )
    assert result.status == 0, result.message
    return -result.fun


def brute_force_optimum(w: np.ndarray, k: np.ndarray, l_min: int, l_max: int) -> float:
    """Best objective over every 0/1 assignment (tiny instances only)."""
    n, e = w.shape
    options = [list(itertools.combinations(range(e), int(kc))) for kc in k]
    best = -np.inf
    for choice in itertools.product(*options):
        load = np.zeros(e, dtype=int)
        value = 0.0
        for c, experts in enumerate(choice):
            load[list(experts)] += 1
            value += w[c, list(experts)].sum()
        if load.min() >= l_min and load.max() <= l_max:
            best = max(best, value)
    return best


def bounds(k: np.ndarray, n_experts: int, slack: float) -> tuple[int, int]:
    """L* = sum k / E; [floor(L*(1-slack)), ceil(L*(1+slack))] (the design's rule)."""
    target = k.sum() / n_experts
    return int(np.floor(target * (1 - slack))), int(np.ceil(target * (1 + slack)))


def assert_feasible(x: np.ndarray, k: np.ndarray, l_min: int, l_max: int) -> None:
    assert x.dtype == np.int8
    assert set(np.unique(x)) <= {0, 1}
    np.testing.assert_array_equal(x.sum(axis=1), k)
    load = x.sum(axis=0)
    assert load.min() >= l_min and load.max() <= l_max, (load, l_min, l_max)


def assert_optimal(w, k, l_min, l_max, reference: float) -> np.ndarray:
    x = solve_balanced_assignment(w, k, l_min, l_max)
    assert_feasible(x, k, l_min, l_max)
    value = float((w * x).sum())
    assert value == pytest.approx(reference, rel=1e-6, abs=1e-9)
    return x


def make_weights(kind: str, n: int, e: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.random((n, e))
    if kind == "skewed":  # shared popular-expert component, as non-IID federations give
        popularity = rng.random(e) ** 2
        return popularity[None, :] * 3 + rng.random((n, e))
    if kind == "ties":  # integer scores: many exact ties
        return rng.integers(0, 3, size=(n, e)).astype(float)
    raise ValueError(kind)


def make_capacity(mode: str, n: int, e: int, rng: np.random.Generator) -> np.ndarray:
    if mode == "homogeneous":
        return np.full(n, min(2, e))
    return rng.choice([kc for kc in (1, 2, 4) if kc <= e], size=n)


# ---------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("slack", [0.0, 0.5])
@pytest.mark.parametrize("kind", ["random", "skewed", "ties"])
def test_matches_brute_force_on_4x4_k2(kind, slack):
    rng = np.random.default_rng(11)
    for _ in range(4):
        w = make_weights(kind, 4, 4, rng)
        k = np.full(4, 2)
        l_min, l_max = bounds(k, 4, slack)
        assert_optimal(w, k, l_min, l_max, brute_force_optimum(w, k, l_min, l_max))


def test_matches_brute_force_with_heterogeneous_capacity():
    rng = np.random.default_rng(12)
    for trial in range(12):
        n, e = (5, 4) if trial % 2 else (4, 5)
        w = make_weights(["random", "skewed", "ties"][trial % 3], n, e, rng)
        k = rng.integers(1, e + 1, size=n)
        l_min, l_max = bounds(k, e, [0.0, 0.3][trial % 2])
        assert_optimal(w, k, l_min, l_max, brute_force_optimum(w, k, l_min, l_max))


SIZES = [(7, 3), (40, 8), (300, 16), (2000, 64)]


@pytest.mark.parametrize("slack", [0.0, 0.25])
@pytest.mark.parametrize("capacity_mode", ["homogeneous", "heterogeneous"])
@pytest.mark.parametrize("kind", ["random", "skewed", "ties"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{n}x{e}" for n, e in SIZES])
def test_matches_highs_lp_optimum(size, kind, capacity_mode, slack):
    n, e = size
    rng = np.random.default_rng([n, e, len(kind), len(capacity_mode), int(slack * 100)])
    w = make_weights(kind, n, e, rng)
    k = make_capacity(capacity_mode, n, e, rng)
    l_min, l_max = bounds(k, e, slack)
    assert_optimal(w, k, l_min, l_max, lp_optimum(w, k, l_min, l_max))


@pytest.mark.parametrize("k_value", [1, 2, 4])
def test_skewed_slack_zero_each_capacity(k_value):
    rng = np.random.default_rng(k_value)
    n, e = 640, 32
    w = make_weights("skewed", n, e, rng)
    k = np.full(n, k_value)
    l_min, l_max = bounds(k, e, 0.0)
    x = assert_optimal(w, k, l_min, l_max, lp_optimum(w, k, l_min, l_max))
    # Slack 0 with sum k divisible by E pins every load exactly.
    np.testing.assert_array_equal(x.sum(axis=0), np.full(e, n * k_value // e))


def test_many_small_random_instances_against_highs():
    """Odd shapes: E = 1, k_c = E, l_min = 0, very loose l_max, N < E."""
    rng = np.random.default_rng(99)
    for trial in range(60):
        n, e = int(rng.integers(1, 25)), int(rng.integers(1, 9))
        w = make_weights(["random", "skewed", "ties"][trial % 3], n, e, rng)
        k = rng.integers(1, e + 1, size=n)
        total = int(k.sum())
        l_min = int(rng.integers(0, total // e + 1))
        l_max = int(rng.integers(-(-total // e), total + 1))
        assert_optimal(w, k, l_min, l_max, lp_optimum(w, k, l_min, l_max))


def test_exact_whatever_the_warm_start(monkeypatch):
    """Exactness must not depend on the price heuristic: zero prices (plain greedy
    start) and random prices both have to reach the LP optimum."""
    rng = np.random.default_rng(5)
    w = make_weights("skewed", 400, 16, rng)
    k = make_capacity("heterogeneous", 400, 16, rng)
    l_min, l_max = bounds(k, 16, 0.1)
    reference = lp_optimum(w, k, l_min, l_max)
    for prices in (np.zeros(16), rng.normal(scale=2.0, size=16)):
        monkeypatch.setattr(transport, "_warm_start_prices", lambda *args, p=prices: p)
        assert_optimal(w, k, l_min, l_max, reference)


def test_greedy_already_feasible_keeps_greedy_objective():
    """Each client's favourite experts already form a balanced assignment, so the
    optimum is the unconstrained greedy value: the sum of every row's top-k."""
    rng = np.random.default_rng(3)
    n, e, k_value = 64, 8, 2
    w = rng.random((n, e))
    favourite = (np.arange(n)[:, None] * k_value + np.arange(k_value)[None, :]) % e
    np.put_along_axis(w, favourite, 5.0 + rng.random((n, k_value)), axis=1)
    k = np.full(n, k_value)
    l_min, l_max = bounds(k, e, 0.0)
    greedy_value = np.sort(w, axis=1)[:, -k_value:].sum()
    x = assert_optimal(w, k, l_min, l_max, greedy_value)
    np.testing.assert_array_equal(np.sort(np.flatnonzero(x[0])), np.sort(favourite[0]))


def test_lower_bound_forces_unpopular_experts():
    """Everybody prefers experts 0 and 1; l_min > 0 must still give every other expert
    at least l_min clients, at the cheapest possible loss (LP reference)."""
    rng = np.random.default_rng(4)
    n, e = 120, 10
    w = rng.random((n, e))
    w[:, :2] += 10.0
    k = np.full(n, 2)
    l_min, l_max = 15, n  # upper bound never binds, lower bound must
    x = assert_optimal(w, k, l_min, l_max, lp_optimum(w, k, l_min, l_max))
    load = x.sum(axis=0)
    assert load[2:].min() >= l_min
    # Only the lower bound forces moves, so unpopular experts get exactly l_min.
    np.testing.assert_array_equal(load[2:], np.full(e - 2, l_min))


def test_all_scores_equal_is_balanced_and_fast_path_exact():
    """Round 1 of FLEX-MoE: every fitness equals the optimistic initial value."""
    n, e = 3000, 32
    w = np.ones((n, e))
    k = np.full(n, 3)
    l_min, l_max = bounds(k, e, 0.0)
    x = assert_optimal(w, k, l_min, l_max, float(k.sum()))
    assert x.sum(axis=0).max() - x.sum(axis=0).min() <= 1


def test_scale_and_offset_invariance():
    """Huge magnitudes, tiny magnitudes and large common offsets: same decisions."""
    rng = np.random.default_rng(8)
    w = make_weights("skewed", 150, 12, rng)
    k = make_capacity("heterogeneous", 150, 12, rng)
    l_min, l_max = bounds(k, 12, 0.0)
    reference = lp_optimum(w, k, l_min, l_max)
    for factor, offset in ((1e200, 0.0), (1e-200, 0.0), (1.0, 1e6)):
        x = solve_balanced_assignment(w * factor + offset, k, l_min, l_max)
        assert_feasible(x, k, l_min, l_max)
        assert float((w * x).sum()) == pytest.approx(reference, rel=1e-6)


# ---------------------------------------------------------------------------------------
# Internals: the lazily updated exchange graph stays a valid lower bound / exact
# ---------------------------------------------------------------------------------------


class _CheckedGraph(transport._ExchangeGraph):
    checks = 0
    units: list[int] = []

    def _augment(self, path, source_limit, sink_limit):
        # The chosen path's arcs must be exact when it is used ...
        for a, b in zip(path[:-1], path[1:]):
            assert not self.stale[a, b]
        load_before = self.load.copy()
        super()._augment(path, source_limit, sink_limit)
        # Only the two ends change load, by the same number of units.
        change = self.load - load_before
        moved = -change[path[0]]
        assert moved >= 1 and change[path[-1]] == moved
        assert np.count_nonzero(change) == 2
        _CheckedGraph.units.append(int(moved))
        # ... and afterwards every entry is exact, or a lower bound flagged stale.
        exact = self.exact_costs()
        fresh = ~self.stale
        np.testing.assert_array_equal(self.cost[fresh], exact[fresh])
        assert np.all(self.cost[self.stale] <= exact[self.stale])
        np.testing.assert_array_equal(self.load, self.held.sum(axis=0))
        np.testing.assert_array_equal(self.held_by_expert, self.held.T)
        _CheckedGraph.checks += 1


@pytest.mark.parametrize("kind", ["skewed", "ties", "binary"])
def test_lazy_cost_updates_match_full_recomputation(kind):
    rng = np.random.default_rng(21)
    n, e = 150, 7
    if kind == "binary":  # scores in {0, 1}: mostly bulk (tied) moves
        w = (rng.random((n, e)) < 0.3 + 0.1 * np.arange(e)).astype(float)
    else:
        w = make_weights(kind, n, e, rng)
    k = make_capacity("heterogeneous", n, e, rng)
    l_min, l_max = bounds(k, e, 0.0 if kind == "binary" else 0.2)
    # Greedy start with ties all broken towards low expert ids: many augmentations,
    # bulk (tied) ones included.
    start = transport._top_k(w, k, np.zeros(n, dtype=int))
    _CheckedGraph.checks = 0
    graph = _CheckedGraph(w, start)
    np.testing.assert_array_equal(graph.cost, graph.exact_costs())
    graph.repair_loads(l_min, l_max)
    graph.polish(l_min, l_max)
    assert _CheckedGraph.checks > 3
    x = graph.assignment()
    assert_feasible(x, k, l_min, l_max)
    assert float((w * x).sum()) == pytest.approx(lp_optimum(w, k, l_min, l_max), rel=1e-9)


def test_tied_bulk_moves_along_a_two_arc_path():
    """Hand-made instance whose optimum moves several tied units along 0 -> 1 -> 2 at
    once, with fewer tied movers on the second arc than capacity on the path."""
    w = np.array(
        [[2.0, 1.0, -10.0]] * 18  # hold 0; moving to 1 costs 1, to 2 costs 12
        + [[0.0, 2.0, 1.0]] * 6  # hold 1; moving to 2 costs 1
        + [[0.0, 2.5, 1.0]] * 6  # hold 1; moving to 2 costs 1.5
    )
    k = np.ones(30, dtype=int)
    _CheckedGraph.checks, _CheckedGraph.units = 0, []
    graph = _CheckedGraph(w, transport._top_k(w, k, np.zeros(30, dtype=int)))
    graph.repair_loads(10, 10)
    assert max(_CheckedGraph.units) > 1  # bulk moves happened
    x = graph.assignment()
    assert_feasible(x, k, 10, 10)
    # 8 clients 0 -> 1 and 10 clients 1 -> 2 (6 at cost 1, 4 at cost 1.5): loss 20.
    assert float((w * x).sum()) == pytest.approx(lp_optimum(w, k, 10, 10))
    assert float((w * x).sum()) == pytest.approx(18 * 2.0 + 6 * 2.0 + 6 * 2.5 - 20.0)


def test_bulk_move_of_all_tied_clients_updates_their_other_arcs():
    """Three identical clients hold {0, 1} and all move 1 -> 2 at once; they were the
    only clients attaining cost[0, 2], which must then rise from 4 to 15."""
    w = np.array(
        [[5.0, 2.0, 1.0, -10.0]] * 3  # hold {0, 1}
        + [[-10.0, 3.0, -10.0, 2.0]] * 5  # hold {1, 3}
        + [[5.0, -10.0, -10.0, 4.0]] * 2  # hold {0, 3}
    )
    k = np.full(10, 2)
    _CheckedGraph.checks, _CheckedGraph.units = 0, []
    graph = _CheckedGraph(w, transport._top_k(w, k, np.zeros(10, dtype=int)))
    assert graph.cost[0, 2] == 4.0
    graph.repair_loads(5, 5)
    assert _CheckedGraph.units[0] == 3
    x = graph.assignment()
    assert_feasible(x, k, 5, 5)
    assert float((w * x).sum()) == pytest.approx(lp_optimum(w, k, 5, 5))


def test_top_k_breaks_ties_round_robin():
    w = np.zeros((4, 4))
    k = np.array([2, 2, 1, 3])
    x = transport._top_k(w, k, transport._wrap_around_offsets(k, 4))
    np.testing.assert_array_equal(x.sum(axis=1), k)
    # offsets 0, 2, 0, 1 -> {0,1}, {2,3}, {0}, {1,2,3}
    expected = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(x, expected)


# ---------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------


def test_returns_int8_and_leaves_inputs_alone():
    rng = np.random.default_rng(1)
    w = rng.random((30, 5))
    k = np.full(30, 2)
    w_copy, k_copy = w.copy(), k.copy()
    x = solve_balanced_assignment(w, k, 12, 12)
    assert x.dtype == np.int8 and x.shape == (30, 5)
    np.testing.assert_array_equal(w, w_copy)
    np.testing.assert_array_equal(k, k_copy)


def test_edge_shapes():
    assert solve_balanced_assignment(np.zeros((0, 3)), np.zeros(0, dtype=int), 0, 0).shape == (0, 3)
    x = solve_balanced_assignment(np.ones((5, 1)), np.ones(5, dtype=int), 5, 5)
    np.testing.assert_array_equal(x, np.ones((5, 1)))
    x = solve_balanced_assignment(np.arange(6.0).reshape(2, 3), np.array([3, 3]), 2, 2)
    np.testing.assert_array_equal(x, np.ones((2, 3)))


@pytest.mark.parametrize(
    ("weights", "capacity", "l_min", "l_max", "message"),
    [
        (np.ones(4), np.ones(4, int), 0, 4, "weights"),
        (np.full((2, 2), np.nan), np.ones(2, int), 1, 1, "finite"),
        (np.ones((2, 2)), np.ones(3, int), 1, 1, "shape"),
        (np.ones((2, 2)), np.array([1, 3]), 1, 2, "1..2"),
        (np.ones((2, 2)), np.array([1.5, 1.0]), 1, 2, "integers"),
        (np.ones((2, 2)), np.ones(2, int), 2, 1, "l_min <= l_max"),
        (np.ones((4, 2)), np.ones(4, int), 3, 3, "infeasible"),
        (np.ones((4, 2)), np.ones(4, int), 0, 1, "infeasible"),
    ],
)
def test_rejects_bad_input(weights, capacity, l_min, l_max, message):
    with pytest.raises(ValueError, match=message):
        solve_balanced_assignment(weights, capacity, l_min, l_max)
