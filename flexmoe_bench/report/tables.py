"""The report's tables: rows computed from the run summaries, and their markdown.

A `*_rows` function computes what a table shows (and what the reading sentences quote); a
`*_table` function formats rows as a markdown table. Cells print as mean ± std over seeds; a paired gap
prints as its mean with the 95 % t interval and the seeds it pairs, beside the Holm-corrected
p-values of the paired t-test (which decides the verdict) and of the Wilcoxon signed-rank test, and
the minimum detectable effect (see flexmoe_bench.report.stats).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from flexmoe_bench.report.stats import (
    TAIL_ROUNDS,
    PairedTest,
    curve_change,
    decide,
    last_rounds_mean,
    mean_curve,
    mean_std,
    paired_test,
    rounds_to_target,
)
from flexmoe_bench.report.summaries import (
    METHODS,
    REFERENCE,
    Runs,
    Summary,
    accuracy_at,
    method_label,
    partition_name,
)

TARGET_SHARE = 0.95  # rounds-to-target: the round where a method reaches 95% of the best final accuracy

# A head-to-head setting: (its name, flexmoe's group, flexmoe's varied settings, greedy's group).
HEAD_TO_HEAD_SETTINGS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("k = 1 (capacity)", "capacity-k1", {}, "capacity-k1"),
    ("k = 4 (capacity)", "capacity-k4", {}, "capacity-k4"),
    ("heterogeneous capacities 1,2,4", "heterogeneous", {}, "heterogeneous"),
    ("ResNet extractor", "resnet", {}, "resnet"),
    (
        "partial participation, 100 clients, 10/round (flexmoe deficit-weight 0.1)",
        "partial-deficit",
        {"deficit-weight": 0.1},
        "partial-greedy",
    ),
    ("60 rounds (convergence check)", "convergence", {}, "convergence"),
)


# ------------------------------------------------------------------ markdown


def fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_test(test: PairedTest) -> str:
    """The mean paired gap with its 95 % t interval and the number of pairs."""
    if test.n == 0:
        return "—"
    if test.n == 1:
        return f"{test.mean:+.4f} (n=1)"
    low, high = test.ci
    return f"{test.mean:+.4f} [{low:+.4f}, {high:+.4f}] (n={test.n})"


def fmt_verdict(test: PairedTest) -> str:
    return f"**{test.verdict}**"


def fmt_evidence(test: PairedTest) -> str:
    """Gap, interval, the deciding test and the Wilcoxon beside it, the MDE: one line for prose."""
    if test.n < 2:
        return fmt_test(test)
    return (
        f"{fmt_test(test)}, paired t p = {fmt_p(test.t_p)} (Holm {fmt_p(test.holm_p)}), Wilcoxon p = "
        f"{fmt_p(test.wilcoxon_p)}, MDE {test.mde:.4f}"
    )


TEST_HEADER = ("p, paired t (Holm)", "p, Wilcoxon (Holm)", "MDE (t, power 0.8)", "verdict")


def test_cells(test: PairedTest) -> list[str]:
    """The table cells that follow a gap: corrected p-values, the MDE and the verdict."""
    mde = "—" if math.isnan(test.mde) else f"{test.mde:.4f}"
    return [fmt_p(test.holm_p), fmt_p(test.holm_wilcoxon_p), mde, fmt_verdict(test)]


def present(methods: Iterable[str], has: Any) -> list[str]:
    """The methods (in METHODS order) for which `has(method)` is true: a table shows no empty column."""
    return [m for m in methods if has(m)]


def fmt_seeds(values: Mapping[int, float]) -> str:
    """Per-seed values as mean ± std."""
    return fmt(*mean_std(list(values.values())))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ main grid


def main_rows(runs: Runs, datasets: Sequence[str], partitions: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (dataset, partition): accuracy per method and the paired FLEX-MoE − greedy test,
    Holm-corrected across the rows (the main table is one family)."""
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        for partition in partitions:
            cell = {m: runs.final(runs.select("main", m, dataset=dataset, partition=partition)) for m in METHODS}
            if not any(cell.values()):
                continue
            rows.append({"dataset": dataset, "partition": partition, "accuracy": cell})
    for row, test in zip(rows, decide([paired_test(r["accuracy"]["flexmoe"], r["accuracy"]["greedy"]) for r in rows])):
        row["test"], row["verdict"] = test, test.verdict
    return rows


def main_table(rows: Sequence[Mapping[str, Any]]) -> str:
    methods = present(METHODS, lambda m: any(row["accuracy"][m] for row in rows))
    body = [
        [
            row["dataset"],
            partition_name(row["partition"]),
            *(fmt_seeds(row["accuracy"][m]) for m in methods),
            fmt_test(row["test"]),
            *test_cells(row["test"]),
        ]
        for row in rows
    ]
    return table(["dataset", "partition", *methods, "flexmoe − greedy (paired, 95 % CI)", *TEST_HEADER], body)


