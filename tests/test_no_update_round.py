"""A round in which no update is accepted still evaluates the global model it keeps, and says so."""

from __future__ import annotations

import json
import math

import pytest

from flexmoe_core.config import Settings
from server_app.app import FederatedRun
from tests.in_process import federation, run_config

pytestmark = pytest.mark.usefixtures("flower_identity")


def test_a_round_whose_every_reply_is_rejected_is_evaluated_and_marked(tmp_path, caplog):
    # Every client boosts its update by 1e300 (clipped to stay finite): round 1 is accepted and blows the
    # model up, so in round 2 every client's training ends in NaN, every reply is rejected as
    # non-finite, and the model round 1 left is kept. Its test loss overflows; its accuracy is reported.
    config = run_config(
        num_server_rounds=2,
        results_dir=str(tmp_path / "r"),
        attack="scale",
        attack_scale=1e300,
        attack_clients="partition-0,partition-1,partition-2",
    )
    caplog.set_level("INFO", logger="flexmoe")
    FederatedRun(Settings.from_run_config(config), federation(config, 3)).execute()
    first, second = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert first["num-completed"] == 3 and first["no-update-accepted"] == 0
    assert second["num-completed"] == 0 and second["num-rejected"] == 3 and second["no-update-accepted"] == 1
    for r in (first, second):
        assert r["num-evaluated"] == 3 and math.isfinite(r["accuracy"]) and 0.0 <= r["accuracy"] <= 1.0
    assert "no update accepted" in caplog.text and "NO UPDATE ACCEPTED" in caplog.text


def test_a_normal_round_says_updates_were_accepted(tmp_path):
    config = run_config(num_server_rounds=1, results_dir=str(tmp_path / "ok"))
    FederatedRun(Settings.from_run_config(config), federation(config, 2)).execute()
    (row,) = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert row["no-update-accepted"] == 0 and row["num-evaluated"] == row["num-completed"] == 2
