"""The report's figures (PNG, written atomically by flexmoe_core.plots); each returns its file name.

matplotlib is imported only when a figure is drawn, so the statistics and tables load without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flexmoe_bench.report.stats import mean_curve
from flexmoe_bench.report.summaries import METHODS, REFERENCE, Grid, Runs, partition_name

COLOURS = {
    "flexmoe": "tab:blue",
    "greedy": "tab:orange",
    "random": "tab:green",
    "static": "tab:purple",
    "dense": "tab:gray",
}


@dataclass(frozen=True)
class Figures:
    """The file names of the figures drawn (None where there were no runs to draw)."""

    accuracy: list[str]  # one per dataset of the main grid
    load_cv: list[str]  # one per dataset of the main grid
    heatmap: str | None
    capacity: str | None
    partial: str | None
    convergence: str | None


def draw_figures(
    runs: Runs, grid: Grid, capacity: Mapping[int, Mapping[str, tuple[float, float]]], directory: Path
) -> Figures:
    """Every figure of the report, into `directory`."""
    datasets = [d for d in grid.datasets if runs.select("main", dataset=d)]
    partitions = grid.partitions
    accuracy = [
        curves_figure(runs, d, partitions, "accuracy", "accuracy", directory / f"accuracy_{d}.png") for d in datasets
    ]
    load_cv = [
        curves_figure(runs, d, partitions, "load-cv", "expert-load CV", directory / f"load_cv_{d}.png")
        for d in datasets
    ]
    return Figures(
        accuracy=accuracy,
        load_cv=load_cv,
        heatmap=heatmap_figure(runs, directory / "heatmap_fashion-mnist_dirichlet.png"),
        capacity=capacity_figure(capacity, directory / "accuracy_vs_k.png"),
        partial=partial_figure(runs, directory / "partial_participation.png"),
        convergence=convergence_figure(runs, grid.main_rounds, directory / "convergence.png"),
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    from flexmoe_core.plots import _save as save_png

    return save_png(fig, path, dpi=100).name


def _mean_band(ax: Any, curves: Iterable[Sequence[float]], **line: Any) -> None:
    """The mean curve over runs as a line, ± its std over runs as a band of the same colour.

    Without a `color` the line and the band each take matplotlib's next cycle colour, as before.
    """
    mean, std = mean_curve(curves)
    x = np.arange(1, len(mean) + 1)
    ax.plot(x, mean, **line)
    band = {"color": line["color"]} if "color" in line else {}
    ax.fill_between(x, mean - std, mean + std, **band, alpha=0.15)


def curves_figure(runs: Runs, dataset: str, partitions: Sequence[str], key: str, ylabel: str, path: Path) -> str:
    """One panel per partition, one line per method (mean over seeds, band = ± std)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(partitions), figsize=(4.6 * len(partitions), 3.6), squeeze=False)
    for ax, partition in zip(axes[0], partitions):
        if not runs.select("main", dataset=dataset, partition=partition):
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        for method in METHODS:
            chosen = runs.select("main", method, dataset=dataset, partition=partition)
            if not chosen:
                continue
            # flexmoe on top and thicker: on load CV it coincides with static (0.2: loads 2 or 3 per round).
            _mean_band(
                ax,
                (r["curves"][key] for r in chosen),
                label=f"{method} (n={len(chosen)})",
                color=COLOURS[method],
                linewidth=2.2 if method == "flexmoe" else 1.4,
                linestyle=":" if method == "static" else "-",
                zorder=3 if method == "flexmoe" else 2,
            )
        ax.set_title(f"{dataset}, {partition_name(partition)}")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def heatmap_figure(runs: Runs, path: Path, seed: int = 1) -> str | None:
    """Rounds each client held each expert: FLEX-MoE beside greedy (reference setting, one seed)."""
    chosen = {m: runs.select("main", m, **REFERENCE) for m in ("flexmoe", "greedy")}
    chosen = {m: [r for r in c if r["seed"] == seed] for m, c in chosen.items()}
    if not all(chosen.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (method, [run]) in zip(axes, chosen.items()):
        clients = sorted(run["holding"], key=lambda c: (len(c), c))
        matrix = np.array([run["holding"][c] for c in clients])
        image = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(clients)), clients, fontsize=7)
        ax.set_xlabel("expert")
        ax.set_title(f"{method}: rounds held (seed {seed}); load per expert {matrix.sum(0).tolist()}", fontsize=8)
        fig.colorbar(image, ax=ax)
    return _save(fig, path)


