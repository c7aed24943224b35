"""Attack x defence table: `python -m flexmoe_bench.attacks` (FLEX-MoE under poisoning, per seed).

Runs the clean federation and each attack under each defence and each `min-holders` value, for
each seed, through the same `flwr run` simulation path as the main job, then prints the final
accuracy per cell (mean +- std over the seeds done) and writes `summary.json` / `summary.csv`
(committed under docs/attacks/), one row per run. Runs already summarised there are skipped, so
an interrupted table resumes; `--attacks/--defences/--min-holders/--seeds` pick a part of it.
Rows from before the min-holders and seed axes count as min-holders 1, seed 42. Each row also has
`accuracy-honest` (the final accuracy over the clients that are not attackers; clean runs name the
same clients, so it is comparable across a column) and `screened` (updates the norm screen left out
over the run); rows from before those columns lack them, and `--force` re-runs a selection.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from flexmoe_bench.experiment import APP_DIR, load_overrides, summarise, write_rows
from flexmoe_bench.launcher import SimulationSuperLink
from flexmoe_core.config import ATTACKS
from flexmoe_core.robust_aggregation import ROBUST_METHODS

SEEDS = (42, 43, 44)
LEGACY = {"min-holders": 1, "seed": 42}  # what rows written before these axes existed ran with
SCREEN = 3.0  # norm-screen of the screened defences: x10 updates are far past it, honest ones within
# A defence is the settings it runs with: each robust rule alone, and the norm screen in front of the
# plain mean and of norm-clip.
DEFENCES: dict[str, dict[str, Any]] = {
    **{rule: {"robust-aggregation": rule} for rule in ROBUST_METHODS},
    "norm-screen": {"robust-aggregation": "none", "norm-screen": SCREEN},
    "norm-screen+norm-clip": {"robust-aggregation": "norm-clip", "norm-screen": SCREEN},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=APP_DIR / "conf" / "attacks.toml")
    parser.add_argument("--attacks", default=",".join(ATTACKS[1:]), help="comma-separated, from " + ", ".join(ATTACKS))
    parser.add_argument("--defences", default=",".join(DEFENCES), help="from " + ", ".join(DEFENCES))
    parser.add_argument("--min-holders", default="1,3", help="comma-separated min-holders values")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument(
        "--force", action="store_true", help="re-run the selected cells even if summarised (their rows are replaced)"
    )
    parser.add_argument("--out", type=Path, default=APP_DIR / "results" / "attacks", help="each run's results")
    parser.add_argument(
        "--summary-dir",
        type=Path,
        default=APP_DIR / "docs" / "attacks",
        help="summary.json / summary.csv (committed; cells already there are skipped)",
    )
    return parser.parse_args(argv)


Cell = tuple[str, str, int, int]  # attack, defence, min-holders, seed


def cells(attacks: list[str], defences: list[str], holders: list[int], seeds: list[int]) -> list[Cell]:
    """Every run; 'none' (clean) first, so the clean cost of each defence is measured too."""
    return [(a, d, h, s) for s in seeds for a in ["none", *attacks] for h in holders for d in defences]


def key(attack: str, defence: str, holders: int, seed: int) -> str:
    return f"{attack}/{defence}/h{holders}/s{seed}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a and a != "none"]
    defences = [d for d in args.defences.split(",") if d]
    bad = [a for a in attacks if a not in ATTACKS] + [d for d in defences if d not in DEFENCES]
    if bad:
        raise SystemExit(f"unknown attack or defence {bad}; allowed: {ATTACKS} and {tuple(DEFENCES)}")
    holders = [int(h) for h in args.min_holders.split(",") if h]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    base = load_overrides(args.config, [])
    out, summary_dir = args.out.resolve(), args.summary_dir.resolve()
    rows = load_rows(summary_dir / "summary.json")
    todo = [c for c in cells(attacks, defences, holders, seeds) if args.force or key(*c) not in rows]
    ok = _run_all(todo, base, out, summary_dir, rows, args.num_supernodes) if todo else True
    print("\n" + format_table(rows, attacks, defences, holders))
    return 0 if ok else 1


def _run_all(
    todo: list[Cell],
    base: dict[str, Any],
    out: Path,
    summary_dir: Path,
    rows: dict[str, dict[str, Any]],
    num_supernodes: int,
) -> bool:
    with SimulationSuperLink(num_supernodes) as superlink:
        for done, (attack, defence, holders, seed) in enumerate(todo, 1):
            name = key(attack, defence, holders, seed)
            print(f"\n=== [{done}/{len(todo)}] attack={attack} defence={defence} min-holders={holders} seed={seed}")
            results = out / attack / defence / f"h{holders}" / f"s{seed}"
            overrides = {
                **base,
                "attack": attack,
                **DEFENCES[defence],
                "min-holders": holders,
                "seed": seed,
                "results-dir": str(results),
            }
            # A clean run keeps attack-clients (attack "none" changes nothing they send), so its
            # accuracy-honest is over the same clients as an attacked run's.
            outcome = superlink.run(APP_DIR, overrides, echo=False)
            if not outcome.ok:
                print(f"run {name} failed (status {outcome.status}):\n{outcome.log[-2000:]}", file=sys.stderr)
                return False
            summary = summarise("flexmoe", results, outcome.seconds)
            cell = {"attack": attack, "defence": defence, "min-holders": holders, "seed": seed}
            rows[name] = {**cell, **summary, **attack_columns(results)}
            _write(summary_dir, rows)
            print(f"    accuracy {rows[name]['accuracy']:.4f} in {outcome.seconds:.0f}s", flush=True)
    return True


def attack_columns(results: Path) -> dict[str, Any]:
    """What a run's row adds to its summary: the last round's `accuracy-honest` (nan without one) and
    the client updates the norm screen left out over the run (on a clean run: honest ones)."""
    rounds = json.loads((results / "metrics.json").read_text())
    return {
        "accuracy-honest": float(rounds[-1].get("accuracy-honest", float("nan"))) if rounds else float("nan"),
        "screened": sum(int(r.get("num-screened", 0)) for r in rounds),
    }


def cell_accuracies(rows: dict[str, dict[str, Any]], attack: str, defence: str, holders: int) -> list[float]:
    """The final accuracies of one cell's runs (one per seed done)."""
    return [
        float(r["accuracy"])
        for r in rows.values()
        if (r["attack"], r["defence"], int(r["min-holders"])) == (attack, defence, holders)
    ]


def format_cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}+-{std:.3f} ({len(values)})"


def format_table(
    rows: dict[str, dict[str, Any]], attacks: list[str], defences: list[str], holders: list[int] | None = None
) -> str:
    """Final accuracy, mean +- std over seeds (runs), one row per attack, one column per defence x h."""
    columns = [(d, h) for h in (holders or [1]) for d in defences]
    header = ["attack \\ defence", *(f"{d} h={h}" for d, h in columns)]
    body = [
        [attack, *(format_cell(cell_accuracies(rows, attack, d, h)) for d, h in columns)]
        for attack in ["none", *attacks]
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def load_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The runs of a summary.json by cell key, rows from before the min-holders and seed axes completed
    with LEGACY; none if the file does not exist yet."""
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [{"attack": r["attack"], "defence": r["defence"], **LEGACY, **r} for r in rows]
    return {key(r["attack"], r["defence"], int(r["min-holders"]), int(r["seed"])): r for r in rows}


def _write(out: Path, rows: dict[str, dict[str, Any]]) -> None:
    write_rows(out, list(rows.values()))


if __name__ == "__main__":
    raise SystemExit(main())
