"""Expert assignment: which experts each participating client holds this round.

The FLEX-MoE rule (``method="flexmoe"``) solves, for the N participants of a round,

    maximise    sum_{c,e} w[c,e] * x[c,e]         w = Q + lambda * d[None, :]
    subject to  sum_e x[c,e] = k_c                 every client fills its capacity
                L_min <= sum_c x[c,e] <= L_max     every expert is held about equally
                0 <= x[c,e] <= 1

where Q is the fitness table, d the per-expert historical load deficit (see
:class:`LoadTracker`), ``L* = sum_c k_c / E``, ``L_min = floor(L* (1 - slack))`` and
``L_max = ceil(L* (1 + slack))``.

Why an LP is enough: the constraint matrix is the incidence matrix of the complete
bipartite graph clients x experts (one row per client, one per expert), which is
totally unimodular. With integral right-hand sides every vertex of the feasible
polytope is integral, so a *vertex* optimum of the LP relaxation is an optimal 0/1
assignment. Simplex solvers (HiGHS simplex, ``linprog(method="highs-ds")``) return
vertices; an interior-point solver may return the centre of an optimal face when there
are ties, which is fractional. We therefore check integrality with a tolerance and,
when the point is fractional, *repair* it by re-solving with dual simplex, and verify
that the repaired vertex attains the same objective. We never round a fractional point.

Feasibility: with ``1 <= k_c <= E`` and ``slack >= 0`` the bounds are always feasible:
the round-robin assignment of ``method="static"`` has every column sum in
``{floor(L*), ceil(L*)}``, which lies inside ``[L_min, L_max]``. :func:`check_load_bounds`
states the exact condition for arbitrary bounds.

Baselines share the entry point :func:`assign` so that experiments swap only the rule:
``greedy`` (per-client top-k_c by Q alone, random tie-break: the personalisation-only
rule), ``random`` (uniform k_c-subset), ``static`` (fixed balanced round-robin) and
``dense`` (every client holds every expert), and the balancing baselines of
:mod:`flexmoe_core.balancing`: ``bias-greedy`` (top-k of Q plus a per-expert bias stepped
towards equal load, DeepSeek-V3) and ``sinkhorn`` (top-k of Sinkhorn-balanced scores).
The deficit term is part of the FLEX-MoE objective only; no baseline reads it, so a baseline
is the textbook rule and not a variant that borrows the method's balancing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from flexmoe_core import balancing, checks
from flexmoe_core.transport import solve_balanced_assignment

# bias-greedy and sinkhorn: the balancing baselines of flexmoe_core.balancing.
METHODS = ("flexmoe", "greedy", "random", "static", "dense", "bias-greedy", "sinkhorn")
SOLVERS = ("auto", "cvxpy", "fast")

# Above this many decision variables (N * E), solver="auto" uses the specialised exact
# solver in flexmoe_core.transport: cvxpy's compile step dominates at that size
# (about 1 s at 1000 x 64, tens of seconds at 10,000 x 64 on the reference machine).
FAST_SOLVER_THRESHOLD = 20_000

# A solver value within this distance of 0 or 1 counts as integral. HiGHS vertices are
# exact up to ~1e-9; an interior-point centre of a tied face is off by O(1/E).
INTEGRALITY_TOL = 1e-6

# Relative tolerance for "the repaired vertex attains the LP optimum" (an interior-point
# point may overshoot the optimum slightly through its own feasibility tolerance).
OBJECTIVE_RTOL = 1e-6

ASSIGNMENT_DTYPE = np.int64


# --------------------------------------------------------------------------- validation


def _as_scores(scores: Any) -> np.ndarray:
    """Return scores as a finite (N, E) float64 array with N, E >= 1."""
    try:
        array = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be a numeric (N, E) array: {exc}") from exc
    if array.ndim != 2:
        raise ValueError(f"scores must be 2-D (clients x experts), got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"scores must have at least 1 client and 1 expert, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("scores must be finite (found NaN or inf)")
    return array


def _as_capacity(capacity: Any, num_clients: int, num_experts: int) -> np.ndarray:
    """Return capacity as an (N,) int64 array with 1 <= k_c <= E.

    An int is broadcast to every client. Float dtypes are rejected even when integral,
    so that a mis-parsed config value is caught rather than truncated.
    """
    array = np.asarray(capacity)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"capacity must be an int or an integer array, got dtype {array.dtype}")
    if array.ndim == 0:
        array = np.full(num_clients, int(array), dtype=np.int64)
    if array.shape != (num_clients,):
        raise ValueError(f"capacity must be an int or have shape (N,) = ({num_clients},), got shape {array.shape}")
    array = array.astype(np.int64)
    if np.any(array < 1):
        raise ValueError(f"capacity k_c must be >= 1 for every client, got min {array.min()}")
    if np.any(array > num_experts):
        raise ValueError(f"capacity k_c must be <= number of experts E = {num_experts}, got max {array.max()}")
    return array


def _as_load_slack(load_slack: Any) -> float:
    try:
        value = float(load_slack)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"load_slack must be a real number >= 0, got {load_slack!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"load_slack must be a finite number >= 0, got {load_slack!r}")
    return value


def _objective_weights(scores: np.ndarray, deficit: Any, deficit_weight: Any) -> np.ndarray:
    """w = scores + deficit_weight * deficit[None, :] (deficit None means zeros)."""
    try:
        weight = float(deficit_weight)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"deficit_weight must be a real number, got {deficit_weight!r}") from exc
    if not math.isfinite(weight):
        raise ValueError(f"deficit_weight must be finite, got {deficit_weight!r}")
    if deficit is None:
        return scores
    num_experts = scores.shape[1]
    try:
        d = np.asarray(deficit, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"deficit must be a numeric (E,) array: {exc}") from exc
    if d.shape != (num_experts,):
        raise ValueError(f"deficit must have shape (E,) = ({num_experts},), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("deficit must be finite (found NaN or inf)")
    return scores + weight * d[None, :]


# ------------------------------------------------------------------------- load bounds


def check_load_bounds(capacity: np.ndarray, num_experts: int, l_min: int, l_max: int) -> None:
    """Raise ValueError unless the balanced assignment problem has a solution.

    With K = sum k_c and N clients, a 0/1 (N, E) matrix with row sums k_c and column
    sums in [l_min, l_max] exists iff
        1 <= k_c <= E for every client      (a row picks k_c distinct experts),
        E * l_min <= K <= E * min(l_max, N)  (a column holds at most N clients).
    Sufficiency: the round-robin of ``static`` gives column sums floor(K/E) or
    ceil(K/E), which both lie in [l_min, min(l_max, N)] under the second condition.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    num_clients = capacity.shape[0]
    total = int(capacity.sum())
    if np.any(capacity < 1) or np.any(capacity > num_experts):
        raise ValueError(
            f"infeasible: every capacity k_c must be in [1, E={num_experts}], "
            f"got range [{capacity.min()}, {capacity.max()}]"
        )
    upper = min(int(l_max), num_clients)
    if num_experts * int(l_min) > total:
        raise ValueError(
            f"infeasible load bounds: L_min={l_min} needs E*L_min={num_experts * l_min} expert "
            f"slots but the clients hold only sum k_c={total}; lower L_min (increase load-slack)"
        )
    if total > num_experts * upper:
        raise ValueError(
            f"infeasible load bounds: sum k_c={total} exceeds E*min(L_max, N)="
            f"{num_experts * upper} (L_max={l_max}, N={num_clients}); raise L_max "
            f"(increase load-slack) or lower the capacities"
        )


