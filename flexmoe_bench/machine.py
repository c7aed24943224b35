"""Where a run ran: the platform facts that can change its numbers, recorded in every summary.

Floating-point results of the same code and seed can differ across CPU models (vector units and
library kernels pick different summation orders), thread counts and library versions, so a
summary says which of those it came from, and `python -m flexmoe_bench.sweep --verify` expects
bit-for-bit equal curves only on the same platform.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "numpy", "flwr", "cvxpy")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's 'model name' from /proc/cpuinfo, else platform.processor(), else 'unknown'."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def describe(client_cpus: int | None = None) -> dict[str, Any]:
    """The platform as a JSON-safe dict. `torch-threads` is torch's intra-op thread count in the
    recording process; `client-cpus` the CPUs the simulation gives each client (Ray sets each
    client's thread count from it), where known."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch-threads": torch.get_num_threads(),
        **{package: _version(package) for package in PACKAGES},
    }
    if client_cpus is not None:
        info["client-cpus"] = int(client_cpus)
    return info


def columns(info: dict[str, Any]) -> dict[str, Any]:
    """The platform as flat `platform-*` columns (for one-row-per-run CSV summaries)."""
    return {f"platform-{key}": value for key, value in info.items()}
