"""What makes a comparison of assignment rules fair, checked on the strategy with in-process clients:
the same participants under every method, decisions that can be re-checked offline from their
records, feedback for held experts the gate never used, and stable client identities."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from scipy.optimize import linprog

from flexmoe_core.assignment import load_bounds
from flexmoe_core.config import Settings
from server_app.strategy import FlexMoEStrategy, to_record
from tests.fake_clients import GLOBAL, E, HonestClient

pytestmark = pytest.mark.usefixtures("flower_identity")

METHODS = ("flexmoe", "greedy", "random", "static", "dense")


def first_held_only(num_examples):
    """Routes every sample to the first held expert: the others are held and never used."""
    return lambda held: [float(num_examples)] + [0.0] * (len(held) - 1)


def clients_for(count=8):
    return {
        100 + i: HonestClient(
            f"client-{i}",
            2,
            float(i),
            10 + i,
            accuracy=0.5 + 0.05 * i,
            usage=first_held_only(10 + i) if i % 2 else None,
        )
        for i in range(count)
    }


def strategy_for(method, **overrides):
    options = {
        "num_experts": E,
        "capacity": 2,
        "min_train_nodes": 2,
        "deficit_weight": 0.3,
        "node_wait_timeout": 1.0,
        "assignment": method,
        "seed": 5,
        **overrides,
    }
    return FlexMoEStrategy(Settings(**options), GLOBAL)


def play_round(strategy, grid, server_round):
    messages = strategy.configure_train(server_round, to_record(strategy.global_state), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
    evaluations = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
    strategy.aggregate_evaluate(server_round, grid.send_and_receive(evaluations))
    return strategy.assignment_record(server_round)


def test_every_method_samples_the_same_clients_in_every_round(fake_grid):
    sampled = {}
    for method in METHODS:
        strategy, grid = strategy_for(method, fraction_train=0.5), fake_grid(clients_for(8))
        sampled[method] = [play_round(strategy, grid, r)["clients"] for r in range(1, 11)]
    reference = sampled["flexmoe"]
    assert all(len(ids) == 4 for ids in reference)
    assert len({tuple(ids) for ids in reference}) > 3, "sampling should vary over rounds"
    for method in METHODS[1:]:
        assert sampled[method] == reference, method


def test_decision_records_let_anyone_recheck_flexmoe_and_greedy_offline(fake_grid):
    for method in ("flexmoe", "greedy"):
        # 7 clients, 5 per round x 2 experts over 4: loads 2-3, so the deficit becomes non-zero
        strategy, grid = strategy_for(method, fraction_train=0.75), fake_grid(clients_for(7))
        records = [play_round(strategy, grid, r) for r in range(1, 7)]
        for record in records:
            capacity = np.array(record["capacity"])
            fitness = np.array(record["fitness"])
            held = np.zeros_like(fitness)
            for row, experts in enumerate(record["held"]):
                held[row, experts] = 1
            assert fitness.shape == (len(record["clients"]), E) and len(record["deficit"]) == E
            np.testing.assert_array_equal(held.sum(axis=1), capacity)
            if method == "greedy":  # top-k by Q alone: no unheld expert beats a held one
                for q, x in zip(fitness, held):
                    assert q[x == 1].min() >= q[x == 0].max()
            else:
                weights = fitness + 0.3 * np.array(record["deficit"])[None, :]
                assert np.sum(weights * held) == pytest.approx(lp_optimum(weights, capacity), abs=1e-9)
        # the records are the inputs the server used: round 1 saw only the optimistic initial Q
        assert np.all(np.array(records[0]["fitness"]) == 1.0) and records[0]["deficit"] == [0.0] * E
        assert any(record["deficit"] != [0.0] * E for record in records[1:])


def lp_optimum(weights, capacity):
    """The balanced-assignment LP solved independently with scipy's HiGHS."""
    n, e = weights.shape
    l_min, l_max = load_bounds(capacity, e, 0.0)
    rows = np.kron(np.eye(n), np.ones((1, e)))
    cols = np.kron(np.ones((1, n)), np.eye(e))
    result = linprog(
        -weights.ravel(),
        A_eq=rows,
        b_eq=capacity,
        A_ub=np.vstack([cols, -cols]),
        b_ub=np.concatenate([np.full(e, l_max), np.full(e, -l_min)]),
        bounds=(0, 1),
        method="highs",
    )
    assert result.status == 0
    return -result.fun


