"""The ClientApp handlers in-process on constructed messages, and a whole run without Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client_app import app as client
from flexmoe_core.aggregation import select_experts
from flexmoe_core.config import Settings
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.model import build_global_state
from server_app.app import FederatedRun
from tests.in_process import federation, node_context, run_config

pytestmark = pytest.mark.usefixtures("flower_identity")


def train_message(held, server_round=1):
    state = build_global_state(4, num_classes=10, in_channels=1, image_size=28, arch="cnn", top_r=2,
                               expert_hidden=256, seed=0)
    sent = select_experts(state, held)
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content, message_type="train", dst_node_id=7), sent


def test_describe_reports_identity_capacity_and_data_size():
    config = run_config(capacity_profile="1,2,4")
    ctx = node_context(7, 2, 3, config)
    reply = client.describe(Message(RecordDict(), message_type="query.describe", dst_node_id=7), ctx)
    info = reply.content["config"]
    assert info["client-id"] == "partition-2"
    assert info["capacity"] == 4  # profile cycled over partitions: partition 2 -> 4
    assert 0 < info["num-examples"] <= 80


def test_train_returns_exactly_the_sent_keys_and_per_expert_feedback():
    ctx = node_context(7, 0, 3, run_config())
    msg, sent = train_message([1, 3])
    reply = client.train(msg, ctx)
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    assert set(arrays) == set(sent)  # no gate, no other experts
    assert all(arrays[k].shape == sent[k].shape and arrays[k].dtype == sent[k].dtype for k in sent)
    assert any(not np.array_equal(arrays[k], sent[k]) for k in sent), "training changed nothing"
    metrics = reply.content["metrics"]
    usage = np.array(metrics["expert-usage"])
    assert len(usage) == 4 and len(metrics["expert-accuracy"]) == 4 and len(metrics["expert-loss"]) == 4
    assert usage[0] == usage[2] == 0  # unheld experts get no samples
    assert usage.sum() == metrics["num-examples"]  # top-1 routing: every sample goes to one held expert
    assert all(0.0 <= a <= 1.0 for a in metrics["expert-accuracy"])
    # the personal gate stays in the node's state, scoring all 4 experts
    gate = ctx.state[client.GATE_KEY]
    assert any(v.numpy().shape[0] == 4 for v in gate.values())


def test_gate_persists_across_rounds_and_is_never_sent():
    ctx = node_context(7, 0, 3, run_config())
    msg, _ = train_message([0, 1], server_round=1)
    client.train(msg, ctx)
    gate_after_round1 = {k: v.numpy().copy() for k, v in ctx.state[client.GATE_KEY].items()}
    msg2, _ = train_message([2, 3], server_round=2)
    model = client.build_model(msg2, Settings.from_run_config(ctx.run_config), ctx,
                               client.load_settings(ctx)[1], gate_round=1)
    for key, value in model.gate_state().items():
        np.testing.assert_array_equal(value, gate_after_round1[key])


def test_evaluate_reports_accuracy_on_the_local_test_split():
    ctx = node_context(7, 1, 3, run_config())
    msg, _ = train_message([0, 2])
    reply = client.evaluate(Message(msg.content, message_type="evaluate", dst_node_id=7), ctx)
    metrics = reply.content["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    assert metrics["num-examples"] == 16  # 20% of 80 samples


def test_missing_partition_in_node_config_is_a_clear_error():
    ctx = node_context(7, 0, 3, run_config())
    del ctx.node_config["partition-id"]
    with pytest.raises(ValueError, match="partition-id and num-partitions are required"):
        client.load_settings(ctx)


def test_whole_run_in_process_writes_results_with_metrics_in_range(tmp_path):
    config = run_config(results_dir=str(tmp_path / "run"), crash_clients="partition-2")
    FederatedRun(Settings.from_run_config(config), federation(config, 4)).execute()
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["num-failed"] == 1 and r["num-completed"] == 3  # the injected crash is counted
        assert 0.0 <= r["accuracy-min"] <= r["accuracy"] <= 1.0
        assert r["load-cv"] == 0.0  # 4 clients x 2 / 4 experts: exactly 2 holders each
        assert sum(r["expert-load"]) == 8
    for name in ("config.json", "metrics.csv", "assignments.json", "fitness.json", "accuracy.png",
                 "load_cv.png", "assignment_heatmap.png", "checkpoint.npz"):
        assert (tmp_path / "run" / name).is_file(), name
    table = FitnessTable.from_dict(json.loads((tmp_path / "run" / "fitness.json").read_text()))
    np.testing.assert_array_equal(table.row("partition-2"), np.ones(4))  # never learned from a crashed client
    assert not np.array_equal(table.row("partition-0"), np.ones(4))
