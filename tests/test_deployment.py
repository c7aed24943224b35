"""A real Flower deployment on loopback: SuperLink + 3 SuperNodes as separate processes.

The tests drive the user-facing scripts in scripts/ (make_certs, start_superlink,
register_nodes, start_supernodes, stop_all), so they check the scripts as well as the
app: TLS + SuperNode authentication, heterogeneous capacities 1/2/4 through
--node-config, two FLEX-MoE rounds submitted with `flwr run`, the run's final status
read from the SuperLink (`flwr run` exits 0 even when a run fails), the results on
disk, stable node identities across a SuperNode restart, and the insecure localhost
mode. Every port is a free loopback port and FLWR_HOME is private, so the tests can run
next to other Flower deployments on the same machine.

The app is deployed from its Flower App Bundle: `flwr build` makes the .fab (checked for
what it holds and its size), the run is submitted from that bundle unpacked, and every
Flower process (SuperLink, SuperNodes, ServerApp, ClientApps) runs with the source tree
taken off its import path, so the app can only come from the bundle the SuperLink stored.

Every process is stopped by pid (the scripts' pid files, then a fallback that signals
each remaining process of those trees), also when an assertion fails or the test times
out; nothing is ever looked up by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flexmoe_bench.launcher import free_port
from tests.processes import is_running, kill_all, pidfile_processes, process_tree, start_time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is a dependency of flwr
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
VENV_BIN = Path(sys.executable).parent
CAPACITIES = (1, 2, 4)
CONNECTION = "flexmoe-test"

pytestmark = pytest.mark.integration


def tool(name: str) -> str:
    """A console script of the running interpreter's environment, else from PATH."""
    local = VENV_BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} not found next to {sys.executable} nor on PATH: install flwr (scripts/setup.sh)"
    return found


# ---------------------------------------------------------------------------- helpers
def kill_pidfile_trees(run_dir: Path) -> list[int]:
    """Fallback after stop_all.sh: SIGKILL whatever is left of each pid file's process tree.
    Returns the pids that had to be killed."""
    return kill_all(pidfile_processes(run_dir))


