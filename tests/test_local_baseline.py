"""The `local` reference (flexmoe_bench.local): every client trains alone, on the federated runs' footing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flexmoe_bench import local
from flexmoe_bench.study import expand
from flexmoe_bench.sweep import run_local, validate
from flexmoe_core.config import Settings
from server_app.app import FederatedRun
from server_app.evaluation import draw_cohort
from tests.in_process import federation, run_config


class _Info:  # what draw_cohort reads of a connected client
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id


def test_local_evaluates_the_cohort_the_server_draws():
    settings = Settings.from_run_config(run_config(seed=7, eval_cohort=5, results_dir="unused"))
    nodes = {1000 + p: _Info(f"partition-{p}") for p in range(23)}
    server = draw_cohort(settings, nodes)
    assert sorted(f"partition-{p}" for p in local.cohort(settings, 23)) == sorted(server)
    assert len(server) == 5
    everyone = Settings.from_run_config(run_config(seed=7, eval_cohort=0, results_dir="unused"))
    assert local.cohort(everyone, 4) == [0, 1, 2, 3]


def test_round_rows_follow_the_federated_accuracy_definitions():
    # two clients over two rounds: (accuracy, test examples, loss)
    curves = [[(0.5, 10, 1.0), (1.0, 10, 0.2)], [(0.8, 30, 2.0), (0.6, 30, 0.6)]]
    first, second = local.round_rows(curves, [1.5, 2.5])
    assert first["accuracy"] == pytest.approx((0.5 * 10 + 0.8 * 30) / 40)
    assert first["accuracy-min"] == 0.5 and second["accuracy-min"] == 0.6
    assert first["accuracy-p10"] == pytest.approx(0.5 + 0.1 * (0.8 - 0.5))  # linear percentile of two
    assert first["eval-loss"] == pytest.approx((1.0 * 10 + 2.0 * 30) / 40)
    assert second["accuracy"] == pytest.approx((1.0 * 10 + 0.6 * 30) / 40)
    assert [first["round"], second["round"]] == [1, 2] and second["round-seconds"] == 2.5
    assert first["bytes-total-per-client"] == 0.0 and first["num-evaluated"] == 2


@pytest.mark.usefixtures("flower_identity")
def test_one_client_alone_equals_a_dense_federation_of_that_one_client(tmp_path):
    # With a single client, FedAvg returns its own model and it keeps its own gate: the federated
    # dense run IS training alone. The independent path (Flower strategy + ClientApp) must give the
    # same curve as flexmoe_bench.local, round for round.
    config = run_config(assignment="dense", num_server_rounds=3, min_train_nodes=1, results_dir=str(tmp_path / "fl"))
    FederatedRun(Settings.from_run_config(config), federation(config, 1)).execute()
    federated = json.loads((tmp_path / "fl" / "metrics.json").read_text())
    settings = local.settings_of({**config, "assignment": "local"}, {})
    alone = local.run(settings, {**config, "assignment": "local"}, 1, tmp_path / "alone", progress=lambda _: None)
    np.testing.assert_allclose([r["accuracy"] for r in alone], [r["accuracy"] for r in federated], atol=1e-12)
    np.testing.assert_allclose([r["eval-loss"] for r in alone], [r["eval-loss"] for r in federated], rtol=1e-5)
    assert json.loads((tmp_path / "alone" / "config.json").read_text())["assignment"] == "local"


def test_a_study_with_local_expands_validates_and_summarises(tmp_path):
    study = {
        "study": {"seeds": [1], "num-supernodes": 3},
        "base": {
            "num-server-rounds": 2,
            "num-experts": 4,
            "capacity": 2,
            "max-samples-per-client": 60,
            "batch-size": 16,
            "local-epochs": 1,
            "eval-cohort": 2,
        },
        "group": [{"name": "base", "methods": ["dense", "local"]}],
    }
    cells = expand(study)
    assert [c.id for c in cells] == ["base-dense-s1", "base-local-s1"]
    validate(cells, tmp_path)
    outcome = run_local(cells[1], tmp_path / "local")
    assert outcome.ok, outcome.log
    rows = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert len(rows) == 2 and all(r["num-evaluated"] == 2 for r in rows)
    from flexmoe_bench.experiment import summarise

    summary = summarise("local", tmp_path / "local", outcome.seconds)
    assert summary["accuracy"] == rows[-1]["accuracy"] and summary["bytes-expected-vs-dense"] == 0.0


def test_a_bad_local_cell_is_refused_before_anything_runs(tmp_path):
    study = {"base": {"num-experts": 0}, "group": [{"name": "g", "methods": ["local"]}]}
    with pytest.raises(SystemExit, match="(?s)g-local-s42: .*num-experts"):
        validate(expand(study), tmp_path)
