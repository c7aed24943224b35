"""Redundancy-aware assignment (`min-holders` h): every expert trained this round has >= h holders.

Why: a robust rule needs several holders per expert to out-vote one attacker, and with
N k / E = 2-3 holders an expert often has fewer than that. With ``h > 1`` FLEX-MoE solves,
for the N participants (w = Q + lambda d as in :mod:`flexmoe_core.assignment`),

    maximise    sum_{c,e} w[c,e] x[c,e]
    subject to  sum_e x[c,e] = k_c                     every client fills its capacity
                lo z_e <= sum_c x[c,e] <= hi z_e        a trained expert (z_e = 1) has lo..hi holders,
                sum_e z_e = m                          an untrained one (z_e = 0) none
                x[c,e], z_e in {0, 1}

a mixed-integer program with one on/off variable z_e per expert, where

* ``h' = min(h, N)``: with fewer participants than h no expert could reach h holders; the
  round then asks for all N (a documented relaxation, logged by the caller);
* ``m = min(E, floor(sum k_c / h'))`` experts are trained: as many as the slots allow at h'
  holders each. An expert left out (z_e = 0) keeps its weights (nobody sends it back) and its
  deficit grows by the round's target load (:class:`~flexmoe_core.assignment.LoadTracker`), so
  the deficit term brings it back in a later round;
* ``lo = max(h', floor(L_m (1 - slack)))``, ``hi = min(N, max(lo, ceil(L_m (1 + slack))))`` with
  ``L_m = sum k_c / m``: the balanced load over the m trained experts.

When ``h' <= L_min`` (the plain bounds already give every expert h' holders) this is exactly
the plain problem, and :func:`flexmoe_core.assignment.assign` solves that LP instead: with
``min-holders = 1`` nothing changes. The MIP is solved by cvxpy with HiGHS (branch and bound;
the LP relaxation for fixed z is totally unimodular, so the search is short); bench/redundancy.py
times it and tests/test_redundancy.py checks it against brute force and scipy.optimize.milp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

MIP_SOLVER = "HIGHS"


@dataclass(frozen=True)
class Redundancy:
    """The round's redundancy plan: effective h, trained experts m and their load bounds."""

    min_holders: int  # h' = min(h, N)
    trained: int  # m
    low: int
    high: int


def plan(capacity: np.ndarray, num_experts: int, min_holders: int, load_slack: float = 0.0) -> Redundancy:
    """h', m and the load bounds of a round (see the module docstring); ValueError when infeasible."""
    capacity = np.asarray(capacity, dtype=np.int64)
    if int(min_holders) < 1:
        raise ValueError(f"min-holders must be >= 1, got {min_holders}")
    num_clients, total = int(capacity.size), int(capacity.sum())
    h = min(int(min_holders), num_clients)
    m = min(int(num_experts), total // h)
    if m < int(capacity.max()):
        raise ValueError(
            f"min-holders={min_holders}: only {m} experts can have {h} holders with sum k_c={total}, "
            f"but a client holds {int(capacity.max())} distinct experts; lower min-holders or the capacities"
        )
    slack = Fraction(repr(float(load_slack)))
    target = Fraction(total, m)
    low = max(h, math.floor(target * (1 - slack)))
    high = min(num_clients, max(low, math.ceil(target * (1 + slack))))
    if not m * low <= total <= m * high:
        raise ValueError(
            f"min-holders={min_holders}: {m} trained experts with {low}..{high} holders each cannot take "
            f"sum k_c={total} slots (N={num_clients}); lower min-holders or raise load-slack"
        )
    return Redundancy(h, m, low, high)


def assign_min_holders(
    weights: np.ndarray, capacity: np.ndarray, min_holders: int, load_slack: float = 0.0, solver: str = MIP_SOLVER
) -> np.ndarray:
    """The (N, E) 0/1 assignment maximising sum w x with every trained expert held >= h' times."""
    import cvxpy as cp

    weights = np.asarray(weights, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.int64)
    num_clients, num_experts = weights.shape
    r = plan(capacity, num_experts, min_holders, load_slack)
    x = cp.Variable((num_clients, num_experts), boolean=True)
    z = cp.Variable(num_experts, boolean=True)
    load = cp.sum(x, axis=0)
    constraints = [cp.sum(x, axis=1) == capacity, load >= r.low * z, load <= r.high * z, cp.sum(z) == r.trained]
    problem = cp.Problem(cp.Maximize(cp.sum(cp.multiply(weights, x))), constraints)
    options = {"highs_options": {"output_flag": False}} if solver == "HIGHS" else {}
    problem.solve(solver=solver, **options)
    if problem.status != cp.OPTIMAL or x.value is None:
        raise RuntimeError(f"min-holders MIP: solver {solver} ended with status {problem.status!r}")
    result = np.rint(np.asarray(x.value)).astype(np.int64)
    verify(result, capacity, r)
    return result


def verify(x: np.ndarray, capacity: np.ndarray, r: Redundancy) -> None:
    """0/1, capacities met, every expert untrained or held r.low..r.high times, r.trained of them."""
    if not np.all((x == 0) | (x == 1)):
        raise RuntimeError("min-holders: non 0/1 assignment")
    if not np.array_equal(x.sum(axis=1), capacity):
        raise RuntimeError("min-holders: row sums differ from the capacities")
    load = x.sum(axis=0)
    trained = load > 0
    if int(trained.sum()) != r.trained or np.any(load[trained] < r.low) or np.any(load[trained] > r.high):
        raise RuntimeError(f"min-holders: loads {load.tolist()} break {r}")
