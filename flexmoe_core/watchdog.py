"""Run a command that never outlives its owner: `python -m flexmoe_core.watchdog --owner PID -- CMD ...`.

A SuperLink, a SuperNode or a Ray node started by a runner, a script or a test must not
keep running (holding its ports and memory) when that owner is killed with SIGKILL or by
the OOM killer, which no cleanup handler survives. This wrapper starts CMD as its child,
in its own process group, and watches the owner's pid (with its start time, so a reused
pid does not count as alive), as Flower's `flower-superexec --parent-pid` watches its
parent. It is also a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): whatever CMD
starts, even in a new session or a double-fork daemon, is re-parented to the watchdog
rather than to init when its own parent exits, so the whole tree stays findable.

- Owner gone: SIGTERM once to every process of the tree, SIGKILL after `--grace` seconds.
- CMD exits: leftover descendants are stopped the same way; the exit status is CMD's.
- SIGTERM/SIGINT/SIGHUP to the watchdog: expected to come to the whole process group (as
  the launcher and `scripts/stop_all.sh` send it), so CMD got it too and is not signalled
  again (Flower restores the default action after the first SIGTERM, and a second one
  would cut its graceful exit short); once CMD has exited (or `--grace` seconds passed)
  the rest of the tree is stopped as above.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.2


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """Every live descendant of `root`, parents before children (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class Owner:
    """The process whose death ends the command; identified by pid and start time."""

    def __init__(self, pid: int) -> None:
        self.pid, self.started = pid, start_time(pid)
        if self.started is None:
            raise SystemExit(f"--owner {pid}: no such process")

    def alive(self) -> bool:
        return start_time(self.pid) == self.started


def _become_subreaper() -> None:
    if sys.platform != "linux":  # elsewhere only the owner watch applies
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _reap() -> dict[int, int]:
    """Collect every exited child (orphans re-parented here included); pid -> exit code."""
    exited: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited[pid] = os.waitstatus_to_exitcode(status)


def stop_tree(grace: float, *, first: int | None = None) -> None:
    """SIGTERM each descendant once, SIGKILL what is left after `grace` seconds.

    With `first` (a pid that was already sent SIGTERM, e.g. by a group signal), wait up to
    `grace` for it to exit before signalling the rest, so it is not signalled twice.
    """
    me = os.getpid()
    if first is not None:
        _wait_until(lambda: first not in descendants(me), grace)
    _signal_all([p for p in descendants(me) if p != first], signal.SIGTERM)
    _wait_until(lambda: not descendants(me), grace)
    _signal_all(descendants(me), signal.SIGKILL)
    _wait_until(lambda: not descendants(me), 5.0)


def _wait_until(done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        _reap()
        if done() or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _say(message: str) -> None:
    # stderr is often a pipe to the owner that just died: a broken pipe must not stop the cleanup.
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def watch(command: list[str], owner: Owner, grace: float) -> int:
    _become_subreaper()
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    child = subprocess.Popen(command)  # same process group: a group signal reaches both
    code: int | None = None
    while code is None:
        exited = _reap()
        if child.pid in exited:
            code = exited[child.pid]
            child.returncode = code  # reaped here, not by Popen
            break
        if stopping:
            stop_tree(grace, first=child.pid)
            return 128 + stopping[0]
        if not owner.alive():
            _say(
                f"watchdog: owner {owner.pid} is gone; stopping {command[0]} (pid {child.pid}) and its "
                f"{len(descendants(os.getpid())) - 1} descendant(s)"
            )
            stop_tree(grace)
            return 128 + signal.SIGTERM
        time.sleep(POLL_SECONDS)
    stop_tree(grace)  # what CMD left behind
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", type=int, required=True, help="pid whose death stops the command")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    if args.grace < 0:
        parser.error(f"--grace must be >= 0, got {args.grace}")
    return watch(command, Owner(args.owner), args.grace)


def wrap(command: list[str], owner: int | None = None, grace: float = 10.0) -> list[str]:
    """`command` run under the watchdog of `owner` (default: this process)."""
    return [
        sys.executable,
        "-m",
        "flexmoe_core.watchdog",
        "--owner",
        str(owner or os.getpid()),
        "--grace",
        str(grace),
        "--",
        *command,
    ]


if __name__ == "__main__":
    raise SystemExit(main())
