"""The study grid: which runs a study file asks for (plain data; the runner is flexmoe_bench.sweep).

A study file is TOML: `[study]` (default `seeds`, `num-supernodes`), `[base]` (the run config every
cell starts from) and `[[group]]` tables with `name`, `methods`, optional `seeds`,
`num-supernodes`, `set` (fixed settings) and `vary` (settings whose value lists form a
cartesian product). Each (group, varied values, method, seed) is one cell with a stable id,
which names its summary file, so a sweep can resume from the summaries alone.

A group may name the same runs in another study, `same-runs-as = { summaries = "docs/regimes/runs",
group = "base" }` (a folder relative to the repository): a cell whose twin there (same method, varied
values and seed) has the same training (run configs equal but for EVALUATION_ONLY_SETTINGS, a setting
one of them leaves out counting as its pyproject default) counts as done and is read from there, so one
run is not made twice for two studies; a cell without one runs.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from flexmoe_core.config import ASSIGNMENT_METHODS

# Methods the bench runs itself, outside Flower (flexmoe_bench.local): references, not rules.
BENCH_METHODS = ("local",)
STUDY_METHODS = (*ASSIGNMENT_METHODS, *BENCH_METHODS)
ROOT = Path(__file__).resolve().parents[1]  # `same-runs-as` folders are relative to the repository
# Settings that change neither training nor `accuracy`, only the adapted copy's `accuracy-adapted`
# (tests/test_remedies.py checks a run with and without adaptation round for round): two run configs
# that differ only in these are the same training.
EVALUATION_ONLY_SETTINGS = ("adapt-steps", "adapt-lr", "adapt-rounds")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a group, a method, a seed and the run config that follows from them."""

    group: str
    method: str
    seed: int
    varied: tuple[tuple[str, Any], ...]  # the group's varied settings and their values here
    overrides: dict[str, Any] = field(hash=False, compare=False)
    num_supernodes: int = 10
    twin: Path | None = field(default=None, hash=False, compare=False)  # the same run's summary elsewhere

    @property
    def id(self) -> str:
        values = "-".join(str(v) for _, v in self.varied)
        return "-".join(p for p in (self.group, self.method, values, f"s{self.seed}") if p).replace("/", "_")


def expand(study: dict[str, Any]) -> list[Cell]:
    """Every cell of the study file, in file order (group, varied values, method, seed)."""
    meta, base = study.get("study", {}), study.get("base", {})
    groups = study.get("group", [])
    if not groups:
        raise SystemExit("study file: no [[group]] tables")
    cells, seen = [], set()
    for group in groups:
        name = group.get("name")
        if not name:
            raise SystemExit("study file: every [[group]] needs a name")
        methods = group.get("methods", [])
        unknown = [m for m in methods if m not in STUDY_METHODS]
        if not methods or unknown:
            raise SystemExit(f"study file: group {name!r} methods must be some of {STUDY_METHODS}, got {methods}")
        vary = group.get("vary", {})
        seeds = group.get("seeds", meta.get("seeds", [42]))
        clients = group.get("num-supernodes", meta.get("num-supernodes", 10))
        twins = _twin_source(name, group.get("same-runs-as"))
        for values in itertools.product(*vary.values()):
            varied = tuple(zip(vary, values))
            for method in methods:
                for seed in seeds:
                    overrides = {**base, **group.get("set", {}), **dict(varied), "assignment": method, "seed": seed}
                    twin = None
                    if twins is not None:
                        folder, twin_group = twins
                        twin = folder / f"{Cell(twin_group, method, seed, varied, overrides).id}.json"
                    cell = Cell(name, method, seed, varied, overrides, clients, twin)
                    if cell.id in seen:
                        raise SystemExit(f"study file: cell {cell.id} appears twice")
                    seen.add(cell.id)
                    cells.append(cell)
    return cells


def _twin_source(group: str, same_runs_as: Any) -> tuple[Path, str] | None:
    """(summaries folder, group) of a group's `same-runs-as`, checked."""
    if same_runs_as is None:
        return None
    if (
        not isinstance(same_runs_as, dict)
        or set(same_runs_as) != {"summaries", "group"}
        or not all(isinstance(v, str) and v for v in same_runs_as.values())
    ):
        raise SystemExit(
            f'study file: group {group!r} same-runs-as must be {{ summaries = "<folder>", group = "<name>" }}, '
            f"got {same_runs_as!r}"
        )
    return ROOT / same_runs_as["summaries"], same_runs_as["group"]


def same_training(a: Mapping[str, Any], b: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> bool:
    """Whether two run configs train the same run: they differ at most in EVALUATION_ONLY_SETTINGS, a
    setting that one of them leaves out counting as its value in `defaults` (the app's run config)."""
    fallback = defaults or {}
    keys = (a.keys() | b.keys()) - set(EVALUATION_ONLY_SETTINGS)
    return all(a.get(k, fallback.get(k)) == b.get(k, fallback.get(k)) for k in keys)


def app_defaults() -> dict[str, Any]:
    """The run config every run starts from: pyproject.toml's [tool.flwr.app.config] (a fresh copy)."""
    return dict(_app_config())


@functools.cache
def _app_config() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


def twin_summary(cell: Cell) -> dict[str, Any] | None:
    """The summary of the same training in another study (`same-runs-as`), relabelled as this cell's
    (its `borrowed-from` names the file and the group it came from); None without one."""
    if cell.twin is None or not cell.twin.is_file():
        return None
    twin = json.loads(cell.twin.read_text())
    if not same_training(twin.get("run-config", {}), cell.overrides, app_defaults()):
        return None
    where = cell.twin.relative_to(ROOT) if cell.twin.is_relative_to(ROOT) else cell.twin
    source = {"summary": str(where), "group": twin["group"]}
    return {**twin, "cell": cell.id, "group": cell.group, "borrowed-from": source}


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """The cells matching any pattern (cell id, group name or fnmatch pattern of ids), in pattern order."""
    chosen: dict[str, Cell] = {}
    for pattern in patterns:
        matches = [c for c in cells if c.group == pattern or fnmatch.fnmatchcase(c.id, pattern)]
        if not matches:
            raise SystemExit(f"--only: {pattern!r} matches no cell or group of the study file")
        chosen.update((c.id, c) for c in matches if c.id not in chosen)
    return list(chosen.values())


def holding_counts(records: list[dict[str, Any]], num_experts: int) -> dict[str, list[int]]:
    """client id -> rounds in which it held each expert."""
    counts: dict[str, list[int]] = {}
    for record in records:
        for client, held in zip(record["clients"], record["held"]):
            row = counts.setdefault(client, [0] * num_experts)
            for expert in held:
                row[expert] += 1
    return dict(sorted(counts.items()))
