"""The mechanism metrics: each expert's class mix (entropy), starvation streaks, cumulative routed
samples; the client's top-1 label histogram and its validation on the server."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from flexmoe_core.metrics import STARVED_AFTER, class_entropy, starvation_streaks
from flexmoe_core.model import MoEClassifier
from flexmoe_core.replies import ReplyError, validate_train_reply
from flexmoe_core.train import train_local
from server_app.app import FederatedRun
from tests.fake_clients import E, HonestClient
from tests.test_fair_comparison import play_round, strategy_for


def test_entropy_of_hand_made_class_mixes_in_bits():
    counts = np.array(
        [
            [10, 0, 0, 0],  # one class only: 0 bits
            [5, 5, 0, 0],  # two classes evenly: 1 bit
            [1, 1, 1, 1],  # four evenly: 2 bits
            [2, 1, 1, 0],  # p = 1/2, 1/4, 1/4: 1/2*1 + 2 * 1/4*2 = 1.5 bits
            [0, 0, 0, 0],  # no sample: nan
        ]
    )
    entropy = class_entropy(counts)
    assert entropy[:4].tolist() == pytest.approx([0.0, 1.0, 2.0, 1.5])
    assert math.isnan(entropy[4])
    with pytest.raises(ValueError):
        class_entropy([[1, -1]])


def test_starvation_streaks_on_a_hand_made_sequence_of_assignments():
    # loads of 3 experts over 5 rounds: expert 2 is never held, expert 1 held in round 3 only
    loads = [[2, 0, 0], [1, 0, 0], [1, 1, 0], [2, 0, 0], [2, 0, 0]]
    streak, history = None, []
    for load in loads:
        streak = starvation_streaks(streak, load)
        history.append(streak.tolist())
    assert history == [[0, 1, 1], [0, 2, 2], [0, 0, 3], [0, 1, 4], [0, 2, 5]]
    assert [sum(s >= STARVED_AFTER for s in h) for h in history] == [0, 0, 1, 1, 1]


def test_the_run_adds_cumulative_routed_samples_and_starvation_to_each_round():
    rounds: list[dict] = []
    run = SimpleNamespace(rounds=rounds)
    for load, routed in [([1, 0, 0], [10, 0, 0]), ([1, 0, 0], [5, 0, 0]), ([0, 1, 0], [0, 7, 0])]:
        row = {"expert-load": load, "routed-load": routed}
        FederatedRun._add_cumulative_load(run, row)  # type: ignore[arg-type]
        rounds.append(row)
    assert rounds[-1]["cumulative-routed-load"] == [15, 7, 0]
    assert [r["starved-streak"] for r in rounds] == [[0, 1, 1], [0, 2, 2], [1, 0, 3]]
    assert [r["starved-experts"] for r in rounds] == [0, 0, 1]


SENT = {"extractor.w": np.zeros(2, np.float32), "experts.1.w": np.zeros(2, np.float32)}


def metrics(class_counts):
    return {
        "num-examples": 6,
        "train-loss": 0.5,
        "expert-usage": [0.0, 6.0],
        "expert-accuracy": [0.0, 0.5],
        "expert-loss": [0.0, 0.5],
        "expert-class-counts": class_counts,
    }


def test_a_reply_histogram_is_validated_with_a_clear_error():
    ok = validate_train_reply(SENT, SENT, metrics([0, 0, 0, 4, 2, 0]), 2, num_classes=3)
    assert ok.class_counts is not None and ok.class_counts.tolist() == [[0, 0, 0], [4, 2, 0]]
    # absent, or a server that does not ask: no histogram, no error
    absent = {k: v for k, v in metrics([]).items() if k != "expert-class-counts"}
    assert validate_train_reply(SENT, SENT, absent, 2, num_classes=3).class_counts is None
    cases = [
        ([0, 0, 0, 4, 2], "2 x 3 = 6 counts, got 5"),
        ("many", "got str"),
        ([0, 0, 0, 4, 2, -1], "non-negative integers"),
        ([0, 0, 0, 4, 2, 0.5], "non-negative integers"),
        ([0, 0, 0, 4, 2, float("nan")], "non-negative integers"),
        ([1, 0, 0, 4, 1, 0], r"experts \[0\] it did not hold"),
        ([0, 0, 0, 4, 2, 1], "more than its 6 examples"),
    ]
    for counts, message in cases:
        with pytest.raises(ReplyError, match=message) as err:
            validate_train_reply(SENT, SENT, metrics(counts), 2, num_classes=3)
        assert err.value.field == "expert-class-counts"


def test_local_training_counts_each_sample_once_under_its_top1_expert():
    torch.manual_seed(0)
    images, labels = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    model = MoEClassifier(4, [1, 3], gate_seed=0, num_classes=10, top_r=2, expert_hidden=8)
    result = train_local(model, TensorDataset(images, labels), epochs=1, batch_size=16, lr=0.01, seed=0)
    counts = result.feedback.class_counts
    assert counts is not None and counts.shape == (4, 10)
    assert counts.sum() == 40 and counts[[0, 2]].sum() == 0
    assert counts.sum(axis=0).tolist() == np.bincount(labels.numpy(), minlength=10).tolist()


class SpecialistClient(HonestClient):
    """Routes all its samples top-1 to its first held expert, all of class `label`."""

    def __init__(self, *args, label: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.label = label

    def train_metrics(self, msg):
        out = super().train_metrics(msg)
        counts = np.zeros((E, 10))
        counts[self.held(msg)[0], self.label] = self.num_examples
        out["expert-class-counts"] = counts.ravel().tolist()
        return out


@pytest.mark.usefixtures("flower_identity")
def test_the_server_sums_histograms_per_expert_and_reports_their_entropy(fake_grid):
    clients = {100 + i: SpecialistClient(f"client-{i}", 1, 1.0, 8, label=i % 2) for i in range(4)}
    strategy = strategy_for("static", capacity=1)
    play_round(strategy, fake_grid(clients), 1)
    # static, capacity 1: clients 0..3 hold experts 0..3; each expert saw one class: 0 bits
    metrics_ = strategy.plan.metrics
    assert metrics_["expert-class-entropy"] == [0.0] * E and metrics_["class-entropy-mean"] == 0.0

    two = {100 + i: SpecialistClient(f"client-{i}", 1, 1.0, 8, label=i) for i in range(2)}
    strategy = strategy_for("dense", capacity=1)  # both hold every expert, both route to expert 0
    play_round(strategy, fake_grid(two), 1)
    entropy = strategy.plan.metrics["expert-class-entropy"]
    assert entropy[0] == pytest.approx(1.0) and all(math.isnan(v) for v in entropy[1:])
    assert strategy.plan.metrics["class-entropy-mean"] == pytest.approx(1.0)
