"""Exact fast solver for the balanced client-to-expert assignment problem.

    maximise   sum_{c,e} w[c,e] * x[c,e]
    subject to sum_e x[c,e] = k_c                for every client c
               l_min <= sum_c x[c,e] <= l_max    for every expert e
               x[c,e] in {0, 1}

This is a transportation problem with N clients (large) but only E experts (small),
so everything expensive is vectorised over clients and everything combinatorial lives
on a dense E-node "exchange graph".

Algorithm (three phases):

1. Warm-start prices.  For expert prices p, every client taking its top-k_c experts by
   ``w - p`` is an optimal assignment *for the loads it produces* (Lagrangian
   optimality).  A damped Jacobi iteration sets each expert's price to the value that
   would give it a target load if the other prices stayed fixed; a handful of
   iterations bring the load violation from O(N*k) to O(E).  This phase only buys
   speed: exactness never depends on how good the prices are.
2. Repair.  Starting from ``x = top-k(w - p)``, move single units of client capacity
   from over-loaded experts (or experts above ``l_min``) to under-loaded experts (or
   experts below ``l_max``) along SHORTEST paths of the exchange graph.  Arc a -> b
   costs ``min over clients c holding a but not b of w[c,a] - w[c,b]`` (moving c from
   a to b), which is exactly the residual graph of the min-cost-flow formulation with
   the client nodes contracted away.
3. Polish.  While some unit move from an expert above ``l_min`` to an expert below
   ``l_max`` has negative shortest-path cost, make it.

Why the result is exact:
* ``top-k(w - p)`` is optimal among assignments with its own load vector, i.e. its
  exchange graph has no negative cycle (p is a feasible potential).
* Augmenting one unit along a shortest path keeps that property (the standard
  successive-shortest-path lemma), so after every step x is optimal for its loads L;
  write g(L) for that optimal cost.
* g(L - e_a + e_b) - g(L) equals the shortest a -> b path length, and g is M-convex
  (the optimal value of a transportation problem as a function of the sink demands);
  adding the box indicator l_min <= L <= l_max keeps it M-convex.  For M-convex
  functions a point with no improving unit exchange is a global minimiser, which is
  exactly the stopping rule of phase 3.  Phase 2 only decides the order of moves.
* Several units may move along one path in one step only when every arc on it has that
  many clients at exactly the arc's minimal cost; then each extra unit follows a path
  of the same length, which is still shortest because shortest-path lengths between a
  fixed pair never decrease (again convexity).  This makes tie-heavy inputs (e.g. all
  scores equal in round 1) take O(E) steps instead of O(N*k).

Floating point: shortest-path relaxations require an improvement larger than a tiny
tolerance relative to the weight range, so rounding noise can neither create phantom
negative cycles nor make the polish phase loop; the optimum is exact up to ~E * 1e-12
times the weight range per step.
"""

from __future__ import annotations

import numpy as np

__all__ = ["solve_balanced_assignment"]

# Relative tolerance (times the largest |weight|) below which a cost difference is rounding.
_RELATIVE_TOLERANCE = 1e-12
# Jacobi warm start: at most this many price iterations.  One iteration costs about as
# much as moving N*E / (N + 10*E^2) units one at a time by shortest paths (measured:
# ~23 ns per client-expert pair vs ~23 ns per client + ~0.24 us per expert pair and
# hop); iterations stop once the last one removed fewer units than that.
_MAX_PRICE_ITERATIONS = 30
_SHORTEST_PATH_COST_PER_EXPERT_PAIR = 10.0
# Undamped steps first (fast progress from greedy), damped afterwards (no oscillation).
_UNDAMPED_PRICE_STEPS = 3
_DAMPING = 0.85
# Warm-start margins lie in [-2, 2] (weights scaled into [-1, 1]); this is "above all".
_ABOVE_ALL = 4.0


