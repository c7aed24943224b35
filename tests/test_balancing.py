"""The balancing baselines (flexmoe_core.balancing) against hand-worked instances, and both rules run
end to end through the strategy on the same path as the other methods."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flexmoe_core.assignment import METHODS, assign
from flexmoe_core.balancing import ExpertBias, bias_update, sinkhorn_balance, top_k_rows
from tests.fake_clients import E
from tests.test_fair_comparison import clients_for, play_round, strategy_for

pytestmark = pytest.mark.usefixtures("flower_identity")


# ------------------------------------------------------------------ bias-greedy


def test_bias_step_moves_each_expert_one_step_towards_the_mean_load():
    # loads 4, 1, 1: mean 2, so expert 0 (above) steps down, 1 and 2 (below) step up, by u = 0.1 each
    assert bias_update(np.zeros(3), [4, 1, 1], 0.1).tolist() == pytest.approx([-0.1, 0.1, 0.1])
    # loads 3, 2, 1 around mean 2: the expert exactly at the mean keeps its bias (sign 0)
    assert bias_update(np.array([0.05, 0.0, -0.2]), [3, 2, 1], 0.1).tolist() == pytest.approx([-0.05, 0.0, -0.1])


def test_expert_bias_learns_from_an_assignment_and_survives_json():
    bias = ExpertBias(3)
    # three clients of capacity 1 all held expert 0: loads 3, 0, 0 (mean 1)
    bias.update(np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]]), 0.01)
    # then loads 1, 1, 1: balanced, no step
    bias.update(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), 0.01)
    assert bias.values.tolist() == pytest.approx([-0.01, 0.01, 0.01]) and bias.rounds == 2
    again = ExpertBias.from_dict(json.loads(json.dumps(bias.to_dict())))
    assert again.values.tolist() == bias.values.tolist() and again.rounds == 2
    with pytest.raises(ValueError, match="shape"):
        bias.update(np.ones((2, 4)), 0.01)
    with pytest.raises(ValueError, match="rate"):
        bias.update(np.ones((2, 3)), -1.0)


def test_bias_greedy_takes_the_top_k_of_q_plus_bias():
    q = np.array([[0.50, 0.45, 0.10], [0.50, 0.45, 0.10]])
    # without bias both take expert 0; with b = (-0.1, 0.1, 0) the scores are 0.40, 0.55, 0.10
    assert assign(q, 1, "bias-greedy", rng=0).tolist() == [[1, 0, 0], [1, 0, 0]]
    assert assign(q, 1, "bias-greedy", rng=0, bias=[-0.1, 0.1, 0.0]).tolist() == [[0, 1, 0], [0, 1, 0]]
    assert assign(q, 2, "bias-greedy", rng=0, bias=[0.0, 0.0, 0.5]).tolist() == [[1, 0, 1], [1, 0, 1]]
    with pytest.raises(ValueError, match="bias must have shape"):
        assign(q, 1, "bias-greedy", bias=[0.0, 0.0])


# ------------------------------------------------------------------ sinkhorn


def test_sinkhorn_on_a_2x2_instance_matches_the_closed_form():
    # K = exp(Q / tau) = [[2, 1], [1, 1]], capacities 1, 1 (target 1 per column). The doubly stochastic
    # scaling diag(r) K diag(c) keeps the cross ratio K00 K11 / (K01 K10) = 2, so it is [[a, 1-a], [1-a, a]]
    # with a^2 / (1-a)^2 = 2: a = sqrt(2) / (1 + sqrt(2)) = 2 - sqrt(2).
    q = np.log(np.array([[2.0, 1.0], [1.0, 1.0]]))
    a = 2 - math.sqrt(2)
    balanced = sinkhorn_balance(q, np.array([1, 1]), tau=1.0, iterations=200)
    np.testing.assert_allclose(balanced, [[a, 1 - a], [1 - a, a]], atol=1e-12)


def reference_sinkhorn(q, capacity, tau, iterations):
    """The same alternation in plain Python (lists and math.exp): rows, then (columns, rows) repeated."""
    n, e = len(q), len(q[0])
    m = [[math.exp(v / tau) for v in row] for row in q]
    m = [[v * capacity[i] / sum(row) for v in row] for i, row in enumerate(m)]
    target = sum(capacity) / e
    for _ in range(iterations):
        sums = [sum(m[i][j] for i in range(n)) for j in range(e)]
        m = [[m[i][j] * target / sums[j] for j in range(e)] for i in range(n)]
        m = [[v * capacity[i] / sum(row) for v in row] for i, row in enumerate(m)]
    return m


def test_sinkhorn_marginals_and_steps_match_an_independent_computation():
    rng = np.random.default_rng(3)
    q = rng.random((6, 4))
    capacity = np.array([1, 2, 2, 1, 2, 2])  # sum 10: every column's target is 2.5
    for iterations in (1, 3):
        np.testing.assert_allclose(
            sinkhorn_balance(q, capacity, 0.5, iterations),
            reference_sinkhorn(q.tolist(), capacity.tolist(), 0.5, iterations),
            rtol=1e-12,
        )
    balanced = sinkhorn_balance(q, capacity, 0.5, 500)
    np.testing.assert_allclose(balanced.sum(axis=1), capacity, rtol=1e-12)  # rows: exact (normalised last)
    np.testing.assert_allclose(balanced.sum(axis=0), 2.5, rtol=1e-9)  # columns: converged
    # the default 50 iterations are within 1e-3 of the target at the study's scale (10 x 8, Q in [0, 1])
    study = sinkhorn_balance(rng.random((10, 8)), np.full(10, 2), 0.1, 50)
    assert np.abs(study.sum(axis=0) - 2.5).max() < 1e-3


def test_sinkhorn_spreads_clients_that_all_prefer_one_expert():
    q = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.1, 0.5]])
    assert assign(q, 1, "greedy", rng=0).sum(axis=0).tolist() == [3, 0, 0]
    x = assign(q, 1, "sinkhorn", rng=0, sinkhorn_tau=0.1, sinkhorn_iterations=200)
    balanced = np.array(reference_sinkhorn(q.tolist(), [1, 1, 1], 0.1, 200))
    expected = np.zeros_like(x)
    expected[np.arange(3), balanced.argmax(axis=1)] = 1
    assert x.tolist() == expected.tolist()
    assert x.sum(axis=1).tolist() == [1, 1, 1] and x.sum(axis=0).max() < 3


def test_top_k_ties_are_broken_by_the_methods_rng():
    flat = np.zeros((4, 6))
    picks = {tuple(map(tuple, top_k_rows(flat, np.full(4, 2), np.random.default_rng(s)))) for s in range(5)}
    assert len(picks) > 1  # ties go different ways under different seeds ...
    first = assign(flat, 2, "sinkhorn", rng=7)
    assert first.tolist() == assign(flat, 2, "sinkhorn", rng=7).tolist()  # ... and the same way under one
    assert first.sum(axis=1).tolist() == [2, 2, 2, 2]


def test_sinkhorn_settings_are_checked():
    with pytest.raises(ValueError, match="tau"):
        sinkhorn_balance(np.zeros((2, 2)), np.array([1, 1]), 0.0, 5)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_balance(np.zeros((2, 2)), np.array([1, 1]), 0.1, 0)


# ------------------------------------------------------------------ through the strategy


def test_both_rules_run_rounds_with_the_participants_of_every_other_method(fake_grid):
    assert {"bias-greedy", "sinkhorn"} <= set(METHODS)
    sampled, records = {}, {}
    for method in ("flexmoe", "greedy", "bias-greedy", "sinkhorn"):
        strategy, grid = strategy_for(method, fraction_train=0.5), fake_grid(clients_for(8))
        records[method] = [play_round(strategy, grid, r) for r in range(1, 7)]
        sampled[method] = [r["clients"] for r in records[method]]
        for record in records[method]:
            assert [len(h) for h in record["held"]] == record["capacity"]
    assert sampled["bias-greedy"] == sampled["flexmoe"] and sampled["sinkhorn"] == sampled["flexmoe"]
    # bias-greedy's records carry its bias: each round's choice is the top-k of Q + b, re-checkable offline
    for record in records["bias-greedy"]:
        scores = np.array(record["fitness"]) + np.array(record["bias"])[None, :]
        for row, held in zip(scores, record["held"]):
            others = [e for e in range(E) if e not in held]
            assert row[held].min() >= row[others].max()
    assert records["bias-greedy"][0]["bias"] == [0.0] * E
    assert any(any(record["bias"]) for record in records["bias-greedy"][1:])
    assert all("bias" not in record for record in records["sinkhorn"])


def test_the_bias_is_learned_from_completed_clients_and_survives_a_state_dict_round_trip(fake_grid):
    strategy, grid = strategy_for("bias-greedy", fraction_train=0.5, bias_update_rate=0.05), fake_grid(clients_for(8))
    for server_round in (1, 2, 3):
        record = play_round(strategy, grid, server_round)
    load = np.zeros(E)
    for held in record["held"]:
        load[held] += 1
    before = np.array(record["bias"])  # the bias round 3 was decided with, then stepped from round 3's load
    np.testing.assert_allclose(strategy.state.expert_bias.values, before + 0.05 * np.sign(load.mean() - load))

    state = json.loads(json.dumps({k: v for k, v in strategy.state_dict().items() if k != "global"}))
    resumed = strategy_for("bias-greedy", fraction_train=0.5, bias_update_rate=0.05)
    resumed.load_state_dict({**state, "global": strategy.state_dict()["global"]})
    np.testing.assert_array_equal(resumed.state.expert_bias.values, strategy.state.expert_bias.values)
    assert play_round(resumed, fake_grid(clients_for(8)), 4) == play_round(strategy, grid, 4)
    # other methods keep a zero bias (it is read by bias-greedy only)
    other = strategy_for("greedy", fraction_train=0.5)
    play_round(other, fake_grid(clients_for(8)), 1)
    assert other.state.expert_bias.values.tolist() == [0.0] * E
