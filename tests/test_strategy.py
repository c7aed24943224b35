"""The Flower strategy in-process: per-client messages, aggregation and fitness against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from flexmoe_core.config import Settings
from server_app.strategy import FlexMoEStrategy, to_arrays, to_record
from tests.fake_clients import GLOBAL, E, HonestClient

pytestmark = pytest.mark.usefixtures("flower_identity")

# (client id, capacity, value it returns, examples); node ids are arbitrary, as in Flower.
CLIENTS = {
    101: ("partition-0", 2, 1.0, 10),
    102: ("partition-1", 2, 2.0, 30),
    103: ("partition-2", 2, 3.0, 20),
    104: ("partition-3", 2, 4.0, 40),
}


def make(fake_grid, assignment="static", **overrides):
    options = {
        "num_experts": E,
        "capacity": 2,
        "min_train_nodes": 4,
        "deficit_weight": 0.0,
        "node_wait_timeout": 1.0,
        "assignment": assignment,
        **overrides,
    }
    settings = Settings(**options)
    clients = {node: HonestClient(*spec) for node, spec in CLIENTS.items()}
    return FlexMoEStrategy(settings, GLOBAL), fake_grid(clients), clients


def train_round(strategy, grid, server_round=1):
    messages = strategy.configure_train(server_round, to_record(strategy.global_state), ConfigRecord(), grid)
    replies = grid.send_and_receive(messages)
    return messages, strategy.aggregate_train(server_round, replies)


def test_each_client_receives_only_its_experts_in_its_own_record(fake_grid):
    strategy, grid, _ = make(fake_grid)
    messages, _ = train_round(strategy, grid)
    # static round-robin over clients sorted by id: partition-0 {0,1}, -1 {2,3}, -2 {0,1}, -3 {2,3}
    expected = {101: [0, 1], 102: [2, 3], 103: [0, 1], 104: [2, 3]}
    assert len(messages) == 4
    for msg in messages:
        keys = set(msg.content["arrays"].keys())
        held = expected[msg.metadata.dst_node_id]
        assert keys == {"extractor.w", *(f"experts.{e}.w" for e in held)}
        assert msg.content["config"]["server-round"] == 1
    assert len({id(m.content) for m in messages}) == 4, "a RecordDict shared across nodes leaks experts"


def test_aggregate_equals_hand_computed_weighted_means(fake_grid):
    strategy, grid, _ = make(fake_grid)
    _, (arrays, metrics) = train_round(strategy, grid)
    state = to_arrays(arrays)
    # extractor: examples 10, 30, 20, 40 with values 1, 2, 3, 4 -> 290 / 100
    np.testing.assert_allclose(state["extractor.w"], [2.9, 2.9], rtol=1e-6)
    # experts 0 and 1: partition-0 (value 1, usage 10/2=5) and partition-2 (value 3, usage 20/2=10) -> 35/15
    np.testing.assert_allclose(state["experts.0.w"], [35 / 15] * 2, rtol=1e-6)
    np.testing.assert_allclose(state["experts.1.w"], [35 / 15] * 2, rtol=1e-6)
    # experts 2 and 3: partition-1 (2, usage 15) and partition-3 (4, usage 20) -> 110/35
    np.testing.assert_allclose(state["experts.3.w"], [110 / 35] * 2, rtol=1e-6)
    assert metrics["expert-load"] == [2.0, 2.0, 2.0, 2.0]
    assert metrics["load-cv"] == 0.0
    assert metrics["routed-load"] == [15.0, 15.0, 35.0, 35.0]
    assert metrics["num-completed"] == 4 and metrics["num-failed"] == 0


def full_round(strategy, grid, server_round=1):
    """Train and evaluate; returns the metrics of both phases."""
    _, (arrays, train_metrics) = train_round(strategy, grid, server_round)
    messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
    eval_metrics = strategy.aggregate_evaluate(server_round, grid.send_and_receive(messages))
    return {**dict(train_metrics), **dict(eval_metrics)}


def test_bytes_are_the_serialised_messages_of_both_phases(fake_grid):
    from flwr.common.serde import message_to_proto

    strategy, grid, clients = make(fake_grid)
    metrics = full_round(strategy, grid)
    size = lambda m: message_to_proto(m).ByteSize()  # noqa: E731
    train_down = [m for m in grid.sent[-2] if m.metadata.message_type == "train"]
    eval_down = grid.sent[-1]
    replies = {
        kind: [size(r) for c in clients.values() for r in c.replies if r.metadata.message_type == kind]
        for kind in ("train", "evaluate")
    }
    n = len(CLIENTS)
    assert metrics["bytes-down-train-per-client"] == sum(map(size, train_down)) / n
    assert metrics["bytes-down-eval-per-client"] == sum(map(size, eval_down)) / n
    assert metrics["bytes-up-train-per-client"] == sum(replies["train"]) / n
    assert metrics["bytes-up-eval-per-client"] == sum(replies["evaluate"]) / n
    assert metrics["bytes-total-per-client"] == pytest.approx(
        metrics["bytes-down-per-client"] + metrics["bytes-up-per-client"]
    )
    assert metrics["bytes-discovery"] > 0  # the describe exchange of round 1
    # Against dense from the same totals: a dense run of the same round sends and receives the
    # same messages with all 4 experts; its ratio is exactly 1.
    dense, dense_grid, _ = make(fake_grid, assignment="dense")
    dense_metrics = full_round(dense, dense_grid)
    assert dense_metrics["bytes-total-vs-dense"] == 1.0
    assert metrics["bytes-total-vs-dense"] == pytest.approx(
        metrics["bytes-total-per-client"] / dense_metrics["bytes-total-per-client"], rel=1e-3
    )
    # 2 of 4 experts (2 floats each) plus the extractor: clearly below dense, above the array ratio 6/10
    assert 0.6 < metrics["bytes-total-vs-dense"] < 0.9


def test_expert_nobody_held_keeps_its_weights(fake_grid):
    # Two of four capacity-1 clients take part: two experts are held by nobody this round.
    strategy, grid, clients = make(fake_grid, capacity=1, min_train_nodes=2, fraction_train=0.5)
    for client in clients.values():
        client.capacity = 1
    _, (arrays, _) = train_round(strategy, grid)
    trained = {
        e
        for msg in grid.sent[-1]
        if msg.metadata.message_type == "train"
        for e in clients[msg.metadata.dst_node_id].held(msg)
    }
    assert len(trained) == 2
    for e in set(range(E)) - trained:
        np.testing.assert_array_equal(to_arrays(arrays)[f"experts.{e}.w"], GLOBAL[f"experts.{e}.w"])


def test_fitness_learns_only_measured_held_experts(fake_grid):
    strategy, grid, _ = make(fake_grid)
    train_round(strategy, grid)
    # beta 0.5, initial 1.0, reported accuracy 0.8 on held experts -> 0.9; the rest keep 1.0
    np.testing.assert_allclose(strategy.fitness.row("partition-0"), [0.9, 0.9, 1.0, 1.0])
    np.testing.assert_allclose(strategy.fitness.row("partition-1"), [1.0, 1.0, 0.9, 0.9])


def test_flexmoe_balances_where_greedy_piles_onto_popular_experts(fake_grid):
    loads = {}
    for method in ("flexmoe", "greedy"):
        strategy, grid, _ = make(fake_grid, assignment=method)
        for client in CLIENTS.values():  # every client measured experts 0 and 1 as best
            strategy.fitness.update(client[0], [0, 1, 2, 3], np.array([0.9, 0.9, 0.1, 0.1]), np.zeros(E))
        _, (_, metrics) = train_round(strategy, grid)
        loads[method] = metrics["expert-load"]
    assert loads["flexmoe"] == [2.0, 2.0, 2.0, 2.0]
    assert loads["greedy"] == [4.0, 4.0, 0.0, 0.0]


def test_personalised_evaluation_summary(fake_grid):
    strategy, grid, clients = make(fake_grid)
    for node, acc in zip(CLIENTS, (0.5, 0.6, 0.7, 0.8)):
        clients[node].accuracy = acc
    _, (arrays, _) = train_round(strategy, grid)
    messages = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    for msg in messages:  # the evaluated model is the new global extractor with the client's held experts
        assert set(msg.content["arrays"].keys()) == {k for k in strategy.plan.sent[msg.metadata.dst_node_id]}
        np.testing.assert_allclose(msg.content["arrays"]["extractor.w"].numpy(), [2.9, 2.9], rtol=1e-6)
    metrics = strategy.aggregate_evaluate(1, grid.send_and_receive(messages))
    # example-weighted: (0.5*10 + 0.6*30 + 0.7*20 + 0.8*40) / 100
    assert metrics["accuracy"] == pytest.approx(0.69)
    assert metrics["accuracy-min"] == pytest.approx(0.5)
    assert metrics["accuracy-median"] == pytest.approx(0.65)
    assert "accuracy-honest" not in metrics  # no attack simulated


def test_honest_accuracy_leaves_out_the_simulated_attackers(fake_grid):
    ids = [spec[0] for spec in CLIENTS.values()]
    strategy, grid, clients = make(fake_grid, attack="sign-flip", attack_clients=f"{ids[1]},{ids[3]}")
    for node, acc in zip(CLIENTS, (0.5, 0.6, 0.7, 0.8)):
        clients[node].accuracy = acc
    _, (arrays, _) = train_round(strategy, grid)
    messages = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    metrics = strategy.aggregate_evaluate(1, grid.send_and_receive(messages))
    assert metrics["accuracy"] == pytest.approx(0.69)  # everyone, as above
    assert metrics["accuracy-honest"] == pytest.approx((0.5 * 10 + 0.7 * 20) / 30)  # the 1st and 3rd only
