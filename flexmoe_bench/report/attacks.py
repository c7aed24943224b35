"""The attack x defence table (issue #24) in docs/results.md, from docs/attacks/summary.json.

`python -m flexmoe_bench.attacks` writes one row per run (attack, defence, min-holders, seed, final
accuracy); this section reads it back: accuracy per cell over the seeds, what each defence costs on a
clean run (paired by seed against no defence, Holm across the table), and how far each attack pulls each
defence below its own clean accuracy, with the issue's target (the best defence within 5 points of its
clean accuracy) checked per attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from flexmoe_bench.attacks import SCREEN, load_rows
from flexmoe_bench.experiment import APP_DIR, load_overrides
from flexmoe_bench.report.stats import PairedTest, decide, mean_std, paired_test
from flexmoe_bench.report.tables import TEST_HEADER, fmt, fmt_test, table, test_cells

CLEAN = "none"  # the attack column of a clean run
CLEAN_LABEL = "none (clean)"
NO_DEFENCE = ("none", 1)  # (robust-aggregation, min-holders) of the undefended federation
TARGET_DROP = 0.05  # issue #24: the best defence stays within 5 points of its clean accuracy
MISSED = "**no**"  # the "target met" cell of an attack whose best defence misses the target
ADAPTIVE = "adaptive"  # folder beside the table's summary.json with the adaptive attacker's runs
ADAPTIVE_CONFIG = APP_DIR / "conf" / "attacks-adaptive.toml"  # its setting, attack-scale included

Column = tuple[str, int]  # (defence, min-holders)
Scores = dict[tuple[str, str, int], dict[int, float]]  # (attack, defence, min-holders) -> seed -> accuracy


def load_scores(summary: Path, metric: str = "accuracy") -> Scores:
    """(attack, defence, min-holders) -> seed -> final `metric`, from the attack table's summary.json;
    rows written before the metric existed are left out."""
    scores: Scores = {}
    for r in load_rows(summary).values():
        if metric in r:
            scores.setdefault((r["attack"], r["defence"], int(r["min-holders"])), {})[int(r["seed"])] = float(r[metric])
    return scores


def screened_table(summary: Path) -> str:
    """Mean updates left out per run by the norm screen, per attack and screened defence (h = 1 and up)."""
    counts: dict[tuple[str, str, int], list[int]] = {}
    for r in load_rows(summary).values():
        if "screened" in r and "norm-screen" in r["defence"]:
            counts.setdefault((r["attack"], r["defence"], int(r["min-holders"])), []).append(int(r["screened"]))
    cols = sorted({(d, h) for _, d, h in counts}, key=lambda c: (c[1], c[0]))
    found = sorted({a for a, _, _ in counts}, key=lambda a: (a != CLEAN, a))
    body = [[CLEAN_LABEL if a == CLEAN else a, *(_count(counts.get((a, *c))) for c in cols)] for a in found]
    return table(("attack \\ defence", *(f"{d}, h = {h}" for d, h in cols)), body) if cols else ""


def _count(values: Sequence[int] | None) -> str:
    return "—" if not values else f"{sum(values) / len(values):.1f} ({len(values)})"


def columns(scores: Scores) -> list[Column]:
    """The (defence, min-holders) columns present, by min-holders, then defences in order of appearance."""
    defences = list(dict.fromkeys(d for _, d, _ in scores))
    found = set((d, h) for _, d, h in scores)
    return sorted(found, key=lambda c: (c[1], defences.index(c[0])))


def attacks(scores: Scores) -> list[str]:
    """The attacks present, the clean run first."""
    found = list(dict.fromkeys(a for a, _, _ in scores))
    return sorted(found, key=lambda a: a != CLEAN)


def _mean(values: Mapping[int, float]) -> float:
    return mean_std(list(values.values()))[0]


def accuracy_table(scores: Scores) -> str:
    """Mean ± std (seeds) per attack and column; the best column of each attack in bold."""
    cols = columns(scores)
    body = []
    for attack in attacks(scores):
        present = {c: scores[(attack, *c)] for c in cols if (attack, *c) in scores}
        best = max(present, key=lambda c: _mean(present[c])) if present else None
        cells = []
        for c in cols:
            if c not in present:
                cells.append("—")
                continue
            text = f"{fmt(*mean_std(list(present[c].values())), digits=3)} ({len(present[c])})"
            cells.append(f"**{text}**" if c == best else text)
        body.append([CLEAN_LABEL if attack == CLEAN else attack, *cells])
    return table(("attack \\ defence", *(f"{d}, h = {h}" for d, h in cols)), body)


def clean_cost_tests(scores: Scores) -> list[tuple[Column, PairedTest]]:
    """Each defence's clean accuracy minus the undefended clean accuracy, paired by seed, Holm."""
    reference = scores.get((CLEAN, *NO_DEFENCE))
    if reference is None:
        return []
    raw = [(c, paired_test(scores[(CLEAN, *c)], reference)) for c in columns(scores) if c != NO_DEFENCE]
    raw = [(c, t) for c, t in raw if (CLEAN, *c) in scores]
    decided = decide([t for _, t in raw])
    return [(c, t) for (c, _), t in zip(raw, decided)]


