"""The price of holding k of E experts (issue #25): the diagnosis and the remedy grid, in docs/results.md.

Two inputs, both committed: the diagnosis tool's outputs (docs/diagnosis/<name>/diagnosis.json, written
by `python -m flexmoe_bench.diagnosis`, one seed of one cell each) and the summaries of the remedy grid
(`conf/remedies.toml`, docs/remedies/runs/*.json). The grid's groups are named `<variant>-<cell>`:
`faithful-c50` is the faithful method in cell c50, `fitness-0-c50` the same cell with one remedy on.
Each remedy is tested against the faithful rule it modifies, and every sparse (variant, rule) against
dense and against `local`, paired by seed, Holm across each cell's table (stats.decide).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flexmoe_bench.report.regimes import score
from flexmoe_bench.report.stats import PairedTest, decide, last_rounds_mean, mean_std, paired_test, t_half_width
from flexmoe_bench.report.summaries import Grid, Runs, load_summaries
from flexmoe_bench.report.tables import TEST_HEADER, fmt_seeds, fmt_test, table, test_cells

FAITHFUL = "faithful"
SPARSE = ("flexmoe", "greedy", "bias-greedy")
REFERENCES = ("dense", "local")
ADAPTED = "accuracy-adapted"
# Variant parts that change evaluation only (adaptation settings): such a run trains exactly as its
# variant without them, so it is left out of the un-adapted tables and tested in the adapted one.
EVALUATION_ONLY = ("tune",)
CELLS = {
    "sb": "the regime grid's sound base (Dirichlet 0.3, 40 rounds)",
    "c50": "issue #25's cross-device cell (Dirichlet 0.1, 50 clients, 10 per round, 20 rounds)",
    "c200": "200 clients, 20 per round",
    **{
        f"main_{partition}": f"the main grid's fashion-mnist {name} cell (10 clients, all train, E = 8, 20 rounds)"
        for partition, name in (("dirichlet", "Dirichlet(0.8)"), ("iid", "IID"), ("classes", "4-classes"))
    },
}

# What each diagnosis row shows: (column header, key of diagnosis.json's summary, format).
DIAGNOSIS_COLUMNS = (
    ("held experts", "clients-accuracy-held-mean", "{:.3f}"),
    ("best k in hindsight", "clients-accuracy-best-k-mean", "{:.3f}"),
    ("all E experts", "clients-accuracy-all-experts-mean", "{:.3f}"),
    ("dense run", "clients-accuracy-dense-run-mean", "{:.3f}"),
    ("held pair's rank (mean)", "clients-held-rank-mean", "{:.1f}"),
    ("rounds a client trained", "clients-rounds-trained-mean", "{:.2f}"),
    ("probe change, holders' classes", "drop-on-seen-classes-mean", "{:+.3f}"),
    ("probe change, other classes", "drop-on-unseen-classes-mean", "{:+.3f}"),
)


# ------------------------------------------------------------------ diagnosis


def read_diagnoses(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, diagnosis.json) for every diagnosis under `folder`, by name."""
    if not folder.is_dir():
        return []
    return [(p.parent.name, json.loads(p.read_text())) for p in sorted(folder.glob("*/diagnosis.json"))]


def _setting(d: Mapping[str, Any]) -> str:
    c = d["config"]
    return (
        f"{c.get('assignment')}, α = {c.get('dirichlet-alpha')}, {c.get('num-server-rounds')} rounds, "
        f"initial-fitness {c.get('initial-fitness', 1.0)}, seed {c.get('seed')}"
    )


