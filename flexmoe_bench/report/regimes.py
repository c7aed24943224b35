"""The regime grid's report ("When does balance matter?"): tested verdicts along each regime axis.

Reads the summaries of `conf/regimes.toml` (docs/regimes/runs/*.json) and writes the section that
`python -m flexmoe_bench.report` puts into docs/results.md, with its figures. A regime is one
setting of one axis (the base cell, or one factor changed from it); each axis is a family of
regimes that all contain the base cell. The score is the mean cohort accuracy of the last
TAIL_ROUNDS rounds (stats.last_rounds_mean): the sparse methods swing from round to round under
partial participation, and one round's draw is not what a deployment keeps.

Every comparison is paired by seed (same partitions, initial model, gates, participants, data
order) and decided by stats.decide: Holm across the comparisons of one table, a verdict word only
where the corrected paired t-test rejects at 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from flexmoe_bench.report.stats import PairedTest, decide, last_rounds_mean, paired_test, pooled_signed_rank
from flexmoe_bench.report.summaries import Grid, Runs, Summary
from flexmoe_bench.report.tables import TEST_HEADER, fmt_p, fmt_seeds, fmt_test, table, test_cells

METHOD = "flexmoe"
BALANCING = ("greedy", "bias-greedy", "sinkhorn")  # the rules FLEX-MoE is compared with everywhere
NO_HISTORY = "no-history"  # FLEX-MoE with deficit-weight 0 (group base-no-history)
# The base cell's ablations, each a group of its own: report name -> (group, method).
ABLATIONS = {
    NO_HISTORY: ("base-no-history", "flexmoe"),
    "flexmoe-Q0=0": ("base-fitness-0", "flexmoe"),  # initial-fitness 0: no optimistic exploration
    "greedy-Q0=0": ("base-fitness-0", "greedy"),
}
SPARSE = ("flexmoe", "greedy", "bias-greedy", "sinkhorn", "random", "static", *ABLATIONS)
BASE = "base"

# The axes: a family name, the groups it adds to the base cell, and how a regime is named.
AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("experts E", ("experts",)),
    ("clients (10 per round)", ("clients-20", "clients-100")),
    ("label skew", ("alpha", "classes-2")),
    ("device capacities", ("capacities",)),
)


@dataclass(frozen=True)
class Regime:
    """One point of an axis: the cells of one group with one set of varied values."""

    name: str
    group: str
    varied: tuple[tuple[str, Any], ...]


def score(run: Summary) -> float:
    """A run's score: mean cohort accuracy over its last rounds."""
    return last_rounds_mean(run["curves"]["accuracy"])


