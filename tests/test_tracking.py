"""TensorBoard tracking: what the event files hold is what metrics.csv holds, round by round."""

from __future__ import annotations

import csv

import pytest

from flexmoe_core import tracking
from flexmoe_core.config import Settings, SettingsError
from server_app.app import FederatedRun
from tests.in_process import federation, run_config

pytestmark = pytest.mark.usefixtures("flower_identity")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason='the export extra: pip install -e ".[export]"'
)


def run(tmp_path, name, **overrides):
    config = run_config(results_dir=str(tmp_path / name), expert_hidden=16, max_samples_per_client=40, **overrides)
    FederatedRun(Settings.from_run_config(config), federation(config, 2)).execute()
    return tmp_path / name


def read_events(log_dir):
    events = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_scalars_equal_metrics_csv_and_the_heatmap_is_an_image(tmp_path):
    results = run(tmp_path, "tb", tracking="tensorboard")
    with (results / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    events = read_events(results / tracking.TENSORBOARD_DIR)
    tags = set(events.Tags()["scalars"])
    numeric = [c for c in rows[0] if c != "round" and rows[0][c] not in ("", "True", "False")]
    assert {tracking.scalar_tag(c) for c in numeric} | {tracking.SERVER_SHARE_TAG} == tags
    # the list: accuracy, p10, load CV, cumulative CV, Jain, bytes, server share, per-expert load
    for tag in (
        "accuracy/accuracy",
        "accuracy/accuracy-p10",
        "balance/load-cv",
        "balance/cumulative-load-cv",
        "balance/load-jain",
        "bytes/bytes-total-per-client",
        "time/server-share",
        "expert-load/0",
        "expert-load/3",
    ):
        assert tag in tags, tag
    for column in numeric:
        points = events.Scalars(tracking.scalar_tag(column))
        assert [p.step for p in points] == [int(r["round"]) for r in rows]
        # TensorBoard stores float32
        assert [p.value for p in points] == pytest.approx(
            [float(r[column]) for r in rows], rel=1e-6, abs=1e-30, nan_ok=True
        )  # undefined in a round (the class entropy of an expert nobody routed to) is NaN in both
    share = [p.value for p in events.Scalars(tracking.SERVER_SHARE_TAG)]
    expected = [float(r["server-seconds"]) / float(r["round-seconds"]) for r in rows]
    assert share == pytest.approx(expected, rel=1e-6)
    (image,) = events.Images(tracking.HEATMAP_TAG)
    assert image.step == len(rows) and image.width > 100 and image.height > 100


def test_tracking_is_off_by_default_and_a_bad_value_is_refused(tmp_path):
    results = run(tmp_path, "plain", num_server_rounds=1)
    assert not (results / tracking.TENSORBOARD_DIR).exists()
    with pytest.raises(SettingsError, match="tracking must be one of none, tensorboard; got 'wandb'"):
        Settings.from_run_config(run_config(tracking="wandb"))


def test_a_resumed_run_continues_the_same_curves(tmp_path):
    state = str(tmp_path / "state")
    run(tmp_path, "r", tracking="tensorboard", num_server_rounds=1, client_state_dir=state)
    results = run(tmp_path, "r", tracking="tensorboard", num_server_rounds=2, resume=True, client_state_dir=state)
    events = read_events(results / tracking.TENSORBOARD_DIR)
    assert [p.step for p in events.Scalars("accuracy/accuracy")] == [1, 2]


def test_the_sweep_turns_tracking_on_for_every_cell_without_changing_its_run_config(tmp_path, monkeypatch):
    from flexmoe_bench import sweep
    from flexmoe_bench.launcher import RunOutcome

    submitted = []

    class FakeSuperLink:
        def __init__(self, num_supernodes):
            self.federation_config = {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def run(self, app_dir, config, **kwargs):
            submitted.append(config)
            return RunOutcome(1, "finished:failed", 0.0, "")  # nothing to summarise

    monkeypatch.setattr(sweep, "SimulationSuperLink", FakeSuperLink)
    study = tmp_path / "study.toml"
    study.write_text('[study]\nseeds = [1]\n[[group]]\nname = "g"\nmethods = ["flexmoe", "greedy"]\n')
    args = ["--study", str(study), "--summaries", str(tmp_path / "s"), "--results", str(tmp_path / "r")]
    assert sweep.main([*args, "--tracking", "tensorboard"]) == 1
    assert len(submitted) == 4 and all(c["tracking"] == "tensorboard" for c in submitted)
    assert {c["results-dir"] for c in submitted} == {str(tmp_path / "r" / f"g-{m}-s1") for m in ("flexmoe", "greedy")}
    submitted.clear()
    assert sweep.main(args) == 1
    assert all("tracking" not in c for c in submitted)
