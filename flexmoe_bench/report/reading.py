"""The report's written reading: sentences generated from the verdicts and the measured figures.

Every number in a sentence is computed here or in the tables' rows, never typed in, so the prose
changes with the runs; every verdict word (better, worse, no detectable difference) is the
Holm-corrected paired t-test's (flexmoe_bench.report.stats.decide), as in the tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flexmoe_bench.report.stats import (
    ALPHA,
    BETTER,
    NO_DIFFERENCE,
    TAIL_ROUNDS,
    WORSE,
    curve_change,
    decide,
    last_rounds_mean,
    mean_std,
    paired_test,
    pooled_signed_rank,
)
from flexmoe_bench.report.summaries import Runs, main_grid_mean, partition_name
from flexmoe_bench.report.tables import convergence_tests, fmt, fmt_evidence, fmt_p, fmt_test
from flexmoe_bench.study import Cell


def reading(
    rows: Sequence[Mapping[str, Any]],
    head_to_head: Sequence[Mapping[str, Any]],
    runs: Runs,
    checkpoints: Sequence[int] = (),
) -> list[str]:
    """Plain sentences generated from the verdicts and the balance figures: `rows` are the main grid's
    (tables.main_rows), `head_to_head` the paired settings outside it (tables.head_to_head_rows),
    `checkpoints` the convergence check's rounds (summaries.Grid.checkpoints)."""
    return [
        *_main_grid_verdicts(rows),
        *_balance_sentences(runs),
        *_flatness_sentences(runs),
        *_convergence_reading(runs, checkpoints),
        *_head_to_head_reading(head_to_head),
        *_partial_reading(runs),
        *_dense_reading(runs),
    ]


def _main_grid_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where FLEX-MoE is better than, worse than or not distinguishable from greedy on the main grid,
    each setting with its gap, interval and MDE; then the signed-rank test pooled over every pair."""
    by_verdict: dict[str, list[str]] = defaultdict(list)
    pairs: list[tuple[float, float]] = []
    for row in rows:
        name = f"{row['dataset']} {partition_name(row['partition'])}"
        test = row["test"]
        flex, greedy = row["accuracy"]["flexmoe"], row["accuracy"]["greedy"]
        pairs += [(flex[s], greedy[s]) for s in sorted(set(flex) & set(greedy))]
        detail = fmt_test(test) if test.n < 2 else f"{fmt_test(test)}, MDE {test.mde:.4f}"
        by_verdict[test.verdict].append(f"{name} ({detail})")
    rule = f"Holm-corrected paired t-test, p < {ALPHA} across the {len(rows)} settings"
    lines = [
        f"- FLEX-MoE is **better** than greedy ({rule}) on: {'; '.join(by_verdict[BETTER]) or 'none of the settings'}.",
        f"- It is **worse** on: {'; '.join(by_verdict[WORSE]) or 'none'}.",
        f"- **No detectable difference** (the test does not reject; the interval and the smallest difference "
        f"these seeds could detect are given) on: {'; '.join(by_verdict[NO_DIFFERENCE]) or 'none'}.",
    ]
    undecided = [v for v in by_verdict if v.startswith("n/a")]
    if undecided:
        lines.append(
            f"- Not decidable (fewer than 2 paired seeds, or no spread): "
            f"{'; '.join(x for v in undecided for x in by_verdict[v])}."
        )
    if pairs:
        n, p = pooled_signed_rank(pairs)
        gap = float(np.mean([a - b for a, b in pairs]))
        lines.append(
            f"- Pooled over all {n} main-grid (setting, seed) pairs, FLEX-MoE − greedy is {gap:+.4f} on average; "
            f"the Wilcoxon signed-rank test over the pairs gives p = {fmt_p(p)}"
            + (" (rejects at 0.05)." if p < ALPHA else " (no detectable difference pooled either).")
        )
    return lines


def _balance_sentences(runs: Runs) -> list[str]:
    """Per-round and cumulative load CV of FLEX-MoE and greedy over the main grid."""
    lines = []
    for method in ("flexmoe", "greedy"):
        if count := len(runs.select("main", method)):
            lines.append(
                f"- {method}: load CV per round {main_grid_mean(runs, method, 'load-cv'):.3f}, cumulative "
                f"{main_grid_mean(runs, method, 'cumulative-load-cv'):.3f} (mean over {count} runs)."
            )
    return lines


def _flatness_sentences(runs: Runs) -> list[str]:
    """Whether FLEX-MoE's main-grid curves still rise at their end, per dataset."""
    rising: dict[str, list[float]] = defaultdict(list)
    for r in runs.select("main", "flexmoe"):
        if (change := curve_change(r["curves"]["accuracy"], 5)) is not None:
            rising[r["varied"].get("dataset", "?")].append(change)
    lines = []
    for dataset, gains in rising.items():
        gain = float(np.mean(gains))
        lines.append(
            f"- On {dataset}, over its last 5 rounds FLEX-MoE's accuracy still changed by {gain:+.4f} on average "
            + (
                "(the curves have not flattened: longer runs would raise every method's figures)."
                if gain > 0.01
                else "(the curves have flattened)."
            )
        )
    return lines


