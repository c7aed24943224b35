"""The report's inputs: the committed run summaries and the study file's grid they belong to.

A summary is the JSON the sweep writes per cell (docs/study/runs/*.json): its group, method,
seed, the settings its group varies (`varied`), its final figures (`summary`) and its per-round
`curves`. Only summaries of the grid as the study file now defines it count, so the report is
regenerated identically from git alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from flexmoe_bench.study import Cell, expand, twin_summary

ROOT = Path(__file__).resolve().parents[2]  # the repository: default paths, and paths the report prints
METHODS = ("flexmoe", "greedy", "random", "static", "dense", "bias-greedy", "sinkhorn")
REFERENCE = {"dataset": "fashion-mnist", "partition": "dirichlet"}  # where capacity and ablations vary
PARTITION_NAMES = {"iid": "IID", "dirichlet": "Dirichlet(0.8)", "classes": "4 classes/client"}

Summary = Mapping[str, Any]


def method_label(run: Summary) -> str:
    """A run's method as the report names it: FLEX-MoE with deficit weight 0 is the exact balanced
    assignment without history (BASE-layers style), listed as its own rule beside the others."""
    if run["method"] == "flexmoe" and run.get("run-config", {}).get("deficit-weight") == 0:
        return "flexmoe (deficit-weight 0: no history)"
    return str(run["method"])


def partition_name(partition: str) -> str:
    """The partition as the report names it (the study file's name where it has no other)."""
    return PARTITION_NAMES.get(partition, partition)


class Runs:
    """The run summaries, indexed by group and setting."""

    def __init__(self, summaries: Sequence[Summary]) -> None:
        self.all = list(summaries)

    def select(self, group: str, method: str | None = None, **varied: Any) -> list[Summary]:
        return [
            r
            for r in self.all
            if r["group"] == group
            and (method is None or r["method"] == method)
            and all(r["varied"].get(k) == v for k, v in varied.items())
        ]

    def final(self, runs: Iterable[Summary], key: str = "accuracy") -> dict[int, float]:
        return {r["seed"]: r["summary"][key] for r in runs}

    @property
    def wall_seconds(self) -> float:
        return sum(r["wall-seconds"] for r in self.all)


def load_summaries(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@dataclass(frozen=True)
class Grid:
    """The study file's cells, and the facts about them the report states."""

    cells: list[Cell]

    @classmethod
    def read(cls, study_file: Path) -> Grid:
        return cls(expand(tomllib.loads(study_file.read_text())))

    def current(self, loaded: Sequence[Summary]) -> Runs:
        """The summaries of the cells as the study file now defines them (others are stale and ignored),
        and for a cell without one, the same training's summary in another study (`same-runs-as`)."""
        wanted = {c.id: c.overrides for c in self.cells}
        own = [r for r in loaded if wanted.get(r["cell"]) == r.get("run-config")]
        have = {r["cell"] for r in own}
        borrowed = [twin_summary(c) for c in self.cells if c.id not in have]
        return Runs(own + [r for r in borrowed if r is not None])

    def missing(self, runs: Runs) -> list[Cell]:
        have = {r["cell"] for r in runs.all}
        return [c for c in self.cells if c.id not in have]

    @property
    def base(self) -> Mapping[str, Any]:
        """The settings every cell shares (read from the first cell)."""
        return self.cells[0].overrides if self.cells else {}

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(c.overrides["dataset"] for c in self.cells if c.group == "main"))

    @property
    def partitions(self) -> list[str]:
        return list(dict.fromkeys(c.overrides["partition"] for c in self.cells if c.group == "main"))

    @property
    def main_rounds(self) -> int:
        return int(self.cells[0].overrides.get("num-server-rounds", 0)) if self.cells else 0

    @property
    def has_convergence(self) -> bool:
        return any(c.group == "convergence" for c in self.cells)

    @property
    def long_rounds(self) -> int:
        """Rounds of the convergence check (0 without one)."""
        long_cells = [c for c in self.cells if c.group == "convergence"]
        return int(long_cells[0].overrides["num-server-rounds"]) if long_cells else 0

    @property
    def checkpoints(self) -> list[int]:
        """Rounds at which the convergence check is read: every multiple of the main grid's length."""
        if not (self.has_convergence and self.main_rounds):
            return []
        return list(range(self.main_rounds, self.long_rounds + 1, self.main_rounds))


def accuracy_at(runs: Sequence[Summary], round_: int) -> dict[int, float]:
    """Accuracy per seed at a given round (1-based) of each run's curve, for runs that reach it."""
    return {
        r["seed"]: r["curves"]["accuracy"][round_ - 1]
        for r in runs
        if len(r["curves"]["accuracy"]) >= round_ and r["curves"]["accuracy"][round_ - 1] is not None
    }


def convergence_matches_main(runs: Runs, rounds: int) -> tuple[int, int]:
    """(runs whose accuracy at `rounds` equals their main-grid twin's final accuracy, twins compared):
    the longer run is the same run continued, so the first `rounds` rounds must coincide."""
    same = compared = 0
    for run in runs.select("convergence"):
        twin = [r for r in runs.select("main", run["method"], **REFERENCE) if r["seed"] == run["seed"]]
        at = accuracy_at([run], rounds).get(run["seed"])
        if twin and at is not None:
            compared += 1
            same += int(math.isclose(at, twin[0]["summary"]["accuracy"], abs_tol=1e-9))
    return same, compared


def main_grid_mean(runs: Runs, method: str, key: str) -> float:
    """Mean of one final figure over all of a method's main-grid runs (nan without any)."""
    values = [r["summary"][key] for r in runs.select("main", method)]
    return float(np.mean(values)) if values else math.nan