def drops(scores: Scores) -> dict[tuple[str, Column], PairedTest]:
    """(attack, column) -> the column's accuracy under the attack minus its own clean accuracy, by seed."""
    out = {}
    for attack in attacks(scores):
        if attack == CLEAN:
            continue
        for c in columns(scores):
            if (attack, *c) in scores and (CLEAN, *c) in scores:
                out[(attack, c)] = paired_test(scores[(attack, *c)], scores[(CLEAN, *c)])
    return out


def drop_table(scores: Scores, tests: Mapping[tuple[str, Column], PairedTest]) -> str:
    cols = columns(scores)
    body = [
        [attack, *(fmt_test(tests[(attack, c)]) if (attack, c) in tests else "—" for c in cols)]
        for attack in attacks(scores)
        if attack != CLEAN
    ]
    return table(("attack \\ defence", *(f"{d}, h = {h}" for d, h in cols)), body)


def best_defences(scores: Scores, tests: Mapping[tuple[str, Column], PairedTest]) -> list[list[str]]:
    """Per attack: the column with the highest mean accuracy under it, its clean accuracy, its drop, and
    whether it meets the target (mean drop within TARGET_DROP; "shown" when the whole interval is)."""
    rows = []
    for attack in attacks(scores):
        candidates = [c for c in columns(scores) if (attack, c) in tests]
        if attack == CLEAN or not candidates:
            continue
        best = max(candidates, key=lambda c: _mean(scores[(attack, *c)]))
        test = tests[(attack, best)]
        if test.mean >= -TARGET_DROP:
            met = "yes" + (", interval too" if test.n > 1 and test.ci[0] >= -TARGET_DROP else "")
        else:
            met = MISSED
        rows.append(
            [
                attack,
                f"{best[0]}, h = {best[1]}",
                f"{_mean(scores[(attack, *best)]):.3f}",
                f"{_mean(scores[(CLEAN, *best)]):.3f}",
                fmt_test(test),
                met,
            ]
        )
    return rows