def diagnosis_table(diagnoses: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    header = ("diagnosis", "setting", *(h for h, _, _ in DIAGNOSIS_COLUMNS))
    body = []
    for name, d in diagnoses:
        s = d["summary"]
        cells = [fmt.format(s[key]) if s.get(key) is not None else "—" for _, key, fmt in DIAGNOSIS_COLUMNS]
        cells[4] += f" of {s.get('clients-subsets')}"
        body.append([name, _setting(d), *cells])
    return table(header, body)


# ------------------------------------------------------------------ remedy grid


def split_group(group: str) -> tuple[str, str]:
    """`fitness-0-c50` -> ("fitness-0", "c50")."""
    variant, _, cell = group.rpartition("-")
    return variant, cell


def cell_scores(runs: Runs, cell: str) -> dict[tuple[str, str], dict[int, float]]:
    """(variant, method) -> seed -> score, for one cell."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in runs.all:
        variant, kind = split_group(r["group"])
        if kind == cell:
            out.setdefault((variant, r["method"]), {})[r["seed"]] = score(r)
    return out


def adapted_scores(runs: Runs, cell: str) -> dict[tuple[str, str], dict[int, float]]:
    """(variant, method) -> seed -> the adapted model's score (remedy `adapt-steps`: the cohort's
    `accuracy-adapted` over the last rounds), for the runs of one cell that adapted. `local` never
    does: it is already each client's own model."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in runs.all:
        variant, kind = split_group(r["group"])
        curve = r["curves"].get(ADAPTED)
        if kind == cell and curve and any(v is not None for v in curve):
            out.setdefault((variant, r["method"]), {})[r["seed"]] = last_rounds_mean(curve)
    return out


def evaluation_only(variant: str) -> bool:
    """Whether the variant differs from another only in how it is evaluated (e.g. `fitness-0+tune`)."""
    return any(part in EVALUATION_ONLY for part in variant.split("+"))


def trained_as(variant: str) -> str:
    """The variant whose training this one repeats: `fitness-0+tune` -> `fitness-0`, `tune` -> faithful."""
    return "+".join(p for p in variant.split("+") if p not in EVALUATION_ONLY) or FAITHFUL


def dense_twin(variant: str, adapted: Mapping[tuple[str, str], Mapping[int, float]]) -> str | None:
    """The variant whose dense run was adapted the same way as `variant`: its own, one of its parts'
    (`fitness-0+tune` -> `tune`), else the faithful one; None if dense never adapted."""
    for candidate in (variant, *variant.split("+"), FAITHFUL):
        if (candidate, "dense") in adapted:
            return candidate
    return None


def adapted_tests(
    adapted: Mapping[tuple[str, str], Mapping[int, float]], plain: Mapping[tuple[str, str], Mapping[int, float]]
) -> list[tuple[str, str, PairedTest]]:
    """Each sparse (variant, rule) adapted: minus itself un-adapted (what adaptation buys), minus dense
    adapted the same way, and minus `local`; Holm across the table."""
    raw: list[tuple[str, str, PairedTest]] = []
    for (variant, method), a in adapted.items():
        if method not in SPARSE:
            continue
        name = f"{variant} {method}, adapted"
        own = (trained_as(variant), method)
        if own in plain:
            raw.append((name, f"{own[0]} {method}", paired_test(a, plain[own])))
        twin = dense_twin(variant, adapted)
        if twin is not None:
            label = "dense, adapted" if twin == FAITHFUL else f"{twin} dense, adapted"
            raw.append((name, label, paired_test(a, adapted[(twin, "dense")])))
        if (FAITHFUL, "local") in plain:
            raw.append((name, "local", paired_test(a, plain[(FAITHFUL, "local")])))
    decided = decide([t for _, _, t in raw])
    return [(a, b, t) for (a, b, _), t in zip(raw, decided)]


def cell_tests(scores: Mapping[tuple[str, str], Mapping[int, float]]) -> list[tuple[str, str, PairedTest]]:
    """Each remedy minus its faithful rule (a combination `a+b` also minus each of a and b alone); each
    sparse (variant, rule) minus dense and minus local, and minus dense with the same remedy where it ran."""
    raw: list[tuple[str, str, PairedTest]] = []
    for (variant, method), a in scores.items():
        if method not in SPARSE:
            continue
        name = f"{variant} {method}"
        parts = variant.split("+") if "+" in variant else []
        for base in (FAITHFUL, *parts):
            if variant != FAITHFUL and (base, method) in scores:
                raw.append((name, f"{base} {method}", paired_test(a, scores[(base, method)])))
        for reference in REFERENCES:
            if (FAITHFUL, reference) in scores:
                raw.append((name, reference, paired_test(a, scores[(FAITHFUL, reference)])))
        if variant != FAITHFUL and (variant, "dense") in scores:  # dense with the same remedy on
            raw.append((name, f"{variant} dense", paired_test(a, scores[(variant, "dense")])))
    decided = decide([t for _, _, t in raw])
    return [(a, b, t) for (a, b, _), t in zip(raw, decided)]


