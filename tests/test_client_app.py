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


def train_message(held, server_round=1, run_token="run1", num_experts=4):
    state = build_global_state(
        num_experts, num_classes=10, in_channels=1, image_size=28, arch="cnn", top_r=2, expert_hidden=256, seed=0
    )
    sent = select_experts(state, held)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}),
            "config": ConfigRecord({"server-round": server_round, "run-token": run_token}),
        }
    )
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
    # top-2 routing over 2 held experts: every sample is in D[c, e] of both
    np.testing.assert_array_equal(usage[[1, 3]], [metrics["num-examples"]] * 2)
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
    model = client.build_model(
        msg2, Settings.from_run_config(ctx.run_config), ctx, client.load_settings(ctx)[1], gate_round=1
    )
    for key, value in model.gate_state().items():
        np.testing.assert_array_equal(value, gate_after_round1[key])


def test_initial_gate_depends_on_client_id_and_seed_only_not_on_capacity():
    config = run_config(num_experts=8, capacity=8)
    settings = Settings.from_run_config(config)
    gates = []
    for held in ([5], [0, 3], list(range(8))):  # k = 1, 2, 8
        ctx = node_context(7, 0, 3, config)
        msg, _ = train_message(held, num_experts=8)
        gates.append(client.build_model(msg, settings, ctx, client.load_settings(ctx)[1], gate_round=0).gate_state())
    for other in gates[1:]:
        for key, value in gates[0].items():
            np.testing.assert_array_equal(other[key], value)
    other_client = node_context(8, 1, 3, config, **{"client-id": "someone-else"})
    msg, _ = train_message([5], num_experts=8)
    elsewhere = client.build_model(msg, settings, other_client, client.load_settings(other_client)[1], gate_round=0)
    assert not np.array_equal(elsewhere.gate_state()["gate.weight"], gates[0]["gate.weight"])


def test_a_gate_on_disk_is_found_only_by_the_run_that_stored_it(tmp_path):
    config = run_config(client_state_dir=str(tmp_path / "state"))
    settings = Settings.from_run_config(config)
    ctx = node_context(7, 0, 3, config)
    client.train(train_message([0, 1], server_round=1, run_token="first")[0], ctx)
    trained = ctx.state[client.GATE_KEY]["gate.weight"].numpy().copy()
    node = client.load_settings(ctx)[1]

    def gate_in_new_process(token):  # a restarted node: empty in-memory state, same state dir
        fresh = node_context(7, 0, 3, config)
        msg = train_message([0, 1], server_round=2, run_token=token)[0]
        return client.build_model(msg, settings, fresh, node, gate_round=1).gate_state()["gate.weight"]

    np.testing.assert_array_equal(gate_in_new_process("first"), trained)  # resume of the same run
    later = gate_in_new_process("second")  # a later run: starts from the initial gate, not ours
    assert not np.array_equal(later, trained)
    msg = train_message([0, 1], run_token="second")[0]
    initial = client.build_model(msg, settings, node_context(7, 0, 3, config), node, gate_round=0)
    np.testing.assert_array_equal(later, initial.gate_state()["gate.weight"])
    # ... nor from the in-memory gate of another run
    msg = train_message([0, 1], server_round=2, run_token="second")[0]
    np.testing.assert_array_equal(
        client.build_model(msg, settings, ctx, node, gate_round=1).gate_state()["gate.weight"],
        initial.gate_state()["gate.weight"],
    )


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
    for name in (
        "config.json",
        "metrics.csv",
        "assignments.json",
        "fitness.json",
        "accuracy.png",
        "load_cv.png",
        "assignment_heatmap.png",
        "checkpoint.npz",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    table = FitnessTable.from_dict(json.loads((tmp_path / "run" / "fitness.json").read_text()))
    np.testing.assert_array_equal(table.row("partition-2"), np.ones(4))  # never learned from a crashed client
    assert not np.array_equal(table.row("partition-0"), np.ones(4))
