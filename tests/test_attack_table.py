"""The attack x defence runner's grid and table (the runs themselves are in docs/attacks.md)."""

from __future__ import annotations

import pytest

from flexmoe_bench.attacks import cells, format_table, main


def test_cells_put_the_clean_run_first_for_every_defence():
    assert cells(["scale", "noise"], ["none", "median"]) == [
        ("none", "none"),
        ("none", "median"),
        ("scale", "none"),
        ("scale", "median"),
        ("noise", "none"),
        ("noise", "median"),
    ]


def test_table_has_one_row_per_attack_and_marks_missing_cells():
    rows = {"none/none": {"accuracy": 0.81234}, "none/median": {"accuracy": 0.8}, "scale/none": {"accuracy": 0.1}}
    lines = format_table(rows, ["scale"], ["none", "median"]).splitlines()
    assert lines[0].split() == ["attack", "\\", "defence", "none", "median"]
    assert lines[2].split() == ["none", "0.8123", "0.8000"]
    assert lines[3].split() == ["scale", "0.1000", "-"]


def test_unknown_attack_or_defence_is_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="unknown attack or defence"):
        main(["--attacks", "scale,bogus", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown attack or defence"):
        main(["--defences", "krum", "--out", str(tmp_path)])