def regime_name(group: str, varied: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """How the report names a regime: the one setting it changes from the base cell."""
    if group == BASE:
        return "base"
    if group == "experts":
        return f"E = {varied['num-experts']}"
    if group.startswith("clients-"):
        return f"{group.removeprefix('clients-')} clients"
    if group == "alpha":
        return f"Dirichlet α = {varied['dirichlet-alpha']}"
    if group == "classes-2":
        return "2 classes per client"
    if group == "capacities":
        return "capacities 1/2/4"
    return group + "".join(f" {k}={v}" for k, v in varied.items())


def base_name(base: Mapping[str, Any], axis: str) -> str:
    """The base cell's value on an axis, so each family reads as a line through it."""
    values = {
        "experts E": f"E = {base.get('num-experts')}",
        "clients (10 per round)": "50 clients",
        "label skew": f"Dirichlet α = {base.get('dirichlet-alpha')}",
        "device capacities": f"capacity {base.get('capacity')} everywhere",
    }
    return f"{values.get(axis, 'base')} (base)"


class RegimeRuns:
    """The regime grid's summaries, keyed by regime and method."""

    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    def select(self, group: str, varied: Mapping[str, Any], method: str) -> list[Summary]:
        """The runs of a method in a regime; an ablation's name stands for its own group in the base cell."""
        if group == BASE and method in ABLATIONS:
            group, method = ABLATIONS[method]
        return self.runs.select(group, method, **varied)

    def scores(self, group: str, varied: Mapping[str, Any], method: str) -> dict[int, float]:
        """seed -> score."""
        return {r["seed"]: score(r) for r in self.select(group, varied, method)}

    def mean_of(self, group: str, varied: Mapping[str, Any], method: str, key: str) -> dict[int, float]:
        """seed -> the run's per-round mean of a curve (load CV, starved experts ...)."""
        out = {}
        for r in self.select(group, varied, method):
            values = [v for v in r["curves"].get(key, []) if v is not None]
            if values:
                out[r["seed"]] = float(np.mean(values))
        return out

    def regimes(self, groups: Sequence[str]) -> list[Regime]:
        """The base regime and every (group, varied values) of `groups` that has a run, in grid order."""
        found: dict[tuple[str, tuple[tuple[str, Any], ...]], None] = {(BASE, ()): None}
        for r in self.runs.all:
            if r["group"] in groups:
                found[(r["group"], tuple(sorted(r["varied"].items())))] = None
        ordered = sorted(found, key=lambda k: (k[0] != BASE, groups.index(k[0]) if k[0] in groups else -1, k[1]))
        return [Regime(regime_name(g, dict(v), {}), g, v) for g, v in ordered]


# ------------------------------------------------------------------ tests


@dataclass(frozen=True)
class Row:
    regime: Regime
    first: str
    second: str
    a: dict[int, float]
    b: dict[int, float]
    test: PairedTest


def compare(rr: RegimeRuns, regimes: Sequence[Regime], pairs: Sequence[tuple[str, str]]) -> list[Row]:
    """first - second in every regime where both ran, Holm-corrected together (one table)."""
    raw = []
    for regime in regimes:
        for first, second in pairs:
            a = rr.scores(regime.group, dict(regime.varied), first)
            b = rr.scores(regime.group, dict(regime.varied), second)
            if a and b:
                raw.append((regime, first, second, a, b, paired_test(a, b)))
    decided = decide([r[-1] for r in raw])
    return [Row(*r[:-1], test=t) for r, t in zip(raw, decided)]


def pooled(rows: Sequence[Row], second: str) -> tuple[int, float]:
    """Signed-rank test of FLEX-MoE - `second` over every (regime, seed) pair of a family."""
    pairs = [(row.a[s], row.b[s]) for row in rows if row.second == second for s in sorted(set(row.a) & set(row.b))]
    return pooled_signed_rank(pairs)


def rows_table(rows: Sequence[Row], base: Mapping[str, Any], axis: str | None = None) -> str:
    header = ("regime", "a − b", "a", "b", "a − b [95 % CI] (seeds)", *TEST_HEADER)
    body = [
        [
            base_name(base, axis) if axis and r.regime.group == BASE else r.regime.name,
            f"{r.first} − {r.second}",
            fmt_seeds(r.a),
            fmt_seeds(r.b),
            fmt_test(r.test),
            *test_cells(r.test),
        ]
        for r in rows
    ]
    return table(header, body)


def methods_table(rr: RegimeRuns, regimes: Sequence[Regime], methods: Sequence[str], base: Mapping[str, Any]) -> str:
    """Score (mean ± std over seeds) of every method in every regime; — where it did not run."""
    header = ("regime", *methods)
    body = []
    for regime in regimes:
        cells = []
        for method in methods:
            values = rr.scores(regime.group, dict(regime.varied), method)
            cells.append(fmt_seeds(values) + f" (n={len(values)})" if values else "—")
        body.append([regime.name, *cells])
    return table(header, body)


def mechanism_rows(rr: RegimeRuns, regimes: Sequence[Regime]) -> list[dict[str, Any]]:
    """Per regime and balancing baseline: the accuracy gap (FLEX-MoE − baseline) against the load
    gap (baseline's mean per-round load CV − FLEX-MoE's) and the starved experts of each."""
    out = []
    for regime in regimes:
        varied = dict(regime.varied)
        ours = rr.scores(regime.group, varied, METHOD)
        our_cv = rr.mean_of(regime.group, varied, METHOD, "load-cv")
        our_starved = rr.mean_of(regime.group, varied, METHOD, "starved-experts")
        for baseline in BALANCING:
            theirs = rr.scores(regime.group, varied, baseline)
            seeds = sorted(set(ours) & set(theirs) & set(our_cv))
            cv = rr.mean_of(regime.group, varied, baseline, "load-cv")
            starved = rr.mean_of(regime.group, varied, baseline, "starved-experts")
            if not seeds or not set(seeds) <= set(cv):
                continue
            out.append(
                {
                    "regime": regime.name,
                    "baseline": baseline,
                    "accuracy-gap": float(np.mean([ours[s] - theirs[s] for s in seeds])),
                    "load-gap": float(np.mean([cv[s] - our_cv[s] for s in seeds])),
                    "starved": float(np.mean([starved.get(s, math.nan) for s in seeds])),
                    "starved-flexmoe": float(np.mean([our_starved.get(s, math.nan) for s in seeds])),
                    "seeds": len(seeds),
                }
            )
    return out


# ------------------------------------------------------------------ churn


CHURN_PAIRS = (
    ("flexmoe-Q0=0", "flexmoe"),
    ("greedy-Q0=0", "greedy"),
    ("flexmoe-Q0=0", "static"),
    ("flexmoe-Q0=0", "dense"),
)


def distinct_experts(run: Summary) -> float:
    """Mean over the clients that trained of how many different experts each held over the run."""
    rows = [np.asarray(v) for v in run.get("holding", {}).values() if sum(v)]
    return float(np.mean([(row > 0).sum() for row in rows])) if rows else math.nan


def expert_rounds(run: Summary) -> float:
    """Mean over the clients that trained of the expert-rounds each held (participations x k)."""
    rows = [sum(v) for v in run.get("holding", {}).values() if sum(v)]
    return float(np.mean(rows)) if rows else math.nan


def churn_points(rr: RegimeRuns, methods: Sequence[str]) -> list[dict[str, Any]]:
    """One point per (sparse method, seed) of the base cell: distinct experts per client and score."""
    return [
        {"method": m, "seed": r["seed"], "distinct": distinct_experts(r), "held": expert_rounds(r), "score": score(r)}
        for m in methods
        if m in SPARSE
        for r in rr.select(BASE, {}, m)
    ]


def churn_table(points: Sequence[Mapping[str, Any]], num_experts: Any) -> str:
    header = (
        "method",
        "score",
        f"distinct experts a client held (of {num_experts})",
        "expert-rounds per client",
        "seeds",
    )
    body = []
    for method in dict.fromkeys(p["method"] for p in points):
        mine = [p for p in points if p["method"] == method]
        distinct = [p["distinct"] for p in mine]
        body.append(
            [
                method,
                f"{np.mean([p['score'] for p in mine]):.4f}",
                f"{np.mean(distinct):.2f} ± {np.std(distinct, ddof=1) if len(distinct) > 1 else 0.0:.2f}",
                f"{np.mean([p['held'] for p in mine]):.1f}",
                len(mine),
            ]
        )
    return table(header, body)


def churn_figure(points: Sequence[Mapping[str, Any]], references: Mapping[str, float], path: Path) -> str | None:
    """Score against distinct experts held per client, one point per (method, seed); dense/local as lines."""
    from flexmoe_bench.report.figures import _plt, _save

    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    for i, method in enumerate(dict.fromkeys(p["method"] for p in points)):
        mine = [p for p in points if p["method"] == method]
        ax.scatter([p["distinct"] for p in mine], [p["score"] for p in mine], color=f"C{i}", label=method, s=22)
    for j, (name, value) in enumerate(references.items()):
        ax.axhline(value, color="black", linestyle=("--", ":")[j % 2], linewidth=0.9, label=f"{name} (mean)")
    ax.set_xlabel("distinct experts a client held over the run (mean over clients)")
    ax.set_ylabel("score: cohort accuracy, mean of last 5 rounds")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def churn_lines(
    rr: RegimeRuns, present: Sequence[str], base: Mapping[str, Any], figures: Path, image: Image
) -> list[str]:
    """Does a client's assignment churn explain the sparse methods' order in the base cell?"""
    points = churn_points(rr, present)
    if not points:
        return []
    references = {m: float(np.mean(list(rr.scores(BASE, {}, m).values()))) for m in ("dense", "local") if m in present}
    name = churn_figure(points, references, figures / "regimes_churn.png")
    ok = [p for p in points if not math.isnan(p["distinct"])]
    rho, p_rho = (
        spearmanr([p["distinct"] for p in ok], [p["score"] for p in ok]) if len(ok) > 2 else (math.nan, math.nan)
    )
    pairs = [(a, b) for a, b in CHURN_PAIRS if a in present and b in present]
    lines = [
        "### Mechanism: assignment churn",
        "",
        "How many different experts a client trained over the run (from each summary's `holding` counts), "
        "beside the score. The fitness table starts optimistic (`initial-fitness` 1.0, the best accuracy "
        "score), so a client is sent to experts it has never held; `*-Q0=0` starts it at 0 instead "
        "(group base-fitness-0, the one change).",
        "",
        churn_table(points, base.get("num-experts")),
        "",
        f"Across the {len(ok)} (method, seed) points: Spearman ρ = {rho:+.2f} (p = {fmt_p(p_rho)}), "
        "descriptive (points of one seed share partitions and are not independent).",
        "",
    ]
    if pairs:
        lines += [rows_table(compare(rr, [Regime("base", BASE, ())], pairs), base), ""]
    return lines + ([image("score against distinct experts held per client, base cell", name), ""] if name else [])


# ------------------------------------------------------------------ figures


def axes_figure(families: Sequence[tuple[str, Sequence[Row]]], base: Mapping[str, Any], path: Path) -> str | None:
    """FLEX-MoE minus each balancing baseline, with 95 % intervals, along each regime axis."""
    from flexmoe_bench.report.figures import _plt, _save

    drawn = [(axis, rows) for axis, rows in families if rows]
    if not drawn:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.6), sharey=True, squeeze=False)
    colours = {"greedy": "tab:orange", "bias-greedy": "tab:red", "sinkhorn": "tab:green"}
    for ax, (axis, rows) in zip(axes[0], drawn):
        names = list(dict.fromkeys(base_name(base, axis) if r.regime.group == BASE else r.regime.name for r in rows))
        for offset, baseline in zip((-0.2, 0.0, 0.2), BALANCING):
            for r in (r for r in rows if r.second == baseline):
                name = base_name(base, axis) if r.regime.group == BASE else r.regime.name
                x = names.index(name) + offset
                low, high = r.test.ci
                err = None if math.isnan(low) else [[r.test.mean - low], [high - r.test.mean]]
                ax.errorbar(x, r.test.mean, yerr=err, fmt="o", color=colours[baseline], capsize=3)
            ax.plot([], [], "o", color=colours[baseline], label=f"FLEX-MoE − {baseline}")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), [n.replace(" (base)", "\n(base)") for n in names], fontsize=7)
        ax.set_title(axis, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy gap (mean of last rounds), 95 % CI")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def mechanism_figure(rows: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    """Accuracy gap against load gap, one point per (regime, baseline)."""
    from flexmoe_bench.report.figures import _plt, _save

    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    colours = {"greedy": "tab:orange", "bias-greedy": "tab:red", "sinkhorn": "tab:green"}
    for baseline in BALANCING:
        chosen = [r for r in rows if r["baseline"] == baseline]
        ax.scatter(
            [r["load-gap"] for r in chosen],
            [r["accuracy-gap"] for r in chosen],
            color=colours[baseline],
            label=f"vs {baseline}",
        )
        for r in chosen:
            ax.annotate(r["regime"], (r["load-gap"], r["accuracy-gap"]), fontsize=6, alpha=0.8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("load gap: baseline's per-round load CV − FLEX-MoE's")
    ax.set_ylabel("accuracy gap: FLEX-MoE − baseline")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------ the section


Image = Callable[[str, str], str]


def regimes_section(
    summaries_dir: Path, study_file: Path, figures: Path, image: Image, shown: Callable[[Path], Path]
) -> list[str]:
    """The "When does balance matter?" section of docs/results.md (its figures into `figures`)."""
    grid = Grid.read(study_file)
    from flexmoe_bench.report.summaries import load_summaries

    runs = grid.current(load_summaries(summaries_dir)) if summaries_dir.is_dir() else Runs([])
    base = grid.base
    done, total = len(grid.cells) - len(grid.missing(runs)), len(grid.cells)
    head = [
        "## When does balance matter? (the regime grid)",
        "",
        f"Grid `{shown(study_file)}`, summaries in `{shown(summaries_dir)}/` "
        f"(`python -m flexmoe_bench.sweep --study {shown(study_file)} --summaries {shown(summaries_dir)}`). "
        f"Cells done: {done} of {total}; the missing ones are listed at the end of this section and a "
        "re-run of that command runs exactly those.",
        "",
        f"Base cell: {base.get('dataset')}, 50 clients, 10 sampled per round, a fixed evaluation cohort of "
        f"{base.get('eval-cohort')} clients, Dirichlet α = {base.get('dirichlet-alpha')}, E = "
        f"{base.get('num-experts')}, k = {base.get('capacity')}, top-r = {base.get('top-r')}, "
        f"{base.get('num-server-rounds')} rounds, {base.get('max-samples-per-client')} samples per client, "
        f"{base.get('local-epochs')} local epochs, lr {base.get('lr')}. Score: the cohort's example-weighted "
        "accuracy averaged over the last 5 rounds, mean ± std over seeds. `local`: each cohort client trains "
        "the dense model alone on its own data for the same rounds and epochs (flexmoe_bench.local). "
        "`no-history`: FLEX-MoE with deficit weight 0, the exact balanced assignment without history "
        "(BASE-layers style), an ablation. Verdicts: paired by seed, Holm-corrected per table, a word only "
        "where the corrected paired t-test rejects at 0.05 (MDE: the gap n seeds detect with power 0.8).",
        "",
    ]
    if not runs.all:
        return [*head, "No regime cell has a summary yet.", ""]
    rr = RegimeRuns(runs)
    base_regime = [Regime("base", BASE, ())]
    methods = ["flexmoe", "greedy", "bias-greedy", "sinkhorn", *ABLATIONS, "random", "static", "dense", "local"]
    present = [m for m in methods if rr.scores(BASE, {}, m)]
    body = [
        "### The base cell",
        "",
        methods_table(rr, base_regime, present, base),
        "",
        rows_table(compare(rr, base_regime, [(METHOD, m) for m in present if m != METHOD]), base),
        "",
        flatness_line(rr),
        "",
    ]
    families = []
    for axis, groups in AXES:
        regimes = rr.regimes(list(groups))
        if len(regimes) < 2:
            continue
        rows = compare(rr, regimes, [(METHOD, b) for b in BALANCING])
        families.append((axis, rows))
        pooled_lines = []
        for baseline in BALANCING:
            n, p = pooled(rows, baseline)
            if n:
                pooled_lines.append(f"FLEX-MoE − {baseline}: {n} pairs, signed-rank p = {fmt_p(p)}")
        body += [
            f"### Axis: {axis}",
            "",
            rows_table(rows, base, axis),
            "",
            "Pooled over the family (every regime and seed): " + ("; ".join(pooled_lines) or "—") + ".",
            "",
        ]
    all_regimes = rr.regimes([g for _, groups in AXES for g in groups])
    price = compare(rr, all_regimes, [(m, "dense") for m in ("flexmoe", "greedy", "bias-greedy", "sinkhorn")])
    versus_local = compare(rr, all_regimes, [("dense", "local"), (METHOD, "local")])
    body += [
        "### The price of holding k of E experts: each sparse method minus dense",
        "",
        rows_table(price, base),
        "",
        "### Does federating help at all? Dense and FLEX-MoE minus training alone",
        "",
        rows_table(versus_local, base) if versus_local else "No regime has `local` runs yet.",
        "",
    ]
    name = axes_figure(families, base, figures / "regimes_gaps.png")
    mechanism = mechanism_rows(rr, all_regimes)
    scatter = mechanism_figure(mechanism, figures / "regimes_mechanism.png")
    body += ["### FLEX-MoE minus each balancing rule along each axis", ""]
    body += [image("FLEX-MoE minus each baseline with 95 % intervals along each regime axis", name), ""] if name else []
    body += [
        "### Mechanism: does the load gap explain the accuracy gap?",
        "",
        table(
            (
                "regime",
                "baseline",
                "accuracy gap (FLEX-MoE − baseline)",
                "load-CV gap (baseline − FLEX-MoE)",
                "starved experts/round, baseline",
                "FLEX-MoE",
                "seeds",
            ),
            [
                [
                    r["regime"],
                    r["baseline"],
                    f"{r['accuracy-gap']:+.4f}",
                    f"{r['load-gap']:+.3f}",
                    f"{r['starved']:.2f}",
                    f"{r['starved-flexmoe']:.2f}",
                    r["seeds"],
                ]
                for r in mechanism
            ],
        ),
        "",
    ]
    body += [image("accuracy gap against load gap across regimes", scatter), ""] if scatter else []
    body += churn_lines(rr, present, base, figures, image)
    return [*head, *body, *missing_lines(grid.missing(runs))]


def flatness_line(rr: RegimeRuns) -> str:
    """Is the base sound? Dense's mean over its last 5 rounds minus the 5 rounds before, per seed."""
    changes = []
    for r in sorted(rr.runs.select(BASE, "dense"), key=lambda r: r["seed"]):
        curve = r["curves"]["accuracy"]
        if len(curve) >= 10:
            change = last_rounds_mean(curve) - last_rounds_mean(curve[:-5])
            changes.append(f"seed {r['seed']} {change:+.4f}")
    if not changes:
        return ""
    return (
        "Base soundness: dense's mean accuracy over the last 5 rounds minus its mean over the 5 rounds "
        f"before ({', '.join(changes)}); a flat curve stays within about ±0.01."
    )


def missing_lines(missing: Sequence[Any]) -> list[str]:
    """The cells without a summary: counted per group, and named when there are few."""
    if not missing:
        return ["### Cells not run yet", "", "None.", ""]
    per_group: dict[str, int] = {}
    for cell in missing:
        per_group[cell.group] = per_group.get(cell.group, 0) + 1
    counts = ", ".join(f"{group} {n}" for group, n in per_group.items())
    named = f" They are: {', '.join(c.id for c in missing)}." if len(missing) <= 30 else ""
    return ["### Cells not run yet", "", f"{len(missing)} cells, per group: {counts}.{named}", ""]
