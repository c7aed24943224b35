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


def cpu_id(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """'vendor family F model M stepping S' from /proc/cpuinfo, or 'unknown'.

    A virtual machine may report only a generic model name ("AMD EPYC") for CPUs of different
    generations; family / model / stepping tell them apart (AMD family 25 is Zen 3/4, 26 is Zen 5)."""
    wanted = {"vendor_id": "", "cpu family": "family ", "model": "model ", "stepping": "stepping "}
    found: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in wanted and key not in found and value.strip():
                found[key] = wanted[key] + value.strip()
            if not line.strip() and found:  # the first processor's block is enough
                break
    except OSError:
        pass
    return " ".join(found[k] for k in wanted if k in found) or "unknown"


def torch_cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels dispatch to (e.g. AVX2, AVX512): two machines
    with the same model name but another capability take other float paths."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # older torch
        return "unknown"


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
        "cpu-id": cpu_id(),
        "cpu-capability": torch_cpu_capability(),
        "cores": os.cpu_count(),
        "torch-threads": torch.get_num_threads(),
        **{package: _version(package) for package in PACKAGES},
    }
    if client_cpus is not None:
        info["client-cpus"] = int(client_cpus)
    return info


def match(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """How a summary's recorded platform relates to this one: "same platform" (every fact equal),
    "other platform" (a fact both record differs), or "unknown platform" (none recorded, or only part
    of what is recorded now: summaries made before `cpu-id` existed; equal facts then do not prove
    the same machine)."""
    if recorded is None:
        return "unknown platform"
    if any(recorded[k] != current[k] for k in recorded.keys() & current.keys()):
        return "other platform"
    return "same platform" if current.keys() <= recorded.keys() else "unknown platform"


def columns(info: dict[str, Any]) -> dict[str, Any]:
    """The platform as flat `platform-*` columns (for one-row-per-run CSV summaries)."""
    return {f"platform-{key}": value for key, value in info.items()}