def scores_table(scores: Mapping[tuple[str, str], Mapping[int, float]]) -> str:
    variants = list(dict.fromkeys(v for v, _ in scores))
    variants.sort(key=lambda v: v != FAITHFUL)
    methods = [m for m in (*SPARSE, *REFERENCES) if any(m == mm for _, mm in scores)]
    body = [
        [v, *(fmt_seeds(scores[(v, m)]) + f" (n={len(scores[(v, m)])})" if (v, m) in scores else "—" for m in methods)]
        for v in variants
    ]
    return table(("variant", *methods), body)


def tests_table(rows: Sequence[tuple[str, str, PairedTest]]) -> str:
    return table(
        ("a", "b", "a − b [95 % CI] (seeds)", *TEST_HEADER),
        [[a, b, fmt_test(t), *test_cells(t)] for a, b, t in rows],
    )


# ------------------------------------------------------------------ figure


def remedy_figure(scores: Mapping[tuple[str, str], Mapping[int, float]], cell: str, path: Path) -> Path | None:
    """Each sparse (variant, rule)'s score with its 95 % t interval over seeds, one row per variant,
    beside dense and local (mean as a line, interval as a band): how far each variant got."""
    from flexmoe_bench.report.figures import _plt, _save

    def interval(values: Mapping[int, float]) -> tuple[float, float]:
        mean, std = mean_std(list(values.values()))
        return mean, t_half_width(std, len(values)) if len(values) > 1 else 0.0

    variants = sorted({v for v, m in scores if m in SPARSE}, key=lambda v: (v != FAITHFUL, v))
    if not variants:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 0.45 * len(variants) + 1.8))
    colours = {"flexmoe": "tab:blue", "greedy": "tab:orange", "bias-greedy": "tab:red"}
    for row, variant in enumerate(variants):
        for k, method in enumerate(SPARSE):
            if (variant, method) in scores:
                mean, half = interval(scores[(variant, method)])
                y = row + (k - 1) * 0.22
                ax.errorbar(
                    mean,
                    y,
                    xerr=half,
                    fmt="o",
                    color=colours[method],
                    ms=4,
                    capsize=2,
                    label=method if row == 0 or (variant, method) == (variants[-1], method) else None,
                )
        if variant != FAITHFUL and (variant, "dense") in scores:  # dense with the same remedy on
            mean, half = interval(scores[(variant, "dense")])
            ax.errorbar(mean, row + 0.33, xerr=half, fmt="x", color="0.35", ms=5, capsize=2, label="dense, same remedy")
    for reference, colour in (("dense", "0.35"), ("local", "tab:green")):
        if (FAITHFUL, reference) in scores:
            mean, half = interval(scores[(FAITHFUL, reference)])
            ax.axvline(mean, color=colour, lw=1, ls="--", label=f"{reference} (faithful)")
            ax.axvspan(mean - half, mean + half, color=colour, alpha=0.12)
    ax.set_yticks(range(len(variants)), variants)
    ax.invert_yaxis()
    ax.set_xlabel("score: cohort accuracy, mean of the last 5 rounds (95 % CI over seeds)")
    ax.set_title(f"cell {cell}: each remedy against dense and training alone")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    # outside the axes: inside, it covers the reference bands the points are read against
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


# ------------------------------------------------------------------ reading


# Remedies by what they change: who trains an expert and what an expert is (churn, shape), against how an
# expert's few updates are averaged (the server step, the proximal term). The reading says which kind
# the measured gains side with.
CHANGES_WHO_OR_WHAT = ("fitness-0", "hidden")
CHANGES_THE_AVERAGE = ("server-step", "prox")


def remedy_gains(rows: Sequence[tuple[str, str, PairedTest]]) -> dict[str, list[PairedTest]]:
    """variant -> its tests against the faithful rule it modifies (one per sparse rule)."""
    gains: dict[str, list[PairedTest]] = {}
    for a, b, test in rows:
        variant, _, method = a.rpartition(" ")
        if b == f"{FAITHFUL} {method}" and variant != FAITHFUL:
            gains.setdefault(variant, []).append(test)
    return gains


