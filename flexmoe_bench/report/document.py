"""docs/results.md, section by section, and the copy of its main table that the README quotes.

Each `_section` function returns the section's markdown lines; `write_report` joins them in the
order a reader goes: the main grid and its reading first, then the mechanism (balance, bytes),
then what varies around the reference setting, then what is not run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flexmoe_bench.report.attacks import attack_section
from flexmoe_bench.report.figures import Figures, draw_figures
from flexmoe_bench.report.price import price_section
from flexmoe_bench.report.reading import beside_paper, reading, slack_bounds
from flexmoe_bench.report.regimes import regimes_section
from flexmoe_bench.report.summaries import ROOT, Grid, Runs, convergence_matches_main, load_summaries
from flexmoe_bench.report.tables import (
    TARGET_SHARE,
    ablation_table,
    balance_table,
    bytes_table,
    capacity_rows,
    capacity_table,
    convergence_rows,
    convergence_table,
    head_to_head_rows,
    head_to_head_table,
    main_rows,
    main_table,
    target_table,
)
from flexmoe_bench.study import Cell

NOT_OFFLINE = {  # supported by flexmoe_core.data, but no offline copy on the reference machine
    "cifar10": "--config conf/cifar10.toml --set allow-download=true",
    "emnist": "--set dataset='\"emnist\"' --set allow-download=true",
    "gtsrb": "--set dataset='\"gtsrb\"' --set model='\"resnet\"' --set allow-download=true",
}
PAPER = (
    "The source paper (secondary sources, DESIGN §1) reports, with a ResNet and E = 8 on CIFAR-10, "
    "EMNIST and GTSRB: greedy top-k expert-load CV above 0.29 against about 0.003 for the balanced "
    "assignment; accuracies such as CIFAR-10 IID 83%, Dir(0.8) 68.8%, 4-class 65.5%, EMNIST IID 98.3%, "
    "4-class 82.6%, GTSRB IID 98%."
)
README_START, README_END = "<!-- study-main-table:start -->", "<!-- study-main-table:end -->"
VERDICT_RULE = (
    "Verdict rule (flexmoe_bench/report/stats.py): per setting, the paired per-seed difference FLEX-MoE − "
    "greedy (same seed = same partitions, model, gates, participants) with its 95 % t interval; the paired "
    "t-test (scipy.stats.ttest_rel) and the Wilcoxon signed-rank test (scipy.stats.wilcoxon), two-sided, "
    "Holm-corrected across the rows of the table. A cell is **better** or **worse** only where the "
    "Holm-corrected paired t-test rejects at 0.05; the Wilcoxon p-value is reported beside it and decides "
    "nothing (with 3 seeds its smallest two-sided p-value is 2/2³ = 0.25, so it cannot reject at 0.05). "
    "Otherwise the verdict is **no detectable difference**, read with the interval and the MDE: the smallest "
    "true difference δ the paired t-test at α = 0.05 detects with power 0.8 given the observed standard "
    "deviation s of the differences, i.e. the δ with P(|T| > t₀.₉₇₅,ₙ₋₁) = 0.8 for T ~ noncentral "
    "t(n − 1, δ√n/s) (about (t₀.₉₇₅,ₙ₋₁ + t₀.₈,ₙ₋₁)·s/√n).",
)

Image = Callable[[str, str], str]  # (alt text, figure file name) -> the markdown image line


def write_report(
    summaries_dir: Path,
    study_file: Path,
    out: Path,
    figures: Path,
    regimes: tuple[Path, Path] | None = None,
    price: tuple[Path, Path, Path] | None = None,
    attacks: Path | None = None,
) -> Path:
    """docs/results.md from the study's summaries; `regimes` = (summaries dir, study file) of the
    regime grid adds its section ("When does balance matter?", flexmoe_bench.report.regimes), `price` =
    (diagnosis dir, remedy summaries dir, remedy study file) the price section (flexmoe_bench.report.price),
    `attacks` = the attack table's summary.json the poisoning section (flexmoe_bench.report.attacks)."""
    grid = Grid.read(study_file)
    loaded = load_summaries(summaries_dir)
    runs = grid.current(loaded)
    rows = main_rows(runs, grid.datasets, grid.partitions)
    capacity = capacity_rows(runs)
    drawn = draw_figures(runs, grid, capacity, figures)
    head_to_head = head_to_head_rows(runs)  # one computation for its table and for the reading
    link = figures.relative_to(out.parent).as_posix()

    def image(alt: str, name: str) -> str:
        return f"![{alt}]({link}/{name})"

    def relative(path: Path) -> str:
        return Path(os.path.relpath(path, out.parent)).as_posix()

    text = [
        *_header(runs, grid, summaries_dir, study_file, ignored=len(loaded) - len(runs.all)),
        *_main_grid_section(rows, drawn, image),
        *_reading_section(rows, head_to_head, runs, grid.checkpoints),
        *_balance_section(runs, drawn, image),
        *_target_section(runs, grid),
        *_bytes_section(runs),
        *_capacity_section(capacity, drawn, image),
        *_ablation_section(runs, grid, drawn, image),
        *_head_to_head_section(head_to_head),
        *(_convergence_section(runs, grid, drawn, image) if grid.has_convergence else []),
        *_paper_section(runs),
        *(regimes_section(*regimes, figures, image, _shown) if regimes else []),
        *(price_section(*price, relative, _shown, figures) if price else []),
        *(attack_section(attacks, relative, _shown, figures) if attacks else []),
        *_not_run_section(),
        *_missing_section(grid.missing(runs)),
    ]
    out.write_text("\n".join(text))
    return out