def _convergence_reading(runs: Runs, checkpoints: Sequence[int]) -> list[str]:
    chosen = {m: runs.select("convergence", m) for m in ("flexmoe", "greedy")}
    tests = convergence_tests(runs, checkpoints)
    if not tests:
        return []
    end = checkpoints[-1]
    tails = {
        m: float(np.mean([r["curves"]["accuracy"][end - 1] - r["curves"]["accuracy"][end - 11] for r in group]))
        for m, group in chosen.items()
    }
    test = tests[-1]
    return [
        f"- Run on to {end} rounds (convergence check, fashion-mnist Dirichlet(0.8)), FLEX-MoE's accuracy changed by "
        f"{tails['flexmoe']:+.4f} over the last 10 rounds (greedy {tails['greedy']:+.4f}); there the paired gap "
        f"FLEX-MoE − greedy is {fmt_evidence(test)}: **{test.verdict}**."
    ]


def _head_to_head_reading(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    by_verdict: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_verdict[row["verdict"]].append(f"{row['setting']} ({fmt_test(row['test'])})")
    parts = [
        f"{word} on {'; '.join(by_verdict[v])}"
        for v, word in (
            (BETTER, "is **better** than greedy"),
            (WORSE, "is **worse**"),
            (NO_DIFFERENCE, "shows **no detectable difference**"),
        )
        if by_verdict[v]
    ]
    undecided = [x for v in by_verdict if v.startswith("n/a") for x in by_verdict[v]]
    if undecided:
        parts.append(f"cannot be tested on {'; '.join(undecided)}")
    return [
        "- Outside the main grid (capacity, devices, extractor, participation, length; Holm-corrected paired "
        f"t-test across that table's {len(rows)} rows), FLEX-MoE {', '.join(parts)}."
    ]


def _partial_reading(runs: Runs) -> list[str]:
    """What the deficit weight does under partial participation: balance over time, and the cohort
    accuracy of each weight against weight 0 (paired by seed, Holm-corrected together)."""
    weights = sorted({r["varied"]["deficit-weight"] for r in runs.select("partial-deficit", "flexmoe")})
    if len(weights) < 2:
        return []
    chosen = {w: runs.select("partial-deficit", "flexmoe", **{"deficit-weight": w}) for w in weights}
    cumulative = {w: mean_std([r["summary"]["cumulative-load-cv"] for r in c])[0] for w, c in chosen.items()}
    accuracy = {w: mean_std([last_rounds_mean(r["curves"]["accuracy"]) for r in c]) for w, c in chosen.items()}
    tail = {w: {r["seed"]: last_rounds_mean(r["curves"]["accuracy"]) for r in c} for w, c in chosen.items()}
    base, others = weights[0], weights[1:]
    tests = decide([paired_test(tail[w], tail[base]) for w in others])
    names = " / ".join(f"{w:g}" for w in weights)
    against = "; ".join(f"{w:g}: {fmt_evidence(t)}, **{t.verdict}**" for w, t in zip(others, tests))
    return [
        f"- Under partial participation (100 clients, 10 per round), deficit weight {names} gives a cumulative "
        f"load CV of {' / '.join(f'{cumulative[w]:.3f}' for w in weights)} and a cohort accuracy (mean of the last "
        f"{TAIL_ROUNDS} rounds) of {' / '.join(fmt(*accuracy[w]) for w in weights)}. Cohort accuracy against "
        f"deficit weight {base:g} (paired by seed, Holm-corrected paired t-test): {against}."
    ]


def _dense_reading(runs: Runs) -> list[str]:
    """FLEX-MoE against dense (all experts held) over every main-grid (setting, seed) both have: one
    pooled paired comparison (t-test decides; the signed-rank test over the same pairs beside it)."""
    flex, dense = _keyed(runs, "flexmoe"), _keyed(runs, "dense")
    test = decide([paired_test(flex, dense)])[0]
    if not test.n:
        return []
    keys = sorted(flex.keys() & dense.keys(), key=str)
    why = {
        NO_DIFFERENCE: "holding 2 of 8 experts costs no accuracy these runs can detect",
        BETTER: "accuracy is personalised: fewer, specialised experts per client need not cost accuracy",
        WORSE: "the price of holding 2 of 8 experts",
    }.get(test.verdict, "too few paired runs to test")
    return [
        f"- Against dense (all 8 experts, no capacity limit), on the {test.n} (setting, seed) runs both have: "
        f"FLEX-MoE {np.mean([flex[k] for k in keys]):.4f}, dense {np.mean([dense[k] for k in keys]):.4f}, paired "
        f"gap {fmt_evidence(test)}: **{test.verdict}** ({why})."
    ]


def _keyed(runs: Runs, method: str) -> dict[tuple[Any, Any, int], float]:
    """A method's main-grid final accuracy by (dataset, partition, seed)."""
    return {
        (r["varied"].get("dataset"), r["varied"].get("partition"), r["seed"]): r["summary"]["accuracy"]
        for r in runs.select("main", method)
    }


def beside_paper(runs: Runs) -> str:
    """This study's load CVs set against the paper's (greedy above 0.29, balanced about 0.003)."""
    if not all(runs.select("main", m) for m in ("flexmoe", "greedy")):
        return ""
    greedy = main_grid_mean(runs, "greedy", "load-cv")
    flex = main_grid_mean(runs, "flexmoe", "load-cv")
    cumulative = main_grid_mean(runs, "flexmoe", "cumulative-load-cv")
    return (
        f"Here greedy's per-round load CV is {greedy:.3f} ({'above' if greedy > 0.29 else 'below'} the paper's "
        f"0.29) and FLEX-MoE's {flex:.3f}: with 10 clients × 2 experts over 8 experts (2.5 holders per expert) "
        "no assignment can go below 0.2 in a round, so the paper's 0.003 is not reachable per round; over the "
        f"rounds FLEX-MoE's cumulative load CV is {cumulative:.3f} against the paper's about 0.003 per round."
    )


def slack_bounds(cells: Sequence[Cell]) -> str:
    """The integer load bounds each load-slack of the study gives (L* = clients x k / E)."""
    slacks = sorted({c.overrides["load-slack"] for c in cells if c.group == "load-slack"})
    if not slacks:
        return ""
    cell = next(c for c in cells if c.group == "load-slack")
    target = cell.num_supernodes * cell.overrides.get("capacity", 2) / cell.overrides.get("num-experts", 8)
    bounds = ", ".join(f"{s} → [{math.floor(target * (1 - s))}, {math.ceil(target * (1 + s))}]" for s in [0.0, *slacks])
    return (
        f"Load-slack s bounds every expert's load to [floor(L*(1−s)), ceil(L*(1+s))] with L* = {target:g} here: "
        f"{bounds}; values with the same bounds give the same runs."
    )