def load_bounds(capacity: np.ndarray, num_experts: int, load_slack: float = 0.0) -> tuple[int, int]:
    """Per-expert load bounds (L_min, L_max) for one round.

    ``L* = sum k_c / E``, ``L_min = max(0, floor(L* (1 - slack)))``,
    ``L_max = ceil(L* (1 + slack))``. Computed in exact rational arithmetic, with the
    slack read as its shortest decimal form (0.1 means 1/10), so that e.g. L* = 10
    with slack 0.1 gives L_min = 9, not 8 through float round-off.

    Raises ValueError for capacities outside [1, E], a negative or non-finite slack,
    or bounds that admit no assignment (see :func:`check_load_bounds`; with valid
    capacities and slack >= 0 the bounds are always feasible).
    """
    if int(num_experts) < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    slack = Fraction(repr(_as_load_slack(load_slack)))
    capacity = np.asarray(capacity)
    if capacity.ndim != 1 or capacity.size < 1:
        raise ValueError(f"capacity must be a non-empty (N,) array, got shape {capacity.shape}")
    capacity = _as_capacity(capacity, capacity.shape[0], int(num_experts))
    target = Fraction(int(capacity.sum()), int(num_experts))
    l_min = max(0, math.floor(target * (1 - slack)))
    l_max = math.ceil(target * (1 + slack))
    check_load_bounds(capacity, int(num_experts), l_min, l_max)
    return l_min, l_max


# ------------------------------------------------------------------------ LP solving


