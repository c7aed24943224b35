"""A client that cannot start says why, once, at once: the server stops before round 1 with its error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexmoe_core.config import Settings
from server_app.app import FederatedRun
from tests.in_process import federation, run_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("flower_identity")
def test_missing_dataset_stops_the_run_at_once_with_the_clients_error(tmp_path, caplog):
    empty = tmp_path / "no-data"
    empty.mkdir()
    config = run_config(
        dataset="cifar10", data_dir=str(empty), results_dir=str(tmp_path / "r"), node_wait_timeout=120.0
    )
    caplog.set_level("INFO", logger="flexmoe")
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        FederatedRun(Settings.from_run_config(config), federation(config, 3)).execute()
    assert time.monotonic() - start < 30  # not node-wait-timeout = 120 s
    text = str(err.value)
    assert "3 client(s) reported a set-up error, leaving 0 usable client(s) of min-train-nodes=2" in text
    assert "3 client(s) (node 1000, 1001, 1002) could not start:" in text
    assert text.count("FileNotFoundError: dataset 'cifar10' not found. Looked in:") == 1  # once, not per node
    assert str(empty) in text  # the folders looked in
    assert "start more SuperNodes" not in text and "waiting for clients" not in caplog.text


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_experiment_command_with_a_missing_dataset_fails_fast_with_one_message(tmp_path):
    """The issue's command (`flexmoe_bench.experiment`, 3 simulated clients) through `flwr run`."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    command = [
        sys.executable,
        "-m",
        "flexmoe_bench.experiment",
        "--methods",
        "flexmoe",
        "--num-supernodes",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--set",
        "dataset='cifar10'",
        "--set",
        f"data-dir='{empty}'",
    ]
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    print(f"experiment with a missing dataset: exit {done.returncode} after {seconds:.0f}s")
    assert done.returncode != 0
    assert "reported a set-up error" in output and "dataset 'cifar10' not found" in output, output[-3000:]
    assert "start more SuperNodes" not in output
    assert output.count("Traceback") <= 2, output[-3000:]
