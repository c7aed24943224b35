"""The attack x defence runner's grid and table (the runs themselves are in docs/attacks.md)."""

from __future__ import annotations

import json

import pytest

from flexmoe_bench.attacks import cells, format_table, load_rows, main


def test_cells_put_the_clean_run_first_for_every_defence_and_seed():
    assert cells(["scale"], ["none", "median"], [1, 3], [42]) == [
        ("none", "none", 1, 42),
        ("none", "median", 1, 42),
        ("none", "none", 3, 42),
        ("none", "median", 3, 42),
        ("scale", "none", 1, 42),
        ("scale", "median", 1, 42),
        ("scale", "none", 3, 42),
        ("scale", "median", 3, 42),
    ]
    assert [c[3] for c in cells([], ["none"], [1], [42, 43])] == [42, 43]


def test_table_gives_mean_and_std_over_seeds_and_marks_missing_cells():
    def row(attack, defence, holders, seed, accuracy):
        return {"attack": attack, "defence": defence, "min-holders": holders, "seed": seed, "accuracy": accuracy}

    runs = [row("none", "none", 1, 42, 0.8), row("none", "none", 1, 43, 0.6), row("scale", "none", 1, 42, 0.1)]
    rows = {str(i): r for i, r in enumerate(runs)}
    lines = format_table(rows, ["scale"], ["none", "median"], [1]).splitlines()
    assert lines[0].split() == ["attack", "\\", "defence", "none", "h=1", "median", "h=1"]
    assert lines[2].split() == ["none", "0.700+-0.141", "(2)", "-"]
    assert lines[3].split() == ["scale", "0.100+-0.000", "(1)", "-"]


def test_rows_from_before_the_seed_and_holder_axes_count_as_seed_42_min_holders_1(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps([{"attack": "none", "defence": "none", "accuracy": 0.6}]))
    assert list(load_rows(tmp_path / "summary.json")) == ["none/none/h1/s42"]


def test_unknown_attack_or_defence_is_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="unknown attack or defence"):
        main(["--attacks", "scale,bogus", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown attack or defence"):
        main(["--defences", "krum", "--out", str(tmp_path)])
