"""Benchmark of the min-holders program (flexmoe_core.redundancy) at 10, 100 and 1,000 clients.

How to run (from the repository root)::

    .venv/bin/python bench/redundancy.py                # ~1-3 min on 2 cores
    .venv/bin/python bench/redundancy.py --repeats 5 --out results/bench/redundancy.json

For each (N, E, k, h) case: the median wall time of the cvxpy + HiGHS mixed-integer solve
(`assign_min_holders`, compile included), of scipy.optimize.milp on the same program (HiGHS
called directly, the independent reference), and of the plain h = 1 LP that FLEX-MoE solves
without redundancy (`assign(..., min_holders=1)`, cvxpy), all on the same score matrix in the
same run; their ratio; whether both MIP solvers reach the same objective; and the loads.
These machines are noisy: compare the ratios, not the seconds, across runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from flexmoe_core.assignment import assign  # noqa: E402
from flexmoe_core.redundancy import MIP_SOLVER, assign_min_holders, plan  # noqa: E402

# (N, E, k, h). At 1,000 x 64 the MIP is only reached when h > L_min (= 31 at k = 2): the case
# (1000, 64, 2, 40), 50 experts trained at >= 40 holders, did not finish within 8 minutes here
# (branch and bound), so it is not run by default; (1000, 64, 4, 3) times the MIP with every z = 1.
CASES = [(10, 8, 2, 3), (100, 8, 2, 3), (100, 64, 2, 5), (1000, 64, 4, 3)]


def scipy_milp(weights: np.ndarray, capacity: np.ndarray, h: int) -> float:
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    n, e = weights.shape
    r = plan(capacity, e, h)
    size = n * e
    rows = sparse.kron(sparse.eye(n), np.ones((1, e)))
    cols = sparse.kron(np.ones((1, n)), sparse.eye(e))
    low = sparse.hstack([cols, -r.low * sparse.eye(e)])
    high = sparse.hstack([cols, -r.high * sparse.eye(e)])
    count = sparse.hstack([sparse.csr_matrix((1, size)), np.ones((1, e))])
    constraints = [
        LinearConstraint(sparse.hstack([rows, sparse.csr_matrix((n, e))]), capacity, capacity),
        LinearConstraint(low, 0, np.inf),
        LinearConstraint(high, -np.inf, 0),
        LinearConstraint(count, r.trained, r.trained),
    ]
    cost = np.concatenate([-weights.ravel(), np.zeros(e)])
    result = milp(cost, constraints=constraints, integrality=np.ones(size + e), bounds=Bounds(0, 1))
    if not result.success:
        raise RuntimeError(result.message)
    return float(-result.fun)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/redundancy.json"))
    args = parser.parse_args(argv)
    rows = []
    header = f"{'N x E x k, h':>18} {'trained':>8} {'loads':>7} {'MIP s':>8} {'milp s':>8} {'LP h=1 s':>9}"
    header += f" {'MIP/LP':>7} same"
    print(f"min-holders MIP: cvxpy + {MIP_SOLVER}; reference scipy.optimize.milp; repeats {args.repeats}")
    print(header)
    for n, e, k, h in CASES:
        rng = np.random.default_rng(0)
        weights = rng.random((n, e)) ** 3  # skewed, as fitness under non-IID data
        capacity = np.full(n, k)
        r = plan(capacity, e, h)
        mip_s, x = timed(functools.partial(assign_min_holders, weights, capacity, h), args.repeats)
        ref_s, ref = timed(functools.partial(scipy_milp, weights, capacity, h), args.repeats)
        lp_s, _ = timed(functools.partial(assign, weights, capacity, "flexmoe", solver="cvxpy"), args.repeats)
        assert isinstance(x, np.ndarray) and isinstance(ref, float)
        objective = float(np.sum(weights * x))
        same = abs(objective - ref) <= 1e-6 * max(1.0, abs(ref))
        load = x.sum(axis=0)
        loads = f"{load[load > 0].min()}-{load.max()}"
        print(
            f"{f'{n}x{e}x{k}, {h}':>18} {r.trained:>5}/{e:<2} {loads:>7} {mip_s:8.3f} {ref_s:8.3f} {lp_s:9.3f}"
            f" {mip_s / lp_s:7.1f} {same}",
            flush=True,
        )
        rows.append(
            {
                "clients": n,
                "experts": e,
                "capacity": k,
                "min-holders": h,
                "trained": r.trained,
                "mip-seconds": mip_s,
                "scipy-milp-seconds": ref_s,
                "lp-seconds": lp_s,
                "objective": objective,
                "reference-objective": ref,
                "same-optimum": same,
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["same-optimum"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