def _solve_lp_cvxpy(
    weights: np.ndarray,
    capacity: np.ndarray,
    l_min: int,
    l_max: int,
    cvxpy_solver: str | None = None,
) -> np.ndarray:
    """Solve the LP relaxation with cvxpy; return the raw (possibly fractional) point.

    Vectorised on purpose: the objective multiplies a *constant* numpy matrix with the
    variable and the sums use ``axis=``. A Parameter multiplied elementwise with the
    variable makes cvxpy build a dense tensor (tens of GiB at 1000 x 64).
    """
    import cvxpy as cp

    num_clients, num_experts = weights.shape
    x = cp.Variable((num_clients, num_experts))
    column_load = cp.sum(x, axis=0)
    constraints = [
        cp.sum(x, axis=1) == capacity,
        column_load >= l_min,
        column_load <= l_max,
        x >= 0,
        x <= 1,
    ]
    problem = cp.Problem(cp.Maximize(cp.sum(cp.multiply(weights, x))), constraints)
    solver, options = _pick_cvxpy_solver(cvxpy_solver)
    problem.solve(solver=solver, **options)
    if problem.status != cp.OPTIMAL or x.value is None:
        raise RuntimeError(f"cvxpy solver {solver} ended with status {problem.status!r}")
    return np.asarray(x.value, dtype=np.float64)


def prepare_solver(solver: str) -> None:
    """Load cvxpy and check its LP solver is installed, before round 1: a missing solver is an error
    at start-up rather than in the middle of a run, and round 1 does not pay cvxpy's import (~1.8 s)."""
    checks.choice("solver", solver, SOLVERS)
    if solver != "fast":
        _pick_cvxpy_solver(None)


def _pick_cvxpy_solver(requested: str | None) -> tuple[str, dict[str, Any]]:
    """HiGHS simplex when installed (returns a vertex), otherwise CLARABEL (interior point)."""
    installed = _installed_cvxpy_solvers()
    name = requested or ("HIGHS" if "HIGHS" in installed else "CLARABEL")
    if name not in installed:
        raise RuntimeError(f"cvxpy solver {name} is not installed (have {installed})")
    # Nested dict: HiGHS's option is also called "solver", which clashes with cvxpy's.
    # output_flag=False silences HiGHS's solve log. (Its two-line banner still appears once
    # per process: HiGHS prints it when cvxpy constructs the solver, before any option.)
    highs = {"solver": "simplex", "output_flag": False}
    options: dict[str, Any] = {"highs_options": highs} if name == "HIGHS" else {}
    return name, options


@functools.cache
def _installed_cvxpy_solvers() -> tuple[str, ...]:
    """cvxpy probes every solver package on each call (about 7 ms); the answer cannot change in a process."""
    import cvxpy as cp

    return tuple(cp.installed_solvers())


def _is_integral(x: np.ndarray, tol: float = INTEGRALITY_TOL) -> bool:
    return bool(np.all(np.abs(x - np.rint(x)) <= tol))


def _lp_matrices(num_clients: int, num_experts: int) -> tuple[Any, Any]:
    """Sparse row-sum (N, NE) and column-sum (E, NE) matrices for x flattened row-major."""
    from scipy import sparse

    size = num_clients * num_experts
    ones = np.ones(size)
    rows = sparse.csr_matrix(
        (ones, np.arange(size), np.arange(0, size + 1, num_experts)),
        shape=(num_clients, size),
    )
    cols = sparse.csr_matrix(
        (ones, (np.tile(np.arange(num_experts), num_clients), np.arange(size))),
        shape=(num_experts, size),
    )
    return rows, cols