def solve_balanced_assignment(weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> np.ndarray:
    """Exact maximiser of ``sum(w * x)`` with row sums ``capacity`` and column sums
    in ``[l_min, l_max]`` over 0/1 matrices ``x``.

    Args:
        weights: (N, E) finite float scores w[c, e] (higher is better).
        capacity: (N,) integers k_c with 1 <= k_c <= E.
        l_min, l_max: bounds on every expert's load (number of clients holding it);
            feasible iff ``E * l_min <= sum(capacity) <= E * l_max``.

    Returns:
        (N, E) int8 0/1 matrix with the optimal assignment.

    Raises:
        ValueError: if the inputs break the preconditions above.
    """
    w, k = _validated(weights, capacity, l_min, l_max)
    n_clients, n_experts = w.shape
    if n_clients == 0:
        return np.zeros((0, n_experts), dtype=np.int8)
    offsets = _wrap_around_offsets(k, n_experts)
    prices = _warm_start_prices(w, k, l_min, l_max, offsets)
    holdings = _top_k(w - prices[None, :], k, offsets)
    graph = _ExchangeGraph(w, holdings)
    graph.repair_loads(l_min, l_max)
    graph.polish(l_min, l_max)
    return graph.assignment()


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------


def _validated(weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 weights and int64 capacities, or raise ValueError."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] == 0:
        raise ValueError(f"weights must be an (N, E) array with E >= 1, got shape {w.shape}")
    n_clients, n_experts = w.shape
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite (no NaN or inf)")
    k = np.asarray(capacity)
    if k.shape != (n_clients,):
        raise ValueError(f"capacity must have shape ({n_clients},), got {k.shape}")
    if k.size and not np.all(np.equal(np.mod(k, 1), 0)):
        raise ValueError("capacity must hold integers")
    k = k.astype(np.int64)
    if k.size and (k.min() < 1 or k.max() > n_experts):
        raise ValueError(f"capacity values must lie in 1..{n_experts} (the number of experts)")
    if int(l_min) != l_min or int(l_max) != l_max or not 0 <= l_min <= l_max:
        raise ValueError(f"load bounds must be integers with 0 <= l_min <= l_max, got {l_min}, {l_max}")
    total = int(k.sum())
    # A wrap-around round-robin fill gives loads floor/ceil(total / E), so these two
    # inequalities are also sufficient for feasibility.
    if not n_experts * l_min <= total <= n_experts * l_max:
        raise ValueError(
            f"load bounds [{l_min}, {l_max}] are infeasible for total capacity {total} "
            f"over {n_experts} experts (need E*l_min <= sum(capacity) <= E*l_max)"
        )
    return w, k


# ---------------------------------------------------------------------------------------
# Phase 1: warm-start prices
# ---------------------------------------------------------------------------------------


def _wrap_around_offsets(k: np.ndarray, n_experts: int) -> np.ndarray:
    """Where each client starts in a round-robin fill of experts (0, 1, .., E-1, 0, ..).

    Used to break exact ties: with all scores equal, top-k with these offsets IS the
    balanced round-robin assignment, so tie-heavy inputs start (nearly) balanced."""
    return (np.cumsum(k) - k) % n_experts


def _row_thresholds(reduced: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the k_c-th largest value, the (k_c+1)-th largest (-inf where k_c = E),
    and the indices of rows where another entry equals the k_c-th largest (a tie that
    makes "the top k_c" ambiguous).  A full row sort is several times faster than
    np.partition for rows this short (SIMD sort)."""
    n_rows, n_cols = reduced.shape
    ascending = np.sort(reduced, axis=1)
    rows = np.arange(n_rows)
    kth = ascending[rows, n_cols - k]
    below = ascending[rows, np.maximum(n_cols - k - 1, 0)]
    above = ascending[rows, np.minimum(n_cols - k + 1, n_cols - 1)]
    tied = ((k < n_cols) & (below == kth)) | ((k > 1) & (above == kth))
    next_value = np.where(k < n_cols, below, -np.inf)
    return kth, next_value, np.flatnonzero(tied)


def _break_ties(reduced: np.ndarray, k: np.ndarray, kth: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Top-k_c rows (bool) where entries equal to the k_c-th largest are taken round-robin
    starting at column offsets[c]."""
    n_cols = reduced.shape[1]
    above = reduced > kth[:, None]
    missing = k - above.sum(axis=1)
    rotated_columns = (np.arange(n_cols)[None, :] + offsets[:, None]) % n_cols
    tied = np.take_along_axis(reduced == kth[:, None], rotated_columns, axis=1)
    take = tied & (np.cumsum(tied, axis=1) <= missing[:, None])
    picked = np.zeros_like(take)
    np.put_along_axis(picked, rotated_columns, take, axis=1)
    return above | picked


def _top_k(reduced: np.ndarray, k: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, E) bool with exactly the k_c largest entries of every row; exact ties are
    broken round-robin from offsets[c] (see _wrap_around_offsets)."""
    kth, _, tied_rows = _row_thresholds(reduced, k)
    chosen = reduced >= kth[:, None]
    if tied_rows.size:
        chosen[tied_rows] = _break_ties(reduced[tied_rows], k[tied_rows], kth[tied_rows], offsets[tied_rows])
    return chosen


def _load_violation(load: np.ndarray, low: np.ndarray | int, high: np.ndarray | int) -> int:
    """Units of capacity that must move: max(total excess over high, total shortfall
    under low)."""
    excess = np.maximum(load - high, 0).sum()
    shortfall = np.maximum(low - load, 0).sum()
    return int(max(excess, shortfall))


def _warm_start_prices(w: np.ndarray, k: np.ndarray, l_min: int, l_max: int, offsets: np.ndarray) -> np.ndarray:
    """Approximate optimal expert prices by damped Jacobi coordinate steps on the dual.

    The LP dual is min_p sum_c top-k_c(w_c - p) + sum_e h_e(p_e), with h_e(p) = l_max*p
    for p >= 0 and l_min*p for p < 0.  Given the other prices, client c takes expert e
    iff w[c,e] - p_e beats rival[c,e], the k_c-th best of its OTHER reduced scores, so
    expert e's load is #{c : margin[c,e] = w[c,e] - rival[c,e] > p_e}; the exact
    coordinate minimiser is p_e = 0 if that count at p_e = 0 lies in [l_min, l_max],
    else the price that brings it to the nearer bound (the "complementary slackness"
    rule: a priced expert sits at a bound).  Runs in float32 (a heuristic; exactness
    comes from the later phases) and returns the prices with the smallest residual.
    """
    n_clients, n_experts = w.shape
    # Per-row shifts change no client's ranking and a positive factor changes no
    # ranking at all, so work on row-centred weights scaled into [-1, 1]: float32 then
    # neither overflows nor loses small differences riding on large offsets.
    centred = w - w.mean(axis=1, keepdims=True)
    unit = _weight_scale(centred)
    w32 = (centred / unit).astype(np.float32)
    w32_by_expert = np.ascontiguousarray(w32.T)  # per-expert work is contiguous
    prices = np.zeros(n_experts, dtype=np.float32)
    best_prices, best_residual = prices, None
    break_even_units = (n_clients * n_experts) / (n_clients + _SHORTEST_PATH_COST_PER_EXPERT_PAIR * n_experts**2)
    previous_residual = None
    for iteration in range(_MAX_PRICE_ITERATIONS):
        kth, next_value, tied_rows = _row_thresholds(w32 - prices[None, :], k)
        reduced_by_expert = w32_by_expert - prices[:, None]
        chosen = reduced_by_expert >= kth[None, :]  # (E, N)
        if tied_rows.size:
            chosen[:, tied_rows] = _break_ties(
                reduced_by_expert[:, tied_rows].T, k[tied_rows], kth[tied_rows], offsets[tied_rows]
            ).T
        load = np.count_nonzero(chosen, axis=1)
        # Distance from optimality: loads outside the bounds, and priced experts away
        # from the bound their price sign asks for (what the polish phase would move).
        residual = _load_violation(
            load,
            np.where(prices < 0, l_min, np.where(prices > 0, l_max, l_min)),
            np.where(prices > 0, l_max, np.where(prices < 0, l_min, l_max)),
        )
        if best_residual is None or residual < best_residual:
            best_prices, best_residual = prices, residual
        # Stop when the shortest-path phases will finish faster than more iterations:
        # the last improvement predicts what one more iteration would save.
        if residual <= break_even_units:
            break
        if previous_residual is not None and previous_residual - residual < break_even_units:
            break
        previous_residual = residual
        rival = np.where(chosen, next_value[None, :], kth[None, :])
        margin = w32_by_expert - rival  # expert e is chosen iff margin[e, c] > p_e
        new_prices = _coordinate_prices(margin, l_min, l_max, prices, int(k.sum()))
        step = np.float32(1.0 if iteration < _UNDAMPED_PRICE_STEPS else _DAMPING)
        damped = prices + step * (new_prices - prices)
        prices = np.where(new_prices == 0, np.float32(0), damped)  # unpriced: exactly 0
    return best_prices.astype(np.float64) * unit


def _coordinate_prices(margin: np.ndarray, l_min: int, l_max: int, prices: np.ndarray, total: int) -> np.ndarray:
    """Jacobi coordinate prices with a common anchor theta, returned relative to it.

    Expert e at price q would get count_e(q) = #{margin[e] > q} clients.  Its coordinate
    optimum is theta if count_e(theta) lies in [l_min, l_max] (an unpriced, interior
    expert), else the price bringing its count to the violated bound.  The anchor theta
    makes these target loads add up to the total capacity: without it, the experts of a
    large interior group all move their prices together (each thinks it alone is off)
    and Jacobi stalls in that common mode.

    sum_e clip(count_e(theta), l_min, l_max) = E*l_min + #{pooled v > theta}, where the
    pool holds each expert's (l_min+1)-th to l_max-th largest margins; so theta is found
    by one selection in the pool, and np.partition at four ranks per expert gives both
    the pool and the bound prices (far cheaper than sorting)."""
    n_experts, n_clients = margin.shape
    upper = min(l_max, n_clients)  # nobody can have more than every client
    ranks = np.unique(
        np.clip(
            [n_clients - upper - 1, n_clients - upper, n_clients - l_min - 1, n_clients - l_min],
            0,
            n_clients - 1,
        )
    )
    ordered = np.partition(margin, ranks, axis=1)
    # +inf margins (clients holding every expert) stand in as a finite "above all".
    pool = np.minimum(ordered[:, n_clients - upper : n_clients - l_min], _ABOVE_ALL).ravel()
    needed = total - n_experts * l_min  # pooled values that must lie above theta
    if pool.size == 0:
        theta = 0.0
    elif needed <= 0:
        theta = float(pool.max())
    elif needed >= pool.size:
        theta = float(pool.min()) - 1.0
    else:
        descending = -np.partition(-pool, [needed - 1, needed])
        theta = 0.5 * float(descending[needed - 1] + descending[needed])
    count = np.count_nonzero(margin > theta, axis=1)
    price = np.full(n_experts, theta)
    over, under = count > upper, count < l_min
    if upper < n_clients:
        over_price = 0.5 * (ordered[:, n_clients - upper] + ordered[:, n_clients - upper - 1])
    else:  # everybody: below every margin
        over_price = ordered[:, 0] - 1.0
    if l_min > 0:
        under_price = 0.5 * (ordered[:, n_clients - l_min] + ordered[:, n_clients - l_min - 1])
    else:  # nobody: above every margin
        under_price = ordered[:, n_clients - 1] + 1.0
    price = np.where(over, over_price, np.where(under, under_price, price))
    # Experts that +inf margins keep above a bound cannot be priced there: keep price.
    price = np.where(np.isfinite(price), price, prices + theta)
    return (price - theta).astype(prices.dtype)


def _weight_scale(w: np.ndarray) -> float:
    """Magnitude of the weights, for tolerances and price offsets (never 0)."""
    return max(float(np.abs(w).max()) if w.size else 0.0, float(np.finfo(np.float64).tiny))


# ---------------------------------------------------------------------------------------
# Phases 2 and 3: shortest paths on the expert exchange graph
# ---------------------------------------------------------------------------------------


class _ExchangeGraph:
    """Assignment state plus the dense E x E graph of cheapest single-client moves.

    cost[a, b] = min over clients c holding a but not b of w[c, a] - w[c, b] (what the
    objective loses when c swaps a for b); +inf where no client can.

    Lazy updates: a move only ADDS candidates to some entries (patched at once, it is a
    cheap min) and REMOVES candidates from others.  Removing the client that attained an
    entry would need an O(N) rescan, so instead the entry is flagged ``stale``: its
    stored value is then a lower bound of the true one.  Shortest paths computed on lower
    bounds are checked before use: every stale arc on the chosen path is recomputed and,
    if any changed, the search is repeated.  A path whose arcs are all exact and which is
    shortest for lower bounds is shortest for the true costs, so nothing is lost.

    mover[a, b] caches a client attaining cost[a, b] (-1: unknown; re-validated before
    use).  Holdings are kept client-major (row gathers) and expert-major (contiguous
    per-expert scans).  Tests compare cost with a full recomputation.
    """

    def __init__(self, w: np.ndarray, holdings: np.ndarray) -> None:
        self.weights = np.ascontiguousarray(w)  # (N, E)
        self.weights_by_expert = np.ascontiguousarray(w.T)  # (E, N)
        self.held = np.ascontiguousarray(holdings, dtype=bool)  # (N, E)
        self.held_by_expert = np.ascontiguousarray(self.held.T)  # (E, N)
        self.n_experts = w.shape[1]
        self.load = self.held.sum(axis=0).astype(np.int64)
        self.tolerance = _RELATIVE_TOLERANCE * _weight_scale(w)
        self.cost = np.full((self.n_experts, self.n_experts), np.inf)
        self.stale = np.zeros((self.n_experts, self.n_experts), dtype=bool)
        self.mover = np.full((self.n_experts, self.n_experts), -1, dtype=np.int64)
        # Weights with held entries at -inf: w[c, a] - unheld[c, b] is the swap cost, or
        # +inf where c already holds b, so no mask is needed per row.
        unheld = np.where(self.held, -np.inf, self.weights)
        for expert in range(self.n_experts):
            clients = np.flatnonzero(self.held_by_expert[expert])
            if clients.size:
                swap_cost = self.weights[clients, expert][:, None] - unheld[clients]
                self.cost[expert] = swap_cost.min(axis=0)

    # -- the phases -------------------------------------------------------------------

    def repair_loads(self, l_min: int, l_max: int) -> None:
        """Move capacity along shortest paths until every load is within bounds."""
        while True:
            over = self.load > l_max
            under = self.load < l_min
            if over.any():
                distance, parent = self._shortest_paths(over)
                reachable_under = under & np.isfinite(distance)
                if reachable_under.any():  # fixes two violations per unit
                    sinks, sink_limit = reachable_under, l_min
                else:
                    sinks, sink_limit = self.load < l_max, l_max
                source_limit = l_max
            elif under.any():
                distance, parent = self._shortest_paths(self.load > l_min)
                sinks, sink_limit, source_limit = under, l_min, l_min
            else:
                return
            sink = self._closest(distance, sinks)
            if sink < 0:
                if self.stale.any():  # an unreachable sink may be a lower-bound artefact
                    self._refresh_all_stale()
                    continue
                raise RuntimeError("no augmenting path although the load bounds are feasible")
            path = self._path_to(sink, parent)
            if self._refresh_stale_arcs(path):
                continue  # the path was priced on lower bounds; search again
            self._augment(path, source_limit, sink_limit)

    def polish(self, l_min: int, l_max: int) -> None:
        """Make improving unit moves (expert above l_min -> expert below l_max)."""
        if l_min == l_max:
            return  # every load is pinned: no unit can move
        while True:
            distance, parent = self._shortest_paths(self.load > l_min)
            sinks = (self.load < l_max) & (distance < -self.tolerance)
            sink = self._closest(distance, sinks)
            if sink < 0:
                return  # lower bounds show no improving move, so there is none
            path = self._path_to(sink, parent)
            if self._refresh_stale_arcs(path):
                continue
            self._augment(path, l_min, l_max)

    def assignment(self) -> np.ndarray:
        return self.held.astype(np.int8)

    # -- shortest paths -----------------------------------------------------------------

    def _shortest_paths(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multi-source Bellman-Ford, vectorised over arcs, on the exchange graph.

        Arc costs may be negative but the true graph has no negative cycle, so at most
        E-1 rounds are needed (in practice as many as the paths have hops).  Lower-bound
        (stale) entries could fake one: if rounds do not settle, refresh and redo.
        Improvements below the tolerance are ignored so rounding cannot either."""
        experts = np.arange(self.n_experts)
        while True:
            distance = np.where(sources, 0.0, np.inf)
            parent = np.full(self.n_experts, -1, dtype=np.int64)
            for _ in range(self.n_experts + 1):
                via = distance[:, None] + self.cost
                best_from = np.argmin(via, axis=0)
                candidate = via[best_from, experts]
                improved = candidate < distance - self.tolerance
                if not improved.any():
                    return distance, parent
                distance = np.where(improved, candidate, distance)
                parent = np.where(improved, best_from, parent)
            if not self.stale.any():
                raise RuntimeError("negative cycle in the exchange graph")
            self._refresh_all_stale()

    @staticmethod
    def _closest(distance: np.ndarray, sinks: np.ndarray) -> int:
        masked = np.where(sinks, distance, np.inf)
        sink = int(np.argmin(masked))
        return sink if np.isfinite(masked[sink]) else -1

    def _path_to(self, sink: int, parent: np.ndarray) -> list[int]:
        path = [sink]
        while parent[path[-1]] >= 0:
            path.append(int(parent[path[-1]]))
            if len(path) > self.n_experts:
                raise RuntimeError("cycle in the shortest-path tree")
        path.reverse()
        return path

    def _refresh_stale_arcs(self, path: list[int]) -> bool:
        """Make the path's arcs exact; True if any cost changed (path must be re-found)."""
        changed = False
        for a, b in zip(path[:-1], path[1:]):
            if self.stale[a, b]:
                before = self.cost[a, b]
                self._recompute_entry(a, b)
                changed |= bool(self.cost[a, b] != before)
        return changed

    def _refresh_all_stale(self) -> None:
        for a in np.flatnonzero(self.stale.any(axis=1)):
            self._recompute_row(int(a))

    # -- moving capacity ----------------------------------------------------------------

    def _augment(self, path: list[int], source_limit: int, sink_limit: int) -> None:
        """Move as many units along ``path`` as keep it a shortest path (module doc).

        The source may go down to ``source_limit``, the sink up to ``sink_limit``.  All
        movers are chosen before anything moves: a client on two (non-adjacent) arcs is
        simply moved twice, which is valid because the path visits each expert once."""
        source, sink = path[0], path[-1]
        units = int(min(self.load[source] - source_limit, sink_limit - self.load[sink]))
        if units < 1:
            raise RuntimeError("augmenting path without spare capacity")
        arcs = list(zip(path[:-1], path[1:]))
        if units == 1:
            movers = [np.array([self._cheapest_mover(a, b)]) for a, b in arcs]
        else:
            movers = [self._tied_movers(a, b) for a, b in arcs]
            units = min(units, min(m.size for m in movers))
            movers = [m[:units] for m in movers]
        for (a, b), clients in zip(arcs, movers):
            self._move(clients, a, b)

    def _cheapest_mover(self, a: int, b: int) -> int:
        """A client attaining the (exact) cost[a, b]."""
        cached = int(self.mover[a, b])
        if (
            cached >= 0
            and self.held[cached, a]
            and not self.held[cached, b]
            and self.weights[cached, a] - self.weights[cached, b] == self.cost[a, b]
        ):
            return cached
        self._recompute_entry(a, b)
        return int(self.mover[a, b])

    def _tied_movers(self, a: int, b: int) -> np.ndarray:
        """All clients whose move a -> b costs exactly the (exact) cost[a, b]."""
        candidates = np.flatnonzero(self.held_by_expert[a] & ~self.held_by_expert[b])
        swap_cost = self.weights_by_expert[a, candidates] - self.weights_by_expert[b, candidates]
        return candidates[swap_cost == self.cost[a, b]]

    def _set_holding(self, clients: np.ndarray | int, a: int, b: int) -> None:
        self.held[clients, a] = False
        self.held[clients, b] = True
        self.held_by_expert[a, clients] = False
        self.held_by_expert[b, clients] = True
        count = np.size(clients)
        self.load[a] -= count
        self.load[b] += count

    def _move(self, clients: np.ndarray, a: int, b: int) -> None:
        """These clients swap expert a for b (several when moves tie); patch the cost
        entries this can change: new candidates lower them at once, lost ones mark them stale."""
        held_before = self.held[clients]  # fancy indexing copies
        self._set_holding(clients, a, b)
        weights = self.weights[clients]  # (m, E)
        held_after = self.held[clients]
        # Row a: lost candidates.
        from_a = np.where(held_before, np.inf, weights[:, a : a + 1] - weights)
        self.stale[a] |= (from_a == self.cost[a][None, :]).any(axis=0)
        # Column b: lost candidates (rows j the clients still hold, j != b).
        to_b = np.where(held_after, weights - weights[:, b : b + 1], np.inf)
        self.stale[:, b] |= (to_b == self.cost[:, b][None, :]).any(axis=0)
        # Row b and column a: new candidates.
        from_b = np.where(held_after, np.inf, weights[:, b : b + 1] - weights)
        self._lower_row(b, from_b, clients)
        to_a = np.where(held_after, weights - weights[:, a : a + 1], np.inf)
        self._lower_column(a, to_a, clients)

    def _lower_row(self, a: int, candidate_costs: np.ndarray, clients: np.ndarray) -> None:
        """cost[a, :] = min(cost[a, :], column-wise min of candidate_costs (m, E))."""
        best = np.argmin(candidate_costs, axis=0)
        value = candidate_costs[best, np.arange(self.n_experts)]
        better = value < self.cost[a]
        self.cost[a, better] = value[better]
        self.mover[a, better] = clients[best[better]]

    def _lower_column(self, b: int, candidate_costs: np.ndarray, clients: np.ndarray) -> None:
        """cost[:, b] = min(cost[:, b], column-wise min of candidate_costs (m, E))."""
        best = np.argmin(candidate_costs, axis=0)
        value = candidate_costs[best, np.arange(self.n_experts)]
        better = value < self.cost[:, b]
        self.cost[better, b] = value[better]
        self.mover[better, b] = clients[best[better]]

    def _recompute_row(self, a: int) -> None:
        self.cost[a] = np.inf
        self.mover[a] = -1
        self.stale[a] = False
        clients = np.flatnonzero(self.held_by_expert[a])
        if clients.size:
            weights = self.weights[clients]
            swap_cost = np.where(self.held[clients], np.inf, weights[:, a : a + 1] - weights)
            self._lower_row(a, swap_cost, clients)

    def _recompute_entry(self, a: int, b: int) -> None:
        self.stale[a, b] = False
        clients = np.flatnonzero(self.held_by_expert[a] & ~self.held_by_expert[b])
        if clients.size == 0:
            self.cost[a, b] = np.inf
            self.mover[a, b] = -1
            return
        swap_cost = self.weights_by_expert[a, clients] - self.weights_by_expert[b, clients]
        cheapest = int(np.argmin(swap_cost))
        self.cost[a, b] = swap_cost[cheapest]
        self.mover[a, b] = clients[cheapest]

    def exact_costs(self) -> np.ndarray:
        """Full O(N * E^2) recomputation of cost (for tests of the lazy updates)."""
        exact = np.full((self.n_experts, self.n_experts), np.inf)
        for a in range(self.n_experts):
            for b in range(self.n_experts):
                clients = np.flatnonzero(self.held[:, a] & ~self.held[:, b])
                if clients.size:
                    exact[a, b] = np.min(self.weights[clients, a] - self.weights[clients, b])
        return exact