def remedy_reading(
    scores: Mapping[tuple[str, str], Mapping[int, float]], rows: Sequence[tuple[str, str, PairedTest]]
) -> str:
    """What the cell's table says, in words: remedies ranked by their mean gain over the faithful rules,
    how many rules each makes better, the best variant against dense and local, and which kind of
    remedy the gains side with. Empty without a remedy."""
    gains = remedy_gains(rows)
    if not gains:
        return ""
    mean_gain = {v: sum(t.mean for t in tests) / len(tests) for v, tests in gains.items()}
    ranked = sorted(mean_gain, key=lambda v: -mean_gain[v])
    parts = [
        f"{v} {mean_gain[v]:+.3f} (better in {sum(t.verdict == 'better' for t in gains[v])} of {len(gains[v])})"
        for v in ranked
    ]
    text = (
        "Reading: remedies ranked by their gain over the faithful rule, averaged over the sparse rules "
        "(in brackets, for how many rules the corrected test calls it better): " + ", ".join(parts) + "."
    )
    seeds = max(len(v) for v in scores.values())  # a variant still running its seeds is not "the best" yet
    best = max(
        ((v, m) for (v, m) in scores if m in SPARSE and len(scores[(v, m)]) == seeds),
        key=lambda key: sum(scores[key].values()) / len(scores[key]),
    )
    best_score = sum(scores[best].values()) / len(scores[best])
    gaps = []
    for reference in REFERENCES:
        if (FAITHFUL, reference) in scores:
            ref = scores[(FAITHFUL, reference)]
            gap = sum(ref.values()) / len(ref) - best_score
            gaps.append(f"{abs(gap):.3f} {'below' if gap > 0 else 'above'} {reference}")
    if (best[0], "dense") in scores:  # the price of sparsity with the remedy on both sides
        same = scores[(best[0], "dense")]
        gap = sum(same.values()) / len(same) - best_score
        gaps.append(f"{abs(gap):.3f} {'below' if gap > 0 else 'above'} dense with the same remedy")
    if gaps:
        listed = ", ".join(gaps[:-1]) + " and " + gaps[-1] if len(gaps) > 1 else gaps[0]
        text += f" The best sparse variant ({best[0]} {best[1]}, {best_score:.3f}) is {listed}."
    helpful = [v for v in CHANGES_WHO_OR_WHAT if v in mean_gain]
    averaging = [v for v in CHANGES_THE_AVERAGE if v in mean_gain]
    if helpful and averaging and min(mean_gain[v] for v in helpful) > max(mean_gain[v] for v in averaging):
        text += (
            " Every remedy that changes who trains an expert or what an expert is ("
            + ", ".join(helpful)
            + ") gains more than every remedy that only changes how an expert's few updates are averaged ("
            + ", ".join(averaging)
            + "): the data side with an expert being overwritten by a stream of different one- or two-class "
            "holders (the diagnosis's probe change: gained on the holders' classes, lost on the others), not "
            "with too few holders to average."
        )
    return text


# ------------------------------------------------------------------ the section


def borrowed_note(runs: Runs) -> str:
    """Which groups' runs were read from another study (`same-runs-as`) and from where, as a bracket for
    the "cells done" sentence; empty without any."""
    sources: dict[tuple[str, str], int] = {}
    for r in runs.all:
        if "borrowed-from" in r:
            source = r["borrowed-from"]
            key = (r["group"], f"{Path(source['summary']).parent}, group {source['group']}")
            sources[key] = sources.get(key, 0) + 1
    if not sources:
        return ""
    listed = "; ".join(f"{group} from {source}" for group, source in sources)
    return (
        f" ({sum(sources.values())} of them read from another study that ran the same training, "
        f"same-runs-as: {listed}; without adapted accuracy)"
    )