def balance_table(runs: Runs) -> str:
    """Balance per method over every main-grid run (per-round means, final cumulative)."""
    body = []
    for method in METHODS:
        chosen = runs.select("main", method)
        if not chosen:
            continue
        s = [r["summary"] for r in chosen]
        var = [float(np.mean([v for v in r["curves"]["load-variance"] if v is not None])) for r in chosen]
        body.append(
            [
                method,
                len(chosen),
                fmt(*mean_std([x["load-cv"] for x in s]), 3),
                fmt(*mean_std([x["cumulative-load-cv"] for x in s]), 3),
                fmt(*mean_std(var), 3),
                fmt(*mean_std([x["load-jain"] for x in s]), 3),
                fmt(*mean_std([x["routed-load-cv"] for x in s]), 3),
            ]
        )
    header = [
        "method",
        "runs",
        "load CV per round",
        "cumulative load CV (end)",
        "load variance per round",
        "Jain per round",
        "routed-sample CV",
    ]
    return table(header, body)


def bytes_table(runs: Runs) -> str:
    body = []
    for method in METHODS:
        chosen = [r["summary"] for r in runs.select("main", method)]
        if chosen:
            body.append(
                [
                    method,
                    fmt(*mean_std([x["bytes-total-per-client"] / 1024 for x in chosen]), 1),
                    fmt(*mean_std([x["bytes-total-vs-dense"] for x in chosen]), 3),
                    f"{np.mean([x['bytes-expected-vs-dense'] for x in chosen]):.3f}",
                ]
            )
    header = [
        "method",
        "KiB down+up per client per round",
        "vs dense (measured)",
        "vs dense, arrays formula (ψ + kθ)/(ψ + Eθ)",
    ]
    return table(header, body)


def target_table(runs: Runs, datasets: Sequence[str], partitions: Sequence[str]) -> str:
    body = []
    methods = present(METHODS, lambda m: runs.select("main", m))
    for dataset in datasets:
        for partition in partitions:
            chosen = {m: runs.select("main", m, dataset=dataset, partition=partition) for m in methods}
            curves = {m: mean_curve(r["curves"]["accuracy"] for r in c)[0] for m, c in chosen.items() if c}
            if not curves:
                continue
            target = TARGET_SHARE * max(float(c[-1]) for c in curves.values())
            body.append(
                [
                    dataset,
                    partition_name(partition),
                    f"{target:.3f}",
                    *(_rounds(curves.get(m), target) for m in methods),
                ]
            )
    return table(["dataset", "partition", "target accuracy", *methods], body)


def _rounds(curve: np.ndarray | None, target: float) -> str:
    if curve is None:
        return "—"
    found = rounds_to_target(list(curve), target)
    return str(found) if found else f"not in {len(curve)}"


# ------------------------------------------------------------------ capacity and ablations


def capacity_rows(runs: Runs) -> dict[int, dict[str, tuple[float, float]]]:
    """k -> method -> accuracy (mean, std) on the reference setting; k = 2 is the main grid's cell."""
    by_k: dict[int, dict[str, tuple[float, float]]] = defaultdict(dict)
    for method in METHODS:
        main = runs.select("main", method, **REFERENCE)
        if main:
            by_k[2][method] = mean_std(list(runs.final(main).values()))
        for group, k in (("capacity-k1", 1), ("capacity-k4", 4)):
            chosen = runs.select(group, method)
            if chosen:
                by_k[k][method] = mean_std(list(runs.final(chosen).values()))
    return dict(sorted(by_k.items()))


def capacity_table(rows: Mapping[int, Mapping[str, tuple[float, float]]]) -> str:
    methods = [m for m in METHODS if all(m in rows[k] for k in rows)] or ["flexmoe", "greedy"]
    body = [[k, *(fmt(*rows[k][m]) if m in rows[k] else "—" for m in methods)] for k in rows]
    return table(["k", *methods], body)


def _ablation_runs(runs: Runs) -> list[tuple[str, str, list[Summary]]]:
    """(ablation, setting, its runs) in the order the table lists them, empty ones included."""
    specs: list[tuple[str, str, list[Summary]]] = [
        (
            "reference (main grid)",
            "fitness accuracy, ema-beta 0.5, load-slack 0, deficit-weight 0.1",
            runs.select("main", "flexmoe", **REFERENCE),
        ),
        ("fitness", "loss", runs.select("fitness-loss", "flexmoe")),
    ]
    for beta in (0.2, 0.8):
        specs.append(("ema-beta", str(beta), runs.select("ema-beta", "flexmoe", **{"ema-beta": beta})))
    for slack in (0.25, 0.5):
        specs.append(("load-slack", str(slack), runs.select("load-slack", "flexmoe", **{"load-slack": slack})))
    partial = "partial participation (100 clients, 10/round)"
    for weight in (0.0, 0.1, 0.5):
        chosen = runs.select("partial-deficit", "flexmoe", **{"deficit-weight": weight})
        specs.append((partial, f"deficit-weight {weight}", chosen))
    specs.append((partial, "greedy reference", runs.select("partial-greedy", "greedy")))
    for method in ("flexmoe", "greedy"):
        specs.append(("heterogeneous capacities", "1,2,4 cycled, top-r 1", runs.select("heterogeneous", method)))
    for method in ("flexmoe", "greedy"):
        specs.append(("extractor", "resnet", runs.select("resnet", method)))
    return specs


