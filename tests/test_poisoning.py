"""Attack simulation: each attack is well-formed, reaches aggregation and changes it; bounded claims;
and fitness reports that cannot buy load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from client_app.poisoning import flip_labels, poison_update
from flexmoe_core.aggregation import ClientUpdate, aggregate
from flexmoe_core.assignment import assign, load_bounds
from flexmoe_core.replies import ReplyError, check_declared_examples, validate_train_reply
from flexmoe_core.robust_aggregation import robust_aggregate

SENT = {"extractor.w": np.array([1.0, 1.0], np.float32), "experts.0.w": np.array([0.0, 2.0], np.float32)}
TRAINED = {"extractor.w": np.array([2.0, 0.0], np.float32), "experts.0.w": np.array([1.0, 2.0], np.float32)}


def test_model_attacks_match_their_definitions():
    scaled = poison_update(SENT, TRAINED, "scale", 10.0, seed=0)
    np.testing.assert_allclose(scaled["extractor.w"], [11.0, -9.0])  # 1 + 10 * (2 - 1), 1 + 10 * (0 - 1)
    flipped = poison_update(SENT, TRAINED, "sign-flip", 2.0, seed=0)
    np.testing.assert_allclose(flipped["experts.0.w"], [-2.0, 2.0])
    noisy = poison_update(SENT, TRAINED, "noise", 3.0, seed=1)
    assert not np.array_equal(noisy["extractor.w"], TRAINED["extractor.w"])
    np.testing.assert_array_equal(
        noisy["extractor.w"], poison_update(SENT, TRAINED, "noise", 3.0, seed=1)["extractor.w"]
    )
    for attack in ("scale", "sign-flip", "noise", "label-flip", "none"):
        out = poison_update(SENT, TRAINED, attack, 1e40, seed=0)
        assert set(out) == set(SENT) and all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())


def test_label_flip_moves_every_label():
    np.testing.assert_array_equal(flip_labels(np.arange(10), 10), np.arange(9, -1, -1))


@pytest.mark.parametrize("attack", ["scale", "sign-flip", "noise"])
def test_each_attack_passes_validation_and_changes_the_undefended_aggregate(attack):
    metrics = {
        "num-examples": 10,
        "train-loss": 0.5,
        "expert-usage": [10.0, 0.0],
        "expert-accuracy": [0.5, 0.0],
        "expert-loss": [0.5, 0.0],
    }
    poisoned = poison_update(SENT, TRAINED, attack, 10.0, seed=3)
    feedback = validate_train_reply(SENT, poisoned, metrics, 2, declared_examples=10)  # accepted
    honest = [ClientUpdate(state=dict(TRAINED), num_examples=10, usage=np.array([10.0, 0.0]))] * 2
    clean = aggregate(SENT, honest + honest[:1], 2)
    attacked = aggregate(SENT, honest + [feedback.update], 2)
    assert not np.allclose(attacked["extractor.w"], clean["extractor.w"])
    defended = robust_aggregate(SENT, honest + [feedback.update], 2, "median")
    np.testing.assert_allclose(defended["extractor.w"], clean["extractor.w"])  # 2 honest of 3: median holds


def test_claims_above_the_declared_size_are_rejected_naming_the_field():
    metrics = {
        "num-examples": 10**9,
        "train-loss": 0.5,
        "expert-usage": [10.0, 0.0],
        "expert-accuracy": [0.5, 0.0],
        "expert-loss": [0.5, 0.0],
    }
    with pytest.raises(ReplyError, match="num-examples: claims 1000000000 examples, more than the 800"):
        validate_train_reply(SENT, TRAINED, metrics, 2, declared_examples=800)
    metrics["num-examples"] = 5  # usage 10 > 5 examples
    with pytest.raises(ReplyError, match="expert-usage"):
        validate_train_reply(SENT, TRAINED, metrics, 2, declared_examples=800)
    assert check_declared_examples(800, 1000) == 800
    with pytest.raises(ReplyError, match="above max-declared-examples=1000"):
        check_declared_examples(5000, 1000)


def test_reporting_perfect_fitness_buys_no_extra_load():
    # 4 clients x 4 experts, k = 2: L* = 2, bounds [2, 2]. Client 3 claims 1.0 for every expert.
    honest = np.array([[0.9, 0.8, 0.1, 0.2], [0.7, 0.9, 0.3, 0.1], [0.6, 0.5, 0.4, 0.2]])
    scores = np.vstack([honest, np.ones(4)])
    x = assign(scores, 2, "flexmoe", solver="cvxpy")
    l_min, l_max = load_bounds(np.full(4, 2), 4, 0.0)
    assert x[3].sum() == 2 and (l_min, l_max) == (2, 2)
    assert np.all((x.sum(axis=0) >= l_min) & (x.sum(axis=0) <= l_max))
    # The honest clients' rows are the best they can get for their own scores, given the bounds and
    # the liar's row: brute force over every feasible assignment that keeps the liar's row.
    best = max(
        sum(honest[c, list(rows[c])].sum() for c in range(3))
        for rows in itertools.product(itertools.combinations(range(4), 2), repeat=3)
        if np.all(np.bincount(np.concatenate([*map(list, rows), np.flatnonzero(x[3])]), minlength=4) == 2)
    )
    assert float((honest * x[:3]).sum()) == pytest.approx(best)


def test_the_strategy_refuses_oversized_declarations_and_rejects_inflated_replies(fake_grid, flower_identity):
    from flwr.app import ConfigRecord

    from flexmoe_core.config import Settings
    from server_app.strategy import FlexMoEStrategy, to_record
    from tests.fake_clients import GLOBAL, E, HonestClient, TamperingClient

    def inflate(arrays, metrics):
        metrics["num-examples"] = 10**9

    clients = {
        1: HonestClient("a", 2, 1.0, 10),
        2: HonestClient("b", 2, 2.0, 10),
        3: TamperingClient("liar", 2, 50.0, 10, tamper=inflate),
        4: HonestClient("giant", 2, 9.0, 10**7),
    }
    strategy = FlexMoEStrategy(
        Settings(
            num_experts=E,
            capacity=2,
            min_train_nodes=2,
            node_wait_timeout=1.0,
            assignment="static",
            max_declared_examples=10**6,
        ),
        GLOBAL,
    )
    grid = fake_grid(clients)
    messages = strategy.configure_train(1, to_record(strategy.global_state), ConfigRecord(), grid)
    assert sorted(strategy.nodes) == [1, 2, 3]  # "giant" declared 10**7 > 10**6 at join: left out
    _, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert metrics["num-rejected"] == 1 and metrics["num-completed"] == 2  # the liar's reply is dropped whole
    np.testing.assert_allclose(strategy.global_state["extractor.w"], [1.5, 1.5])


@pytest.mark.parametrize("screen, extractor, screened", [(0.0, -23.5, 0), (3.0, 2.0, 1)])
def test_the_norm_screen_leaves_a_boosted_client_out(fake_grid, flower_identity, screen, extractor, screened):
    from flwr.app import ConfigRecord

    from flexmoe_core.config import Settings
    from server_app.strategy import FlexMoEStrategy, to_record
    from tests.fake_clients import GLOBAL, E, HonestClient

    class Shifting(HonestClient):  # every sent array comes back moved by `value`: update = value everywhere
        def train_arrays(self, msg):
            return {k: v.numpy() + np.float32(self.value) for k, v in msg.content["arrays"].items()}

    clients = {1: Shifting("a", 2, 1.0, 10), 2: Shifting("b", 2, 2.0, 10), 3: Shifting("c", 2, 3.0, 10)}
    clients[4] = Shifting("flipper", 2, -100.0, 10)  # a sign-flipped, boosted update
    settings = Settings(num_experts=E, capacity=2, min_train_nodes=4, node_wait_timeout=1.0, norm_screen=screen)
    strategy = FlexMoEStrategy(settings, GLOBAL)
    grid = fake_grid(clients)
    messages = strategy.configure_train(1, to_record(strategy.global_state), ConfigRecord(), grid)
    _, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert metrics["num-screened"] == screened and metrics["num-completed"] == 4
    np.testing.assert_allclose(strategy.global_state["extractor.w"], [extractor, extractor])  # (1+2+3-100)/4 or 2
    if screen:  # every expert moved by what its honest holders sent, 1..3, not towards -100
        for e in range(E):
            moved = strategy.global_state[f"experts.{e}.w"] - GLOBAL[f"experts.{e}.w"]
            assert np.all((moved == 0) | ((moved >= 1) & (moved <= 3)))
