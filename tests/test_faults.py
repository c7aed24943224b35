"""Failing, silent and malicious clients: the run goes on and nothing bad reaches the model or Q."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from flexmoe_core.config import Settings
from server_app.strategy import FlexMoEStrategy, to_arrays, to_record
from tests.fake_clients import GLOBAL, CrashingClient, E, HonestClient, SilentClient, TamperingClient

pytestmark = pytest.mark.usefixtures("flower_identity")

# Static round-robin over ids a..d: a {0,1}, b {2,3}, c {0,1}, d {2,3}. "a" is the faulty one.
SPECS = {1: ("a", 2, 1.0, 10), 2: ("b", 2, 2.0, 30), 3: ("c", 2, 3.0, 20), 4: ("d", 2, 4.0, 40)}


def run_round(fake_grid, faulty):
    """One training round where node 1 is `faulty`; returns (strategy, new state, metrics)."""
    clients = {node: HonestClient(*spec) for node, spec in SPECS.items()}
    clients[1] = faulty
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=4, assignment="static", deficit_weight=0.0)
    strategy = FlexMoEStrategy(settings, GLOBAL)
    grid = fake_grid(clients)
    messages = strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), grid)
    arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    return strategy, to_arrays(arrays), metrics


def assert_only_honest_clients_counted(strategy, state):
    # Without "a": extractor from b, c, d: (2*30 + 3*20 + 4*40) / 90; experts 0, 1 only from c (value 3).
    np.testing.assert_allclose(state["extractor.w"], [280 / 90] * 2, rtol=1e-6)
    np.testing.assert_allclose(state["experts.0.w"], [3.0, 3.0])
    np.testing.assert_allclose(state["experts.2.w"], [110 / 35] * 2, rtol=1e-6)
    assert "a" not in strategy.fitness or np.array_equal(strategy.fitness.row("a"), np.ones(E))
    np.testing.assert_allclose(strategy.fitness.row("c"), [0.9, 0.9, 1.0, 1.0])


def test_crashing_client_is_counted_and_left_out(fake_grid):
    strategy, state, metrics = run_round(fake_grid, CrashingClient(*SPECS[1]))
    assert metrics["num-failed"] == 1 and metrics["num-completed"] == 3
    assert_only_honest_clients_counted(strategy, state)


def test_silent_client_counts_as_timed_out(fake_grid):
    strategy, state, metrics = run_round(fake_grid, SilentClient(*SPECS[1]))
    assert metrics["num-timed-out"] == 1 and metrics["num-completed"] == 3
    assert_only_honest_clients_counted(strategy, state)


def _set(key, value):
    def tamper(arrays, metrics):
        metrics[key] = value

    return tamper


def _array(fn):
    def tamper(arrays, metrics):
        fn(arrays)

    return tamper


TAMPERING = {
    "key not sent": _array(lambda a: a.__setitem__("experts.3.w", np.ones(2, np.float32))),
    "key missing": _array(lambda a: a.pop("experts.0.w")),
    "gate smuggled": _array(lambda a: a.__setitem__("gate.weight", np.ones(2, np.float32))),
    "shape": _array(lambda a: a.__setitem__("extractor.w", np.ones(3, np.float32))),
    "dtype": _array(lambda a: a.__setitem__("extractor.w", np.ones(2, np.float64))),
    "nan": _array(lambda a: a.__setitem__("extractor.w", np.array([np.nan, 1], np.float32))),
    "inf": _array(lambda a: a.__setitem__("experts.1.w", np.array([np.inf, 1], np.float32))),
    "negative examples": _set("num-examples", -5),
    "fractional examples": _set("num-examples", 2.5),
    "accuracy above 1": _set("expert-accuracy", [1.5, 0.5, 0.0, 0.0]),
    "usage above examples": _set("expert-usage", [11.0, 0.0, 0.0, 0.0]),
    "usage of unheld expert": _set("expert-usage", [1.0, 1.0, 1.0, 0.0]),
    "list too short": _set("expert-loss", [0.1, 0.2]),
    "nan loss": _set("train-loss", float("nan")),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_malicious_reply_is_rejected_whole(fake_grid, case, caplog):
    faulty = TamperingClient(*SPECS[1], tamper=TAMPERING[case])
    with caplog.at_level("WARNING", logger="flexmoe.server"):
        strategy, state, metrics = run_round(fake_grid, faulty)
    assert metrics["num-rejected"] == 1 and metrics["num-completed"] == 3
    assert_only_honest_clients_counted(strategy, state)
    rejected = [r.getMessage() for r in caplog.records if "rejected reply of client a" in r.getMessage()]
    assert len(rejected) == 1, caplog.text


def test_round_where_every_client_fails_leaves_the_model_unchanged(fake_grid):
    clients = {node: CrashingClient(*spec) for node, spec in SPECS.items()}
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=4, assignment="flexmoe")
    strategy = FlexMoEStrategy(settings, GLOBAL)
    grid = fake_grid(clients)
    messages = strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), grid)
    arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    for key, value in to_arrays(arrays).items():
        np.testing.assert_array_equal(value, GLOBAL[key])
    assert metrics["num-failed"] == 4
    np.testing.assert_array_equal(strategy.loads.deficit, np.zeros(E))
    assert metrics["no-update-accepted"] == 1
    # The kept model is still evaluated, on the participants that answered (issue #24: an attack
    # table shows a collapse as a number, not a missing accuracy).
    evaluated = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    assert sorted(m.metadata.dst_node_id for m in evaluated) == sorted(SPECS)


def test_too_few_nodes_stops_with_a_clear_error_after_the_timeout(fake_grid):
    clients = {1: HonestClient(*SPECS[1])}
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=3, node_wait_timeout=0.5)
    strategy = FlexMoEStrategy(settings, GLOBAL)
    with pytest.raises(RuntimeError, match=r"only 1 usable client.*min-train-nodes=3"):
        strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), fake_grid(clients))


def test_client_with_invalid_description_is_left_out(fake_grid):
    bad = HonestClient("a", 9, 1.0, 10)  # capacity 9 > num-experts 4
    clients = {1: bad, **{n: HonestClient(*SPECS[n]) for n in (2, 3, 4)}}
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=3, assignment="flexmoe")
    strategy = FlexMoEStrategy(settings, GLOBAL)
    messages = strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), fake_grid(clients))
    assert sorted(m.metadata.dst_node_id for m in messages) == [2, 3, 4]


def test_repeated_or_unsolicited_replies_are_ignored(fake_grid):
    clients = {node: HonestClient(*spec) for node, spec in SPECS.items()}
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=4, assignment="static")
    strategy = FlexMoEStrategy(settings, GLOBAL)
    grid = fake_grid(clients)
    replies = grid.send_and_receive(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), grid))
    replies = replies + [replies[0]]  # node 1 answers twice
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num-completed"] == 4
    np.testing.assert_allclose(to_arrays(arrays)["extractor.w"], [2.9, 2.9], rtol=1e-6)  # counted once


def test_server_state_round_trips_and_the_next_round_decides_the_same(fake_grid):
    """state_dict() holds everything a round needs: a fresh strategy loaded from it (as resume does,
    through JSON) makes the same next assignment and aggregate as the original."""
    import json

    clients = {node: HonestClient(*spec) for node, spec in SPECS.items()}
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=4, assignment="flexmoe")
    original = FlexMoEStrategy(settings, GLOBAL)
    grid = fake_grid(clients)
    original.aggregate_train_replies(1, grid.send_and_receive(original.train_messages(1, original.discover(grid))))
    state = original.state_dict()
    arrays = state.pop("global")
    copy = FlexMoEStrategy(settings, GLOBAL)
    copy.load_state_dict({**json.loads(json.dumps(state)), "global": arrays})
    assert copy.round == original.round == 1 and copy.run_token == original.run_token
    for strategy in (original, copy):
        strategy.aggregate_train_replies(2, grid.send_and_receive(strategy.train_messages(2, strategy.discover(grid))))
    np.testing.assert_array_equal(copy.plan.assignment, original.plan.assignment)
    for key, value in original.global_state.items():
        np.testing.assert_array_equal(copy.global_state[key], value)
    assert copy.fitness.to_dict() == original.fitness.to_dict()
