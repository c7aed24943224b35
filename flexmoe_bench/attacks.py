"""Attack x defence table: `python -m flexmoe_bench.attacks` (FLEX-MoE under poisoning, same seed).

Runs the clean federation and each attack under each defence through the same `flwr run`
simulation path as the main job, then prints final accuracy per cell and writes
`summary.json` / `summary.csv` (committed under docs/attacks/). Cells already summarised
there are skipped, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flexmoe_bench.experiment import APP_DIR, load_overrides, summarise, write_rows
from flexmoe_bench.launcher import SimulationSuperLink
from flexmoe_core.config import ATTACKS
from flexmoe_core.robust_aggregation import ROBUST_METHODS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=APP_DIR / "conf" / "attacks.toml")
    parser.add_argument("--attacks", default=",".join(ATTACKS[1:]), help="comma-separated, from " + ", ".join(ATTACKS))
    parser.add_argument("--defences", default=",".join(ROBUST_METHODS), help="from " + ", ".join(ROBUST_METHODS))
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=APP_DIR / "results" / "attacks", help="each run's results")
    parser.add_argument(
        "--summary-dir",
        type=Path,
        default=APP_DIR / "docs" / "attacks",
        help="summary.json / summary.csv (committed; cells already there are skipped)",
    )
    return parser.parse_args(argv)


def cells(attacks: list[str], defences: list[str]) -> list[tuple[str, str]]:
    """(attack, defence) pairs; 'none' first, so the clean cost of each defence is measured too."""
    return [(attack, defence) for attack in ["none", *attacks] for defence in defences]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a and a != "none"]
    defences = [d for d in args.defences.split(",") if d]
    bad = [a for a in attacks if a not in ATTACKS] + [d for d in defences if d not in ROBUST_METHODS]
    if bad:
        raise SystemExit(f"unknown attack or defence {bad}; allowed: {ATTACKS} and {ROBUST_METHODS}")
    base = load_overrides(args.config, [])
    out, summary_dir = args.out.resolve(), args.summary_dir.resolve()
    rows = _load_rows(summary_dir)
    todo = [c for c in cells(attacks, defences) if f"{c[0]}/{c[1]}" not in rows]
    ok = _run_all(todo, base, out, summary_dir, rows, args.num_supernodes) if todo else True
    print("\n" + format_table(rows, attacks, defences))
    return 0 if ok else 1


def _run_all(
    todo: list[tuple[str, str]],
    base: dict[str, Any],
    out: Path,
    summary_dir: Path,
    rows: dict[str, dict[str, Any]],
    num_supernodes: int,
) -> bool:
    with SimulationSuperLink(num_supernodes) as superlink:
        for done, (attack, defence) in enumerate(todo, 1):
            name = f"{attack}/{defence}"
            print(f"\n=== [{done}/{len(todo)}] attack={attack} defence={defence}", flush=True)
            results = out / attack / defence
            overrides = {**base, "attack": attack, "robust-aggregation": defence, "results-dir": str(results)}
            if attack == "none":
                overrides["attack-clients"] = ""
            outcome = superlink.run(APP_DIR, overrides, echo=False)
            if not outcome.ok:
                print(f"run {name} failed (status {outcome.status}):\n{outcome.log[-2000:]}", file=sys.stderr)
                return False
            rows[name] = {"attack": attack, "defence": defence, **summarise("flexmoe", results, outcome.seconds)}
            _write(summary_dir, rows)
            print(f"    accuracy {rows[name]['accuracy']:.4f} in {outcome.seconds:.0f}s", flush=True)
    return True


def format_table(rows: dict[str, dict[str, Any]], attacks: list[str], defences: list[str]) -> str:
    """Final accuracy, one row per attack, one column per defence."""
    header = ["attack \\ defence", *defences]
    body = [
        [attack, *(f"{rows[f'{attack}/{d}']['accuracy']:.4f}" if f"{attack}/{d}" in rows else "-" for d in defences)]
        for attack in ["none", *attacks]
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def _load_rows(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "summary.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    return {f"{r['attack']}/{r['defence']}": r for r in rows}


def _write(out: Path, rows: dict[str, dict[str, Any]]) -> None:
    write_rows(out, list(rows.values()))


if __name__ == "__main__":
    raise SystemExit(main())
