"""PNG plots of a run: accuracy, expert-load balance and the assignment over rounds."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flexmoe_core.files import atomic_write_bytes  # noqa: E402


def write_all(
    directory: Path,
    rounds: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    num_experts: int,
    title: str,
) -> list[Path]:
    """Write every plot of a run and return their paths."""
    if not rounds:
        return []
    return [
        accuracy_plot(directory / "accuracy.png", rounds, title),
        load_cv_plot(directory / "load_cv.png", rounds, title),
        assignment_heatmap(directory / "assignment_heatmap.png", history, num_experts, title),
    ]


def accuracy_plot(path: Path, rounds: Sequence[Mapping[str, Any]], title: str) -> Path:
    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r.get("accuracy", np.nan) for r in rounds], marker="o", label="mean (example-weighted)")
    ax.plot(x, [r.get("accuracy-median", np.nan) for r in rounds], ls="--", label="median client")
    ax.plot(x, [r.get("accuracy-p10", np.nan) for r in rounds], ls=":", label="10th percentile client")
    ax.set(xlabel="round", ylabel="personalised test accuracy", title=f"Accuracy — {title}", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def load_cv_plot(path: Path, rounds: Sequence[Mapping[str, Any]], title: str) -> Path:
    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r.get("load-cv", np.nan) for r in rounds], marker="o", label="clients holding each expert")
    ax.plot(
        x,
        [r.get("cumulative-load-cv", np.nan) for r in rounds],
        marker="^",
        ls=":",
        label="clients holding each expert, summed over rounds",
    )
    ax.plot(
        x, [r.get("routed-load-cv", np.nan) for r in rounds], marker="s", ls="--", label="samples routed to each expert"
    )
    ax.set(xlabel="round", ylabel="coefficient of variation (std/mean)", title=f"Expert-load balance — {title}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def assignment_heatmap(path: Path, history: Sequence[Mapping[str, Any]], num_experts: int, title: str) -> Path:
    """Clients x experts grid per round, laid side by side: who held what, and how it moved."""
    clients = sorted({c for h in history for c in h["clients"]}, key=_natural_key)
    rounds = len(history)
    grid = np.full((len(clients), rounds * (num_experts + 1)), np.nan)
    for r, entry in enumerate(history):
        for client, held in zip(entry["clients"], entry["held"]):
            row = clients.index(client)
            base = r * (num_experts + 1)
            grid[row, base : base + num_experts] = 0
            grid[row, [base + e for e in held]] = 1
    fig, ax = plt.subplots(figsize=(max(6, rounds * num_experts * 0.18), max(3, len(clients) * 0.25)))
    ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(clients)), clients, fontsize=7)
    ax.set_xticks(
        [r * (num_experts + 1) + (num_experts - 1) / 2 for r in range(rounds)],
        [str(h["round"]) for h in history],
        fontsize=7,
    )
    ax.set(
        xlabel=f"round (each block = experts 0..{num_experts - 1}; blank = not sampled)",
        title=f"Expert assignment over rounds — {title}",
    )
    return _save(fig, path)


def comparison_plot(path: Path, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Accuracy and load CV of several runs (e.g. flexmoe vs greedy) on shared axes."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rounds in runs.items():
        x = [r["round"] for r in rounds]
        left.plot(x, [r.get("accuracy", np.nan) for r in rounds], marker="o", label=name)
        (line,) = right.plot(x, [r.get("load-cv", np.nan) for r in rounds], marker="o", label=f"{name} (per round)")
        right.plot(
            x,
            [r.get("cumulative-load-cv", np.nan) for r in rounds],
            ls=":",
            color=line.get_color(),
            label=f"{name} (summed over rounds)",
        )
    left.set(xlabel="round", ylabel="personalised test accuracy", title="Accuracy", ylim=(0, 1))
    right.set(xlabel="round", ylabel="expert-load CV", title="Expert-load imbalance (lower is better)")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _natural_key(name: str) -> tuple[str, int]:
    prefix, _, suffix = name.rpartition("-")
    return (prefix, int(suffix)) if suffix.isdigit() else (name, -1)


def _save(fig: plt.Figure, path: Path, dpi: int = 110) -> Path:
    """Render to memory and write atomically, so an interrupted run never leaves a broken PNG."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