def _adapt_setting(runs: Runs, cell: str) -> str:
    """The adaptation settings of the cell's runs and the variants that used each, e.g.
    "adapt-steps 5, adapt-lr 0.01 every round: faithful, fitness-0"."""
    found: dict[str, list[str]] = {}
    for r in runs.all:
        variant, kind = split_group(r["group"])
        c = r["run-config"]
        if kind != cell or not c.get("adapt-steps"):
            continue
        when = "last round only" if c.get("adapt-rounds", "every") == "last" else "every round"
        setting = f"adapt-steps {c['adapt-steps']}, adapt-lr {c.get('adapt-lr')}, {when}"
        if variant not in found.setdefault(setting, []):
            found[setting].append(variant)
    return "; ".join(
        f"{setting}: {', '.join(sorted(variants, key=lambda v: (v != FAITHFUL, v)))}"
        for setting, variants in found.items()
    )


def price_section(
    diagnosis_dir: Path,
    summaries_dir: Path,
    study_file: Path,
    link: Callable[[Path], str],
    shown: Callable[[Path], Path],
    figures: Path | None = None,
) -> list[str]:
    """The "price of holding k of E experts" section; `link` turns a file into a path relative to the report."""
    lines = [
        "## The price of holding k of E experts: diagnosis and remedies",
        "",
        f"Diagnoses: `python -m flexmoe_bench.diagnosis` (one seed of one cell each, outputs in "
        f"`{shown(diagnosis_dir)}/`). Per cohort client after the last round: accuracy with the experts it "
        "holds, with the best k of E in hindsight (chosen on its own test split: an optimistic bound), with all "
        "E under its gate, and in a dense run of the cell; the held pair's rank among the k-subsets; per held "
        "expert and round, the change of its balanced-probe accuracy on the classes its holders had and on the "
        "others (negative = gained).",
        "",
    ]
    diagnoses = read_diagnoses(diagnosis_dir)
    if diagnoses:
        lines += [diagnosis_table(diagnoses), ""]
        for name, _ in diagnoses:
            figure = diagnosis_dir / name / "clients.png"
            if figure.is_file():
                lines += [f"![{name}: per client, held vs best k vs all experts vs dense]({link(figure)})", ""]
    else:
        lines += ["No diagnosis committed yet.", ""]
    grid = Grid.read(study_file)
    runs = grid.current(load_summaries(summaries_dir)) if summaries_dir.is_dir() else Runs([])
    done, total = len(grid.cells) - len(grid.missing(runs)), len(grid.cells)
    lines += [
        "### The remedy grid",
        "",
        f"Grid `{shown(study_file)}`, summaries in `{shown(summaries_dir)}/` (`python -m flexmoe_bench.sweep "
        f"--study {shown(study_file)} --summaries {shown(summaries_dir)}`). Cells done: {done} of {total}"
        f"{borrowed_note(runs)}. Score: the cohort's accuracy averaged over the last 5 rounds. Each remedy changes "
        "one setting of the faithful rule; tests paired by seed, Holm across each cell's table, a verdict word "
        "only where the corrected paired t-test rejects at 0.05.",
        "",
    ]
    for cell, title in CELLS.items():
        everything = cell_scores(runs, cell)
        scores = {key: value for key, value in everything.items() if not evaluation_only(key[0])}
        if not scores:
            continue
        rows = cell_tests(scores)
        lines += [f"#### Cell {cell}: {title}", "", scores_table(scores), "", tests_table(rows), ""]
        reading = remedy_reading(scores, rows)
        if reading:
            lines += [reading, ""]
        drawn = remedy_figure(scores, cell, figures / f"remedies_{cell}.png") if figures is not None else None
        if drawn is not None:
            lines += [f"![cell {cell}: each remedy's score against dense and local]({link(drawn)})", ""]
        adapted = adapted_scores(runs, cell)
        if adapted:
            lines += [
                f"Local adaptation at evaluation, reported apart ({_adapt_setting(runs, cell)}): a copy of each "
                "cohort client's model takes that many SGD steps on its own training split, on its held experts "
                "and gate only (dense: on all experts and its gate), before the test; `accuracy` above is the "
                "un-adapted model's. Scores of the adapted copies:",
                "",
                scores_table(adapted),
                "",
                tests_table(adapted_tests(adapted, everything)),
                "",
            ]
    if not runs.all:
        lines += ["No remedy cell has a summary yet.", ""]
    return lines
