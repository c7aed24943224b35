"""Everything a run leaves on disk: config, per-round metrics, assignments, plots, checkpoints.

Every file is written atomically (temporary file in the same directory, then
``os.replace``) so an interrupted run never leaves a half-written result or
checkpoint behind: readers see either the previous version or the new one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexmoe_core.files import atomic_write_bytes, atomic_write_json

CHECKPOINT_NAME = "checkpoint.npz"
# Columns that hold one value per expert; the CSV spreads them over `name-<e>` columns.
PER_EXPERT_KEYS = ("expert-load", "routed-load")


def save_checkpoint(path: Path, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
    """One file holds the global arrays and the JSON-safe server state, so they can never disagree."""
    buffer = io.BytesIO()
    payload = {f"array/{key}": value for key, value in arrays.items()}
    payload["state.json"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    np.savez(buffer, allow_pickle=False, **payload)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of `save_checkpoint`; raises FileNotFoundError naming the path when absent."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: start without `resume` or point results-dir at a run")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key[len("array/") :]: data[key] for key in data.files if key.startswith("array/")}
        state = json.loads(data["state.json"].tobytes().decode())
    return arrays, state


class ResultsWriter:
    """Writes a run's results directory; rewriting all files each round keeps them complete."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / CHECKPOINT_NAME

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_json(self.directory / "config.json", dict(config))

    def write_rounds(self, rounds: Sequence[Mapping[str, Any]]) -> None:
        """Per-round metrics as JSON (lists kept) and CSV (per-expert lists spread over columns)."""
        atomic_write_json(self.directory / "metrics.json", list(rounds))
        atomic_write_bytes(self.directory / "metrics.csv", rounds_to_csv(rounds).encode())

    def write_assignments(self, history: Sequence[Mapping[str, Any]], fitness: Mapping[str, Any]) -> None:
        atomic_write_json(self.directory / "assignments.json", list(history))
        if history:
            atomic_write_json(self.directory / "final_assignment.json", history[-1])
        atomic_write_json(self.directory / "fitness.json", dict(fitness))

    def write_plots(
        self, rounds: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]], num_experts: int, title: str
    ) -> list[Path]:
        from flexmoe_core import plots  # matplotlib is only loaded when plotting

        return plots.write_all(self.directory, rounds, history, num_experts, title)


def rounds_to_csv(rounds: Sequence[Mapping[str, Any]]) -> str:
    """Flatten per-round dicts to CSV; list values become `<key>-<index>` columns."""
    flat = [flatten_row(r) for r in rounds]
    columns: list[str] = []
    for row in flat:
        columns.extend(key for key in row if key not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


def flatten_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One round as its metrics.csv row: a list value becomes `<key>-<index>` columns."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{key}-{i}": item for i, item in enumerate(value)})
        else:
            flat[key] = value
    return flat
