"""The study report: `python -m flexmoe_bench.report` writes docs/results.md and docs/figures/.

It also refreshes the copy of the main table that the README quotes between its markers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flexmoe_bench.report.document import quote_in_readme, write_report
from flexmoe_bench.report.summaries import ROOT


def _grid(path: Path, option: str) -> Path | None:
    """A grid (or summary) file to report, or None for '' (argparse turns '' into Path('.'))."""
    if str(path) in ("", "."):
        return None
    if not path.is_file():
        raise SystemExit(f"{option}: no such file {path}")
    return path.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexmoe_bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--summaries", type=Path, default=ROOT / "docs" / "study" / "runs")
    parser.add_argument("--study", type=Path, default=ROOT / "conf" / "study.toml")
    parser.add_argument("--regimes-summaries", type=Path, default=ROOT / "docs" / "regimes" / "runs")
    parser.add_argument(
        "--regimes-study",
        type=Path,
        default=ROOT / "conf" / "regimes.toml",
        help="the regime grid, reported in its own section; '' for none",
    )
    parser.add_argument("--diagnosis", type=Path, default=ROOT / "docs" / "diagnosis")
    parser.add_argument("--remedies-summaries", type=Path, default=ROOT / "docs" / "remedies" / "runs")
    parser.add_argument(
        "--remedies-study",
        type=Path,
        default=ROOT / "conf" / "remedies.toml",
        help="the remedy grid, reported with the diagnoses in their own section; '' for none",
    )
    parser.add_argument(
        "--attacks-summary",
        type=Path,
        default=ROOT / "docs" / "attacks" / "summary.json",
        help="the attack table's runs (python -m flexmoe_bench.attacks), reported in their own section; '' for none",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "README.md",
        help="README whose quoted main table (between markers) is refreshed; '' for none",
    )
    args = parser.parse_args(argv)
    for name, path in (("--summaries", args.summaries), ("--study", args.study)):
        if not path.exists():
            raise SystemExit(f"{name}: no such path {path}")
    regimes_study = _grid(args.regimes_study, "--regimes-study")
    remedies_study = _grid(args.remedies_study, "--remedies-study")
    path = write_report(
        args.summaries.resolve(),
        args.study.resolve(),
        args.out.resolve(),
        args.figures.resolve(),
        (args.regimes_summaries.resolve(), regimes_study) if regimes_study else None,
        (args.diagnosis.resolve(), args.remedies_summaries.resolve(), remedies_study) if remedies_study else None,
        _grid(args.attacks_summary, "--attacks-summary"),
    )
    print(f"wrote {path} and its figures in {args.figures}")
    if args.readme and quote_in_readme(args.readme, path):
        print(f"updated the main table quoted in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
