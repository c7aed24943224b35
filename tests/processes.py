"""Processes the integration tests started, found through /proc (no psutil in the venv).

A process is identified by its pid AND its start time: a pid that was reused belongs to
another process and is never signalled. The scripts' pid files hold "PID START".
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    try:  # the fields after the command name, which may contain spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def is_running(pid: int) -> bool:
    """Alive and not a zombie (PID 1 here may never reap orphans)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def still_running(pids: dict[int, str | None]) -> list[int]:
    return [pid for pid, started in pids.items() if is_running(pid) and start_time(pid) == started]


def kill_all(pids: dict[int, str | None]) -> list[int]:
    """SIGKILL those of `pids` (pid -> start time) still running; returns the pids signalled."""
    killed = []
    for pid in still_running(pids):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def pidfile_processes(run_dir: Path) -> dict[int, str | None]:
    """Processes named by the scripts' pid files under `run_dir`, and their trees."""
    found: dict[int, str | None] = {}
    for pidfile in run_dir.rglob("*.pid"):
        fields = pidfile.read_text().split()
        if not fields or not fields[0].isdigit() or not is_running(int(fields[0])):
            continue
        if len(fields) > 1 and start_time(int(fields[0])) != fields[1]:
            continue  # the pid now belongs to another process
        for member in process_tree(int(fields[0])):
            found.setdefault(member, start_time(member))
    return found
