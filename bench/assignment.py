"""Benchmark of the expert-assignment solvers (flexmoe_core.assignment).

How to run (from the repository root)::

    .venv/bin/python bench/assignment.py              # default cases, ~1-2 min
    .venv/bin/python bench/assignment.py --large      # adds 10,000x64x4 and 100,000x16x2 (~5 min, 4 GiB)
    .venv/bin/python bench/assignment.py --repeats 5 --out results/bench/assignment.json

Table 1 (speed and exactness): for each (N clients, E experts, k capacity) case and each
method, the median wall time per solve, its ratio to the scipy HiGHS reference LP solved
in the same run (these machines are noisy, so only ratios are comparable across runs;
above REFERENCE_IPM_SIZE variables the reference is HiGHS IPM + crossover, else simplex),
the objective relative gap (reference - method) / |reference| (negative for greedy,
which ignores the load constraints), and whether the result is integral and feasible
(row sums = k, loads within [L_min, L_max]).

Table 2 (balance): expert-load CV (std / mean of the column sums) of every assignment
rule on a skewed, non-IID-like score matrix.

Results are also written as JSON (default results/bench/assignment.json).
To add a case or a method, extend CASES / LARGE_CASES or build_methods().
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from flexmoe_core.assignment import METHODS, assign, load_bounds  # noqa: E402

CASES = [(100, 8, 2), (1000, 8, 2), (1000, 64, 4), (10000, 8, 2)]
LARGE_CASES = [(10000, 64, 4), (100000, 16, 2)]

# Slow methods (reference LP, cvxpy) get a single timed run above this many variables.
SINGLE_RUN_SIZE = 200_000
# cvxpy takes ~9 s at 10,000 x 64 and ~160 s with 4.2 GiB at 100,000 x 16 on the 2-core
# reference machine; skip it above this size (bench cases stay below it).
CVXPY_MAX_SIZE = 2_000_000
# Above this size the reference uses HiGHS interior point + crossover (still a vertex):
# HiGHS simplex took 780 s at 100,000 x 16 on the 2-core reference machine, IPM 50 s.
REFERENCE_IPM_SIZE = 1_000_000

Solve = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]


@dataclass
class Method:
    name: str
    solve: Solve
    max_size: int | None = None  # skip cases with N * E above this
    slow: bool = False  # one timed solve (not --repeats) above SINGLE_RUN_SIZE


def skewed_scores(num_clients: int, num_experts: int, seed: int) -> np.ndarray:
    """Shared popular-expert component plus per-client noise, as non-IID data produces."""
    rng = np.random.default_rng(seed)
    popularity = np.exp(-np.arange(num_experts) / 2.0)
    noise = 0.05 * rng.standard_normal((num_clients, num_experts))
    return 0.3 + 0.6 * popularity[None, :] + noise


def scipy_reference(weights: np.ndarray, capacity: np.ndarray, l_min: int, l_max: int) -> np.ndarray:
    """The same LP handed straight to scipy's HiGHS, built here independently."""
    from scipy import sparse
    from scipy.optimize import linprog

    n, e = weights.shape
    row_sum = sparse.kron(sparse.eye(n, format="csr"), np.ones((1, e)), format="csr")
    col_sum = sparse.kron(np.ones((1, n)), sparse.eye(e, format="csr"), format="csr")
    result = linprog(
        -weights.reshape(-1),
        A_ub=sparse.vstack([col_sum, -col_sum], format="csr"),
        b_ub=np.r_[np.full(e, float(l_max)), np.full(e, -float(l_min))],
        A_eq=row_sum,
        b_eq=capacity.astype(float),
        bounds=(0.0, 1.0),
        method="highs-ipm" if n * e > REFERENCE_IPM_SIZE else "highs",
    )
    if result.status != 0:
        raise RuntimeError(result.message)
    return result.x.reshape(n, e)


def _flexmoe(solver: str) -> Solve:
    return lambda w, k, lo, hi: assign(w, k, "flexmoe", solver=solver)


def build_methods() -> list[Method]:
    return [
        Method("scipy-highs (ref)", scipy_reference, slow=True),
        Method("flexmoe-cvxpy", _flexmoe("cvxpy"), max_size=CVXPY_MAX_SIZE, slow=True),
        Method("flexmoe-fast", _flexmoe("fast")),
        Method("greedy", lambda w, k, lo, hi: assign(w, k, "greedy", rng=0)),
    ]


def time_solve(method: Method, weights, capacity, l_min, l_max, repeats: int):
    times, x = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        x = method.solve(weights, capacity, l_min, l_max)
        times.append(time.perf_counter() - start)
    return statistics.median(times), np.asarray(x)


