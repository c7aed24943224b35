"""Compare assignment rules on the same partitions and seed: `python -m flexmoe_bench.experiment`.

Runs the app once per method with `flwr run` in the simulation engine (a SuperLink
this process owns), then prints a side-by-side table and writes `summary.json`,
`summary.csv` and `comparison.png` next to each run's own results directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

from flexmoe_bench import machine
from flexmoe_bench.launcher import SimulationSuperLink
from flexmoe_bench.study import app_defaults
from flexmoe_core.config import ASSIGNMENT_METHODS, Settings
from flexmoe_core.files import atomic_write_bytes, atomic_write_json

APP_DIR = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=APP_DIR / "conf" / "main.toml",
        help="TOML file of run-config overrides (same keys as [tool.flwr.app.config])",
    )
    parser.add_argument(
        "--methods",
        default="flexmoe,greedy",
        help=f"comma-separated assignment methods from {', '.join(ASSIGNMENT_METHODS)}",
    )
    parser.add_argument("--num-supernodes", type=int, default=10, help="simulated clients")
    parser.add_argument("--out", type=Path, default=APP_DIR / "results" / "main", help="results root")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra run-config override (TOML value), may repeat",
    )
    return parser.parse_args(argv)


def load_overrides(path: Path, extra: list[str]) -> dict[str, Any]:
    """Run-config overrides from the TOML file plus `--set` pairs, validated before any run starts."""
    if not path.is_file():
        raise SystemExit(f"--config: no such file {path}")
    overrides = tomllib.loads(path.read_text())
    for pair in extra:
        key, _, value = pair.partition("=")
        overrides.update(tomllib.loads(f"{key.strip()} = {value.strip()}"))
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ASSIGNMENT_METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; allowed: {', '.join(ASSIGNMENT_METHODS)}")
    overrides = load_overrides(args.config, args.set)
    out = args.out.resolve()
    for method in methods:  # fail on bad settings here, not minutes later inside a run
        Settings.from_run_config(
            {**app_defaults(), **overrides, "assignment": method, "results-dir": str(out / method)}
        )
    rows = []
    with SimulationSuperLink(args.num_supernodes) as superlink:
        for method in methods:
            print(f"\n=== {method}: {args.num_supernodes} clients, results in {out / method}", flush=True)
            outcome = superlink.run(APP_DIR, {**overrides, "assignment": method, "results-dir": str(out / method)})
            if not outcome.ok:
                print(
                    f"run for {method} did not complete (status {outcome.status}); see the log above", file=sys.stderr
                )
                return 1
            rows.append(summarise(method, out / method, outcome.seconds))
    cpus = superlink.federation_config["client-resources-num-cpus"]
    write_summary(out, rows, methods, machine.describe(client_cpus=cpus))
    print("\n" + format_table(rows))
    print(f"\nresults: {out}/summary.json, summary.csv, comparison.png and one folder per method")
    return 0


def expected_bytes_ratio(settings: Settings) -> float:
    """(|psi| + k|theta|) / (|psi| + E|theta|): what a client holding k of E experts downloads vs dense;
    averaged over the capacity profile when capacities differ (cycled over partitions)."""
    from flexmoe_core.aggregation import payload_bytes, select_experts
    from server_app.app import initial_global_state

    if settings.assignment == "dense":
        return 1.0
    state = initial_global_state(settings, seed=0)
    ratios = [
        payload_bytes(select_experts(state, list(range(k)))) / payload_bytes(state)
        for k in settings.capacities or (settings.capacity,)
    ]
    return sum(ratios) / len(ratios)


def summarise(method: str, results_dir: Path, wall_seconds: float) -> dict[str, Any]:
    """Final-round accuracy; balance and bytes averaged over rounds (what a deployment pays)."""
    rounds = json.loads((results_dir / "metrics.json").read_text())
    config = json.loads((results_dir / "config.json").read_text())
    last = rounds[-1]

    def mean(key: str) -> float:
        values = [r[key] for r in rounds if key in r]
        return sum(values) / len(values) if values else float("nan")

    server = sum(r["server-seconds"] for r in rounds)
    total = sum(r["round-seconds"] for r in rounds)
    return {
        "method": method,
        "accuracy": last.get("accuracy", float("nan")),
        "accuracy-p10": last.get("accuracy-p10", float("nan")),
        "load-cv": mean("load-cv"),
        "cumulative-load-cv": last.get("cumulative-load-cv", float("nan")),
        "routed-load-cv": mean("routed-load-cv"),
        "load-jain": mean("load-jain"),
        "bytes-down-per-client": mean("bytes-down-per-client"),
        "bytes-up-per-client": mean("bytes-up-per-client"),
        "bytes-total-per-client": mean("bytes-total-per-client"),
        "bytes-total-vs-dense": mean("bytes-total-vs-dense"),
        # `local` (flexmoe_bench.local) sends nothing; every other method is an app run.
        "bytes-expected-vs-dense": 0.0 if method == "local" else expected_bytes_ratio(Settings.from_run_config(config)),
        "server-overhead": server / total if total else float("nan"),
        "wall-seconds": wall_seconds,
        "rounds": len(rounds),
    }


def write_rows(out: Path, rows: list[dict[str, Any]], platform: dict[str, Any] | None = None) -> None:
    """`summary.json` and `summary.csv` (one row per run) in `out`, each written atomically; every row
    also says where it ran (`platform-*` columns: CPU model, cores, torch threads, library versions): a
    row that already says so (read back from an earlier write) keeps its own, a new row gets this machine's."""
    where = machine.columns(platform or machine.describe())
    rows = [{**where, **row} for row in rows]
    atomic_write_json(out / "summary.json", rows)
    buffer = io.StringIO()
    # Columns of every row, in order of first appearance: rows written before a column existed leave it empty.
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "summary.csv", buffer.getvalue().encode())


def write_summary(
    out: Path, rows: list[dict[str, Any]], methods: list[str], platform: dict[str, Any] | None = None
) -> None:
    from flexmoe_core.plots import comparison_plot

    write_rows(out, rows, platform)
    runs = {m: json.loads((out / m / "metrics.json").read_text()) for m in methods}
    comparison_plot(out / "comparison.png", runs)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "method",
        "accuracy",
        "acc p10",
        "load CV/round",
        "load CV cumul.",
        "routed CV",
        "Jain",
        "KiB down+up/client/round",
        "vs dense",
        "arrays formula",
        "server share",
        "wall s",
    ]
    body = [
        [
            r["method"],
            f"{r['accuracy']:.4f}",
            f"{r['accuracy-p10']:.4f}",
            f"{r['load-cv']:.3f}",
            f"{r['cumulative-load-cv']:.3f}",
            f"{r['routed-load-cv']:.3f}",
            f"{r['load-jain']:.3f}",
            f"{r['bytes-total-per-client'] / 1024:.1f}",
            f"{r['bytes-total-vs-dense']:.3f}",
            f"{r['bytes-expected-vs-dense']:.3f}",
            f"{r['server-overhead']:.1%}",
            f"{r['wall-seconds']:.0f}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"total {time.perf_counter() - started:.0f}s")
    raise SystemExit(code)
