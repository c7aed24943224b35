"""Flower's simulation engine on a two-node Ray cluster (head + one worker) on one machine.

scripts/ray_demo.sh starts `ray start --head` and one `ray start --address` worker
(1 CPU each), a simulation SuperLink whose processes inherit RAY_ADDRESS (how Flower
1.41's Ray backend joins an existing cluster), runs two FLEX-MoE rounds with 4
simulated SuperNodes and 1 CPU per ClientApp, reads the run's final status with
`flwr ls --run-id ID --format json`, and reports from Ray's GCS (actor table and task
events) on which node each ClientApp call ran.

Where the user may create network namespaces (root in CI), everything runs in a fresh
one (`--netns`) that has only loopback: Ray then really uses 127.0.0.1 for every node
and its ports cannot clash with other Ray or Flower processes on the machine. Without
that the demo runs on the host's network, where Ray advertises the machine's address.
Every process the demo started is stopped by pid, also on failure; the test checks that
none is left and kills any that is (by pid, after checking its start time).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flexmoe_bench.launcher import free_port
from tests.processes import kill_all, pidfile_processes, process_tree, start_time, still_running

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NUM_SIMULATED_NODES = 4
NUM_ROUNDS = 2
DEMO_TIMEOUT = 300  # seconds; the demo itself takes about 1-2 minutes on 2 busy cores

pytestmark = pytest.mark.integration


def netns_available() -> bool:
    """Can this user make a network namespace (root, or unprivileged user namespaces)?"""
    if shutil.which("unshare") is None:
        return False
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    try:
        return subprocess.run(["unshare", *userns, "--net", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.timeout(DEMO_TIMEOUT + 120)
def test_simulation_runs_client_apps_on_both_ray_nodes(tmp_path: Path) -> None:
    # Ray's UNIX socket paths must stay under 108 bytes: its session dir gets a short path.
    ray_temp = Path(tempfile.mkdtemp(prefix="fxr-", dir="/tmp"))
    try:
        run_demo_and_check(tmp_path, ray_temp, netns=netns_available())
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)


def run_demo_and_check(tmp_path: Path, ray_temp: Path, *, netns: bool) -> None:
    run_dir = tmp_path / "ray-demo"
    results = tmp_path / "results"
    env = os.environ.copy()
    env.pop("RAY_ADDRESS", None)  # the demo's own cluster, never one from the caller's environment
    env.update(
        RUN_DIR=str(run_dir),
        RAY_RUN_DIR=str(run_dir / "ray"),
        RAY_TEMP_DIR=str(ray_temp),
        FLWR_HOME=str(tmp_path / "flwr-home"),
        FLWR_VENV=str(VENV_BIN.parent),
        RAY_PORT=str(free_port()),
        SIM_PORT=str(free_port()),
        RAY_NUM_WORKERS="1",
        RAY_HEAD_CPUS="1",
        RAY_WORKER_CPUS="1",
        RAY_HEAD_GPUS="0",
        RAY_WORKER_GPUS="0",
        CLIENT_CPUS="1",
        CLIENT_GPUS="0.0",
        SIM_NUM_SUPERNODES=str(NUM_SIMULATED_NODES),
        RUN_TIMEOUT=str(DEMO_TIMEOUT - 60),
        STARTUP_TIMEOUT="90",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        OWNER_PID=str(os.getpid()),  # the cluster ends with this test process, even on SIGKILL
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    overrides = f"num-server-rounds={NUM_ROUNDS} max-samples-per-client=200 local-epochs=1 results-dir='{results}'"
    command = [str(ROOT / "scripts" / "ray_demo.sh"), *(["--netns"] if netns else []), overrides]

    seen: dict[int, str | None] = {}
    log_path = tmp_path / "ray_demo.log"
    deadline = time.monotonic() + DEMO_TIMEOUT
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                # Ray's daemons run in sessions of their own: remember every descendant.
                for member in process_tree(proc.pid):
                    seen.setdefault(member, start_time(member))
                time.sleep(0.5)
            if proc.poll() is None:  # too slow: let the demo stop its cluster, then force it
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            seen.update(pidfile_processes(run_dir))
            left_over = still_running(seen)
            kill_all(seen)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 0, f"ray_demo.sh exited {proc.returncode} (netns={netns}):\n{output[-6000:]}"
    # The demo stopped everything it started by itself.
    assert left_over == [], f"processes left running: {left_over}\n{output[-3000:]}"

    # Final run status as the SuperLink reported it (`flwr ls --run-id ID --format json`).
    run = json.loads((run_dir / "ray_run.json").read_text())
    assert run["status"] == "finished:completed", run

    # From Ray's GCS: two alive nodes ...
    placement = json.loads((run_dir / "ray_placement.json").read_text())
    nodes = {n["node-id"]: n for n in placement["nodes"] if n["alive"]}
    assert len(nodes) == 2 and all(n["cpus"] == 1 for n in nodes.values()), placement["nodes"]
    addresses = {n["address"] for n in nodes.values()}
    if netns:  # only loopback in the namespace
        assert addresses == {"127.0.0.1"}, addresses
    else:  # one machine: both nodes advertise its address
        assert len(addresses) == 1, addresses
    # ... each CPU holds one ClientAppActor (1 CPU per ClientApp), so one actor per node ...
    assert sorted(a["node-id"] for a in placement["client-actors"]) == sorted(nodes), placement["client-actors"]
    # ... and both nodes executed ClientApp calls (`ClientAppActor.run` tasks), all of which
    # finished: at least a train and an evaluate call per SuperNode and round.
    per_node = placement["client-app-calls-finished-per-node"]
    assert set(per_node) == set(nodes) and min(per_node.values()) >= 1, per_node
    assert sum(per_node.values()) == placement["client-app-calls"] >= 2 * NUM_ROUNDS * NUM_SIMULATED_NODES

    # The run's results are complete and in range.
    rounds = json.loads((results / "metrics.json").read_text())
    assert [r["round"] for r in rounds] == list(range(1, NUM_ROUNDS + 1))
    for r in rounds:
        assert r["num-sampled"] == r["num-completed"] == NUM_SIMULATED_NODES and r["num-failed"] == 0
        assert 0.0 <= r["accuracy-min"] <= r["accuracy"] <= 1.0
