"""Experiment tracking: the metrics a run already computes, as TensorBoard scalars (`tracking = "tensorboard"`).

Off by default (`tracking = "none"`). With `"tensorboard"` the server writes, after every round,
each numeric column of that round's `metrics.csv` row as a scalar (step = the round), plus the
derived `time/server-share` (server seconds / round seconds), under `<results-dir>/tensorboard/`;
after the last round it adds the final assignment heatmap (`assignment_heatmap.png`, the plot
the results writer already made) as an image. `tensorboard --logdir results/` then browses one
run, or every cell of a sweep side by side.

Tags are grouped by `scalar_tag`: `accuracy/*`, `balance/*`, `bytes/*`, `time/*`, `run/*`, and the
per-expert lists as `expert-load/<e>`, `routed-load/<e>`, `cumulative-load/<e>`.

TensorBoard (the optional extra `[export]`) is imported only when tracking is on, so the core
imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flexmoe_core.results import flatten_row

TRACKERS = ("none", "tensorboard")
TENSORBOARD_DIR = "tensorboard"
HEATMAP_FILE = "assignment_heatmap.png"
HEATMAP_TAG = "assignment/final-heatmap"
SERVER_SHARE_TAG = "time/server-share"
_PER_EXPERT = ("expert-load", "routed-load", "cumulative-load")
_SECTIONS = (
    ("accuracy", "accuracy"),
    ("eval-loss", "accuracy"),
    ("train-loss", "accuracy"),
    ("load-", "balance"),
    ("routed-load-", "balance"),
    ("cumulative-load-", "balance"),
    ("bytes-", "bytes"),
)


def scalar_tag(column: str) -> str:
    """The TensorBoard tag of a `metrics.csv` column (e.g. `load-cv` -> `balance/load-cv`)."""
    for key in _PER_EXPERT:
        prefix = f"{key}-"
        if column.startswith(prefix) and column[len(prefix) :].isdigit():
            return f"{key}/{column[len(prefix) :]}"
    for prefix, section in _SECTIONS:
        if column.startswith(prefix):
            return f"{section}/{column}"
    if column.endswith("seconds"):
        return f"time/{column}"
    return f"run/{column}"


def round_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric value of a round's metrics.csv row, by tag, plus the server share (no `round`)."""
    out = {
        scalar_tag(column): float(value)
        for column, value in flatten_row(row).items()
        if column != "round" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if row.get("round-seconds"):
        out[SERVER_SHARE_TAG] = float(row["server-seconds"]) / float(row["round-seconds"])
    return out


class Tracker:
    """No tracking: every call is a no-op (the default)."""

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Record one finished round's metrics."""

    def finish(self, results_dir: Path, server_round: int) -> None:
        """Record what only the end of the run has (the final assignment heatmap) and flush."""

    def close(self) -> None:
        """Release files; safe to call twice."""


class TensorBoardTracker(Tracker):
    """Scalars and the heatmap through `torch.utils.tensorboard.SummaryWriter`."""

    def __init__(self, log_dir: Path, *, first_round: int = 1) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                'tracking = "tensorboard" needs TensorBoard, in the optional extra: pip install -e ".[export]"'
            ) from err
        self.log_dir = log_dir
        # A resumed run rewrites from its first new round on: TensorBoard drops later steps of older files.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=first_round if first_round > 1 else None)

    def log_round(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        for tag, value in round_scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def finish(self, results_dir: Path, server_round: int) -> None:
        heatmap = Path(results_dir) / HEATMAP_FILE
        if heatmap.is_file():
            import matplotlib.image

            image = matplotlib.image.imread(heatmap)  # (H, W, 4) floats in [0, 1]
            self.writer.add_image(HEATMAP_TAG, image[..., :3], global_step=server_round, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_tracker(kind: str, results_dir: str | Path, *, first_round: int = 1) -> Tracker:
    """The tracker a run's `tracking` setting names (validated in flexmoe_core.config)."""
    if kind == "none":
        return Tracker()
    if kind == "tensorboard":
        return TensorBoardTracker(Path(results_dir) / TENSORBOARD_DIR, first_round=first_round)
    raise ValueError(f"tracking must be one of {', '.join(TRACKERS)}; got {kind!r}")
