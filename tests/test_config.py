"""Settings validation, table-driven: every bad setting is named with what is allowed, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from flexmoe_core.config import NodeSettings, Settings, SettingsError

DEFAULTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
DEFAULTS = DEFAULTS["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_valid_and_round_trip():
    settings = Settings.from_run_config(DEFAULTS)
    assert settings.to_run_config() == DEFAULTS  # every pyproject key is a setting and vice versa


BAD = [
    ("num-server-rounds", 0, "num-server-rounds must be >= 1"),
    ("capacity", 9, "capacity must be 1 <= capacity <= num-experts"),
    ("capacity", 0, "capacity must be 1 <= capacity <= num-experts"),
    ("capacity", 2.5, "capacity must be of type int"),
    ("capacity-profile", "1,x", "capacity-profile must be comma-separated integers"),
    ("capacity-profile", "1,9", "capacity-profile must be every entry in 1..num-experts"),
    ("top-r", 0, "top-r must be 1 <= top-r <= num-experts"),
    ("model", "vit", "model must be one of cnn, resnet"),
    ("expert-hidden", 0, "expert-hidden must be >= 1"),
    ("local-epochs", 0, "local-epochs must be >= 1"),
    ("batch-size", -1, "batch-size must be >= 1"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("lr", float("nan"), "lr must be a finite number > 0"),
    ("lr", "fast", "lr must be of type float"),
    ("dataset", "imagenet", "dataset must be one of fashion-mnist"),
    ("max-samples-per-client", -1, "max-samples-per-client must be >= 0"),
    ("test-fraction", 1.0, "test-fraction must be in (0, 1)"),
    ("partition", "shards", "partition must be one of iid, dirichlet, classes"),
    ("dirichlet-alpha", 0.0, "dirichlet-alpha must be a finite number > 0"),
    ("classes-per-client", 11, "classes-per-client must be 1..10 (classes of fashion-mnist)"),
    ("assignment", "hungarian", "assignment must be one of flexmoe, greedy, random, static, dense"),
    ("solver", "gurobi", "solver must be one of auto, cvxpy, fast"),
    ("fitness", "reward", "fitness must be one of accuracy, loss"),
    ("ema-beta", 0.0, "ema-beta must be 0 < ema-beta <= 1"),
    ("ema-beta", 1.5, "ema-beta must be 0 < ema-beta <= 1"),
    ("loss-alpha", -1.0, "loss-alpha must be a finite number > 0"),
    ("initial-fitness", float("inf"), "initial-fitness must be a finite number"),
    ("load-slack", -0.1, "load-slack must be >= 0"),
    ("deficit-weight", -1.0, "deficit-weight must be >= 0"),
    ("fraction-train", 0.0, "fraction-train must be 0 < fraction-train <= 1"),
    ("min-train-nodes", 0, "min-train-nodes must be >= 1"),
    ("round-timeout", 0.0, "round-timeout must be a finite number > 0"),
    ("node-wait-timeout", -5.0, "node-wait-timeout must be a finite number > 0"),
    ("seed", -1, "seed must be >= 0"),
    ("results-dir", " ", "results-dir must be a non-empty path"),
    ("resume", "yes", "resume must be of type bool"),
    ("norm-screen", 1.0, "norm-screen must be 0 (off) or > 1"),
    ("norm-screen", -2.0, "norm-screen must be 0 (off) or > 1"),
    ("num-expert", 8, "unknown setting 'num-expert'"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_each_bad_setting_is_named(key, value, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_run_config({**DEFAULTS, key: value})
    assert message in str(info.value)
    assert len(info.value.problems) == 1, info.value.problems


def test_too_few_experts_also_flags_what_depends_on_it():
    with pytest.raises(SettingsError) as info:
        Settings.from_run_config({**DEFAULTS, "num-experts": 0})
    assert info.value.problems[0] == "num-experts must be >= 1, got 0"
    assert any(p.startswith("capacity must be") for p in info.value.problems)


def test_all_problems_are_reported_together():
    with pytest.raises(SettingsError) as info:
        Settings.from_run_config({**DEFAULTS, "capacity": 20, "partition": "x", "lr": -1.0})
    assert len(info.value.problems) == 3
    assert "invalid run config (3 problem(s))" in str(info.value)


def test_classes_per_client_is_checked_against_the_dataset():
    Settings.from_run_config({**DEFAULTS, "dataset": "gtsrb", "classes-per-client": 40})
    with pytest.raises(SettingsError, match="classes-per-client must be 1..10"):
        Settings.from_run_config({**DEFAULTS, "dataset": "mnist", "classes-per-client": 40})


def test_capacity_profile_is_cycled_over_partitions():
    settings = Settings.from_run_config({**DEFAULTS, "capacity-profile": "1,2,4"})
    assert [settings.capacity_for(p) for p in range(5)] == [1, 2, 4, 1, 2]
    assert Settings.from_run_config(DEFAULTS).capacity_for(3) == DEFAULTS["capacity"]


NODE_BAD = [
    ({"partition-id": 3, "num-partitions": 3}, "partition-id must be in 0..num-partitions-1"),
    ({"partition-id": -1, "num-partitions": 3}, "partition-id must be in 0..num-partitions-1"),
    ({"partition-id": 0, "num-partitions": 0}, "num-partitions must be >= 1"),
    ({"partition-id": "a", "num-partitions": 3}, "partition-id must be an integer"),
    ({"partition-id": 0, "num-partitions": 3, "capacity": 9}, "capacity must be in 1..num-experts (8)"),
]


@pytest.mark.parametrize(("node_config", "message"), NODE_BAD)
def test_bad_node_config_is_named(node_config, message):
    with pytest.raises(SettingsError, match="invalid node config") as info:
        NodeSettings.from_node_config(node_config, Settings.from_run_config(DEFAULTS), node_id=5)
    assert message in str(info.value)


def test_node_identity_and_capacity():
    settings = Settings.from_run_config({**DEFAULTS, "capacity-profile": "1,2,4"})
    node = NodeSettings.from_node_config({"partition-id": 2, "num-partitions": 3}, settings, node_id=99)
    assert (node.client_id, node.capacity) == ("partition-2", 4)
    node = NodeSettings.from_node_config(
        {"partition-id": "1", "num-partitions": "3", "capacity": 3, "client-id": "jetson-17"}, settings, node_id=99
    )
    assert (node.client_id, node.capacity, node.partition_id) == ("jetson-17", 3, 1)
    assert NodeSettings.from_node_config({}, settings, node_id=99).client_id == "node-99"
