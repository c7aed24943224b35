"""The poisoning section of docs/results.md (flexmoe_bench.report.attacks), on a hand-made attack table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from flexmoe_bench.report.attacks import (
    accuracy_table,
    attack_section,
    attacks,
    best_defences,
    clean_cost_tests,
    columns,
    drops,
    failing_attacks,
    load_scores,
)
from flexmoe_bench.report.stats import holm

# (attack, defence, min-holders) -> accuracy per seed 42, 43, 44
TABLE = {
    ("none", "none", 1): (0.62, 0.60, 0.61),
    ("none", "norm-clip", 1): (0.60, 0.59, 0.60),
    ("none", "median", 3): (0.55, 0.52, 0.56),
    ("sign-flip", "none", 1): (0.16, 0.20, 0.12),
    ("sign-flip", "norm-clip", 1): (0.30, 0.35, 0.28),
    ("sign-flip", "median", 3): (0.53, 0.50, 0.52),
    ("scale", "none", 1): (0.08, 0.10, 0.09),
    ("scale", "norm-clip", 1): (0.58, 0.57, 0.59),
}
SEEDS = (42, 43, 44)


def write_summary(folder: Path, legacy: bool = False) -> Path:
    rows = []
    for (attack, defence, holders), values in TABLE.items():
        for seed, accuracy in zip(SEEDS, values):
            row = {"attack": attack, "defence": defence, "min-holders": holders, "seed": seed, "accuracy": accuracy}
            if legacy and holders == 1 and seed == 42:  # written before the min-holders and seed axes
                del row["min-holders"], row["seed"]
            rows.append(row)
    path = folder / "summary.json"
    path.write_text(json.dumps(rows))
    return path


def test_rows_written_before_the_seed_and_holder_axes_count_as_seed_42_and_one_holder(tmp_path: Path):
    scores = load_scores(write_summary(tmp_path, legacy=True))
    assert scores[("sign-flip", "norm-clip", 1)] == {42: 0.30, 43: 0.35, 44: 0.28}
    assert load_scores(tmp_path / "absent.json") == {}


def test_columns_go_by_min_holders_then_by_defence_in_order_of_appearance():
    scores = {("none", "median", 3): {42: 0.5}, ("none", "none", 1): {42: 0.6}, ("none", "none", 3): {42: 0.5}}
    assert columns(scores) == [("none", 1), ("median", 3), ("none", 3)]
    scores[("scale", "none", 1)] = {42: 0.1}
    assert attacks(scores) == ["none", "scale"]


def test_the_table_gives_mean_and_std_over_seeds_with_the_best_defence_in_bold(tmp_path: Path):
    lines = accuracy_table(load_scores(write_summary(tmp_path))).splitlines()
    assert lines[0] == "| attack \\ defence | none, h = 1 | norm-clip, h = 1 | median, h = 3 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| none (clean)", "| sign-flip", "| scale"]
    # sign-flip: median h = 3 is best, mean (0.53 + 0.50 + 0.52) / 3, sample std 0.01528
    assert lines[3] == "| sign-flip | 0.160 ± 0.040 (3) | 0.310 ± 0.036 (3) | **0.517 ± 0.015 (3)** |"
    assert lines[4].endswith("| **0.580 ± 0.010 (3)** | — |")  # scale under median h = 3: not run


def test_clean_cost_is_each_defence_against_no_defence_paired_by_seed_with_holm(tmp_path: Path):
    scores = load_scores(write_summary(tmp_path))
    costs = clean_cost_tests(scores)
    assert [c for c, _ in costs] == [("norm-clip", 1), ("median", 3)]
    raw = [
        stats.ttest_rel(TABLE[("none", d, h)], TABLE[("none", "none", 1)]).pvalue
        for d, h in (("norm-clip", 1), ("median", 3))
    ]
    for (column, test), p in zip(costs, holm(raw)):
        own, reference = TABLE[("none", *column)], TABLE[("none", "none", 1)]
        assert test.mean == pytest.approx(sum(a - b for a, b in zip(own, reference)) / 3)
        assert test.holm_p == pytest.approx(p)
    assert costs[1][1].mean == pytest.approx(-0.0667, abs=1e-4)


def test_the_best_defence_is_held_to_five_points_of_its_own_clean_accuracy(tmp_path: Path):
    scores = load_scores(write_summary(tmp_path))
    tests = drops(scores)
    # median h = 3 under sign-flip: (0.53 - 0.55, 0.50 - 0.52, 0.52 - 0.56) -> mean -0.0267
    assert tests[("sign-flip", ("median", 3))].mean == pytest.approx(-0.08 / 3)
    assert ("scale", ("median", 3)) not in tests  # no attacked run: no drop
    rows = {row[0]: row for row in best_defences(scores, tests)}
    assert rows["sign-flip"][1:4] == ["median, h = 3", "0.517", "0.543"]
    # the interval of the drop reaches below -0.05 (3 seeds, spread 0.012): met by the mean only
    assert rows["sign-flip"][-1] == "yes"
    assert rows["scale"][1] == "norm-clip, h = 1" and rows["scale"][-1] == "yes, interval too"
    assert failing_attacks(best_defences(scores, tests)) == []


def test_an_attack_no_defence_holds_is_named_in_the_section(tmp_path: Path):
    without_median = {cell: values for cell, values in TABLE.items() if cell != ("sign-flip", "median", 3)}
    path = tmp_path / "summary.json"
    path.write_text(
        json.dumps(
            [
                {"attack": a, "defence": d, "min-holders": h, "seed": s, "accuracy": v}
                for (a, d, h), values in without_median.items()
                for s, v in zip(SEEDS, values)
            ]
        )
    )
    scores = load_scores(path)
    assert failing_attacks(best_defences(scores, drops(scores))) == ["sign-flip"]
    text = "\n".join(attack_section(path, lambda p: p.name, lambda p: p, tmp_path / "figures"))
    assert "Attacks whose best defence here still falls more than 0.05 below its clean accuracy: sign-flip." in text
    assert "| sign-flip | norm-clip, h = 1 | 0.310 | 0.597 |" in text
    assert (tmp_path / "figures" / "attacks.png").is_file()
    assert attack_section(tmp_path / "absent.json", str, lambda p: p) == []


def test_honest_accuracy_and_screened_updates_are_read_from_the_rows_that_have_them(tmp_path: Path):
    # Three runs of norm-screen (clean and sign-flip) carry accuracy-honest and screened; the older
    # rows do not, so they are in the all-clients table only.
    path = write_summary(tmp_path)
    rows = json.loads(path.read_text())
    honest = {"none": (0.64, 0.62, 0.63), "sign-flip": (0.61, 0.60, 0.62)}
    everyone = {"none": (0.62, 0.60, 0.61), "sign-flip": (0.53, 0.52, 0.54)}
    for attack in honest:
        for seed, h, a in zip(SEEDS, honest[attack], everyone[attack]):
            screened = 0 if attack == "none" else 16
            rows.append(
                {"attack": attack, "defence": "norm-screen", "min-holders": 1, "seed": seed, "accuracy": a}
                | {"accuracy-honest": h, "screened": screened}
            )
    rows[-1]["screened"] = 15  # one round in which the screen missed one attacker
    path.write_text(json.dumps(rows))
    scores = load_scores(path, "accuracy-honest")
    assert set(scores) == {("none", "norm-screen", 1), ("sign-flip", "norm-screen", 1)}
    best = {row[0]: row for row in best_defences(scores, drops(scores))}
    # honest clients: (0.61 - 0.64, 0.60 - 0.62, 0.62 - 0.63) -> mean -0.02, within the 5 points
    assert best["sign-flip"][1:4] == ["norm-screen, h = 1", "0.610", "0.630"]
    assert drops(scores)[("sign-flip", ("norm-screen", 1))].mean == pytest.approx(-0.02)
    text = "\n".join(attack_section(path, lambda p: p.name, lambda p: p))
    assert "Every attack's best defence here stays within the target (honest clients' accuracy)." in text
    assert "| none (clean) | 0.0 (3) |" in text and "| sign-flip | 15.7 (3) |" in text
    # all clients: norm-screen's sign-flip drop is (0.53 - 0.62, ...) = -0.07, best of the all-clients table
    assert "below its clean accuracy: sign-flip." in text


def test_the_adaptive_attackers_runs_get_their_own_part_when_present(tmp_path: Path):
    path = write_summary(tmp_path)
    assert "### An attacker who knows the screen" not in "\n".join(attack_section(path, str, lambda p: p))
    (tmp_path / "adaptive").mkdir()
    rows = [
        {"attack": a, "defence": "norm-screen+norm-clip", "min-holders": 1, "seed": s, "accuracy": v}
        | {"accuracy-honest": v + 0.01, "screened": 0}
        for a, values in (("none", (0.62, 0.61, 0.60)), ("sign-flip", (0.45, 0.50, 0.40)))
        for s, v in zip(SEEDS, values)
    ]
    (tmp_path / "adaptive" / "summary.json").write_text(json.dumps(rows))
    text = "\n".join(attack_section(path, str, lambda p: p))
    assert "### An attacker who knows the screen" in text and "`attack-scale` 2 (below the screen's 3)" in text
    # honest drop (0.46 - 0.63, 0.51 - 0.62, 0.41 - 0.61) / 3 = -0.16: the target is missed there
    assert "below its clean honest clients' accuracy: sign-flip." in text
    assert "| sign-flip | 0.0 (3) |" in text