def _solve_lp_dual_simplex(weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> np.ndarray:
    """Solve the same LP with scipy's HiGHS dual simplex, which returns a vertex."""
    from scipy import sparse
    from scipy.optimize import linprog

    num_clients, num_experts = weights.shape
    rows, cols = _lp_matrices(num_clients, num_experts)
    result = linprog(
        -weights.ravel(),
        A_ub=sparse.vstack([cols, -cols]).tocsr(),
        b_ub=np.concatenate([np.full(num_experts, l_max), np.full(num_experts, -l_min)]),
        A_eq=rows,
        b_eq=capacity,
        bounds=(0, 1),
        method="highs-ds",
    )
    if result.status != 0:
        raise RuntimeError(f"dual-simplex repair failed: {result.message}")
    return result.x.reshape(num_clients, num_experts)


def _repair_to_vertex(
    point: np.ndarray, weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int
) -> np.ndarray:
    """Replace a fractional optimum by an integral optimal vertex of the same LP.

    Total unimodularity guarantees such a vertex exists and dual simplex finds one. We
    check that it is integral and that its objective matches the fractional optimum;
    anything else means a solver failure, reported as RuntimeError.
    """
    vertex = _solve_lp_dual_simplex(weights, capacity, l_min, l_max)
    if not _is_integral(vertex):
        raise RuntimeError("integrality repair failed: dual simplex returned a fractional point")
    target = float(np.sum(weights * point))
    achieved = float(np.sum(weights * np.rint(vertex)))
    if achieved < target - OBJECTIVE_RTOL * max(1.0, abs(target)):
        raise RuntimeError(f"integrality repair failed: vertex objective {achieved} below LP optimum {target}")
    return vertex


def _solve_fast(weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> np.ndarray:
    return np.asarray(solve_balanced_assignment(weights, capacity, l_min, l_max))


def _verify_assignment(x: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> None:
    """Cheap O(NE) guard on any solver's output: 0/1, capacities met, loads in bounds."""
    if not np.all((x == 0) | (x == 1)):
        raise RuntimeError("solver returned a non 0/1 assignment")
    if not np.array_equal(x.sum(axis=1), capacity):
        raise RuntimeError("solver returned an assignment whose row sums differ from capacity")
    load = x.sum(axis=0)
    if load.min() < l_min or load.max() > l_max:
        raise RuntimeError(
            f"solver returned expert loads in [{load.min()}, {load.max()}], outside the bounds [{l_min}, {l_max}]"
        )


def _assign_flexmoe(weights: np.ndarray, capacity: np.ndarray, load_slack: float, solver: str) -> np.ndarray:
    num_clients, num_experts = weights.shape
    l_min, l_max = load_bounds(capacity, num_experts, load_slack)
    use_fast = solver == "fast" or (solver == "auto" and num_clients * num_experts > FAST_SOLVER_THRESHOLD)
    if use_fast:
        point = _solve_fast(weights, capacity, l_min, l_max).astype(np.float64)
    else:
        point = _solve_lp_cvxpy(weights, capacity, l_min, l_max)
        if not _is_integral(point):
            point = _repair_to_vertex(point, weights, capacity, l_min, l_max)
    if not _is_integral(point):
        raise RuntimeError("flexmoe solver returned a fractional assignment")
    x = np.rint(point).astype(ASSIGNMENT_DTYPE)
    _verify_assignment(x, capacity, l_min, l_max)
    return x


# -------------------------------------------------------------------------- baselines


def _rows_from_order(order: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Row c holds the first k_c experts of order[c] (a per-row permutation of 0..E-1)."""
    num_clients, num_experts = order.shape
    take = np.arange(num_experts)[None, :] < capacity[:, None]
    x = np.zeros((num_clients, num_experts), dtype=ASSIGNMENT_DTYPE)
    x[np.arange(num_clients)[:, None], order] = take
    return x


def _assign_greedy(scores: np.ndarray, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # lexsort: last key is primary -> sort by -Q, ties broken by a random key.
    tie_break = rng.random(scores.shape)
    order = np.lexsort((tie_break, -scores), axis=-1)
    return _rows_from_order(order, capacity)


def _assign_random(shape: tuple[int, int], capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    order = np.argsort(rng.random(shape), axis=1)
    return _rows_from_order(order, capacity)


def _assign_static(shape: tuple[int, int], capacity: np.ndarray) -> np.ndarray:
    """Row i holds experts (o_i + j) mod E, j < k_i, with o_i = sum_{j<i} k_j.

    Consecutive rows continue where the previous one stopped, so column sums differ by
    at most one: balanced, deterministic, and independent of the scores.
    """
    num_clients, num_experts = shape
    offset = np.concatenate([[0], np.cumsum(capacity)[:-1]])
    order = (offset[:, None] + np.arange(num_experts)[None, :]) % num_experts
    return _rows_from_order(order, capacity)


# ------------------------------------------------------------------------ entry point


def assign(
    scores: Any,
    capacity: Any,
    method: str = "flexmoe",
    *,
    rng: np.random.Generator | int | None = None,
    load_slack: float = 0.0,
    deficit: Any = None,
    deficit_weight: float = 0.0,
    solver: str = "auto",
    min_holders: int = 1,
    bias: Any = None,
    sinkhorn_tau: float = 0.1,
    sinkhorn_iterations: int = 50,
) -> np.ndarray:
    """Return the (N, E) 0/1 assignment of experts to this round's clients.

    Args:
        scores: (N, E) finite fitness scores Q of the participants.
        capacity: int or (N,) ints, 1 <= k_c <= E: experts each client can hold.
        method: one of METHODS. ``dense`` ignores capacity (still validated).
        rng: Generator or seed for the tie-breaks of ``greedy`` and for ``random``.
        load_slack: >= 0, widens the load bounds (``flexmoe`` only).
        deficit: (E,) historical load deficit (see LoadTracker), or None for zeros.
            Read by ``flexmoe`` only (validated for every method).
        deficit_weight: lambda in w = scores + lambda * deficit (``flexmoe`` only).
        solver: ``cvxpy`` (LP via cvxpy + integrality repair), ``fast``
            (flexmoe_core.transport), or ``auto`` (fast above FAST_SOLVER_THRESHOLD
            variables when that module is present, cvxpy otherwise).
        min_holders: h; with h > 1 every expert ``flexmoe`` trains this round gets >= h holders, and
            one that cannot is left untrained (flexmoe_core.redundancy, a MIP). 1: the plain LP.
        bias: (E,) per-expert selection bias of ``bias-greedy`` (None means zeros).
        sinkhorn_tau, sinkhorn_iterations: temperature and iterations of ``sinkhorn``.

    Raises:
        ValueError: bad input, checked before any solving.
        RuntimeError: a solver failed or returned an invalid assignment.
    """
    checks.choice("method", method, METHODS)
    checks.choice("solver", solver, SOLVERS)
    score_matrix = _as_scores(scores)
    num_clients, num_experts = score_matrix.shape
    capacity_vector = _as_capacity(capacity, num_clients, num_experts)
    slack = _as_load_slack(load_slack)
    weights = _objective_weights(score_matrix, deficit, deficit_weight)
    generator = np.random.default_rng(rng)

    if method == "flexmoe":
        if int(min_holders) > 1 and int(min_holders) > load_bounds(capacity_vector, num_experts, slack)[0]:
            from flexmoe_core.redundancy import assign_min_holders

            return assign_min_holders(weights, capacity_vector, int(min_holders), slack)
        return _assign_flexmoe(weights, capacity_vector, slack, solver)
    if method == "greedy":
        return _assign_greedy(score_matrix, capacity_vector, generator)
    if method == "random":
        return _assign_random(score_matrix.shape, capacity_vector, generator)
    if method == "static":
        return _assign_static(score_matrix.shape, capacity_vector)
    if method == "bias-greedy":
        b = balancing.as_bias(bias, num_experts)
        return balancing.assign_bias_greedy(score_matrix, capacity_vector, b, generator)
    if method == "sinkhorn":
        return balancing.assign_sinkhorn(
            score_matrix, capacity_vector, generator, tau=sinkhorn_tau, iterations=sinkhorn_iterations
        )
    return np.ones(score_matrix.shape, dtype=ASSIGNMENT_DTYPE)  # dense


# ----------------------------------------------------------------------- load history


class LoadTracker:
    """Historical per-expert load deficit d[e] = sum over rounds of (target - actual).

    target = (sum of the round's capacities) / E, actual = the round's column sums.

    Why it matters: the balance constraint only sees the participants of one round.
    Under partial participation, and whenever sum k_c / E is not an integer (or the
    load slack is > 0), each round leaves some experts one or more clients short, and
    the LP breaks that tie by fitness — so the *same* popular experts would take the
    spare slots round after round and the rest would fall behind for good. Feeding
    lambda * d[e] into the objective gives experts that were under-held in past rounds
    priority now, so loads balance over time, not just within each round.
    """

    def __init__(self, num_experts: int) -> None:
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_experts = int(num_experts)
        self._deficit = np.zeros(self.num_experts, dtype=np.float64)
        self.rounds = 0

    @property
    def deficit(self) -> np.ndarray:
        return self._deficit.copy()

    def update(self, x: Any, capacity: Any = None) -> None:
        """Add one round: x is the (N, E) assignment; capacity defaults to x's row sums."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_experts:
            raise ValueError(f"assignment x must have shape (N, E={self.num_experts}), got {x.shape}")
        if capacity is None:
            total = float(x.sum())
        else:
            capacity = np.broadcast_to(np.asarray(capacity), (x.shape[0],))
            total = float(capacity.sum())
        target = total / self.num_experts
        self._deficit += target - x.sum(axis=0)
        self.rounds += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, lossless (Python floats round-trip exactly through JSON)."""
        return {
            "num_experts": self.num_experts,
            "rounds": self.rounds,
            "deficit": [float(v) for v in self._deficit],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LoadTracker:
        tracker = cls(int(state["num_experts"]))
        deficit = np.asarray(state["deficit"], dtype=np.float64)
        if deficit.shape != (tracker.num_experts,):
            raise ValueError(f"deficit must have length num_experts={tracker.num_experts}, got {deficit.shape}")
        tracker._deficit = deficit.copy()
        tracker.rounds = int(state.get("rounds", 0))
        return tracker
