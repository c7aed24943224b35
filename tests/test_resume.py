"""Checkpoint and resume: an interrupted run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flexmoe_core.config import Settings
from flexmoe_core.results import load_checkpoint
from server_app.app import FederatedRun
from tests.in_process import federation, run_config

pytestmark = pytest.mark.usefixtures("flower_identity")

# Timing, and the describe messages that restarted nodes exchange again after the resume.
TIMING = ("round-seconds", "server-seconds", "solve-seconds", "discovery-seconds", "bytes-discovery")


def comparable(rounds):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rounds]


def run(tmp_path, name, rounds, *, resume=False, first_node_id=1000):
    # fraction-train 0.75 makes sampling depend on the RNG, which the checkpoint must restore.
    config = run_config(
        num_server_rounds=rounds,
        results_dir=str(tmp_path / name),
        resume=resume,
        client_state_dir=str(tmp_path / name / "client-state"),
        fraction_train=0.75,
        assignment="flexmoe",
    )
    FederatedRun(Settings.from_run_config(config), federation(config, 4, first_node_id)).execute()
    return tmp_path / name


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run(tmp_path, "full", 3)
    part = run(tmp_path, "resumed", 2)
    # "Restart": new node ids and empty node state, as after a crash; gates come back from client-state.
    run(tmp_path, "resumed", 3, resume=True, first_node_id=5000)
    full_rounds = json.loads((full / "metrics.json").read_text())
    resumed_rounds = json.loads((part / "metrics.json").read_text())
    assert [r["round"] for r in resumed_rounds] == [1, 2, 3]
    assert comparable(resumed_rounds) == comparable(full_rounds)
    arrays_full, state_full = load_checkpoint(full / "checkpoint.npz")
    arrays_resumed, state_resumed = load_checkpoint(part / "checkpoint.npz")
    assert state_resumed["server"]["fitness"] == state_full["server"]["fitness"]
    assert state_resumed["server"]["loads"] == state_full["server"]["loads"]
    assert state_resumed["server"]["round"] == state_full["server"]["round"] == 3
    for key, value in arrays_full.items():
        np.testing.assert_array_equal(arrays_resumed[key], value)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    config = run_config(results_dir=str(tmp_path / "none"), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        FederatedRun(Settings.from_run_config(config), federation(config, 2))


def test_resume_with_different_experts_is_refused(tmp_path):
    run(tmp_path, "r", 1)
    config = run_config(
        results_dir=str(tmp_path / "r"), resume=True, num_experts=8, num_server_rounds=2, fraction_train=0.75
    )
    with pytest.raises(ValueError, match="num-experts: checkpoint 4, now 8"):
        FederatedRun(Settings.from_run_config(config), federation(config, 2))