def quality(x: np.ndarray, weights, capacity, l_min: int, l_max: int, reference_obj: float) -> dict:
    integral = bool(np.all(np.abs(x - np.rint(x)) <= 1e-6))
    xi = np.rint(x)
    load = xi.sum(axis=0)
    feasible = bool(np.array_equal(xi.sum(axis=1), capacity) and load.min() >= l_min and load.max() <= l_max)
    objective = float(np.sum(weights * x))
    gap = (reference_obj - objective) / max(1.0, abs(reference_obj))
    return {"objective": objective, "gap": gap, "integral": integral, "feasible": feasible}


def run_case(case, methods: list[Method], repeats: int, seed: int) -> list[dict]:
    n, e, k = case
    weights = np.random.default_rng(seed).random((n, e))
    capacity = np.full(n, k, dtype=np.int64)
    l_min, l_max = load_bounds(capacity, e)
    rows, ref_time, ref_obj = [], None, None
    for method in methods:
        if method.max_size is not None and n * e > method.max_size:
            rows.append({"case": list(case), "method": method.name, "skipped": "too large"})
            continue
        reps = 1 if method.slow and n * e >= SINGLE_RUN_SIZE else repeats
        seconds, x = time_solve(method, weights, capacity, l_min, l_max, reps)
        if ref_time is None:  # the reference is first in the list
            ref_time, ref_obj = seconds, float(np.sum(weights * x))
        row = {
            "case": list(case),
            "method": method.name,
            "seconds": seconds,
            "repeats": reps,
            "ratio_vs_ref": seconds / ref_time,
        }
        row.update(quality(x, weights, capacity, l_min, l_max, ref_obj))
        rows.append(row)
        print(f"  {case} {method.name}: {seconds:.4f} s", file=sys.stderr, flush=True)
    return rows


def balance_table(cases, seed: int) -> list[dict]:
    rows = []
    for n, e, k in cases:
        scores = skewed_scores(n, e, seed)
        for method in METHODS:
            x = assign(scores, k, method, rng=seed, solver="auto")
            load = x.sum(axis=0).astype(float)
            rows.append(
                {
                    "case": [n, e, k],
                    "method": method,
                    "load_cv": float(load.std() / load.mean()),
                    "load_min": int(load.min()),
                    "load_max": int(load.max()),
                }
            )
    return rows


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def print_speed(rows: list[dict]) -> None:
    table = []
    for r in rows:
        case = "x".join(map(str, r["case"]))
        if "skipped" in r:
            table.append([case, r["method"], "-", "-", "-", "-", "-", r["skipped"]])
            continue
        table.append(
            [
                case,
                r["method"],
                f"{r['seconds'] * 1e3:.1f}",
                f"{r['ratio_vs_ref']:.3g}",
                f"{r['gap']:+.1e}",
                str(r["integral"]),
                str(r["feasible"]),
                str(r["repeats"]),
            ]
        )
    headers = ["N x E x k", "method", "median ms", "x ref", "obj gap", "integral", "feasible", "reps"]
    print("Table 1: solve time (median) and exactness vs scipy HiGHS reference (same run)")
    print(format_table(headers, table))


def print_balance(rows: list[dict]) -> None:
    cases = sorted({tuple(r["case"]) for r in rows}, key=lambda c: (c[0], c[1]))
    headers = ["method"] + [f"CV {'x'.join(map(str, c))}" for c in cases]
    table = []
    for method in METHODS:
        cells = [method]
        for c in cases:
            r = next(r for r in rows if tuple(r["case"]) == c and r["method"] == method)
            cells.append(f"{r['load_cv']:.4f}")
        table.append(cells)
    print("Table 2: expert-load CV (std/mean of clients per expert) on skewed scores")
    print(format_table(headers, table))


def environment() -> dict:
    import cvxpy
    import scipy

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cvxpy": cvxpy.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed solves per case (median)")
    parser.add_argument("--large", action="store_true", help="add 10,000x64 and 100,000x16")
    parser.add_argument("--out", default="results/bench/assignment.json", help="JSON output path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    cases = CASES + (LARGE_CASES if args.large else [])
    methods = build_methods()
    assign(np.ones((4, 4)), 2, solver="cvxpy")  # warm-up: imports and HiGHS banner
    speed = [row for case in cases for row in run_case(case, methods, args.repeats, args.seed)]
    balance = balance_table([(1000, 8, 2), (1000, 64, 4)], args.seed)

    print_speed(speed)
    print()
    print_balance(balance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "speed": speed, "balance": balance}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
