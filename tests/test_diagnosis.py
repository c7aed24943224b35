"""The diagnosis tool (flexmoe_bench.diagnosis) end to end on a tiny cell: its numbers agree with the
run they diagnose."""

from __future__ import annotations

import json

import pytest

from flexmoe_bench import diagnosis


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnosis")
    config = out / "cell.toml"
    config.write_text(
        "num-server-rounds = 2\nnum-experts = 4\ncapacity = 2\nmax-samples-per-client = 40\n"
        "batch-size = 16\nmin-train-nodes = 2\nnode-wait-timeout = 5.0\nexpert-hidden = 16\n"
        "partition = 'dirichlet'\ndirichlet-alpha = 0.1\n\n[diagnosis]\nnum-clients = 3\n"
    )
    code = diagnosis.main(
        ["--config", str(config), "--seed", "1", "--out", str(out), "--probe-per-class", "5", "--no-dense"]
    )
    assert code == 0
    return out, json.loads((out / "diagnosis.json").read_text())


def test_outputs_are_written(report):
    out, data = report
    for name in ("experts.csv", "clients.csv", "forgetting.png", "class-drop.png", "clients.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert data["probe"]["size"] == 50 and data["num-clients"] == 3


def test_expert_rows_follow_the_run(report):
    out, data = report
    rounds = json.loads((out / "run" / "metrics.json").read_text())
    history = json.loads((out / "run" / "assignments.json").read_text())
    rows = data["experts"]
    assert len(rows) == 2 * 4
    for record in history:
        t = record["round"]
        for row in (r for r in rows if r["round"] == t):
            e = row["expert"]
            held = dict(zip(record["clients"], record["held"]))
            assert row["holders"] == sum(e in held[c] for c in record["completed"])
            assert row["samples"] == rounds[t - 1]["routed-load"][e]
            assert row["forgetting"] == pytest.approx(row["probe-before"] - row["probe-after"])
    for e in range(4):  # after round 1 is before round 2
        first, second = [r for r in rows if r["expert"] == e]
        assert second["probe-before"] == first["probe-after"]


def test_client_rows_recompute_the_reported_accuracy_and_bound_it(report):
    _, data = report
    assert data["clients"], "no client was evaluated in the last round"
    for row in data["clients"]:
        assert row["accuracy-held"] == pytest.approx(row["accuracy-reported"], abs=1e-9)
        assert row["accuracy-best-k"] >= row["accuracy-held"]
        assert row["subsets"] == 6 and 1 <= row["held-rank"] <= 6


def test_a_bad_diagnosis_table_is_refused(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[diagnosis]\nnum-clients = 3\nnum-experts = 4\n")
    with pytest.raises(SystemExit, match="put it last"):
        diagnosis.main(["--config", str(config), "--out", str(tmp_path / "out")])
