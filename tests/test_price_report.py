"""The price section of docs/results.md (flexmoe_bench.report.price), on hand-made summaries and diagnoses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from flexmoe_bench.report.price import (
    adapted_scores,
    adapted_tests,
    cell_scores,
    cell_tests,
    diagnosis_table,
    price_section,
    read_diagnoses,
    remedy_reading,
)
from flexmoe_bench.report.stats import holm
from flexmoe_bench.report.summaries import Runs

STUDY = """
[study]
seeds = [1, 2, 3]
[base]
num-server-rounds = 6
[[group]]
name = "faithful-c50"
methods = ["flexmoe", "dense", "local"]
[[group]]
name = "fitness-0-c50"
methods = ["flexmoe"]
set = { initial-fitness = 0.0 }
"""

FAITHFUL = {1: 0.30, 2: 0.35, 3: 0.25}
FITNESS_0 = {1: 0.70, 2: 0.78, 3: 0.72}
DENSE = {1: 0.75, 2: 0.80, 3: 0.74}
LOCAL = {1: 0.90, 2: 0.91, 3: 0.93}


def run(group: str, method: str, seed: int, value: float) -> dict:
    overrides = {"num-server-rounds": 6, "assignment": method, "seed": seed}
    if group.startswith("fitness-0"):
        overrides["initial-fitness"] = 0.0
    return {
        "cell": f"{group}-{method}-s{seed}",
        "group": group,
        "method": method,
        "seed": seed,
        "varied": {},
        "run-config": overrides,
        "wall-seconds": 1.0,
        "summary": {"accuracy": value},
        "curves": {"accuracy": [0.0] + [value] * 5},  # score = mean of the last 5 = value
    }


def summaries() -> list[dict]:
    out = []
    for seed in (1, 2, 3):
        out += [
            run("faithful-c50", "flexmoe", seed, FAITHFUL[seed]),
            run("faithful-c50", "dense", seed, DENSE[seed]),
            run("faithful-c50", "local", seed, LOCAL[seed]),
            run("fitness-0-c50", "flexmoe", seed, FITNESS_0[seed]),
        ]
    return out


def test_each_remedy_is_tested_against_its_faithful_rule_and_both_references_with_holm():
    scores = cell_scores(Runs(summaries()), "c50")
    assert scores[("fitness-0", "flexmoe")] == pytest.approx(FITNESS_0)
    assert cell_scores(Runs(summaries()), "c200") == {}
    rows = cell_tests(scores)
    names = [(a, b) for a, b, _ in rows]
    assert names == [
        ("faithful flexmoe", "dense"),
        ("faithful flexmoe", "local"),
        ("fitness-0 flexmoe", "faithful flexmoe"),
        ("fitness-0 flexmoe", "dense"),
        ("fitness-0 flexmoe", "local"),
    ]
    pairs = {
        ("fitness-0 flexmoe", "faithful flexmoe"): (FITNESS_0, FAITHFUL),
        ("faithful flexmoe", "dense"): (FAITHFUL, DENSE),
        ("faithful flexmoe", "local"): (FAITHFUL, LOCAL),
        ("fitness-0 flexmoe", "dense"): (FITNESS_0, DENSE),
        ("fitness-0 flexmoe", "local"): (FITNESS_0, LOCAL),
    }
    raw = [
        stats.ttest_rel([pairs[n][0][s] for s in (1, 2, 3)], [pairs[n][1][s] for s in (1, 2, 3)]).pvalue for n in names
    ]
    expected = holm(raw)
    for (a, b, test), p in zip(rows, expected):
        first, second = pairs[(a, b)]
        assert test.mean == pytest.approx(sum(first[s] - second[s] for s in (1, 2, 3)) / 3)
        assert test.holm_p == pytest.approx(p)


def test_the_section_reads_the_diagnoses_and_the_grid(tmp_path: Path):
    study = tmp_path / "remedies.toml"
    study.write_text(STUDY)
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for s in summaries():
        (runs_dir / f"{s['cell']}.json").write_text(json.dumps(s))
    diag = tmp_path / "diagnosis" / "c50-seed1"
    diag.mkdir(parents=True)
    summary = {
        "clients-accuracy-held-mean": 0.3425,
        "clients-accuracy-best-k-mean": 0.914,
        "clients-accuracy-all-experts-mean": 0.2214,
        "clients-accuracy-dense-run-mean": None,
        "clients-held-rank-mean": 50.2,
        "clients-subsets": 120,
        "clients-rounds-trained-mean": 3.45,
        "drop-on-seen-classes-mean": -0.2684,
        "drop-on-unseen-classes-mean": 0.0863,
    }
    config = {"assignment": "flexmoe", "dirichlet-alpha": 0.1, "num-server-rounds": 20, "seed": 1}
    (diag / "diagnosis.json").write_text(json.dumps({"summary": summary, "config": config}))
    assert [name for name, _ in read_diagnoses(tmp_path / "diagnosis")] == ["c50-seed1"]
    row = diagnosis_table(read_diagnoses(tmp_path / "diagnosis")).splitlines()[2]
    assert row == (
        "| c50-seed1 | flexmoe, α = 0.1, 20 rounds, initial-fitness 1.0, seed 1 | 0.343 | 0.914 | 0.221 | — "
        "| 50.2 of 120 | 3.45 | -0.268 | +0.086 |"
    )
    text = "\n".join(price_section(tmp_path / "diagnosis", runs_dir, study, lambda p: p.name, lambda p: p))
    assert "Cells done: 12 of 12" in text
    assert "| fitness-0 | 0.7333 ± 0.0416 (n=3) | — | — |" in text  # variant row: flexmoe, dense, local


ADAPTED = {1: 0.80, 2: 0.86, 3: 0.79}  # fitness-0 flexmoe's adapted copies
DENSE_ADAPTED = {1: 0.82, 2: 0.84, 3: 0.83}


def adapted_summaries() -> list[dict]:
    """summaries() where fitness-0 flexmoe and dense also report `accuracy-adapted` (adapt-steps 5)."""
    out = []
    for s in summaries():
        extra = {("fitness-0-c50", "flexmoe"): ADAPTED, ("faithful-c50", "dense"): DENSE_ADAPTED}.get(
            (s["group"], s["method"])
        )
        if extra is not None:
            s["curves"]["accuracy-adapted"] = [None] + [extra[s["seed"]]] * 5
        s["run-config"] = {**s["run-config"], "adapt-steps": 5, "adapt-lr": 0.01}  # as in the grid's [base]
        out.append(s)
    return out


def test_adapted_copies_are_tested_against_themselves_unadapted_dense_adapted_and_local(tmp_path: Path):
    runs = Runs(adapted_summaries())
    adapted, plain = adapted_scores(runs, "c50"), cell_scores(runs, "c50")
    assert adapted == {
        ("fitness-0", "flexmoe"): pytest.approx(ADAPTED),
        ("faithful", "dense"): pytest.approx(DENSE_ADAPTED),
    }
    rows = adapted_tests(adapted, plain)
    assert [(a, b) for a, b, _ in rows] == [
        ("fitness-0 flexmoe, adapted", "fitness-0 flexmoe"),
        ("fitness-0 flexmoe, adapted", "dense, adapted"),
        ("fitness-0 flexmoe, adapted", "local"),
    ]
    seeds = (1, 2, 3)
    raw = [
        stats.ttest_rel([ADAPTED[s] for s in seeds], [other[s] for s in seeds]).pvalue
        for other in (FITNESS_0, DENSE_ADAPTED, LOCAL)
    ]
    for (_, _, test), other, p in zip(rows, (FITNESS_0, DENSE_ADAPTED, LOCAL), holm(raw)):
        assert test.mean == pytest.approx(sum(ADAPTED[s] - other[s] for s in seeds) / 3)
        assert test.holm_p == pytest.approx(p)

    study = tmp_path / "remedies.toml"
    study.write_text(STUDY.replace("num-server-rounds = 6", "num-server-rounds = 6\nadapt-steps = 5\nadapt-lr = 0.01"))
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for s in adapted_summaries():
        (runs_dir / f"{s['cell']}.json").write_text(json.dumps(s))
    text = "\n".join(price_section(tmp_path / "none", runs_dir, study, lambda p: p.name, lambda p: p))
    assert "adapt-steps 5, adapt-lr 0.01, every round: faithful, fitness-0" in text
    assert "| fitness-0 | 0.8167 ± 0.0379 (n=3) | — |" in text  # adapted row: flexmoe, dense (faithful only)


def test_a_combination_of_remedies_is_tested_against_each_remedy_alone():
    both = {1: 0.74, 2: 0.80, 3: 0.77}
    scores = {
        ("faithful", "flexmoe"): FAITHFUL,
        ("fitness-0", "flexmoe"): FITNESS_0,
        ("fitness-0+hidden", "flexmoe"): both,
    }
    rows = {(a, b): t for a, b, t in cell_tests(scores)}
    assert list(rows) == [
        ("fitness-0 flexmoe", "faithful flexmoe"),
        ("fitness-0+hidden flexmoe", "faithful flexmoe"),
        ("fitness-0+hidden flexmoe", "fitness-0 flexmoe"),  # hidden alone has no runs here: no row
    ]
    assert rows[("fitness-0+hidden flexmoe", "fitness-0 flexmoe")].mean == pytest.approx(
        sum(both[s] - FITNESS_0[s] for s in (1, 2, 3)) / 3
    )


def test_a_tuned_variant_repeats_its_training_and_meets_dense_tuned_the_same_way():
    from flexmoe_bench.report.price import dense_twin, evaluation_only, trained_as

    assert [evaluation_only(v) for v in ("fitness-0+tune", "tune", "fitness-0", "fitness-0+hidden")] == [
        True,
        True,
        False,
        False,
    ]
    assert (trained_as("fitness-0+tune"), trained_as("tune"), trained_as("hidden")) == (
        "fitness-0",
        "faithful",
        "hidden",
    )
    tuned = {1: 0.90, 2: 0.93, 3: 0.91}
    dense_tuned = {1: 0.92, 2: 0.92, 3: 0.90}
    adapted = {("fitness-0+tune", "flexmoe"): tuned, ("tune", "dense"): dense_tuned, ("faithful", "dense"): DENSE}
    plain = {("fitness-0", "flexmoe"): FITNESS_0, ("faithful", "local"): LOCAL}
    assert dense_twin("fitness-0+tune", adapted) == "tune" and dense_twin("fitness-0", adapted) == "faithful"
    rows = {(a, b): t for a, b, t in adapted_tests(adapted, plain)}
    assert list(rows) == [
        ("fitness-0+tune flexmoe, adapted", "fitness-0 flexmoe"),  # what tuning buys over the same training
        ("fitness-0+tune flexmoe, adapted", "tune dense, adapted"),
        ("fitness-0+tune flexmoe, adapted", "local"),
    ]
    assert rows[("fitness-0+tune flexmoe, adapted", "tune dense, adapted")].mean == pytest.approx(
        sum(tuned[s] - dense_tuned[s] for s in (1, 2, 3)) / 3
    )


def test_the_reading_ranks_remedies_by_their_gain_and_sets_the_best_against_the_references():
    prox = {1: 0.31, 2: 0.35, 3: 0.26}  # +0.0067 over faithful on average
    hidden = {1: 0.60, 2: 0.66, 3: 0.58}
    scores = {
        ("faithful", "flexmoe"): FAITHFUL,
        ("faithful", "dense"): DENSE,
        ("faithful", "local"): LOCAL,
        ("fitness-0", "flexmoe"): FITNESS_0,
        ("hidden", "flexmoe"): hidden,
        ("prox", "flexmoe"): prox,
    }
    rows = cell_tests(scores)
    text = remedy_reading(scores, rows)
    gains = [
        (v, sum(x[s] - FAITHFUL[s] for s in (1, 2, 3)) / 3)
        for v, x in (("fitness-0", FITNESS_0), ("hidden", hidden), ("prox", prox))
    ]
    better = {a.split()[0]: t.verdict == "better" for a, b, t in rows if b == "faithful flexmoe"}
    expected = ", ".join(f"{v} {g:+.3f} (better in {int(better[v])} of 1)" for v, g in gains)
    assert expected in text
    assert "The best sparse variant (fitness-0 flexmoe, 0.733) is 0.030 below dense and 0.180 below local." in text
    assert "(fitness-0, hidden) gains more than every remedy that only changes how" in text
    assert remedy_reading({("faithful", "flexmoe"): FAITHFUL}, []) == ""
    # dense with the best variant's remedy: the price of sparsity with it on both sides, 0.770 - 0.733
    scores[("fitness-0", "dense")] = {1: 0.77, 2: 0.78, 3: 0.76}
    text = remedy_reading(scores, cell_tests(scores))
    assert "is 0.030 below dense, 0.180 below local and 0.037 below dense with the same remedy." in text


def test_a_remedy_that_dense_also_ran_is_tested_against_dense_with_it():
    remedied_dense = {1: 0.80, 2: 0.83, 3: 0.79}
    scores = {
        ("faithful", "flexmoe"): FAITHFUL,
        ("faithful", "dense"): DENSE,
        ("fitness-0", "flexmoe"): FITNESS_0,
        ("fitness-0", "dense"): remedied_dense,
    }
    rows = {(a, b): t for a, b, t in cell_tests(scores)}
    assert ("fitness-0 flexmoe", "fitness-0 dense") in rows and ("faithful flexmoe", "faithful dense") not in rows
    assert rows[("fitness-0 flexmoe", "fitness-0 dense")].mean == pytest.approx(
        sum(FITNESS_0[s] - remedied_dense[s] for s in (1, 2, 3)) / 3
    )


def test_the_remedy_figure_is_drawn_from_the_scores(tmp_path: Path):
    from flexmoe_bench.report.price import remedy_figure

    scores = {
        ("faithful", "flexmoe"): FAITHFUL,
        ("faithful", "dense"): DENSE,
        ("faithful", "local"): LOCAL,
        ("fitness-0", "flexmoe"): FITNESS_0,
        ("fitness-0", "dense"): DENSE,
    }
    path = remedy_figure(scores, "c50", tmp_path / "remedies_c50.png")
    assert path == tmp_path / "remedies_c50.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert remedy_figure({("faithful", "dense"): DENSE}, "c50", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_group_reads_the_same_training_from_another_study_and_says_so(tmp_path: Path):
    """`same-runs-as`: faithful-c50 here is another study's group `base`, run with the same training but
    without adaptation; a twin trained differently (another lr) is not borrowed, so that cell is missing."""
    other = tmp_path / "regimes"
    other.mkdir()
    for s in summaries():
        if s["group"] == "faithful-c50":
            twin = {**s, "group": "base", "cell": f"base-{s['method']}-s{s['seed']}"}
            if (s["method"], s["seed"]) == ("dense", 3):
                twin["run-config"] = {**s["run-config"], "lr": 0.5}
            (other / f"{twin['cell']}.json").write_text(json.dumps(twin))
    study = tmp_path / "remedies.toml"
    study.write_text(
        STUDY.replace("num-server-rounds = 6", "num-server-rounds = 6\nadapt-steps = 5").replace(
            'methods = ["flexmoe", "dense", "local"]',
            f'methods = ["flexmoe", "dense", "local"]\nsame-runs-as = {{ summaries = "{other}", group = "base" }}',
        )
    )
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for s in summaries():
        if s["group"] == "fitness-0-c50":
            s["run-config"] = {**s["run-config"], "adapt-steps": 5}
            (runs_dir / f"{s['cell']}.json").write_text(json.dumps(s))
    text = "\n".join(price_section(tmp_path / "none", runs_dir, study, lambda p: p.name, lambda p: p))
    assert (
        f"Cells done: 11 of 12 (8 of them read from another study that ran the same training, same-runs-as: "
        f"faithful-c50 from {other}, group base; without adapted accuracy)"
    ) in text
    # the borrowed rows are the twins' scores, dense with two seeds (its third twin trained otherwise)
    assert "| faithful | 0.3000 ± 0.0500 (n=3) | 0.7750 ± 0.0354 (n=2) | 0.9133 ± 0.0153 (n=3) |" in text
