"""The sweep runner's grid, resume, retry and summaries (fake runs; the real ones are the study)."""

from __future__ import annotations

import json

import pytest
import tomllib

from flexmoe_bench.launcher import RunOutcome
from flexmoe_bench.study import expand, holding_counts, select
from flexmoe_bench.sweep import APP_DIR, main, run_cells, validate

STUDY = """
[study]
seeds = [1, 2]
[base]
num-server-rounds = 3
[[group]]
name = "main"
methods = ["flexmoe", "greedy"]
vary = { dataset = ["fashion-mnist", "mnist"], partition = ["iid"] }
[[group]]
name = "k1"
methods = ["flexmoe"]
seeds = [7]
num-supernodes = 4
set = { capacity = 1, top-r = 1 }
"""


def test_grid_is_the_cartesian_product_with_ids_that_name_every_choice():
    cells = expand(tomllib.loads(STUDY))
    assert [c.id for c in cells] == [
        "main-flexmoe-fashion-mnist-iid-s1",
        "main-flexmoe-fashion-mnist-iid-s2",
        "main-greedy-fashion-mnist-iid-s1",
        "main-greedy-fashion-mnist-iid-s2",
        "main-flexmoe-mnist-iid-s1",
        "main-flexmoe-mnist-iid-s2",
        "main-greedy-mnist-iid-s1",
        "main-greedy-mnist-iid-s2",
        "k1-flexmoe-s7",
    ]
    k1 = cells[-1]
    assert k1.overrides == {"num-server-rounds": 3, "capacity": 1, "top-r": 1, "assignment": "flexmoe", "seed": 7}
    assert k1.num_supernodes == 4 and cells[0].num_supernodes == 10
    assert cells[4].overrides["dataset"] == "mnist" and cells[4].overrides["assignment"] == "flexmoe"


def test_committed_study_has_the_grid_the_report_expects():
    cells = expand(tomllib.loads((APP_DIR / "conf" / "study.toml").read_text()))
    main_cells = [c for c in cells if c.group == "main"]
    assert len(main_cells) == 2 * 3 * 5 * 3
    assert {c.method for c in main_cells} == {"flexmoe", "greedy", "random", "static", "dense"}
    validate(cells, APP_DIR / "results" / "study")  # every cell's settings are valid


def test_bad_settings_and_unknown_methods_stop_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="methods must be some of"):
        expand(tomllib.loads('[[group]]\nname = "x"\nmethods = ["best"]\n'))
    cells = expand(tomllib.loads('[[group]]\nname = "x"\nmethods = ["flexmoe"]\nset = { capacity = 0 }\n'))
    with pytest.raises(SystemExit, match="(?s)x-flexmoe-s42: .*capacity must be"):
        validate(cells, tmp_path)


def test_only_keeps_the_order_of_the_patterns():
    cells = expand(tomllib.loads(STUDY))
    assert [c.id for c in select(cells, ["k1", "main-greedy-*-s2"])] == [
        "k1-flexmoe-s7",
        "main-greedy-fashion-mnist-iid-s2",
        "main-greedy-mnist-iid-s2",
    ]
    with pytest.raises(SystemExit, match="matches no cell"):
        select(cells, ["nothing-*"])


def outcome(ok: bool) -> RunOutcome:
    return RunOutcome(1, "finished:completed" if ok else "finished:failed", 2.0, "log line\n")


def test_a_failed_run_is_retried_once_then_reported_never_dropped(capsys):
    cells = expand(tomllib.loads(STUDY))[:3]
    script = {cells[0].id: [False, True], cells[1].id: [False, False], cells[2].id: [True]}
    calls, saved = [], []

    def run(cell):
        calls.append(cell.id)
        return outcome(script[cell.id].pop(0))

    failed = run_cells(cells, run, lambda cell, _: saved.append(cell.id))
    assert calls == [cells[0].id, cells[0].id, cells[1].id, cells[1].id, cells[2].id]
    assert saved == [cells[0].id, cells[2].id]
    assert failed == [cells[1].id]
    out = capsys.readouterr().out
    assert "[1/3 done, 2 left]" in out and "[3/3 done, 0 left]" in out and "FAILED" in out and "ETA" in out


def test_eta_is_mean_time_per_run_times_runs_left(capsys):
    cells = expand(tomllib.loads(STUDY))[:3]
    ticks = iter([0.0, 60.0, 120.0, 180.0])
    run_cells(cells, lambda c: outcome(True), lambda c, o: None, clock=lambda: next(ticks))
    lines = [line for line in capsys.readouterr().out.splitlines() if "done," in line]
    assert "ETA 0h02m00s" in lines[0] and "ETA 0h01m00s" in lines[1] and "ETA 0h00m00s" in lines[2]


def test_summarised_cells_are_skipped_so_a_sweep_resumes(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    summaries = tmp_path / "runs"
    summaries.mkdir()
    cells = expand(tomllib.loads(STUDY))
    for cell in cells:
        (summaries / f"{cell.id}.json").write_text(json.dumps({"run-config": cell.overrides}))
    assert main(["--study", str(study), "--summaries", str(summaries), "--results", str(tmp_path / "r")]) == 0
    assert "9 cells, 9 already summarised" in capsys.readouterr().out
    (summaries / f"{cells[0].id}.json").unlink()
    assert main(["--study", str(study), "--summaries", str(summaries), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == f"todo  {cells[0].id}" and all(line.startswith("done") for line in listing[1:])
    # A summary of another run config (the study file changed since) is stale, not done.
    (summaries / f"{cells[1].id}.json").write_text(json.dumps({"run-config": {**cells[1].overrides, "lr": 9.0}}))
    assert main(["--study", str(study), "--summaries", str(summaries), "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"stale {cells[1].id}"


def test_holding_counts_count_rounds_per_client_and_expert():
    records = [{"clients": ["b", "a"], "held": [[0, 1], [2, 3]]}, {"clients": ["a"], "held": [[0, 3]]}]
    assert holding_counts(records, 4) == {"a": [1, 0, 1, 2], "b": [1, 1, 0, 0]}
    assert json.dumps(holding_counts([], 4)) == "{}"
