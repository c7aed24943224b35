"""Run a grid of FLEX-MoE / baseline runs and keep one small summary per run: `python -m flexmoe_bench.sweep`.

The grid is a TOML file (default `conf/study.toml`, the committed study behind
`docs/results.md`): a `[base]` run config, `[study]` seeds and client count, and `[[group]]`
tables, each with its methods, fixed settings (`set`) and settings to vary (`vary`, a
cartesian product). Every run goes through the same `flwr run` simulation path as the
main job, all through one SuperLink this process owns (its processes end with it, even on
`kill -9`). A run whose summary already exists under `--summaries` is skipped, so an
interrupted sweep resumes where it stopped, also on another machine from the committed
summaries; a failed run is retried once and, if it fails again, reported and listed in
`failures.json`, never dropped silently. Then `python -m flexmoe_bench.report` writes the report.

Every summary records the platform it ran on (flexmoe_bench.machine). `--verify N` re-runs N
summarised cells, drawn with a seeded RNG, into a temporary folder (the committed summaries are
never touched) and reports, per cell, whether the per-round curves are bit-for-bit equal to the
committed ones (same platform, or none recorded: "unknown platform") or how far each curve moved
(another platform), in a JSON report.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import tomllib

from flexmoe_bench import local, machine
from flexmoe_bench.experiment import APP_DIR, summarise
from flexmoe_bench.launcher import RunOutcome, SimulationSuperLink
from flexmoe_bench.study import Cell, app_defaults, expand, holding_counts, select, twin_summary
from flexmoe_core.config import Settings
from flexmoe_core.files import atomic_write_json
from flexmoe_core.tracking import TRACKERS

# Per-round metrics kept in a run summary: enough for every table and figure of the report.
CURVES = (
    "accuracy",
    "accuracy-p10",
    "accuracy-min",
    "load-cv",
    "load-variance",
    "cumulative-load-cv",
    "load-jain",
    "routed-load-cv",
    "bytes-total-per-client",
    "round-seconds",
    # The mechanism (server_app.app / server_app.training): samples each expert has trained on so far,
    # experts held by nobody for 3+ rounds, and the mean entropy (bits) of the experts' class mixes.
    "cumulative-routed-load",
    "cumulative-routed-load-cv",
    "starved-experts",
    "class-entropy-mean",
    # Local adaptation at evaluation (remedy `adapt-steps`, flexmoe_core.remedies): None when it is off.
    "accuracy-adapted",
    "accuracy-adapted-p10",
)
# Wall-clock curves: never equal between two runs, so `--verify` leaves them out.
TIMING_CURVES = ("round-seconds",)
CLIENT_CPUS = 1  # what SimulationSuperLink gives each simulated client (its default)


def validate(cells: list[Cell], results_root: Path) -> None:
    """Every cell's settings, checked before the first run starts (one message for all)."""
    errors = []
    defaults = app_defaults()
    for cell in cells:
        try:
            run_config = {**cell.overrides, "results-dir": str(results_root / cell.id)}
            if cell.method == local.METHOD:
                local.settings_of(run_config, defaults)
            else:
                Settings.from_run_config({**defaults, **run_config})
        except (ValueError, SystemExit) as err:
            errors.append(f"{cell.id}: {err}")
    if errors:
        raise SystemExit("study file: bad settings\n  " + "\n  ".join(errors))


def summary_status(cell: Cell, summaries: Path) -> str:
    """`done` (a summary of exactly this cell's run config), `stale` (the study file changed since), `same`
    (no summary of its own, but the same training summarised by another study: `same-runs-as`) or `todo`."""
    path = summaries / f"{cell.id}.json"
    if path.is_file():
        return "done" if json.loads(path.read_text()).get("run-config") == cell.overrides else "stale"
    return "same" if twin_summary(cell) is not None else "todo"