def attack_figure(scores: Scores, path: Path) -> Path | None:
    """A heatmap of mean accuracy, attacks by (defence, min-holders), each cell annotated."""
    from flexmoe_bench.report.figures import _plt, _save

    cols, rows = columns(scores), attacks(scores)
    if not cols:
        return None
    grid = [[_mean(scores[(a, *c)]) if (a, *c) in scores else math.nan for c in cols] for a in rows]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.05 * len(cols) + 2.2, 0.55 * len(rows) + 1.6))
    image = ax.imshow(
        grid, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(0.7, max(v for r in grid for v in r if v == v))
    )
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="w" if value < 0.45 else "k")
    ax.set_xticks(range(len(cols)), [f"{d}\nh = {h}" for d, h in cols], fontsize=7)
    ax.set_yticks(range(len(rows)), [CLEAN_LABEL if a == CLEAN else a for a in rows])
    ax.set_title("final accuracy under attack (mean over seeds)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    _save(fig, path)
    return path


def attack_section(
    summary: Path, link: Callable[[Path], str], shown: Callable[[Path], Path], figures: Path | None = None
) -> list[str]:
    """The "Poisoning" section of docs/results.md; empty without a summary."""
    scores = load_scores(summary)
    if not scores:
        return []
    seeds = sorted({s for values in scores.values() for s in values})
    lines = [
        "## Poisoning: attacks against defences",
        "",
        f"Runs in `{shown(summary)}` (`python -m flexmoe_bench.attacks`, resumable; setting `conf/attacks.toml`: "
        "fashion-mnist Dirichlet(0.8), 10 clients, E = 8, k = 2, 8 rounds, 2 of 10 clients attacking with scale "
        f"10; FLEX-MoE). Seeds {', '.join(map(str, seeds))}; `h` is `min-holders`. Final accuracy, mean ± std "
        "over seeds (runs in brackets), the best defence of each attack in bold:",
        "",
        accuracy_table(scores),
        "",
    ]
    drawn = attack_figure(scores, figures / "attacks.png") if figures is not None else None
    if drawn is not None:
        lines += [f"![final accuracy per attack and defence]({link(drawn)})", ""]
    costs = clean_cost_tests(scores)
    if costs:
        lines += [
            "What each defence costs on a clean run: its clean accuracy minus the undefended one (none, h = 1), "
            "paired by seed, Holm across the table:",
            "",
            table(
                ("defence", "clean − undefended clean [95 % CI] (seeds)", *TEST_HEADER),
                [[f"{d}, h = {h}", fmt_test(t), *test_cells(t)] for (d, h), t in costs],
            ),
            "",
        ]
    lines += target_lines(scores, "accuracy")
    honest = load_scores(summary, "accuracy-honest")
    if honest:
        lines += [
            "### The clients a defence protects",
            "",
            "Every client is evaluated, attackers too, and a defence that leaves an attacker's updates out does "
            "not serve it: its own experts and classes are then trained by the others only. `accuracy-honest` is "
            "the same final accuracy over the 8 other clients; a clean run names the same attack-clients (attack "
            "`none` changes nothing they send), so each column is read against the same clients' clean accuracy. "
            "Runs that have it (those from before it existed do not):",
            "",
            accuracy_table(honest),
            "",
            *target_lines(honest, "honest clients' accuracy"),
        ]
    screened = screened_table(summary)
    if screened:
        lines += [
            f"Updates the norm screen (`norm-screen` = {SCREEN:g}) left out per run, of 80 (10 clients x 8 "
            "rounds), mean over the runs in brackets; on a clean run every one is an honest client's:",
            "",
            screened,
            "",
        ]
    return lines + adaptive_lines(summary.parent / ADAPTIVE / "summary.json", shown)


def adaptive_lines(summary: Path, shown: Callable[[Path], Path]) -> list[str]:
    """The same attacks at the scale an attacker who knows the screen would pick (its own runs, written by
    `python -m flexmoe_bench.attacks --config conf/attacks-adaptive.toml --summary-dir docs/attacks/adaptive`)."""
    honest = load_scores(summary, "accuracy-honest")
    if not honest:
        return []
    everyone = load_scores(summary)
    scale = load_overrides(ADAPTIVE_CONFIG, [])["attack-scale"]
    return [
        "### An attacker who knows the screen",
        "",
        f"The screen only sees length, so an attacker that knows it stays under it: the same attackers with "
        f"`attack-scale` {scale:g} (below the screen's {SCREEN:g}), runs in `{shown(summary)}` "
        f"(`{shown(ADAPTIVE_CONFIG)}`). Final accuracy over all clients:",
        "",
        accuracy_table(everyone),
        "",
        "and over the honest clients:",
        "",
        accuracy_table(honest),
        "",
        *target_lines(honest, "honest clients' accuracy"),
        "Updates the screen left out there:",
        "",
        screened_table(summary),
        "",
    ]


def target_lines(scores: Scores, what: str) -> list[str]:
    """The drop of every column under every attack and the best defence per attack against the target."""
    tests = drops(scores)
    if not tests:
        return []
    best = best_defences(scores, tests)
    failing = failing_attacks(best)
    return [
        f"How far each attack pulls each defence below its own clean {what} (attacked − clean, paired by seed, "
        "95 % t interval):",
        "",
        drop_table(scores, tests),
        "",
        f"The best defence per attack against the target (within {TARGET_DROP:.2f} of its clean {what}: "
        "the mean drop, and whether its whole interval is too):",
        "",
        table(("attack", "best defence", what, f"its clean {what}", "drop [95 % CI]", "target met"), best),
        "",
        (
            f"Attacks whose best defence here still falls more than {TARGET_DROP:.2f} below its clean {what}: "
            f"{', '.join(failing)}."
            if failing
            else f"Every attack's best defence here stays within the target ({what})."
        ),
        "",
    ]


def failing_attacks(best: Sequence[Sequence[str]]) -> list[str]:
    """The attacks whose best defence (a row of `best_defences`) misses the target by its mean drop."""
    return [row[0] for row in best if row[-1] == MISSED]