def _shown(path: Path) -> Path:
    """A path as the report prints it: relative to the repository where it lies inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _optional_image(image: Image, alt: str, name: str | None) -> list[str]:
    """The image line and a blank line, or nothing where the figure had no runs to draw."""
    return [image(alt, name), ""] if name else []


def _header(runs: Runs, grid: Grid, summaries_dir: Path, study_file: Path, ignored: int) -> list[str]:
    cells, missing, base = grid.cells, grid.missing(runs), grid.base
    return [
        "# Results: FLEX-MoE against greedy, random, static and dense",
        "",
        f"Generated by `python -m flexmoe_bench.report` from the {len(runs.all)} run summaries in "
        f"`{_shown(summaries_dir)}/` (grid: `{_shown(study_file)}`, run with "
        "`python -m flexmoe_bench.sweep`; any single cell re-runs with "
        "`python -m flexmoe_bench.sweep --only <cell> --force`). "
        f"Cells done: {len(cells) - len(missing)} of {len(cells)}"
        + (f" ({ignored} summaries of other run configs ignored)" if ignored else "")
        + ". Total wall time of these runs on the "
        f"2-core reference machine: {runs.wall_seconds / 3600:.2f} h (sum of per-run wall times, start-up included).",
        "",
        f"Runs made with Flower {', '.join(sorted({str(r.get('flwr')) for r in runs.all})) or '—'} at commit(s) "
        f"{', '.join(sorted({str(r.get('commit')) for r in runs.all})) or '—'} (the refactorings since change no "
        "result; see the README).",
        "",
        f"Every cell: {base.get('num-experts', 8)} experts, k = {base.get('capacity', 2)}, top-r = "
        f"{base.get('top-r', 2)}, {base.get('num-server-rounds')} rounds, {base.get('max-samples-per-client')} "
        f"samples per client, {base.get('local-epochs')} local epoch(s) per round, 10 clients unless stated; seeds 1-3 "
        "(ablations 1-2). Methods differ only in the assignment rule: same seed = same partitions, initial "
        "model, initial gates, participants and data order. Accuracy is the final round's example-weighted "
        "mean of the clients' personalised test accuracy; mean ± std over seeds.",
        "",
    ]


def _main_grid_section(rows: Sequence[Mapping[str, Any]], drawn: Figures, image: Image) -> list[str]:
    return [
        "## Main grid: final accuracy",
        "",
        *VERDICT_RULE,
        "",
        main_table(rows) if rows else "_No main-grid runs yet._",
        "",
        *(image("accuracy curves", name) for name in drawn.accuracy),
        "",
    ]


def _reading_section(
    rows: Sequence[Mapping[str, Any]], head_to_head: Sequence[Mapping[str, Any]], runs: Runs, checkpoints: list[int]
) -> list[str]:
    return ["## Reading", "", *reading(rows, head_to_head, runs, checkpoints), ""]


def _balance_section(runs: Runs, drawn: Figures, image: Image) -> list[str]:
    return [
        "## Expert-load balance (main grid, all datasets and partitions)",
        "",
        "Load = clients holding each expert in a round. CV = std/mean, Jain = (Σx)²/(n·Σx²); the cumulative "
        "CV is over the loads summed across rounds. With 10 clients × 2 experts over 8 experts a round cannot be "
        "exactly balanced (loads 2 or 3, CV 0.2 at best): FLEX-MoE and static both sit on that floor every round, "
        "and FLEX-MoE's deficit term rotates the extra holders so that its cumulative CV goes to about 0, while "
        "static's stays at 0.2.",
        "",
        balance_table(runs),
        "",
        *(image("load CV per round", name) for name in drawn.load_cv),
        "",
        *_optional_image(image, "assignment heatmaps", drawn.heatmap),
    ]


def _target_section(runs: Runs, grid: Grid) -> list[str]:
    return [
        "## Rounds to reach the target accuracy",
        "",
        f"Target = {TARGET_SHARE:.0%} of the best method's mean final accuracy in that setting; first round "
        "at which the method's mean curve reaches it.",
        "",
        target_table(runs, grid.datasets, grid.partitions),
        "",
    ]


def _bytes_section(runs: Runs) -> list[str]:
    return ["## Bytes per client per round", "", bytes_table(runs), ""]


def _capacity_section(
    capacity: Mapping[int, Mapping[str, tuple[float, float]]], drawn: Figures, image: Image
) -> list[str]:
    return [
        "## Accuracy against capacity k (fashion-mnist, Dirichlet(0.8))",
        "",
        capacity_table(capacity) if capacity else "_No capacity runs yet._",
        "",
        *_optional_image(image, "accuracy vs k", drawn.capacity),
    ]


def _ablation_section(runs: Runs, grid: Grid, drawn: Figures, image: Image) -> list[str]:
    return [
        "## Ablations (fashion-mnist, Dirichlet(0.8))",
        "",
        "Partial participation: 100 clients, 10 sampled per round; accuracy is measured on a fixed cohort of "
        "20 clients drawn once from the seed (`eval-cohort = 20`), each evaluated with the experts the method "
        "would give it that round, so the curve compares the same clients in every round. " + slack_bounds(grid.cells),
        "",
        ablation_table(runs),
        "",
        *_optional_image(image, "partial participation", drawn.partial),
    ]


def _head_to_head_section(head_to_head: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        "## FLEX-MoE against greedy outside the main grid",
        "",
        "The same paired per-seed test as the main grid, for every other setting where both rules ran; the "
        "Holm correction runs across this table's rows.",
        "",
        head_to_head_table(head_to_head) if head_to_head else "_No paired runs outside the main grid yet._",
        "",
    ]


def _convergence_section(runs: Runs, grid: Grid, drawn: Figures, image: Image) -> list[str]:
    main_rounds, long_rounds = grid.main_rounds, grid.long_rounds
    same, compared = convergence_matches_main(runs, main_rounds)
    rows = convergence_rows(runs, grid.checkpoints)
    return [
        f"## Convergence check (fashion-mnist, Dirichlet(0.8), {long_rounds} rounds)",
        "",
        f"The main grid stops at {main_rounds} rounds to fit the 2-core budget, while its curves still rise. "
        f"This check runs flexmoe and greedy on the reference setting for {long_rounds} rounds with the "
        f"main grid's seeds, so its first {main_rounds} rounds are the main-grid runs continued"
        + (
            f": {same} of {compared} runs reproduce their main-grid twin's final accuracy exactly at round "
            f"{main_rounds}"
            + (
                " (the two were made on CPUs of different generations that report the same model name, and "
                "each reproduces on its own kind of machine: float paths differ, see "
                "[study.md](study.md#reproducibility))"
                if same < compared
                else ""
            )
            if compared
            else ""
        )
        + ". The last column is the accuracy change over the final 10 rounds (near 0 = flat).",
        "",
        convergence_table(rows, grid.checkpoints) if rows else "_No convergence runs yet._",
        "",
        *_optional_image(image, "convergence check", drawn.convergence),
    ]


def _paper_section(runs: Runs) -> list[str]:
    return [
        "## Beside the source paper",
        "",
        PAPER + " This study uses fashion-mnist and mnist with a small CNN, so its accuracies are not "
        "comparable with those; the load CV is. " + beside_paper(runs),
        "",
    ]


def _not_run_section() -> list[str]:
    return [
        "## Supported but not run here",
        "",
        "cifar10, emnist and gtsrb are supported by the data loader but have no offline copy on the reference "
        "machine, so they are not in this study. With the data (or network access) a user runs, for example:",
        "",
        *(
            f"- {name}: `python -m flexmoe_bench.experiment --methods flexmoe,greedy,random,static,dense {args}`"
            for name, args in NOT_OFFLINE.items()
        ),
        "",
        "or adds the dataset to `vary` in a copy of `conf/study.toml` and runs the sweep on it.",
        "",
    ]


def _missing_section(missing: Sequence[Cell]) -> list[str]:
    return [
        "## Missing cells",
        "",
        (
            f"{len(missing)} cell(s) of the grid have no summary yet (the sweep resumes them): "
            + ", ".join(f"`{c.id}`" for c in missing)
        )
        if missing
        else "None: every cell of the grid has a summary.",
        "",
    ]


def quote_in_readme(readme: Path, report: Path) -> bool:
    """Copy the report's main table between the README's markers, so the quote never goes stale."""
    if not readme.is_file():
        return False
    text, lines = readme.read_text(), report.read_text().splitlines()
    if README_START not in text or README_END not in text:
        return False
    start = next((i for i, line in enumerate(lines) if line.startswith("| dataset | partition | flexmoe")), None)
    if start is None:
        quoted = ["_No main-grid runs yet._"]
    else:
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        quoted = lines[start:end]
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    readme.write_text(f"{head}{README_START}\n" + "\n".join(quoted) + f"\n{README_END}{tail}")
    return True