def curves(rounds: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The per-round curves a summary keeps, from a run's metrics.json rows."""
    return {key: [r.get(key) for r in rounds] for key in CURVES}


def run_summary(
    cell: Cell, results_dir: Path, outcome: RunOutcome, platform: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the report needs from one run: its definition, final figures, per-round curves,
    how often each client held each expert (for the heatmaps) and where it ran."""
    rounds = json.loads((results_dir / "metrics.json").read_text())
    records = json.loads((results_dir / "assignments.json").read_text())
    return {
        "cell": cell.id,
        "group": cell.group,
        "method": cell.method,
        "seed": cell.seed,
        "varied": dict(cell.varied),
        "num-supernodes": cell.num_supernodes,
        "run-config": cell.overrides,
        "summary": summarise(cell.method, results_dir, outcome.seconds),
        "curves": curves(rounds),
        "holding": holding_counts(records, int(cell.overrides.get("num-experts", 8))),
        "wall-seconds": outcome.seconds,
        "commit": _commit(),
        "flwr": version("flwr"),
        "platform": platform or machine.describe(client_cpus=CLIENT_CPUS),
    }


# ------------------------------------------------------------------ verify


def pick_for_verify(cells: list[Cell], summaries: Path, count: int, seed: int) -> list[Cell]:
    """`count` of the cells that have a current summary, drawn by a RNG seeded with `seed`."""
    done = [c for c in cells if summary_status(c, summaries) == "done"]
    if count > len(done):
        raise SystemExit(f"--verify {count}: only {len(done)} of the selected cells have a summary")
    return random.Random(seed).sample(done, count)


def compare_curves(committed: dict[str, Any], rerun: dict[str, list[Any]], platform: dict[str, Any]) -> dict[str, Any]:
    """One cell's verdict: exact equality of every non-timing curve both have, where the committed
    summary ran on this platform (or recorded none, or less than is recorded now); else the max
    absolute difference per curve."""
    recorded = committed.get("platform")
    where = machine.match(recorded, platform)
    same = where != "other platform"
    old = committed.get("curves", {})
    keys = [k for k in CURVES if k not in TIMING_CURVES and k in old and k in rerun]
    unequal = [k for k in keys if old[k] != rerun[k]]
    differences = {k: _max_abs_difference(old[k], rerun[k]) for k in keys}
    return {
        "platform": where,
        "committed-platform": recorded,
        "compared": keys,
        "equal": not unequal if same else None,
        "unequal": unequal,
        "max-abs-difference": differences,
    }


def _max_abs_difference(a: list[Any], b: list[Any]) -> float | None:
    """Largest |a - b| over the rounds both have (vectors flattened); None if lengths or gaps differ."""
    if len(a) != len(b):
        return None
    try:
        x = [float(v) for item in a for v in (item if isinstance(item, list) else [item])]
        y = [float(v) for item in b for v in (item if isinstance(item, list) else [item])]
    except TypeError:  # a None (missing round) on one side only
        return None if a != b else 0.0
    if len(x) != len(y):
        return None
    gaps = [abs(p - q) for p, q in zip(x, y) if not (p != p and q != q)]  # nan == nan here
    return max(gaps, default=0.0)


def verify(
    chosen: list[Cell],
    summaries: Path,
    run: Callable[[Cell, Path], RunOutcome],
    report_path: Path,
    platform: dict[str, Any],
) -> dict[str, Any]:
    """Re-run `chosen` into a temporary folder through `run(cell, results_dir)`, compare each with its
    committed summary, write the JSON report and return it. Nothing under `summaries` is written."""
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flexmoe-verify-") as scratch:
        for cell in chosen:
            committed = json.loads((summaries / f"{cell.id}.json").read_text())
            results_dir = Path(scratch) / cell.id
            outcome = run(cell, results_dir)
            if not outcome.ok:
                cells.append({"cell": cell.id, "status": outcome.status, "equal": None})
                continue
            rerun = curves(json.loads((results_dir / "metrics.json").read_text()))
            cells.append({"cell": cell.id, "status": outcome.status, **compare_curves(committed, rerun, platform)})
    report = {"platform": platform, "cells": cells}
    atomic_write_json(report_path, report)
    return report


def verify_line(entry: dict[str, Any]) -> str:
    """One printed line per verified cell."""
    if "compared" not in entry:
        return f"{entry['cell']}: re-run did not complete ({entry['status']})"
    where = entry["platform"]
    if entry["equal"] is None:
        gaps = entry["max-abs-difference"].items()
        moved = ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} n/a" for k, v in gaps)
        return f"{entry['cell']}: {where}, max abs difference per curve: {moved}"
    if entry["equal"]:
        return f"{entry['cell']}: {where}, all {len(entry['compared'])} curves equal bit for bit"
    moved = ", ".join(f"{k} {entry['max-abs-difference'][k]}" for k in entry["unequal"])
    return f"{entry['cell']}: {where}, curves DIFFER: {moved}"


def run_cells(
    todo: list[Cell],
    run: Callable[[Cell], RunOutcome],
    save: Callable[[Cell, RunOutcome], None],
    *,
    retries: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Run each cell (retrying a failure `retries` times), printing progress with an ETA; returns
    the ids of the cells that still failed."""
    failed, started, finished = [], clock(), 0
    for done, cell in enumerate(todo, 1):
        for attempt in range(1 + retries):
            outcome = run(cell)
            if outcome.ok:
                save(cell, outcome)
                break
            print(
                f"    {cell.id}: attempt {attempt + 1} ended with status {outcome.status}; last log lines:\n"
                + "".join(outcome.log.splitlines(keepends=True)[-15:]),
                file=sys.stderr,
                flush=True,
            )
        else:
            failed.append(cell.id)
        finished += 1
        elapsed = clock() - started
        eta = elapsed / finished * (len(todo) - done)
        print(
            f"[{done}/{len(todo)} done, {len(todo) - done} left] {cell.id}: "
            f"{'FAILED' if cell.id in failed else f'{outcome.seconds:.0f}s'} | elapsed {_hms(elapsed)}, "
            f"ETA {_hms(eta)}",
            flush=True,
        )
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=APP_DIR / "conf" / "study.toml", help="grid (TOML)")
    parser.add_argument(
        "--summaries",
        type=Path,
        default=APP_DIR / "docs" / "study" / "runs",
        help="one <cell>.json per finished run (committed; existing ones are skipped)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=APP_DIR / "results" / "study",
        help="each run's full results directory (not committed)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated cell ids, group names or shell patterns of ids (e.g. 'main-*-mnist-*'); "
        "cells run in the order of the patterns (default: all, in file order)",
    )
    parser.add_argument("--force", action="store_true", help="re-run the selected cells even if summarised")
    parser.add_argument(
        "--tracking",
        choices=TRACKERS,
        default="none",
        help="experiment tracking for every cell (tensorboard: `tensorboard --logdir RESULTS` browses the grid); "
        "it changes no result, so summaries stay valid",
    )
    parser.add_argument("--list", action="store_true", help="print the cells and whether each is done, then exit")
    parser.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="re-run N summarised cells (of those --only selects), drawn by --verify-seed, into a temporary "
        "folder and compare their curves with the committed summaries; never writes --summaries",
    )
    parser.add_argument("--verify-seed", type=int, default=0, help="seed of the draw of --verify (default 0)")
    parser.add_argument(
        "--verify-report",
        type=Path,
        default=APP_DIR / "results" / "verify.json",
        help="where --verify writes its JSON report",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.study.is_file():
        raise SystemExit(f"--study: no such file {args.study}")
    cells = expand(tomllib.loads(args.study.read_text()))
    if args.only:
        cells = select(cells, [w.strip() for w in args.only.split(",") if w.strip()])
    summaries, results = args.summaries.resolve(), args.results.resolve()
    validate(cells, results)
    status = {c.id: summary_status(c, summaries) for c in cells}
    if args.list:
        for cell in cells:
            print(f"{status[cell.id]:5s} {cell.id}")
        return 0
    if args.verify:
        return _verify_main(args, cells, summaries)
    todo = [c for c in cells if args.force or status[c.id] not in ("done", "same")]
    stale = sum(1 for c in cells if status[c.id] == "stale")
    elsewhere = 0 if args.force else sum(1 for c in cells if status[c.id] == "same")
    print(
        f"{len(cells)} cells, {len(cells) - len(todo) - elsewhere} already summarised in {summaries}"
        + (f" and {elsewhere} by another study (same-runs-as)" if elsewhere else "")
        + f", {len(todo)} to run"
        + (f" ({stale} with a summary of another run config: re-run)" if stale else ""),
        flush=True,
    )
    if not todo:
        return 0
    with SimulationSuperLink(todo[0].num_supernodes) as superlink:

        def run(cell: Cell) -> RunOutcome:
            superlink.federation_config["num-supernodes"] = cell.num_supernodes
            print(f"--- {cell.id}: {cell.num_supernodes} clients", flush=True)
            run_config = {**cell.overrides, "results-dir": str(results / cell.id)}
            if cell.method == local.METHOD:
                return run_local(cell, results / cell.id)
            if args.tracking != "none":  # not in the cell's overrides: a summary's run config stays the grid's
                run_config["tracking"] = args.tracking
            return superlink.run(APP_DIR, run_config, echo=False)

        def save(cell: Cell, outcome: RunOutcome) -> None:
            atomic_write_json(summaries / f"{cell.id}.json", run_summary(cell, results / cell.id, outcome))

        failed = run_cells(todo, run, save)
    atomic_write_json(results / "failures.json", failed)
    if failed:
        print(
            f"{len(failed)} cell(s) failed twice and have no summary: {', '.join(failed)} "
            f"(listed in {results / 'failures.json'}; re-run with --only)",
            file=sys.stderr,
        )
        return 1
    print(f"all {len(todo)} run(s) summarised in {summaries}; next: python -m flexmoe_bench.report")
    return 0


def run_local(cell: Cell, results_dir: Path) -> RunOutcome:
    """A `local` cell, in this process (flexmoe_bench.local); a failure is reported like a failed run."""
    started = time.perf_counter()
    try:
        settings = local.settings_of({**cell.overrides, "results-dir": str(results_dir)}, app_defaults())
        local.run(settings, cell.overrides, cell.num_supernodes, results_dir)
    except (OSError, ValueError, RuntimeError) as err:
        return RunOutcome(None, "failed (local)", time.perf_counter() - started, f"{type(err).__name__}: {err}\n")
    return RunOutcome(None, "completed (local)", time.perf_counter() - started, "")


def _verify_main(args: argparse.Namespace, cells: list[Cell], summaries: Path) -> int:
    chosen = pick_for_verify(cells, summaries, args.verify, args.verify_seed)
    platform = machine.describe(client_cpus=CLIENT_CPUS)
    print(f"verifying {len(chosen)} cell(s): {', '.join(c.id for c in chosen)}", flush=True)
    with SimulationSuperLink(chosen[0].num_supernodes) as superlink:

        def run(cell: Cell, results_dir: Path) -> RunOutcome:
            if cell.method == local.METHOD:
                return run_local(cell, results_dir)
            superlink.federation_config["num-supernodes"] = cell.num_supernodes
            return superlink.run(APP_DIR, {**cell.overrides, "results-dir": str(results_dir)}, echo=False)

        report = verify(chosen, summaries, run, args.verify_report.resolve(), platform)
    for entry in report["cells"]:
        print(verify_line(entry))
    print(f"report: {args.verify_report}")
    return 0 if all(e.get("equal") is not False and "compared" in e for e in report["cells"]) else 1


def _hms(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{secs:02d}s"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=APP_DIR, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
