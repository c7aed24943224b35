"""The study grid: which runs a study file asks for (plain data; the runner is flexmoe_bench.sweep).

A study file is TOML: `[study]` (default `seeds`, `num-supernodes`), `[base]` (the run config every
cell starts from) and `[[group]]` tables with `name`, `methods`, optional `seeds`,
`num-supernodes`, `set` (fixed settings) and `vary` (settings whose value lists form a
cartesian product). Each (group, varied values, method, seed) is one cell with a stable id,
which names its summary file, so a sweep can resume from the summaries alone.
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass, field
from typing import Any

from flexmoe_core.config import ASSIGNMENT_METHODS

# Methods the bench runs itself, outside Flower (flexmoe_bench.local): references, not rules.
BENCH_METHODS = ("local",)
STUDY_METHODS = (*ASSIGNMENT_METHODS, *BENCH_METHODS)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a group, a method, a seed and the run config that follows from them."""

    group: str
    method: str
    seed: int
    varied: tuple[tuple[str, Any], ...]  # the group's varied settings and their values here
    overrides: dict[str, Any] = field(hash=False, compare=False)
    num_supernodes: int = 10

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
        for values in itertools.product(*vary.values()):
            varied = tuple(zip(vary, values))
            for method in methods:
                for seed in seeds:
                    overrides = {**base, **group.get("set", {}), **dict(varied), "assignment": method, "seed": seed}
                    cell = Cell(name, method, seed, varied, overrides, clients)
                    if cell.id in seen:
                        raise SystemExit(f"study file: cell {cell.id} appears twice")
                    seen.add(cell.id)
                    cells.append(cell)
    return cells


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
