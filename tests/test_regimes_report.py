"""The regime grid's section of docs/results.md (flexmoe_bench.report.regimes), on hand-made summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from flexmoe_bench.report.regimes import (
    RegimeRuns,
    churn_points,
    compare,
    distinct_experts,
    expert_rounds,
    flatness_line,
    mechanism_rows,
    pooled,
    regimes_section,
    score,
)
from flexmoe_bench.report.stats import holm
from flexmoe_bench.report.summaries import Runs

STUDY = """
[study]
seeds = [1, 2, 3]
[base]
num-server-rounds = 6
dirichlet-alpha = 0.3
[[group]]
name = "base"
methods = ["flexmoe", "greedy", "dense", "local"]
[[group]]
name = "alpha"
methods = ["flexmoe", "greedy"]
vary = { dirichlet-alpha = [0.1] }
"""

# score = mean of the last 5 rounds; each curve is [0, then five rounds at value v + a ramp that averages 0]
TAIL = [-0.02, -0.01, 0.0, 0.01, 0.02]


def run(group: str, method: str, seed: int, value: float, load_cv: float, starved: int = 0, **varied) -> dict:
    cell = "-".join(p for p in (group, method, "-".join(str(v) for v in varied.values()), f"s{seed}") if p)
    overrides = {"num-server-rounds": 6, "dirichlet-alpha": 0.3, **varied, "assignment": method, "seed": seed}
    return {
        "cell": cell,
        "group": group,
        "method": method,
        "seed": seed,
        "varied": varied,
        "run-config": overrides,
        "wall-seconds": 10.0,
        "summary": {"accuracy": value + TAIL[-1]},
        "curves": {
            "accuracy": [0.0, *(value + t for t in TAIL)],
            "load-cv": [load_cv] * 6,
            "starved-experts": [starved] * 6,
        },
    }


FLEX = {1: 0.70, 2: 0.74, 3: 0.69}
GREEDY = {1: 0.60, 2: 0.70, 3: 0.66}
ALPHA_FLEX = {1: 0.50, 2: 0.52, 3: 0.55}
ALPHA_GREEDY = {1: 0.40, 2: 0.41, 3: 0.47}


def summaries() -> list[dict]:
    out = []
    for seed in (1, 2, 3):
        out += [
            run("base", "flexmoe", seed, FLEX[seed], 0.2),
            run("base", "greedy", seed, GREEDY[seed], 0.8, starved=2),
            run("base", "dense", seed, 0.85 + 0.01 * seed, 0.0),
            run("base", "local", seed, 0.90, 0.0),
            run("alpha", "flexmoe", seed, ALPHA_FLEX[seed], 0.1, **{"dirichlet-alpha": 0.1}),
            run("alpha", "greedy", seed, ALPHA_GREEDY[seed], 0.9, starved=4, **{"dirichlet-alpha": 0.1}),
        ]
    return out


def test_score_is_the_mean_of_the_last_five_rounds():
    assert score(run("base", "flexmoe", 1, 0.7, 0.2)) == pytest.approx(0.7)


def test_a_family_is_compared_pairwise_and_holm_corrected_together():
    rr = RegimeRuns(Runs(summaries()))
    regimes = rr.regimes(["alpha"])
    assert [r.name for r in regimes] == ["base", "Dirichlet α = 0.1"]
    rows = compare(rr, regimes, [("flexmoe", "greedy")])
    base_d = [FLEX[s] - GREEDY[s] for s in (1, 2, 3)]
    alpha_d = [ALPHA_FLEX[s] - ALPHA_GREEDY[s] for s in (1, 2, 3)]
    raw = [
        stats.ttest_rel(list(FLEX.values()), list(GREEDY.values())).pvalue,
        stats.ttest_rel(list(ALPHA_FLEX.values()), list(ALPHA_GREEDY.values())).pvalue,
    ]
    for row, d, p in zip(rows, (base_d, alpha_d), holm(raw)):
        assert row.test.mean == pytest.approx(np.mean(d))
        half = stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / np.sqrt(3)
        assert row.test.ci == pytest.approx((np.mean(d) - half, np.mean(d) + half))
        assert row.test.holm_p == pytest.approx(p)
    # the alpha regime's gaps (0.10, 0.11, 0.08) are tight: p = 0.0082 raw, 0.016 after Holm over 2
    assert rows[1].test.verdict == "better" and rows[0].test.verdict == "no detectable difference"
    n, p = pooled(rows, "greedy")
    assert n == 6 and p == pytest.approx(stats.wilcoxon(base_d + alpha_d).pvalue)


def test_the_mechanism_sets_the_load_gap_beside_the_accuracy_gap():
    rr = RegimeRuns(Runs(summaries()))
    rows = mechanism_rows(rr, rr.regimes(["alpha"]))
    assert [(r["regime"], r["baseline"]) for r in rows] == [("base", "greedy"), ("Dirichlet α = 0.1", "greedy")]
    assert rows[0]["load-gap"] == pytest.approx(0.8 - 0.2) and rows[1]["load-gap"] == pytest.approx(0.9 - 0.1)
    assert rows[1]["accuracy-gap"] == pytest.approx(np.mean([0.10, 0.11, 0.08]))
    assert rows[1]["starved"] == 4 and rows[1]["starved-flexmoe"] == 0


def test_the_section_has_its_tables_figures_and_missing_cells(tmp_path: Path):
    study = tmp_path / "regimes.toml"
    study.write_text(STUDY)
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for s in summaries():
        if s["cell"] != "base-local-s3":  # one cell not run yet
            (runs_dir / f"{s['cell']}.json").write_text(json.dumps(s))
    lines = regimes_section(runs_dir, study, tmp_path / "fig", lambda alt, name: f"![{alt}]({name})", lambda p: p)
    text = "\n".join(lines)
    assert "Cells done: 17 of 18" in text
    assert "1 cells, per group: base 1. They are: base-local-s3." in text

    assert "| base | flexmoe − dense |" in text and "| base | dense − local |" in text
    assert "0.9000 ± 0.0000 (n=2)" in text  # local's base score over the 2 seeds it has
    assert "Dirichlet α = 0.3 (base)" in text  # the base cell named on its axis
    assert "**better**" in text
    assert (tmp_path / "fig" / "regimes_gaps.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "regimes_mechanism.png").stat().st_size > 1000


def test_flatness_compares_dense_last_five_rounds_with_the_five_before():
    dense = run("base", "dense", 2, 0.8, 0.0)
    dense["curves"]["accuracy"] = [0.1] * 2 + [0.50, 0.52, 0.54, 0.56, 0.58] + [0.60, 0.61, 0.62, 0.63, 0.64]
    line = flatness_line(RegimeRuns(Runs([dense])))
    assert "seed 2 +0.0800" in line  # 0.62 - 0.54
    short = run("base", "dense", 1, 0.8, 0.0)  # 6 rounds: no 5 rounds before the last 5
    assert flatness_line(RegimeRuns(Runs([short]))) == ""


def test_churn_counts_the_distinct_experts_each_client_trained_and_finds_the_ablation_group():
    sticky = run("base-fitness-0", "flexmoe", 1, 0.8, 0.3)
    sticky["holding"] = {"a": [3, 3, 0, 0], "b": [0, 0, 2, 2], "idle": [0, 0, 0, 0]}  # idle never trained: ignored
    churny = run("base", "flexmoe", 1, 0.7, 0.2)
    churny["holding"] = {"a": [1, 1, 1, 1], "b": [1, 0, 1, 0]}
    assert distinct_experts(sticky) == 2.0 and expert_rounds(sticky) == 5.0  # (2 + 2) / 2, (6 + 4) / 2
    assert distinct_experts(churny) == 3.0 and expert_rounds(churny) == 3.0  # (4 + 2) / 2, (4 + 2) / 2
    rr = RegimeRuns(Runs([sticky, churny]))
    # the ablation's report name reads its own group, in the base cell only
    assert rr.scores("base", {}, "flexmoe-Q0=0") == {1: pytest.approx(0.8)}
    points = churn_points(rr, ["flexmoe", "flexmoe-Q0=0", "dense"])  # dense is not sparse: no point
    assert [(p["method"], p["distinct"]) for p in points] == [("flexmoe", 3.0), ("flexmoe-Q0=0", 2.0)]
