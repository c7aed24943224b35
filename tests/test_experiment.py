"""The method-comparison runner's arithmetic: expected bytes ratio, per-run summary, overrides."""

from __future__ import annotations

import json

import pytest

from flexmoe_bench.experiment import expected_bytes_ratio, format_table, load_overrides, summarise
from flexmoe_bench.study import app_defaults
from flexmoe_core.config import Settings
from flexmoe_core.model import MoEClassifier


def _settings(**overrides) -> Settings:
    return Settings.from_run_config({**app_defaults(), **overrides})


def _group_bytes(num_experts: int, expert_hidden: int) -> tuple[int, int]:
    """(|psi| bytes, |theta| bytes per expert) counted from the torch model itself."""
    model = MoEClassifier(
        num_experts=num_experts,
        held_experts=[0],
        num_classes=10,
        in_channels=1,
        image_size=28,
        expert_hidden=expert_hidden,
    )
    psi = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k.startswith("extractor."))
    theta = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k.startswith("experts.0."))
    return psi, theta


def test_expected_bytes_ratio_is_psi_plus_k_theta_over_dense():
    psi, theta = _group_bytes(8, 64)
    settings = _settings(**{"num-experts": 8, "capacity": 2, "expert-hidden": 64})
    assert expected_bytes_ratio(settings) == pytest.approx((psi + 2 * theta) / (psi + 8 * theta), rel=1e-12)


def test_expected_bytes_ratio_averages_a_heterogeneous_profile():
    psi, theta = _group_bytes(8, 64)
    settings = _settings(**{"num-experts": 8, "capacity": 2, "expert-hidden": 64, "capacity-profile": "1,4"})
    want = ((psi + theta) + (psi + 4 * theta)) / 2 / (psi + 8 * theta)
    assert expected_bytes_ratio(settings) == pytest.approx(want, rel=1e-12)


def test_expected_bytes_ratio_of_dense_is_one():
    assert expected_bytes_ratio(_settings(assignment="dense")) == 1.0


def test_summarise_takes_last_accuracy_and_round_means(tmp_path):
    config = {**app_defaults(), "expert-hidden": 32}
    (tmp_path / "config.json").write_text(json.dumps(config))
    rounds = [
        {
            "accuracy": 0.5,
            "accuracy-p10": 0.3,
            "load-cv": 0.4,
            "cumulative-load-cv": 0.2,
            "routed-load-cv": 1.0,
            "load-jain": 0.8,
            "bytes-down-per-client": 100.0,
            "bytes-up-per-client": 50.0,
            "bytes-total-per-client": 150.0,
            "bytes-total-vs-dense": 0.5,
            "server-seconds": 1.0,
            "round-seconds": 10.0,
        },
        {
            "accuracy": 0.7,
            "accuracy-p10": 0.6,
            "load-cv": 0.0,
            "cumulative-load-cv": 0.1,
            "routed-load-cv": 0.5,
            "load-jain": 1.0,
            "bytes-down-per-client": 300.0,
            "bytes-up-per-client": 150.0,
            "bytes-total-per-client": 450.0,
            "bytes-total-vs-dense": 0.7,
            "server-seconds": 2.0,
            "round-seconds": 20.0,
        },
    ]
    (tmp_path / "metrics.json").write_text(json.dumps(rounds))
    row = summarise("flexmoe", tmp_path, wall_seconds=42.0)
    assert row["accuracy"] == 0.7 and row["accuracy-p10"] == 0.6
    assert row["cumulative-load-cv"] == 0.1
    assert row["load-cv"] == pytest.approx(0.2)
    assert row["routed-load-cv"] == pytest.approx(0.75)
    assert row["load-jain"] == pytest.approx(0.9)
    assert row["bytes-down-per-client"] == pytest.approx(200.0)
    assert row["bytes-total-per-client"] == pytest.approx(300.0)
    assert row["bytes-total-vs-dense"] == pytest.approx(0.6)
    assert row["server-overhead"] == pytest.approx(3.0 / 30.0)
    assert row["rounds"] == 2 and row["wall-seconds"] == 42.0
    assert "flexmoe" in format_table([row]).splitlines()[2]


def test_overrides_merge_file_and_set_pairs(tmp_path):
    path = tmp_path / "conf.toml"
    path.write_text('num-server-rounds = 3\ndataset = "mnist"\n')
    overrides = load_overrides(path, ["num-server-rounds=7", 'partition = "iid"'])
    assert overrides == {"num-server-rounds": 7, "dataset": "mnist", "partition": "iid"}


def test_missing_config_file_names_the_option(tmp_path):
    with pytest.raises(SystemExit, match="--config: no such file"):
        load_overrides(tmp_path / "nope.toml", [])


def test_unknown_method_is_rejected_before_any_run():
    from flexmoe_bench.experiment import main

    with pytest.raises(SystemExit, match="--methods: unknown"):
        main(["--methods", "flexmoe,best"])


def test_summary_rows_say_where_they_ran(tmp_path):
    from flexmoe_bench.experiment import write_rows

    platform = {"cpu": "Example CPU", "cores": 2, "torch-threads": 1, "torch": "t", "numpy": "n", "flwr": "f"}
    write_rows(tmp_path, [{"method": "flexmoe", "accuracy": 0.5}], platform)
    row = json.loads((tmp_path / "summary.json").read_text())[0]
    assert row["platform-cpu"] == "Example CPU" and row["platform-cores"] == 2 and row["platform-flwr"] == "f"
    assert "platform-cpu" in (tmp_path / "summary.csv").read_text().splitlines()[0]
    # a row read back from an earlier write keeps where it ran when rows made elsewhere are added
    elsewhere = {**platform, "cpu": "Other CPU"}
    write_rows(tmp_path, [row, {"method": "greedy", "accuracy": 0.4}], elsewhere)
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["platform-cpu"] for r in rows] == ["Example CPU", "Other CPU"]
