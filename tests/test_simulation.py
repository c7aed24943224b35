"""One real `flwr run` in Flower's Ray simulation engine, with an injected crashing client."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from flexmoe_bench.launcher import SimulationSuperLink

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_flwr_run_completes_and_survives_a_crashing_client(tmp_path):
    results = tmp_path / "results"
    run_config = {
        "num-server-rounds": 2,
        "num-experts": 4,
        "capacity-profile": "1,2,2,4",
        "max-samples-per-client": 150,
        "batch-size": 16,
        "min-train-nodes": 3,
        "crash-clients": "partition-3",
        "results-dir": str(results),
    }
    with SimulationSuperLink(4, flwr_home=str(tmp_path / "flwr-home")) as superlink:
        pid = superlink.process.pid
        outcome = superlink.run(ROOT, run_config, timeout=500, echo=False)
    with pytest.raises(ProcessLookupError):  # the SuperLink we started is gone
        os.kill(pid, 0)
    assert outcome.ok, f"status {outcome.status}\n{outcome.log[-3000:]}"

    rounds = json.loads((results / "metrics.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["num-sampled"] == 4 and r["num-failed"] == 1 and r["num-completed"] == 3
        assert 0.0 <= r["accuracy-min"] <= r["accuracy"] <= 1.0 and r["num-evaluated"] == 3
        # capacities 1+2+2+4 = 9 over 4 experts: loads 2 or 3 (L* = 2.25), so CV = std/mean of them
        assert sorted(r["expert-load"]) == [2.0, 2.0, 2.0, 3.0]
        assert r["load-cv"] == pytest.approx(0.19245, abs=1e-4)
        assert 0.0 < r["bytes-total-vs-dense"] < 1.0
        assert r["bytes-total-per-client"] == pytest.approx(r["bytes-down-per-client"] + r["bytes-up-per-client"])
    with (results / "metrics.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    history = json.loads((results / "assignments.json").read_text())
    held = dict(zip(history[-1]["clients"], history[-1]["held"]))
    assert {c: len(h) for c, h in held.items()} == {
        "partition-0": 1,
        "partition-1": 2,
        "partition-2": 2,
        "partition-3": 4,
    }
    assert "partition-3" not in history[-1]["completed"]
    for name in ("accuracy.png", "load_cv.png", "assignment_heatmap.png", "checkpoint.npz", "config.json"):
        assert (results / name).stat().st_size > 0
