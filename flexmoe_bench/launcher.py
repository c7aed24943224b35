"""Run the app in Flower's simulation engine with `flwr run`, owning every process it starts.

`flwr run . local` would start a detached SuperLink that outlives the run; here we
start `flower-superlink --simulation` ourselves on free loopback ports, point a
private FLWR_HOME at it, submit runs with `flwr run`, read the run's final status
(`flwr run --stream` exits 0 even when the run failed) and stop the SuperLink and
its children by process group when done, also on errors. Every process it starts runs
under `flexmoe_core.watchdog`, so it also ends when this process is killed outright
(SIGKILL, the OOM killer), which no `finally` survives.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexmoe_core.watchdog import wrap

FEDERATION = "sim"
# The watchdog's SIGTERM-to-SIGKILL grace; stop() waits longer so the watchdog can finish.
WATCHDOG_GRACE = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """Console scripts of the running interpreter's environment first, then PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@dataclass
class RunOutcome:
    run_id: int | None
    status: str
    seconds: float
    log: str

    @property
    def ok(self) -> bool:
        return "completed" in self.status


class SimulationSuperLink:
    """A SuperLink in simulation mode with a private FLWR_HOME; use as a context manager."""

    def __init__(
        self,
        num_supernodes: int,
        *,
        num_cpus_per_client: int = 1,
        flwr_home: str | None = None,
        federation_config: Mapping[str, Any] | None = None,
    ) -> None:
        # Simulation settings travel with each run (`flwr run --federation-config`), Flower 1.41's way.
        self.federation_config: dict[str, Any] = {
            "num-supernodes": num_supernodes,
            "client-resources-num-cpus": num_cpus_per_client,
            "client-resources-num-gpus": 0.0,
            **dict(federation_config or {}),
        }
        self._own_home = flwr_home is None
        self.flwr_home = Path(flwr_home or tempfile.mkdtemp(prefix="flexmoe-flwr-home-"))
        # Flower 1.41 serves the Runtime, Control and Fleet APIs on one HTTP port.
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update(
            FLWR_HOME=str(self.flwr_home),
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        )
        # The SuperLink's children (ServerApp, simulation) must use this environment's Python.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def __enter__(self) -> SimulationSuperLink:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self._write_config()
        log_file = self.flwr_home / "superlink.log"
        command = [
            _bin("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.flwr_home / "state.db"),
            "--disable-runtime-dependency-installation",
            "--log-file",
            str(log_file),
        ]
        self.process = subprocess.Popen(
            wrap(command, grace=WATCHDOG_GRACE),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_healthy(log_file)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the SuperLink and everything it spawned (its own process group)."""
        if self.process is not None and self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 2 * WATCHDOG_GRACE + 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.process.pid, sig)
                    self.process.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.process = None
        if self._own_home:
            shutil.rmtree(self.flwr_home, ignore_errors=True)

    def run(
        self, app_dir: str | Path, run_config: Mapping[str, Any], *, timeout: float = 3600, echo: bool = True
    ) -> RunOutcome:
        """Submit one run, stream its logs, and return its final status from the SuperLink."""
        overrides = " ".join(f"{key}={_toml_value(value)}" for key, value in run_config.items())
        federation = " ".join(f"{key}={_toml_value(value)}" for key, value in self.federation_config.items())
        command = [_bin("flwr"), "run", str(app_dir), FEDERATION, "--stream", "--federation-config", federation]
        if overrides:
            command += ["--run-config", overrides]
        start = time.perf_counter()
        lines: list[str] = []
        # Own process group, so that a timeout stops `flwr run` and its watchdog with one signal.
        with subprocess.Popen(
            wrap(command, grace=WATCHDOG_GRACE),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        ) as proc:
            deadline = time.monotonic() + timeout
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGTERM)
                    break
        log_text = "".join(lines)
        run_id = _run_id(log_text)
        status = self.status(run_id) if run_id is not None else "not-submitted"
        return RunOutcome(run_id, status, time.perf_counter() - start, log_text)

    def status(self, run_id: int) -> str:
        """`<status>:<sub-status>` of a run as the SuperLink reports it, e.g. `finished:completed`."""
        out = subprocess.run(
            [_bin("flwr"), "ls", FEDERATION, "--run-id", str(run_id), "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            runs = json.loads(out.stdout).get("runs", [])
        except json.JSONDecodeError:
            return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def _write_config(self) -> None:
        lines = [
            "[superlink]",
            f'default = "{FEDERATION}"',
            "",
            f"[superlink.{FEDERATION}]",
            f'address = "127.0.0.1:{self.port}"',
            "insecure = true",
        ]
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_healthy(self, log_file: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {self.process.returncode}; see {log_file}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"flower-superlink not healthy after {timeout:.0f}s; see {log_file}")


def _run_id(log_text: str) -> int | None:
    match = re.search(r"run (?:id )?(\d+)", log_text, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"
