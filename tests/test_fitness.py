"""Tests of the client-expert fitness table Q (flexmoe_core.fitness)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flexmoe_core.fitness import FitnessTable


def test_new_client_starts_at_initial_value():
    table = FitnessTable(4, initial=0.7)
    scores = table.scores(["a", "b"])
    assert scores.shape == (2, 4)
    assert scores.dtype == np.float64
    assert np.array_equal(scores, np.full((2, 4), 0.7))
    assert table.client_ids == ["a", "b"]
    assert "a" in table and "c" not in table
    assert len(table) == 2


def test_accuracy_ema_over_two_updates_matches_hand_computation():
    table = FitnessTable(3, ema_beta=0.25, initial=1.0)
    # Round 1: experts 0 and 2 held. Entry 1 of the feedback must not be read.
    table.update("c1", [0, 2], accuracy=[0.6, 0.9, 0.2], loss=[0.0, 0.0, 0.0])
    # Q0 = 0.75*1 + 0.25*0.6 = 0.9 ; Q1 untouched = 1.0 ; Q2 = 0.75*1 + 0.25*0.2 = 0.8
    assert table.row("c1") == pytest.approx([0.9, 1.0, 0.8], rel=1e-15, abs=0)
    # Round 2: experts 2 and 1 held (order must not matter); entry 0 must not be read.
    table.update("c1", [2, 1], accuracy=[0.0, 0.4, 1.0], loss=[5.0, 5.0, 5.0])
    # Q0 unchanged 0.9 ; Q1 = 0.75*1 + 0.25*0.4 = 0.85 ; Q2 = 0.75*0.8 + 0.25*1 = 0.85
    assert table.row("c1") == pytest.approx([0.9, 0.85, 0.85], rel=1e-15, abs=0)


def test_update_of_one_client_leaves_other_clients_unchanged():
    table = FitnessTable(2, ema_beta=0.5, initial=1.0)
    table.scores(["other"])
    table.update("c", [0], accuracy=[0.0, 0.0], loss=[0.0, 0.0])
    assert np.array_equal(table.row("other"), [1.0, 1.0])
    assert np.array_equal(table.row("c"), [0.5, 1.0])


def test_update_adds_unknown_client_with_initial_before_ema():
    table = FitnessTable(2, ema_beta=0.5, initial=2.0)
    table.update("fresh", [1], accuracy=[0.0, 1.0], loss=[0.0, 0.0])
    # 0.5*2.0 + 0.5*1.0 = 1.5 on the held expert; the other keeps the optimistic 2.0.
    assert np.array_equal(table.row("fresh"), [2.0, 1.5])


def test_empty_held_adds_client_but_changes_nothing():
    table = FitnessTable(2, initial=0.3)
    table.update("idle", [], accuracy=[0.0, 0.0], loss=[0.0, 0.0])
    assert np.array_equal(table.row("idle"), [0.3, 0.3])


def test_loss_mode_score_is_exp_minus_alpha_loss():
    table = FitnessTable(3, mode="loss", ema_beta=1.0, loss_alpha=2.0, initial=1.0)
    # accuracy is ignored in loss mode (0.0 would otherwise drive the score to 0).
    table.update("c", np.array([0, 2]), accuracy=[0.0, 0.0, 0.0], loss=[0.5, 3.0, 0.1])
    assert table.row("c") == pytest.approx([math.exp(-1.0), 1.0, math.exp(-0.2)], rel=1e-15)


def test_loss_mode_ema_mixes_old_value_and_score():
    table = FitnessTable(1, mode="loss", ema_beta=0.5, loss_alpha=1.0, initial=1.0)
    table.update("c", [0], accuracy=[0.5], loss=[math.log(4.0)])  # score exp(-ln 4) = 0.25
    assert table.row("c") == pytest.approx([0.625], rel=1e-15)


@pytest.mark.parametrize("mode", ["accuracy", "loss"])
def test_a_held_expert_with_zero_usage_scores_zero_in_both_modes(mode):
    # Expert 1 was held but the gate never selected it: the trainer reports accuracy 0 and
    # loss 0 for it. Loss 0 must not read as a perfect expert (exp(0) = 1), and the entry must
    # not keep its optimistic 1.0 either: it scores 0.
    table = FitnessTable(3, mode=mode, ema_beta=0.5, loss_alpha=1.0, initial=1.0)
    table.update("c", [0, 1], accuracy=[0.8, 0.0, 0.0], loss=[math.log(2.0), 0.0, 0.0], usage=[12, 0, 0])
    used_score = 0.8 if mode == "accuracy" else 0.5
    assert table.row("c") == pytest.approx([0.5 + 0.5 * used_score, 0.5, 1.0], rel=1e-15)
    table.update("c", [1], accuracy=[0.0, 0.0, 0.0], loss=[0.0, 0.0, 0.0], usage=[0, 0, 0])
    assert table.row("c")[1] == pytest.approx(0.25, rel=1e-15)  # keeps decaying while unused


def test_scores_returns_rows_in_requested_order_and_copies():
    table = FitnessTable(2, ema_beta=1.0)
    table.update("a", [0], accuracy=[0.1, 0.0], loss=[0.0, 0.0])
    table.update("b", [1], accuracy=[0.0, 0.2], loss=[0.0, 0.0])
    scores = table.scores(["b", "new", "a"])
    assert np.array_equal(scores, [[1.0, 0.2], [1.0, 1.0], [0.1, 1.0]])
    scores[:] = -1.0  # must not write through to the table
    table.row("a")[:] = -1.0
    assert np.array_equal(table.row("a"), [0.1, 1.0])
    assert table.client_ids == ["a", "b", "new"]


def test_row_of_unknown_client_raises_key_error():
    with pytest.raises(KeyError):
        FitnessTable(2).row("nobody")


def _filled_table() -> FitnessTable:
    table = FitnessTable(3, mode="loss", ema_beta=0.3, loss_alpha=0.7, initial=1.25)
    table.update("node-1", [0, 1], accuracy=[0.5, 0.5, 0.0], loss=[0.123456789, 1 / 3, 0.0])
    table.update("node-2", [2], accuracy=[0.0, 0.0, 0.5], loss=[0.0, 0.0, 2.0 / 7.0])
    table.update("node-1", [1, 2], accuracy=[0.0, 0.5, 0.5], loss=[0.0, 0.1, math.pi])
    return table


def test_to_dict_from_dict_round_trip_through_json_is_exact():
    table = _filled_table()
    snapshot = table.to_dict()
    restored = FitnessTable.from_dict(json.loads(json.dumps(snapshot)))
    assert restored.to_dict() == snapshot
    assert restored.client_ids == ["node-1", "node-2"]
    for cid in table.client_ids:
        # Bitwise equality, not approx: the snapshot must be lossless.
        assert np.array_equal(restored.row(cid), table.row(cid))
    assert (restored.mode, restored.ema_beta, restored.loss_alpha, restored.initial) == (
        "loss",
        0.3,
        0.7,
        1.25,
    )
    # The restored table keeps updating exactly like the original.
    for t in (table, restored):
        t.update("node-2", [0], accuracy=[0.0, 0.0, 0.0], loss=[0.9, 0.0, 0.0])
    assert np.array_equal(restored.scores(["node-2"]), table.scores(["node-2"]))


def test_from_dict_rejects_foreign_or_broken_snapshots():
    with pytest.raises(ValueError, match="format"):
        FitnessTable.from_dict({"rows": []})
    broken = _filled_table().to_dict()
    broken["rows"][0][1] = [1.0, 2.0]  # wrong length
    with pytest.raises(ValueError, match="node-1"):
        FitnessTable.from_dict(broken)
    missing = _filled_table().to_dict()
    del missing["mode"]
    with pytest.raises(ValueError, match="mode"):
        FitnessTable.from_dict(missing)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "reward"}, "mode"),
        ({"ema_beta": 0.0}, "ema_beta"),
        ({"ema_beta": 1.5}, "ema_beta"),
        ({"ema_beta": float("nan")}, "ema_beta"),
        ({"loss_alpha": 0.0}, "loss_alpha"),
        ({"loss_alpha": -1.0}, "loss_alpha"),
        ({"initial": float("inf")}, "initial"),
        ({"initial": float("nan")}, "initial"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FitnessTable(3, **kwargs)


@pytest.mark.parametrize("num_experts", [0, -2, 2.5, True])
def test_constructor_rejects_bad_num_experts(num_experts):
    with pytest.raises(ValueError, match="num_experts"):
        FitnessTable(num_experts)


ZEROS = [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "held, accuracy, loss, message",
    [
        ([3], ZEROS, ZEROS, "held expert ids"),  # out of range
        ([-1], ZEROS, ZEROS, "held expert ids"),
        ([1, 1], ZEROS, ZEROS, "repeat"),
        ([0.5], ZEROS, ZEROS, "integers"),
        ([0], [0.0, 0.0], ZEROS, "accuracy"),  # wrong length
        ([0], ZEROS, [0.0, 0.0, 0.0, 0.0], "loss"),  # wrong length
        ([0], [float("nan"), 0.0, 0.0], ZEROS, "accuracy"),
        ([0], ZEROS, [float("inf"), 0.0, 0.0], "loss"),
        ([2], [0.0, 0.0, 1.5], ZEROS, r"\[0, 1\]"),
        ([2], [0.0, 0.0, -0.1], ZEROS, r"\[0, 1\]"),
    ],
)
def test_update_rejects_bad_feedback_and_leaves_table_unchanged(held, accuracy, loss, message):
    table = FitnessTable(3)
    with pytest.raises(ValueError, match=message):
        table.update("c", held, accuracy, loss)
    assert "c" not in table  # a rejected update must not half-apply


def test_non_finite_values_of_unheld_experts_are_not_read():
    table = FitnessTable(2, ema_beta=1.0)
    table.update("c", [0], accuracy=[0.5, float("nan")], loss=[0.1, float("inf")])
    assert np.array_equal(table.row("c"), [0.5, 1.0])


def test_client_ids_must_be_strings():
    table = FitnessTable(2)
    with pytest.raises(ValueError, match="client_id"):
        table.update(3, [0], [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="client_id"):
        table.scores([1, 2])
    with pytest.raises(ValueError, match="single str"):
        table.scores("ab")


@pytest.mark.parametrize("method", ["greedy", "flexmoe"])
def test_the_initial_fitness_decides_whether_a_client_explores_or_stays_on_its_experts(method):
    # The assignment-churn diagnosis (docs/results.md): 8 clients, E = 16, k = 2, client i trained
    # experts 2i and 2i+1 once and scored 0.9 on both. Untried entries keep `initial`.
    from flexmoe_core.assignment import assign

    trained = [{2 * i, 2 * i + 1} for i in range(8)]
    for initial, stays in ((1.0, False), (0.0, True)):
        table = FitnessTable(16, initial=initial)
        for i, experts in enumerate(trained):
            accuracy = np.zeros(16)
            accuracy[list(experts)] = 0.9
            table.update(f"c{i}", sorted(experts), accuracy, np.zeros(16))
        ids = [f"c{i}" for i in range(8)]
        x = assign(table.scores(ids), 2, method, rng=0)
        held = [set(np.flatnonzero(row).tolist()) for row in x]
        if stays:  # 0.45 beats 0: every client keeps the pair it trained
            assert held == trained
        else:  # optimistic 1.0 beats 0.95: no client gets back an expert it trained
            assert all(not (h & t) for h, t in zip(held, trained))
