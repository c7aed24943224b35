"""The sweep runner's grid, resume, retry and summaries (fake runs; the real ones are the study)."""

from __future__ import annotations

import json

import pytest
import tomllib

from flexmoe_bench.launcher import RunOutcome
from flexmoe_bench.study import app_defaults, expand, holding_counts, same_training, select, twin_summary
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


def test_a_group_with_same_runs_as_skips_cells_another_study_ran_with_the_same_training(tmp_path, capsys):
    other = tmp_path / "regimes"
    other.mkdir()
    study = tmp_path / "study.toml"
    twins = f'name = "k1"\nsame-runs-as = {{ summaries = "{other}", group = "base" }}'
    # adapt-steps in k1's `set` changes evaluation only, so not the training
    study.write_text(STUDY.replace('name = "k1"', twins).replace("top-r = 1 }", "top-r = 1, adapt-steps = 5 }"))
    (k1,) = [c for c in expand(tomllib.loads(study.read_text())) if c.group == "k1"]
    assert k1.twin == other / "base-flexmoe-s7.json" and k1.overrides["adapt-steps"] == 5
    summaries = tmp_path / "runs"
    summaries.mkdir()
    for cell in expand(tomllib.loads(study.read_text())):
        if cell.group != "k1":
            (summaries / f"{cell.id}.json").write_text(json.dumps({"run-config": cell.overrides}))

    def listing() -> str:
        assert main(["--study", str(study), "--summaries", str(summaries), "--list"]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    assert listing() == "todo  k1-flexmoe-s7"  # no twin yet
    training = {k: v for k, v in k1.overrides.items() if k != "adapt-steps"}
    (other / "base-flexmoe-s7.json").write_text(json.dumps({"group": "base", "run-config": {**training, "lr": 0.5}}))
    assert listing() == "todo  k1-flexmoe-s7"  # a twin that trained otherwise is not the same run
    (other / "base-flexmoe-s7.json").write_text(json.dumps({"group": "base", "run-config": training}))
    assert listing() == "same  k1-flexmoe-s7"
    assert main(["--study", str(study), "--summaries", str(summaries), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "9 cells, 8 already summarised in" in out and "and 1 by another study (same-runs-as), 0 to run" in out


def test_a_setting_one_run_config_leaves_out_counts_as_its_default():
    twin = {"lr": 0.05, "seed": 1}  # written by a study whose base never named fraction-train
    assert same_training(twin, {"lr": 0.05, "seed": 1, "fraction-train": 1.0}, {"fraction-train": 1.0})
    assert not same_training(twin, {"lr": 0.05, "seed": 1, "fraction-train": 0.2}, {"fraction-train": 1.0})
    assert not same_training(twin, {"lr": 0.05, "seed": 1, "fraction-train": 1.0})  # no default known
    assert same_training(twin, {**twin, "adapt-steps": 5}, {"adapt-steps": 0})  # evaluation only
    assert app_defaults()["fraction-train"] == 1.0 and app_defaults()["eval-cohort"] == 0


def test_same_runs_as_must_name_a_folder_and_a_group():
    bad = STUDY.replace('name = "k1"', 'name = "k1"\nsame-runs-as = "docs/regimes/runs"')
    with pytest.raises(SystemExit, match="group 'k1' same-runs-as must be"):
        expand(tomllib.loads(bad))


def test_holding_counts_count_rounds_per_client_and_expert():
    records = [{"clients": ["b", "a"], "held": [[0, 1], [2, 3]]}, {"clients": ["a"], "held": [[0, 3]]}]
    assert holding_counts(records, 4) == {"a": [1, 0, 1, 2], "b": [1, 1, 0, 0]}
    assert json.dumps(holding_counts([], 4)) == "{}"


# ------------------------------------------------------------------ platform and --verify

PLATFORM = {"cpu": "Test CPU", "cores": 2, "torch-threads": 1, "torch": "1", "numpy": "2", "flwr": "1", "cvxpy": "1"}


def test_the_platform_names_cpu_cores_threads_and_versions(tmp_path):
    from flexmoe_bench import machine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n")
    assert machine.cpu_model(cpuinfo) == "Example CPU @ 2.0GHz"
    info = machine.describe(client_cpus=1)
    assert set(info) == {
        "cpu",
        "cpu-id",
        "cpu-capability",
        "cores",
        "torch-threads",
        "torch",
        "numpy",
        "flwr",
        "cvxpy",
        "client-cpus",
    }
    assert machine.columns({"cpu": "x"}) == {"platform-cpu": "x"}


def test_the_cpu_id_tells_apart_cpus_that_share_a_model_name(tmp_path):
    """Two VMs both say "AMD EPYC"; family / model / stepping of the first processor differ."""
    from flexmoe_bench import machine

    block = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {f}\n"
        "model\t\t: {m}\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
    )
    zen5, zen4 = tmp_path / "zen5", tmp_path / "zen4"
    zen5.write_text(block.format(n=0, f=26, m=2) + "\n" + block.format(n=1, f=99, m=9))
    zen4.write_text(block.format(n=0, f=25, m=17))
    assert machine.cpu_model(zen5) == machine.cpu_model(zen4) == "AMD EPYC"
    assert machine.cpu_id(zen5) == "AuthenticAMD family 26 model 2 stepping 1"
    assert machine.cpu_id(zen4) == "AuthenticAMD family 25 model 17 stepping 1"
    assert machine.cpu_id(tmp_path / "absent") == "unknown"


def test_a_platform_matches_only_on_every_fact_it_records():
    from flexmoe_bench import machine

    now = {**PLATFORM, "cpu-id": "family 26", "cpu-capability": "AVX512"}
    assert machine.match(dict(now), now) == "same platform"
    assert machine.match(None, now) == "unknown platform"
    assert machine.match(PLATFORM, now) == "unknown platform"  # recorded before cpu-id existed
    assert machine.match({**PLATFORM, "torch": "0"}, now) == "other platform"
    assert machine.match({**now, "cpu-capability": "AVX2"}, now) == "other platform"


def fake_rerun(curve_for):
    """A run that writes only the metrics.json the comparison reads, with the given accuracy curve."""

    def run(cell, results_dir):
        results_dir.mkdir(parents=True)
        rows = [{"accuracy": a, "load-cv": 0.2, "round-seconds": 9.9} for a in curve_for(cell)]
        (results_dir / "metrics.json").write_text(json.dumps(rows))
        return outcome(True)

    return run


def test_verify_reruns_seeded_cells_elsewhere_and_compares_their_curves(tmp_path):
    from flexmoe_bench.sweep import pick_for_verify, verify

    cells = expand(tomllib.loads(STUDY))
    summaries = tmp_path / "runs"
    summaries.mkdir()
    committed = {
        "main-flexmoe-fashion-mnist-iid-s1": None,  # no platform recorded
        "main-flexmoe-fashion-mnist-iid-s2": PLATFORM,  # this platform
        "main-greedy-fashion-mnist-iid-s1": {**PLATFORM, "cpu": "Other CPU"},  # another one
    }
    for cell in cells:
        if cell.id in committed:
            summary = {
                "run-config": cell.overrides,
                "curves": {"accuracy": [0.5, 0.6], "load-cv": [0.2, 0.2], "round-seconds": [3.0, 3.0]},
            }
            if committed[cell.id] is not None:
                summary["platform"] = committed[cell.id]
            (summaries / f"{cell.id}.json").write_text(json.dumps(summary))
    before = {p.name: p.read_text() for p in summaries.iterdir()}

    chosen = pick_for_verify(cells, summaries, 3, seed=4)
    assert sorted(c.id for c in chosen) == sorted(committed)  # only summarised cells are drawn ...
    assert [c.id for c in pick_for_verify(cells, summaries, 2, seed=4)] == [c.id for c in chosen[:2]]  # seeded
    with pytest.raises(SystemExit, match="only 3"):
        pick_for_verify(cells, summaries, 4, seed=0)

    drift = {"main-flexmoe-fashion-mnist-iid-s2": [0.5, 0.625]}  # same platform, one round differs
    run = fake_rerun(lambda cell: drift.get(cell.id, [0.5, 0.6]))
    report_path = tmp_path / "verify.json"
    report = verify(chosen, summaries, run, report_path, PLATFORM)
    by_cell = {e["cell"]: e for e in report["cells"]}
    unknown = by_cell["main-flexmoe-fashion-mnist-iid-s1"]
    assert unknown["platform"] == "unknown platform" and unknown["equal"] is True
    assert unknown["compared"] == ["accuracy", "load-cv"]  # timing curves are never compared
    same = by_cell["main-flexmoe-fashion-mnist-iid-s2"]
    assert same["platform"] == "same platform" and same["equal"] is False and same["unequal"] == ["accuracy"]
    assert same["max-abs-difference"]["accuracy"] == pytest.approx(0.025)
    other = by_cell["main-greedy-fashion-mnist-iid-s1"]
    assert other["platform"] == "other platform" and other["equal"] is None
    assert other["max-abs-difference"] == {"accuracy": 0.0, "load-cv": 0.0}
    assert json.loads(report_path.read_text()) == report
    assert {p.name: p.read_text() for p in summaries.iterdir()} == before  # committed summaries untouched


def test_committed_regime_grid_runs_the_balancing_baselines_in_every_regime():
    cells = expand(tomllib.loads((APP_DIR / "conf" / "regimes.toml").read_text()))
    validate(cells, APP_DIR / "results" / "regimes")  # every cell's settings are valid
    groups = {c.group for c in cells}
    for group in groups - {"base-no-history", "base-fitness-0"}:
        methods = {c.method for c in cells if c.group == group}
        assert {"flexmoe", "greedy", "bias-greedy", "sinkhorn", "dense"} <= methods, group
    assert {c.method for c in cells if c.group == "base"} >= {"random", "static", "local"}
    # the local reference sits where label skew makes it informative, and nowhere else
    assert {c.group for c in cells if c.method == "local"} == {"base", "alpha", "classes-2"}
    assert all(c.overrides["fraction-train"] * c.num_supernodes == 10 for c in cells)  # 10 per round
    assert all(c.overrides["num-server-rounds"] == 40 for c in cells)  # the base that converges
    # 5 seeds x (8 base + 1 no-history + 2 fitness-0 + 2x5 experts + 5 + 5 clients + 2x6 alpha + 6 classes + 5)
    assert len(cells) == 270 and {c.seed for c in cells} == {1, 2, 3, 4, 5}


def test_committed_remedy_grid_changes_one_setting_per_remedy_in_each_cell():
    cells = expand(tomllib.loads((APP_DIR / "conf" / "remedies.toml").read_text()))
    validate(cells, APP_DIR / "results" / "remedies")  # every cell's settings are valid
    remedy_keys = {
        "hidden": {"expert-kind"},
        "server-step": {"expert-server-lr", "expert-server-momentum", "expert-step-scale"},
        "prox": {"prox-mu"},
        "logit-adjust": {"logit-adjust"},
        "fitness-0": {"initial-fitness"},
        "fitness-0+hidden": {"initial-fitness", "expert-kind"},  # the two best single remedies together
        "tune": {"adapt-steps", "adapt-lr", "adapt-rounds"},  # fine-tuning before the last test only
        "logit-adjust+prior": {"logit-adjust", "logit-adjust-predict"},  # same training, prior put back
        "fitness-0+logit-adjust+prior": {"initial-fitness", "logit-adjust", "logit-adjust-predict"},
        "fitness-0+tune": {"initial-fitness", "adapt-steps", "adapt-lr", "adapt-rounds"},
    }
    faithful = {
        (c.group.removeprefix("faithful-"), c.method, c.seed): c for c in cells if c.group.startswith("faithful-")
    }
    assert {m for (_, m, _) in faithful} == {"flexmoe", "greedy", "bias-greedy", "dense", "local"}
    for cell in cells:
        remedy, _, kind = cell.group.rpartition("-")
        if remedy == "faithful":
            continue
        twin = faithful[(kind, cell.method, cell.seed)]
        changed = {
            k for k in cell.overrides.keys() | twin.overrides.keys() if cell.overrides.get(k) != twin.overrides.get(k)
        }
        assert changed == remedy_keys[remedy], cell.id
        assert cell.num_supernodes == twin.num_supernodes
    assert {c.num_supernodes for c in cells if c.group.endswith("-c200")} == {200}
    sound = next(c for c in cells if c.group == "faithful-sb")
    assert sound.overrides["num-server-rounds"] == 40 and sound.overrides["dirichlet-alpha"] == 0.3
    assert {c.group for c in cells if "+" in c.group} == {
        "fitness-0+hidden-c50",
        "fitness-0+tune-c50",
        "logit-adjust+prior-c50",
        "fitness-0+logit-adjust+prior-c50",
        "fitness-0+logit-adjust+prior-sb",
        *(f"fitness-0+logit-adjust+prior-main_{p}" for p in ("dirichlet", "iid", "classes")),
    }
    # the sound base's faithful and fitness-0 rules are the regime grid's runs of the same training
    for cell in cells:
        if cell.group in ("faithful-sb", "fitness-0-sb"):
            assert cell.twin is not None and cell.twin.parent == APP_DIR / "docs" / "regimes" / "runs", cell.id
    assert twin_summary(next(c for c in cells if c.id == "faithful-sb-dense-s1")) is not None
    # the main grid's fashion-mnist cells: its own runs (ten clients), read under the main grid's cell ids
    main_grid = [c for c in cells if c.group.startswith("faithful-main_")]
    assert {c.num_supernodes for c in main_grid} == {10} and {c.seed for c in main_grid} == {1, 2, 3}
    assert all(c.twin is not None and twin_summary(c) is not None for c in main_grid)
    assert len(cells) == 431 and {c.seed for c in cells} == {1, 2, 3, 4, 5}