def run_bounded(command: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int | None, str]:
    """Run `command` in its own session with output to `log`; return (exit code or None, output).

    Its children (a SuperExec in a session of its own) may outlive it, so the process
    tree is sampled while it runs and whatever is left of it is killed at the end;
    start times guard against pids the kernel reused meanwhile.
    """
    seen: dict[int, str | None] = {}
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                for member in process_tree(proc.pid):
                    seen.setdefault(member, start_time(member))
                time.sleep(0.2)
        finally:
            for member, started in seen.items():
                if is_running(member) and start_time(member) == started:
                    try:
                        os.kill(member, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.wait(timeout=10)
    code = proc.returncode if time.monotonic() < deadline else None
    return code, log.read_text(errors="replace")


# Test-only sitecustomize: a Flower process (flwr-*, flower-*) drops the source tree from its
# import path (the editable install's .pth and PYTHONPATH both put it there), and notes that it did.
HIDE_SOURCE_TREE = """
import os, sys
_root = os.path.realpath(os.environ["FLEXMOE_HIDDEN_ROOT"])
_argv = list(getattr(sys, "orig_argv", sys.argv))
_names = [os.path.basename(a) for a in _argv[1:3]]
_flower = [n for n in _names if n.startswith(("flwr", "flower-"))]
if _flower:
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _root]
    with open(os.environ["FLEXMOE_HIDDEN_LOG"], "a") as _log:
        _log.write(_flower[0] + "\\n")
"""
FAB_MAX_BYTES = 512 * 1024
FAB_PACKAGES = ("flexmoe_core", "server_app", "client_app")


def hide_source_tree(env: dict[str, str], folder: Path) -> Path:
    """Make every Flower process started with `env` blind to the source tree; returns the log of them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDE_SOURCE_TREE)
    env["PYTHONPATH"] = f"{folder}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(folder)
    env["FLEXMOE_HIDDEN_ROOT"] = str(ROOT)
    env["FLEXMOE_HIDDEN_LOG"] = str(folder / "hidden.log")
    return folder / "hidden.log"


def build_bundle(dest: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """`flwr build` of the repository (its fab-include rules), checked, and unpacked: (fab, app dir).

    `flwr run` takes an app directory and builds the FAB it sends from it; built from the unpacked
    bundle it sends exactly the bytes of the .fab (the build is deterministic), which the test
    checks against the hash the SuperLink stored for the run.
    """
    import zipfile

    dest.mkdir(parents=True)
    done = subprocess.run(
        [tool("flwr"), "build", "--app", str(ROOT)], cwd=dest, env=env, capture_output=True, text=True, timeout=120
    )
    fabs = list(dest.glob("*.fab"))
    assert done.returncode == 0 and len(fabs) == 1, done.stdout + done.stderr
    fab = fabs[0]
    with zipfile.ZipFile(fab) as bundle:
        names = bundle.namelist()
        app = dest / "flexmoe"  # a valid Flower app name, as `flwr build` wants of the directory
        bundle.extractall(app)
    outside = [n for n in names if n.split("/")[0] not in FAB_PACKAGES and n not in ("pyproject.toml", ".info/CONTENT")]
    assert outside == [], f"the FAB carries more than the apps and the core: {outside}"
    assert all(n.endswith(".py") for n in names if n.split("/")[0] in FAB_PACKAGES)  # no data, no checkpoints
    assert {"server_app/app.py", "client_app/app.py", "flexmoe_core/model.py"} <= set(names)
    size = fab.stat().st_size
    print(f"FAB {fab.name}: {size} bytes, {len(names)} files")
    assert size <= FAB_MAX_BYTES, f"FAB is {size} bytes, more than {FAB_MAX_BYTES}"
    return fab, app


class Deployment:
    """Settings shared by every script call of one test, and a bounded way to call them."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.certs = run_dir / "certs"
        self.superlink_port = free_port()
        self.node_ports = [free_port() for _ in CAPACITIES]
        self.env = os.environ.copy()
        self.env.update(
            RUN_DIR=str(run_dir),
            CERTS_DIR=str(self.certs),
            FLWR_HOME=str(run_dir / "flwr-home"),
            MODE="tls",
            SUPERLINK_PORT=str(self.superlink_port),
            NUM_SUPERNODES=str(len(CAPACITIES)),
            CAPACITIES=" ".join(map(str, CAPACITIES)),
            NODE_PORTS=" ".join(map(str, self.node_ports)),
            FLWR_CONNECTION=CONNECTION,
            FLWR_VENV=str(VENV_BIN.parent),
            STARTUP_TIMEOUT="90",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
            # Three ClientApps train at once on a 2-core CI machine: one thread each
            # instead of oversubscribed intra-op pools.
            OMP_NUM_THREADS="1",
            # Whatever the scripts start ends with this test process, even on SIGKILL.
            OWNER_PID=str(os.getpid()),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )

    def script(self, name: str, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run(
            [str(SCRIPTS / name), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        output = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} exited {done.returncode}:\n{output[-4000:]}")
        return output

    def flwr(self, *args: str, timeout: float = 120) -> dict:
        done = subprocess.run(
            [tool("flwr"), *args, "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as err:
            raise AssertionError(f"flwr {' '.join(args)}: no JSON answer:\n{done.stdout}\n{done.stderr}") from err

    def log(self, name: str) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            self.script("stop_all.sh", timeout=120, check=False)
        finally:
            left = kill_pidfile_trees(self.run_dir)
            if left:
                print(f"stop_all.sh left {len(left)} processes; killed: {left}")
            # Shown by pytest only for a failing test: the tail of every process log.
            for log in sorted((self.run_dir / "logs").glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-25:]
                print(f"----- {log.name} (last lines)", *tail, sep="\n")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(tmp_path / "deploy")
    dep.run_dir.mkdir(parents=True)
    try:
        yield dep
    finally:
        dep.stop()


def wait_for_run(dep: Deployment, run_id: str, timeout: float, results_written: Callable[[], bool]) -> str:
    """Poll the SuperLink for the run's status until it is finished (bounded).

    Each `flwr ls` is a CLI start-up (1-2 s of CPU), a real cost next to the run on a
    2-core machine: ask every 15 s, and every 2 s once the results are on disk.
    """
    deadline = time.monotonic() + timeout
    status, next_ask = "unknown", 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_ask or results_written():
            runs = dep.flwr("ls", CONNECTION, "--run-id", run_id).get("runs") or []
            status = runs[0]["status"] if runs else "unknown"
            if status.startswith("finished"):
                return status
            next_ask = time.monotonic() + 15
        time.sleep(2)
    subprocess.run([tool("flwr"), "stop", run_id, CONNECTION], env=dep.env, capture_output=True, timeout=60, cwd=ROOT)
    return f"timed out after {timeout:.0f}s in status {status}"


def node_id_in_log(text: str) -> str | None:
    ids = [line.rsplit(":", 1)[1].strip() for line in text.splitlines() if "SuperNode ID:" in line]
    return ids[-1] if ids else None


# ------------------------------------------------------------------------------ tests
@pytest.mark.timeout(540)
def test_tls_authenticated_deployment_runs_two_flexmoe_rounds(deployment: Deployment) -> None:
    dep = deployment
    results = dep.run_dir / "results"
    rounds_wanted = 2
    dep.script("make_certs.sh", str(dep.certs), str(len(CAPACITIES) + 1))  # key 4 is never registered

    hidden_log = hide_source_tree(dep.env, dep.run_dir / "hide-source")
    dep.script("start_superlink.sh")
    ca = ssl.create_default_context(cafile=str(dep.certs / "ca.crt"))
    with urllib.request.urlopen(f"https://127.0.0.1:{dep.superlink_port}/health", context=ca, timeout=10) as r:
        assert r.status == 200
    with pytest.raises(OSError):  # TLS only: plain HTTP is refused
        urllib.request.urlopen(f"http://127.0.0.1:{dep.superlink_port}/health", timeout=10)

    out = dep.script("register_nodes.sh")
    registered = dict(line.split("\t") for line in (dep.run_dir / "node_ids.tsv").read_text().split("\n") if line)
    assert sorted(registered) == ["1", "2", "3"], out
    assert "already registered" in dep.script("register_nodes.sh", "2")  # idempotent, id kept
    assert (dep.run_dir / "node_ids.tsv").read_text().count("\n") == 3

    out = dep.script("start_supernodes.sh", timeout=180)
    for i in ("1", "2", "3"):  # each node runs under the id its key was registered with
        assert node_id_in_log(dep.log(f"supernode_{i}")) == registered[i], out

    # A key the SuperLink does not know is refused: the node exits without an id.
    code, output = run_bounded(
        [
            tool("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{dep.superlink_port}",
            "--root-certificates",
            str(dep.certs / "ca.crt"),
            "--auth-supernode-private-key",
            str(dep.certs / "supernode_4"),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--max-retries",
            "1",
            "--node-config",
            "partition-id=0 num-partitions=3",
        ],
        dep.env,
        dep.run_dir / "logs" / "unregistered_node.log",
        timeout=90,
    )
    assert code not in (0, None) and "Failed to activate SuperNode" in output and "SuperNode ID:" not in output

    fab, app = build_bundle(dep.run_dir / "fab", dep.env)
    submitted = dep.flwr(
        "run",
        str(app),
        CONNECTION,
        "--run-config",
        f"num-server-rounds={rounds_wanted} max-samples-per-client=200 local-epochs=1 results-dir='{results}'",
    )
    assert submitted.get("success"), submitted
    run_id = str(submitted["run-id"])

    def results_written() -> bool:
        try:
            return len(json.loads((results / "metrics.json").read_text())) >= rounds_wanted
        except (OSError, ValueError):
            return False

    status = wait_for_run(dep, run_id, timeout=360, results_written=results_written)
    if status != "finished:completed":
        log = subprocess.run(
            [tool("flwr"), "log", run_id, CONNECTION, "--show"],
            env=dep.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        ).stdout
        pytest.fail(f"run {run_id}: {status}\n{log[-4000:]}")

    # The run is the bundle: the SuperLink stored exactly the .fab's bytes, and the ServerApp and
    # every ClientApp ran without the source tree on their import path.
    (stored,) = dep.flwr("ls", CONNECTION, "--run-id", run_id)["runs"]
    assert stored["fab-hash"] == hashlib.sha256(fab.read_bytes()).hexdigest()
    hidden = hidden_log.read_text().split()
    assert "flwr-serverapp" in hidden and hidden.count("flwr-clientapp") >= len(CAPACITIES), hidden

    rounds = json.loads((results / "metrics.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert 0.0 <= r["accuracy-min"] <= r["accuracy"] <= 1.0
        assert r["eval-loss"] > 0.0 and r["train-loss"] > 0.0
        assert r["num-sampled"] == r["num-completed"] == r["num-evaluated"] == 3 and r["num-failed"] == 0
        # 1 + 2 + 4 = 7 expert slots over the E = 8 experts: seven experts held once, one idle
        assert sorted(r["expert-load"]) == [0.0] + [1.0] * 7
    # Clients are known by their stable client-id from --node-config, and hold what they can.
    final = json.loads((results / "final_assignment.json").read_text())
    held = dict(zip(final["clients"], final["held"]))
    assert {c: len(h) for c, h in held.items()} == {"device-1": 1, "device-2": 2, "device-3": 4}
    assert len({e for h in held.values() for e in h}) == 7  # no expert held twice
    fitness = json.loads((results / "fitness.json").read_text())
    assert sorted(row[0] for row in fitness["rows"]) == ["device-1", "device-2", "device-3"]
    for name in ("config.json", "metrics.csv", "assignments.json", "checkpoint.npz"):
        assert (results / name).stat().st_size > 0, name

    # A restarted device keeps its node id (authentication + the SuperLink's database).
    out = dep.script("stop_all.sh", "supernode_2")
    # A graceful stop (one SIGTERM) lets the node deactivate itself at the SuperLink;
    # killed, it would be refused on restart until its heartbeat expired (about 60 s).
    assert "SIGKILL" not in out and not (dep.run_dir / "supernode_2.pid").exists(), out
    dep.script("start_supernodes.sh", "2", timeout=180)
    assert node_id_in_log(dep.log("supernode_2")) == registered["2"]
    nodes = dep.flwr("supernode", "ls", CONNECTION)["nodes"]
    assert sorted(str(n["node-id"]) for n in nodes) == sorted(registered.values())

    trees = {p.name: process_tree(int(p.read_text().split()[0])) for p in dep.run_dir.glob("*.pid")}
    assert sorted(trees) == ["superlink.pid", "supernode_1.pid", "supernode_2.pid", "supernode_3.pid"]
    dep.script("stop_all.sh")
    assert not list(dep.run_dir.glob("*.pid"))
    assert [p for tree in trees.values() for p in tree if is_running(p)] == []
    assert kill_pidfile_trees(dep.run_dir) == []


@pytest.mark.timeout(180)
def test_insecure_localhost_deployment_connects_and_stops(deployment: Deployment) -> None:
    dep = deployment
    dep.env.update(MODE="insecure", NUM_SUPERNODES="1", CAPACITIES="2", NODE_PORTS=str(dep.node_ports[0]))
    dep.script("start_superlink.sh")
    pid = int((dep.run_dir / "superlink.pid").read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{dep.superlink_port}/health", timeout=10) as r:
        assert r.status == 200
    config = tomllib.loads((dep.run_dir / "flwr-home" / "config.toml").read_text())
    assert config["superlink"]["default"] == CONNECTION
    assert config["superlink"][CONNECTION] == {"address": f"127.0.0.1:{dep.superlink_port}", "insecure": True}
    assert dep.flwr("ls", CONNECTION) == {"success": True, "runs": []}
    # A second SuperLink on the same pid file is refused, not started twice.
    assert "already running" in dep.script("start_superlink.sh", check=False)

    out = dep.script("start_supernodes.sh", timeout=180)
    assert "partition-id=0 num-partitions=1 capacity=2 client-id='device-1'" in out
    nodes = dep.flwr("supernode", "ls", CONNECTION)["nodes"]
    assert [str(n["node-id"]) for n in nodes] == [node_id_in_log(dep.log("supernode_1"))]

    trees = [process_tree(pid), process_tree(int((dep.run_dir / "supernode_1.pid").read_text().split()[0]))]
    assert len(trees[0]) >= 2  # the SuperLink and the SuperExec it started for ServerApps
    dep.script("stop_all.sh")
    assert not list(dep.run_dir.glob("*.pid"))
    assert [p for tree in trees for p in tree if is_running(p)] == []


def _handshake(certs: Path) -> str:
    """TLS handshake against a server using server.pem/server.key, verified with ca.crt for 127.0.0.1."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs / "server.pem", certs / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                version = tls.version() or ""
                tls.sendall(b"x")
        thread.join(timeout=10)
    return version


@pytest.mark.timeout(120)
def test_make_certs_writes_usable_credentials(tmp_path: Path) -> None:
    """Each way of making credentials gives a CA-verified server certificate and node keys Flower reads.

    The python tool (cryptography, a flwr dependency) works everywhere; openssl +
    ssh-keygen are checked too where installed (make_certs.sh prefers them).
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    tools = ["python"] + (["openssl"] if shutil.which("openssl") and shutil.which("ssh-keygen") else [])
    for cert_tool in tools:
        certs = tmp_path / cert_tool
        env = {
            **os.environ,
            "CERT_TOOL": cert_tool,
            "RUN_DIR": str(tmp_path / "run"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        make = [str(SCRIPTS / "make_certs.sh"), str(certs), "2"]
        done = subprocess.run(make, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and f"({cert_tool})" in done.stdout, done.stdout + done.stderr
        assert _handshake(certs).startswith("TLS"), cert_tool
        for i in (1, 2):
            private = load_ssh_private_key((certs / f"supernode_{i}").read_bytes(), password=None)
            public = load_ssh_public_key((certs / f"supernode_{i}.pub").read_bytes())
            assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
            assert private.public_key().public_numbers() == public.public_numbers()
            assert (certs / f"supernode_{i}").stat().st_mode & 0o077 == 0  # private: owner only
        assert (certs / "server.key").stat().st_mode & 0o077 == 0

        # Run again: node identities are kept, a missing public half is derived from the key.
        before = (certs / "supernode_1.pub").read_text().split()[:2]
        (certs / "supernode_1.pub").unlink()
        subprocess.run(make, env=env, check=True, capture_output=True, timeout=60)
        assert (certs / "supernode_1.pub").read_text().split()[:2] == before, cert_tool
