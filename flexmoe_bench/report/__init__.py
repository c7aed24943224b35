"""The study report: `python -m flexmoe_bench.report` writes docs/results.md and docs/figures/.

It reads only the committed run summaries (docs/study/runs/*.json, written by
`python -m flexmoe_bench.sweep`) and the study file that defines the grid, so the report is
regenerated identically from git alone, and a cell re-run by the sweep changes exactly the
figures that depend on it. Statistics: mean ± sample std over seeds; FLEX-MoE is compared
with greedy by the paired per-seed difference (same seed = same partitions, initial model,
gates and participants), and a gap is called a tie unless its mean exceeds the std of the
paired differences.

The modules: `summaries` (the inputs), `stats`, `tables`, `figures`, `reading` (the generated
sentences), `document` (results.md and the README quote), `__main__` (the command line).
"""

from flexmoe_bench.report.document import README_END, README_START, quote_in_readme, write_report
from flexmoe_bench.report.stats import (
    curve_change,
    decide,
    holm,
    last_rounds_mean,
    mean_curve,
    mean_std,
    minimum_detectable_effect,
    paired_difference,
    paired_test,
    pooled_signed_rank,
    rounds_to_target,
)
from flexmoe_bench.report.summaries import Runs, load_summaries

__all__ = [
    "README_END",
    "README_START",
    "Runs",
    "curve_change",
    "last_rounds_mean",
    "load_summaries",
    "mean_curve",
    "mean_std",
    "paired_difference",
    "quote_in_readme",
    "rounds_to_target",
    "decide",
    "holm",
    "minimum_detectable_effect",
    "paired_test",
    "pooled_signed_rank",
    "write_report",
]
