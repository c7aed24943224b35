"""Nothing outlives its owner: processes under flexmoe_core.watchdog end when the owner is SIGKILLed.

The owners here are real processes killed with a real SIGKILL (no cleanup handler runs),
and the checks look at every process of the started tree, found through /proc with its
start time so that a reused pid never counts.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from flexmoe_core.watchdog import wrap
from tests.processes import is_running, process_tree, start_time, still_running

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def sleeper(token: str) -> list[str]:
    """A process recognisable by `token` in its command line."""
    return [sys.executable, "-c", "import time; time.sleep(300)", token]


def with_token(*tokens: str) -> dict[int, str | None]:
    """Running processes whose last argument is one of `tokens` (pid -> start time)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")[:-1] if entry.name.isdigit() else []
        except OSError:
            continue
        if args and args[-1].decode(errors="replace") in tokens and is_running(int(entry.name)):
            found[int(entry.name)] = start_time(int(entry.name))
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_owner(code: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """A Python process running `code` (which starts things under the watchdog, then waits)."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(code))
    log = open(tmp_path / "owner.log", "wb")  # noqa: SIM115 (kept open for the process' life)
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )


def test_sigkilled_owner_takes_the_whole_tree_with_it_even_detached_grandchildren(tmp_path):
    token = uuid.uuid4().hex
    tokens = (token + "-a", token + "-b")
    # The child starts a plain background sleeper and one in a session of its own whose
    # parent shell exits at once (a daemon-style double fork): neither is in the child's
    # process group, and the second is re-parented away from the child.
    inner = shlex.join(sleeper(token + "-a"))
    detached = shlex.join(sleeper(token + "-b"))
    command = ["bash", "-c", f"{inner} & (setsid {detached} &) ; wait"]
    owner = start_owner(
        f"""
        import subprocess, time
        from flexmoe_core.watchdog import wrap
        subprocess.Popen(wrap({command!r}, grace=2))
        time.sleep(600)
    """,
        tmp_path,
    )
    try:
        tokens = (token + "-a", token + "-b")
        procs = wait_for(
            lambda: (found := with_token(*tokens)) and len(found) == 2 and found, 30, "both sleepers to start"
        )
        watched = {pid: start_time(pid) for pid in process_tree(owner.pid)} | procs
        assert len(watched) >= 4  # owner, watchdog, bash, two sleepers
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
        wait_for(lambda: not still_running(watched), 20, f"the tree to exit: {still_running(watched)}")
    finally:
        for pid in with_token(*tokens):
            os.kill(pid, signal.SIGKILL)
        if owner.poll() is None:
            owner.kill()


def test_command_exit_status_is_kept_and_what_it_left_behind_is_stopped():
    token = uuid.uuid4().hex
    command = ["bash", "-c", f"({shlex.join(sleeper(token))} &) ; exit 3"]
    done = subprocess.run(
        wrap(command, grace=2),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 3, done.stderr
    assert with_token(token) == {}


def test_a_group_sigterm_reaches_the_command_exactly_once(tmp_path):
    """The launcher and stop_all.sh signal the whole process group: the command must not get a
    second SIGTERM from the watchdog (Flower would then skip its graceful exit)."""
    counter = tmp_path / "count"
    child = textwrap.dedent(f"""
        import signal, time
        count = 0
        def on_term(*_):
            global count
            count += 1
            open({str(counter)!r}, "w").write(str(count))
        signal.signal(signal.SIGTERM, on_term)
        open({str(counter)!r}, "w").write("0")
        while count == 0:
            time.sleep(0.05)
        time.sleep(2)  # a second SIGTERM from the watchdog would land here
    """)
    proc = subprocess.Popen(
        wrap([sys.executable, "-c", child], grace=5),
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wait_for(lambda: counter.exists(), 30, "the command to start")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert counter.read_text() == "1"


def test_watchdog_refuses_a_dead_owner_and_an_empty_command():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = subprocess.run(
        wrap(["sleep", "5"], owner=gone.pid), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and f"--owner {gone.pid}: no such process" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "flexmoe_core.watchdog", "--owner", str(os.getpid())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "no command given" in done.stderr


def port_free(port: int) -> bool:
    """Nobody listens there: a new server (which sets SO_REUSEADDR, as the SuperLink does) can bind it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


@pytest.mark.integration
def test_sigkilled_runner_leaves_no_superlink_or_superexec_and_frees_the_port(tmp_path):
    """A sweep killed with kill -9 mid-run: the SuperLink, its SuperExec and the ServerApp end."""
    port_file = tmp_path / "port"
    owner = start_owner(
        f"""
        from pathlib import Path
        from flexmoe_bench.launcher import SimulationSuperLink
        with SimulationSuperLink(2) as superlink:
            Path({str(port_file)!r}).write_text(str(superlink.port))
            superlink.run({str(ROOT)!r}, {{"num-server-rounds": 200, "max-samples-per-client": 50,
                                           "local-epochs": 1, "results-dir": {str(tmp_path / "results")!r}}})
    """,
        tmp_path,
    )
    try:
        port = int(wait_for(lambda: port_file.exists() and port_file.read_text(), 90, "the SuperLink"))

        def running_app() -> bool:  # a run in flight: the simulation's ServerApp process exists
            return any(
                "flwr-simulation" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                for p in process_tree(owner.pid)
                if Path(f"/proc/{p}/cmdline").exists()
            )

        wait_for(running_app, 120, "the ServerApp to start")
        wait_for(lambda: "[round 2/" in (tmp_path / "owner.log").read_text(), 120, "two rounds to finish")
        watched = {pid: start_time(pid) for pid in process_tree(owner.pid)}
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
        wait_for(lambda: not still_running(watched), 60, f"the SuperLink tree to exit: {still_running(watched)}")
        assert port_free(port)
    finally:
        if owner.poll() is None:
            owner.kill()
        print((tmp_path / "owner.log").read_text()[-3000:])


@pytest.mark.integration
def test_owner_pid_makes_the_scripts_superlink_end_with_its_owner(tmp_path):
    owner = subprocess.Popen(["sleep", "600"])
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    superlink_port = port.getsockname()[1]
    port.close()
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "MODE": "insecure",
        "SUPERLINK_PORT": str(superlink_port),
        "SUPERLINK_DATABASE": "",
        "OWNER_PID": str(owner.pid),
        "FLWR_VENV": str(Path(sys.executable).parent.parent),
        "STOP_TIMEOUT": "5",
    }
    try:
        done = subprocess.run(
            [str(SCRIPTS / "start_superlink.sh")], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        pid = int((run_dir / "superlink.pid").read_text().split()[0])
        watched = {p: start_time(p) for p in process_tree(pid)}
        assert len(watched) >= 2  # the watchdog and flower-superlink
        owner.kill()
        owner.wait()
        wait_for(lambda: not still_running(watched), 30, f"the SuperLink to exit: {still_running(watched)}")
        assert port_free(superlink_port)
    finally:
        subprocess.run([str(SCRIPTS / "stop_all.sh")], env=env, capture_output=True, timeout=60)
        if owner.poll() is None:
            owner.kill()