def capacity_figure(rows: Mapping[int, Mapping[str, tuple[float, float]]], path: Path) -> str | None:
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method in METHODS:
        points = [(k, *rows[k][method]) for k in rows if method in rows[k]]
        if method == "dense" or not points:
            continue
        ks, means, stds = zip(*points)
        ax.errorbar(
            ks,
            means,
            yerr=[0 if math.isnan(s) else s for s in stds],
            marker="o",
            capsize=3,
            label=method,
            color=COLOURS[method],
        )
    ax.set_xlabel("capacity k (experts held of E = 8)")
    ax.set_ylabel("final accuracy")
    ax.set_xticks(sorted(rows))
    ax.set_title("fashion-mnist, Dirichlet(0.8)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def convergence_figure(runs: Runs, main_rounds: int, path: Path) -> str | None:
    """Accuracy of flexmoe and greedy over the long runs (band = ± std over seeds) and their paired
    per-round difference, with the main grid's last round marked."""
    chosen = {m: runs.select("convergence", m) for m in ("flexmoe", "greedy")}
    if not any(chosen.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, group in chosen.items():
        if group:
            curves = (r["curves"]["accuracy"] for r in group)
            _mean_band(axes[0], curves, color=COLOURS[method], label=f"{method} (n={len(group)})")
    by_seed = {m: {r["seed"]: r["curves"]["accuracy"] for r in group} for m, group in chosen.items()}
    seeds = sorted(set(by_seed["flexmoe"]) & set(by_seed["greedy"]))
    if seeds:
        differences = [[f - g for f, g in zip(by_seed["flexmoe"][s], by_seed["greedy"][s])] for s in seeds]
        _mean_band(axes[1], differences, color=COLOURS["flexmoe"], label=f"flexmoe − greedy (n={len(seeds)})")
        axes[1].axhline(0.0, color="black", linewidth=0.8)
    for ax, ylabel in zip(axes, ("accuracy", "paired accuracy difference")):
        ax.axvline(main_rounds, color="gray", linestyle="--", linewidth=1)
        ax.text(
            main_rounds, ax.get_ylim()[0], f" main grid ends ({main_rounds})", color="gray", fontsize=7, va="bottom"
        )
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("fashion-mnist, Dirichlet(0.8): convergence check", fontsize=9)
    return _save(fig, path)


def partial_figure(runs: Runs, path: Path) -> str | None:
    groups = [
        ("flexmoe, deficit-weight " + str(w), runs.select("partial-deficit", "flexmoe", **{"deficit-weight": w}))
        for w in (0.0, 0.1, 0.5)
    ] + [("greedy", runs.select("partial-greedy", "greedy"))]
    groups = [(label, chosen) for label, chosen in groups if chosen]
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    # Distinct line styles: deficit weights 0.1 and 0.5 give the same cumulative CV and would hide each other.
    for (label, chosen), style in zip(groups, ("-", "--", ":", "-.")):
        for ax, key in zip(axes, ("accuracy", "cumulative-load-cv")):
            curves = (r["curves"][key] for r in chosen)
            _mean_band(ax, curves, linestyle=style, linewidth=1.8, label=f"{label} (n={len(chosen)})")
    axes[0].set_ylabel("accuracy of the fixed 20-client cohort")
    axes[1].set_ylabel("cumulative expert-load CV")
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)