def test_a_held_expert_the_gate_never_used_loses_its_optimistic_fitness(fake_grid):
    strategy, grid = strategy_for("static", ema_beta=0.5), fake_grid(clients_for(4))
    record = play_round(strategy, grid, 1)
    for client_id, held in zip(record["clients"], record["held"]):
        i = int(client_id.split("-")[1])
        row = strategy.fitness.row(client_id)
        first, second = held
        assert row[first] == pytest.approx(0.5 + 0.5 * (0.5 + 0.05 * i))
        # odd clients route nothing to their second expert: score 0, so Q = 0.5 * 1.0
        assert row[second] == pytest.approx(0.5 if i % 2 else 0.5 + 0.5 * (0.5 + 0.05 * i))
        untouched = [e for e in range(E) if e not in held]
        np.testing.assert_array_equal(row[untouched], 1.0)


def test_a_client_reconnecting_under_a_new_node_id_is_readmitted(fake_grid):
    clients = clients_for(3)
    strategy, grid = strategy_for("flexmoe"), fake_grid(clients)
    play_round(strategy, grid, 1)
    row_before = strategy.fitness.row("client-0")
    grid.handlers[900] = grid.handlers.pop(100)  # client-0's device restarts and gets node id 900
    record = play_round(strategy, grid, 2)
    assert sorted(record["clients"]) == ["client-0", "client-1", "client-2"]
    assert strategy.nodes[900].client_id == "client-0" and 100 not in strategy.nodes
    assert 900 in {m.metadata.dst_node_id for m in grid.sent[-2]}  # it trained in round 2
    assert not np.array_equal(strategy.fitness.row("client-0"), row_before)  # ... and its row learned


def test_two_connected_nodes_claiming_one_client_id_stay_refused(fake_grid):
    clients = clients_for(3)
    clients[555] = HonestClient("client-0", 2, 9.0, 99)  # an impostor of client-0
    strategy, grid = strategy_for("flexmoe"), fake_grid(clients)
    for server_round in (1, 2):
        record = play_round(strategy, grid, server_round)
        assert sorted(record["clients"]) == ["client-0", "client-1", "client-2"]
        assert all(m.metadata.dst_node_id != 555 for m in grid.sent[-2])
    assert strategy.nodes[100].client_id == "client-0" and 555 not in strategy.nodes
    del grid.handlers[100]  # once the first holder is gone, the other node may take the id
    record = play_round(strategy, grid, 3)
    assert strategy.nodes[555].client_id == "client-0"
    assert "client-0" in record["clients"]


def test_a_fixed_evaluation_cohort_is_evaluated_every_round_under_every_method(fake_grid):
    evaluated = {}
    for method in METHODS:
        strategy, grid = strategy_for(method, fraction_train=0.3, eval_cohort=3), fake_grid(clients_for(10))
        records = []
        for server_round in range(1, 5):
            fitness_before = {c: strategy.fitness.row(c) for c in strategy.fitness.client_ids}
            records.append(play_round(strategy, grid, server_round))
            eval_messages = grid.sent[-1]
            capacity = 4 if method == "dense" else 2
            for message in eval_messages:  # each cohort member gets experts by the method's own rule
                held = {k.split(".")[1] for k in message.content["arrays"] if k.startswith("experts.")}
                assert len(held) == capacity
            untrained = set(records[-1]["evaluated"]) - set(records[-1]["clients"])
            for client_id in untrained & set(fitness_before):  # evaluation teaches Q nothing
                np.testing.assert_array_equal(strategy.fitness.row(client_id), fitness_before[client_id])
        evaluated[method] = [r["evaluated"] for r in records]
        assert all(ids == evaluated[method][0] and len(ids) == 3 for ids in evaluated[method])
        assert any(set(r["evaluated"]) != set(r["clients"]) for r in records)
    assert all(value == evaluated["flexmoe"] for value in evaluated.values())
