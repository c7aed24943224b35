"""The study report's statistics against hand-computed values, and a report from synthetic summaries."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from flexmoe_bench.report import (
    README_END,
    README_START,
    last_rounds_mean,
    mean_curve,
    mean_std,
    paired_difference,
    quote_in_readme,
    rounds_to_target,
    write_report,
)


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(x) for x in mean_std([]))


def test_paired_difference_uses_only_common_seeds():
    a = {1: 0.8, 2: 0.7, 3: 0.9, 4: 0.1}
    b = {1: 0.7, 2: 0.7, 3: 0.8}
    mean, std, n = paired_difference(a, b)
    assert n == 3
    assert mean == pytest.approx(0.2 / 3)
    assert std == pytest.approx(math.sqrt(((0.1 - 0.2 / 3) ** 2 * 2 + (0.2 / 3) ** 2) / 2))


def test_rounds_to_target_is_the_first_round_reaching_it():
    assert rounds_to_target([0.1, 0.5, 0.4, 0.9], 0.5) == 2
    assert rounds_to_target([0.1, 0.2], 0.5) is None


def test_mean_curve_is_per_round_over_runs_cut_to_the_shortest():
    mean, std = mean_curve([[0.0, 1.0, 2.0], [2.0, 3.0]])
    assert mean.tolist() == [1.0, 2.0]
    assert std.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])


def summary(cell, group, method, seed, accuracy, varied):
    curve = [accuracy * r / 5 for r in range(1, 6)]
    return {
        "run-config": {"num-server-rounds": 5, **varied, "assignment": method, "seed": seed},
        "cell": cell,
        "group": group,
        "method": method,
        "seed": seed,
        "varied": varied,
        "wall-seconds": 60.0,
        "summary": {
            "accuracy": accuracy,
            "load-cv": 0.2 if method == "flexmoe" else 0.6,
            "cumulative-load-cv": 0.01,
            "load-jain": 0.9,
            "routed-load-cv": 0.2,
            "bytes-total-per-client": 2048.0,
            "bytes-total-vs-dense": 0.5,
            "bytes-expected-vs-dense": 0.5,
        },
        "curves": {
            "accuracy": curve,
            "load-cv": [0.2] * 5,
            "load-variance": [0.25] * 5,
            "cumulative-load-cv": [0.1] * 5,
        },
        "holding": {"partition-0": [5, 5, 0, 0], "partition-1": [0, 0, 5, 5]},
    }


def report_from(tmp_path: Path, study: str, runs: Iterable[dict[str, Any]]) -> str:
    """Write the study file and one summary file per run (named after its cell), make the report
    into tmp_path/docs/ and return its text."""
    study_file = tmp_path / "study.toml"
    study_file.write_text(study)
    summaries = tmp_path / "runs"
    summaries.mkdir()
    for run in runs:
        (summaries / f"{run['cell']}.json").write_text(json.dumps(run))
    out = tmp_path / "docs" / "results.md"
    write_report(summaries, study_file, out, tmp_path / "docs" / "figures")
    return out.read_text()


def test_report_from_synthetic_summaries(tmp_path):
    study = (
        "[study]\nseeds = [1, 2]\n[base]\nnum-server-rounds = 5\n"
        '[[group]]\nname = "main"\nmethods = ["flexmoe", "greedy"]\n'
        'vary = { dataset = ["fashion-mnist"], partition = ["dirichlet", "iid"] }\n'
    )
    varied = {"dataset": "fashion-mnist", "partition": "dirichlet"}
    # flexmoe beats greedy by 0.10 and 0.12 on the two seeds: mean 0.11, std 0.0141; t = 11 on 1 df,
    # p = 0.058: no detectable difference (two seeds decide only much tighter gaps).
    runs = [
        summary(f"main-{method}-fashion-mnist-dirichlet-s{seed}", "main", method, seed, acc, varied)
        for method, seed, acc in [("flexmoe", 1, 0.80), ("flexmoe", 2, 0.82), ("greedy", 1, 0.70), ("greedy", 2, 0.70)]
    ]
    iid = {"dataset": "fashion-mnist", "partition": "iid"}
    stale = summary("main-flexmoe-fashion-mnist-iid-s1", "main", "flexmoe", 1, 0.99, iid)
    stale["run-config"]["num-server-rounds"] = 50  # made under another study file: ignored
    text = report_from(tmp_path, study, [*runs, stale])
    row = next(line for line in text.splitlines() if line.startswith("| fashion-mnist | Dirichlet(0.8)"))
    assert "0.8100 ± 0.0141" in row and "0.7000 ± 0.0000" in row
    assert "+0.1100 [-0.0171, +0.2371] (n=2)" in row and "**no detectable difference**" in row
    assert "| 0.058 | 0.500 |" in row  # paired t (Holm over 1 row), Wilcoxon beside it
    assert "Cells done: 4 of 8 (1 summaries of other run configs ignored)" in text
    assert "0.9900" not in text
    assert "`main-flexmoe-fashion-mnist-iid-s1`" in text  # missing cells are listed
    assert (
        "- FLEX-MoE is **better** than greedy (Holm-corrected paired t-test, p < 0.05 across the 1 settings) on: none"
        in text
    )
    assert "**No detectable difference** (the test does not reject" in text
    assert "fashion-mnist Dirichlet(0.8) (+0.1100 [-0.0171, +0.2371] (n=2), MDE " in text
    assert (tmp_path / "docs" / "figures" / "accuracy_fashion-mnist.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "figures" / "heatmap_fashion-mnist_dirichlet.png").is_file()
    assert "](figures/accuracy_fashion-mnist.png)" in text
    assert "Here greedy's per-round load CV is 0.600 (above the paper's 0.29) and FLEX-MoE's 0.200" in text
    assert "cumulative load CV is 0.010 against the paper's about 0.003" in text


def test_readme_quote_is_replaced_between_markers_only(tmp_path):
    report = tmp_path / "results.md"
    report.write_text("# R\n\n| dataset | partition | flexmoe |\n|---|---|---|\n| fm | iid | 0.9 |\n\ntext\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold table\n{README_END}\nafter\n")
    assert quote_in_readme(readme, report)
    assert readme.read_text() == (
        f"before\n{README_START}\n| dataset | partition | flexmoe |\n|---|---|---|\n"
        f"| fm | iid | 0.9 |\n{README_END}\nafter\n"
    )
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not quote_in_readme(plain, report) and plain.read_text() == "no markers\n"


def test_convergence_section_reads_the_long_curves_at_each_checkpoint(tmp_path):
    study = (
        "[study]\nseeds = [1, 2]\n[base]\nnum-server-rounds = 5\n"
        '[[group]]\nname = "main"\nmethods = ["flexmoe", "greedy"]\n'
        'vary = { dataset = ["fashion-mnist"], partition = ["dirichlet"] }\n'
        '[[group]]\nname = "convergence"\nmethods = ["flexmoe", "greedy"]\nset = { num-server-rounds = 15 }\n'
    )
    runs = []
    reference = {"dataset": "fashion-mnist", "partition": "dirichlet"}
    # Long curves: flexmoe rises by 0.01 per round from `start`, greedy by 0.01 from 0.5, so the
    # paired gap is start - 0.5 in every round; seed 2 continues its main run, seed 1 does not.
    for method, seed, start in [("flexmoe", 1, 0.6), ("flexmoe", 2, 0.7), ("greedy", 1, 0.5), ("greedy", 2, 0.5)]:
        long = summary(f"convergence-{method}-s{seed}", "convergence", method, seed, 0.0, {})
        long["run-config"] = {"num-server-rounds": 15, "assignment": method, "seed": seed}
        long["curves"]["accuracy"] = [start + 0.01 * r for r in range(15)]
        long["summary"]["accuracy"] = long["curves"]["accuracy"][-1]
        main_accuracy = start + 0.04 if seed == 2 else 0.1
        cell = f"main-{method}-fashion-mnist-dirichlet-s{seed}"
        runs += [long, summary(cell, "main", method, seed, main_accuracy, reference)]
    text = report_from(tmp_path, study, runs)
    assert "## Convergence check (fashion-mnist, Dirichlet(0.8), 15 rounds)" in text
    assert "2 of 4 runs reproduce their main-grid twin's final accuracy exactly at round 5 (the two were made" in text
    header = next(line for line in text.splitlines() if line.startswith("| method | accuracy at round 5"))
    assert "accuracy at round 10 | accuracy at round 15 | change, last 10 rounds" in header
    flex = next(line for line in text.splitlines() if line.startswith("| flexmoe | 0.6"))
    # round 5: (0.64 + 0.74) / 2 = 0.69, std 0.0707; round 15: 0.79; change over 10 rounds: 0.10.
    assert "0.6900 ± 0.0707" in flex and "0.7900 ± 0.0707" in flex and "0.1000 ± 0.0000" in flex
    gap = next(line for line in text.splitlines() if line.startswith("| flexmoe − greedy (paired"))
    # gaps 0.1 and 0.2 at every checkpoint: t = 3 on 1 df, p = 0.205, Holm over 3 checkpoints -> 0.614
    assert gap.count("+0.1500 [-0.4853, +0.7853] (n=2), p 0.614 **no detectable difference**") == 3
    assert (
        "the paired gap FLEX-MoE − greedy is +0.1500 [-0.4853, +0.7853] (n=2), paired t p = 0.205 (Holm 0.614)" in text
    )
    assert (tmp_path / "docs" / "figures" / "convergence.png").stat().st_size > 1000
    duel = next(line for line in text.splitlines() if line.startswith("| 60 rounds (convergence check)"))
    assert "0.7900 ± 0.0707 | 0.6400 ± 0.0000 | +0.1500 [-0.4853, +0.7853] (n=2) |" in duel  # final = round 15


def test_head_to_head_calls_a_consistent_deficit_worse(tmp_path):
    study = (
        '[study]\nseeds = [1, 2, 3]\n[base]\nnum-server-rounds = 5\n[[group]]\nname = "capacity-k4"\n'
        'methods = ["flexmoe", "greedy"]\nset = { capacity = 4 }\n'
    )
    runs = []
    # flexmoe - greedy per seed: -0.020, -0.021, -0.019 -> mean -0.02, std 0.001, t = -34.6 on 2 df,
    # p = 0.0008 -> worse.
    for method, seed, acc in [
        ("flexmoe", 1, 0.780), ("flexmoe", 2, 0.779), ("flexmoe", 3, 0.791),
        ("greedy", 1, 0.80), ("greedy", 2, 0.80), ("greedy", 3, 0.81),
    ]:  # fmt: skip
        run = summary(f"capacity-k4-{method}-s{seed}", "capacity-k4", method, seed, acc, {})
        run["run-config"] = {"num-server-rounds": 5, "capacity": 4, "assignment": method, "seed": seed}
        runs.append(run)
    text = report_from(tmp_path, study, runs)
    row = next(line for line in text.splitlines() if line.startswith("| k = 4 (capacity)"))
    assert "-0.0200 [-0.0225, -0.0175] (n=3) | < 0.001 | 0.250 |" in row and row.endswith("| **worse** |")
    assert "FLEX-MoE is **worse** on k = 4 (capacity) (-0.0200 [-0.0225, -0.0175] (n=3))." in text


def test_last_rounds_mean_skips_missing_rounds():
    assert last_rounds_mean([0.1, 0.2, 0.3, 0.4], 2) == pytest.approx(0.35)
    assert last_rounds_mean([0.1, None, 0.5], 2) == pytest.approx(0.5)
    assert math.isnan(last_rounds_mean([None, None], 2))


def test_partial_reading_tests_each_deficit_weight_against_weight_0(tmp_path):
    study = (
        '[study]\nseeds = [1, 2]\n[base]\nnum-server-rounds = 5\n[[group]]\nname = "partial-deficit"\n'
        'methods = ["flexmoe"]\nvary = { deficit-weight = [0.0, 0.1] }\n'
    )
    runs = []
    # Curves accuracy * r / 5 for r = 1..5: last-5 mean = 0.6 * accuracy.
    for weight, seed, acc, cumulative in [
        (0.0, 1, 0.8, 0.06),
        (0.0, 2, 0.6, 0.08),
        (0.1, 1, 0.7, 0.0),
        (0.1, 2, 0.7, 0.0),
    ]:
        run = summary(f"partial-deficit-flexmoe-{weight}-s{seed}", "partial-deficit", "flexmoe", seed, acc, {})
        run["varied"] = {"deficit-weight": weight}
        run["run-config"] = {"num-server-rounds": 5, "deficit-weight": weight, "assignment": "flexmoe", "seed": seed}
        run["summary"]["cumulative-load-cv"] = cumulative
        runs.append(run)
    text = report_from(tmp_path, study, runs)
    # weight 0: last-5 means 0.48, 0.36 -> 0.42 ± 0.0849; weight 0.1: 0.42, 0.42 -> paired gaps -0.06, +0.06.
    assert (
        "deficit weight 0 / 0.1 gives a cumulative load CV of 0.070 / 0.000 and a cohort accuracy "
        "(mean of the last 5 rounds) of 0.4200 ± 0.0849 / 0.4200 ± 0.0000" in text
    )
    assert (
        "against deficit weight 0 (paired by seed, Holm-corrected paired t-test): 0.1: -0.0000 [-0.7624, +0.7624] (n=2)"
        in text
    )
    assert (
        "paired t p = 1.000 (Holm 1.000), Wilcoxon p = 1.000, MDE " in text and "**no detectable difference**." in text
    )