def _ablation_row(name: str, setting: str, chosen: Sequence[Summary]) -> list[str]:
    s = [r["summary"] for r in chosen]
    return [
        name,
        setting,
        method_label(chosen[0]),
        fmt(*mean_std([x["accuracy"] for x in s])),
        fmt(*mean_std([last_rounds_mean(r["curves"]["accuracy"]) for r in chosen])),
        fmt(*mean_std([x["load-cv"] for x in s]), 3),
        fmt(*mean_std([x["cumulative-load-cv"] for x in s]), 3),
        ", ".join(str(r["seed"]) for r in chosen),
    ]


def ablation_rows(runs: Runs) -> list[list[str]]:
    """(ablation, setting, method, accuracy, last-rounds accuracy, load CV/round, cumulative CV, seeds)."""
    return [_ablation_row(name, setting, chosen) for name, setting, chosen in _ablation_runs(runs) if chosen]


def ablation_table(runs: Runs) -> str:
    header = [
        "ablation",
        "setting",
        "method",
        "accuracy",
        f"accuracy, mean of last {TAIL_ROUNDS} rounds",
        "load CV/round",
        "cumulative CV",
        "seeds",
    ]
    return table(header, ablation_rows(runs))


# ------------------------------------------------------------------ FLEX-MoE against greedy elsewhere


def head_to_head_rows(runs: Runs) -> list[dict[str, Any]]:
    """FLEX-MoE against greedy in every setting outside the main grid where both ran: final accuracy
    of each and the paired per-seed test, Holm-corrected across the table's rows."""
    rows: list[dict[str, Any]] = []
    for setting, flex_group, flex_varied, greedy_group in HEAD_TO_HEAD_SETTINGS:
        flex = runs.final(runs.select(flex_group, "flexmoe", **flex_varied))
        greedy = runs.final(runs.select(greedy_group, "greedy"))
        if flex and greedy:
            rows.append({"setting": setting, "flexmoe": flex, "greedy": greedy})
    for row, test in zip(rows, decide([paired_test(r["flexmoe"], r["greedy"]) for r in rows])):
        row["test"], row["verdict"] = test, test.verdict
    return rows


def head_to_head_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        [
            row["setting"],
            fmt_seeds(row["flexmoe"]),
            fmt_seeds(row["greedy"]),
            fmt_test(row["test"]),
            *test_cells(row["test"]),
        ]
        for row in rows
    ]
    header = ["setting (fashion-mnist, Dirichlet(0.8))", "flexmoe", "greedy", "flexmoe − greedy (paired, 95 % CI)"]
    return table([*header, *TEST_HEADER], body)


def convergence_tests(runs: Runs, checkpoints: Sequence[int]) -> list[PairedTest]:
    """FLEX-MoE − greedy at each checkpoint round of the convergence check, Holm-corrected together
    (one table); empty without both methods."""
    chosen = {m: runs.select("convergence", m) for m in ("flexmoe", "greedy")}
    if not all(chosen.values()):
        return []
    return decide(
        [paired_test(accuracy_at(chosen["flexmoe"], k), accuracy_at(chosen["greedy"], k)) for k in checkpoints]
    )


def convergence_rows(runs: Runs, checkpoints: Sequence[int]) -> list[list[str]]:
    """Accuracy at each checkpoint round per method, the paired FLEX-MoE − greedy test there with its
    verdict, and the change over the last 10 rounds (how flat the curve is at its end)."""
    chosen = {m: runs.select("convergence", m) for m in ("flexmoe", "greedy")}
    rows = []
    for method, group in chosen.items():
        if not group:
            continue
        tails = [t for r in group if (t := curve_change(r["curves"]["accuracy"], 10)) is not None]
        rows.append(
            [
                method,
                *(fmt_seeds(accuracy_at(group, k)) for k in checkpoints),
                fmt(*mean_std(tails)),
                ", ".join(str(r["seed"]) for r in group),
            ]
        )
    tests = convergence_tests(runs, checkpoints)
    if tests:
        rows.append(
            [
                "flexmoe − greedy (paired, 95 % CI; Holm-corrected paired t p)",
                *(f"{fmt_test(t)}, p {fmt_p(t.holm_p)} {fmt_verdict(t)}" if t.n else "—" for t in tests),
                "",
                "",
            ]
        )
    return rows


def convergence_table(rows: Sequence[Sequence[str]], checkpoints: Sequence[int]) -> str:
    header = ["method", *(f"accuracy at round {k}" for k in checkpoints), "change, last 10 rounds", "seeds"]
    return table(header, rows)
