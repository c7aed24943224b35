"""Local training, per-expert feedback and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from flexmoe_core.model import MoEClassifier
from flexmoe_core.train import evaluate, train_local

E = 6


HELD = [1, 4, 5]


def synthetic(n: int = 320, seed: int = 0) -> TensorDataset:
    """4 classes, each a bright 6x6 square in its own corner of a noisy 16x16 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    corners = [(0, 0), (0, 10), (10, 0), (10, 10)]
    for i, label in enumerate(y.tolist()):
        r, c = corners[label]
        x[i, 0, r : r + 6, c : c + 6] += 2.0
    return TensorDataset(x, y)


def make_model(seed: int = 0, top_r: int = 2) -> MoEClassifier:
    torch.manual_seed(seed)
    return MoEClassifier(E, HELD, num_classes=4, in_channels=1, image_size=16, top_r=top_r, expert_hidden=16)


def test_training_lowers_the_loss():
    dataset = synthetic()
    model = make_model()
    before = evaluate(model, dataset, batch_size=64)
    result = train_local(model, dataset, epochs=1, batch_size=16, lr=0.05, seed=1)
    after = evaluate(model, dataset, batch_size=64)
    assert result.num_examples == len(dataset)
    assert after.loss < 0.7 * before.loss
    assert after.accuracy > before.accuracy
    assert np.isfinite(result.mean_loss) and result.mean_loss > 0


@pytest.mark.parametrize("epochs", [1, 3])
def test_feedback_shapes_and_ranges(epochs):
    dataset = synthetic(100)
    result = train_local(make_model(), dataset, epochs=epochs, batch_size=32, lr=0.05, seed=2)
    fb = result.feedback
    for array in (fb.usage, fb.accuracy, fb.loss):
        assert array.shape == (E,)
    unheld = [e for e in range(E) if e not in HELD]
    # top-2 of 3 held experts: each last-epoch sample is in D[c, e] of exactly two experts
    assert fb.usage.sum() == 2 * result.num_examples == 200
    assert np.all(fb.usage[unheld] == 0) and np.all(fb.accuracy[unheld] == 0) and np.all(fb.loss[unheld] == 0)
    assert np.all((fb.accuracy >= 0) & (fb.accuracy <= 1))
    # >= 0, not > 0: a perfectly fitted expert can reach float32 cross-entropy 0 (seen on GPU).
    assert np.all(fb.loss >= 0) and np.all(fb.loss[fb.usage == 0] == 0)


def test_feedback_equals_definition_when_weights_do_not_move():
    """lr = 0 keeps the model fixed, so the feedback can be recomputed from one pass:
    usage = how often e was among the top-2 selected; accuracy / loss of each expert's OWN
    logits on those samples."""
    dataset = synthetic(90, seed=3)
    model = make_model(seed=4)
    result = train_local(model, dataset, epochs=1, batch_size=25, lr=0.0, seed=5)
    x, y = dataset.tensors
    with torch.no_grad():
        features = model.extractor(x)
        probs = torch.softmax(model.gate(features)[:, HELD], dim=1)
        top2 = [[HELD[j] for j in row] for row in probs.topk(2, dim=1).indices.tolist()]
        own = {e: model.experts[str(e)](features) for e in HELD}
        mixture = model(x)
    usage = np.zeros(E, dtype=np.int64)
    correct = np.zeros(E)
    loss = np.zeros(E)
    for i, chosen in enumerate(top2):
        for e in chosen:
            usage[e] += 1
            correct[e] += float(own[e][i].argmax() == y[i])
            loss[e] += float(F.cross_entropy(own[e][i : i + 1], y[i : i + 1]))
    assert usage.sum() == 2 * 90
    used = usage > 0
    np.testing.assert_array_equal(result.feedback.usage, usage)
    np.testing.assert_allclose(result.feedback.accuracy[used], correct[used] / usage[used])
    np.testing.assert_allclose(result.feedback.loss[used], loss[used] / usage[used], rtol=1e-5)
    assert result.mean_loss == pytest.approx(float(F.cross_entropy(mixture, y)), rel=1e-5)


def test_feedback_from_a_hand_made_routing():
    """Three samples, held experts (1, 4, 5), top-2. Sample 0 picks positions {0, 1} (experts 1, 4),
    sample 1 {1, 2} (4, 5), sample 2 {0, 1} (1, 4). Expert 4 is never anyone's first choice, but as
    the second choice it is in D[c, 4] for every sample: usage 3, not 0."""
    from flexmoe_core.model import Routing
    from flexmoe_core.train import _FeedbackTotals

    labels = torch.tensor([0, 1, 2])
    # own logits (B=3, k=3, C=3): the argmax of each expert's logits per sample
    predicted = torch.tensor([[0, 1, 0], [2, 1, 1], [2, 0, 2]])  # [sample][position]
    expert_logits = F.one_hot(predicted, 3).float() * 4.0
    selected = torch.tensor([[0, 1], [1, 2], [0, 1]])
    gate_probs = torch.zeros(3, E)
    gate_probs[:, HELD] = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    routing = Routing(
        held_experts=tuple(HELD),
        top1=torch.tensor([1, 4, 1]),
        selected=selected,
        expert_logits=expert_logits,
        gate_probs=gate_probs,
    )
    totals = _FeedbackTotals(E, torch.device("cpu"))
    totals.add(expert_logits[:, 0], routing, labels)
    fb = totals.feedback()
    np.testing.assert_array_equal(fb.usage, [0, 2, 0, 0, 3, 1])
    # expert 1 on samples 0, 2: predicts 0 (right), 2 (right) -> 1.0
    # expert 4 on samples 0, 1, 2: predicts 1 (wrong), 1 (right), 0 (wrong) -> 1/3
    # expert 5 on sample 1: predicts 1 (right) -> 1.0
    np.testing.assert_allclose(fb.accuracy, [0, 1.0, 0, 0, 1 / 3, 1.0])
    own_loss = F.cross_entropy(expert_logits.reshape(-1, 3), labels.repeat_interleave(3), reduction="none").view(3, 3)
    expected_loss = [
        0,
        (own_loss[0, 0] + own_loss[2, 0]) / 2,
        0,
        0,
        (own_loss[0, 1] + own_loss[1, 1] + own_loss[2, 1]) / 3,
        own_loss[1, 2],
    ]
    np.testing.assert_allclose(fb.loss, [float(v) for v in expected_loss], rtol=1e-6)


def test_a_held_expert_the_gate_never_selects_reports_zero_usage():
    model = make_model(seed=1, top_r=1)
    with torch.no_grad():  # the gate always prefers expert 1 by a wide margin
        model.gate.weight.zero_()
        model.gate.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0, 0.0]))
    result = train_local(model, synthetic(40), epochs=1, batch_size=40, lr=0.0, seed=0)
    np.testing.assert_array_equal(result.feedback.usage, [0, 40, 0, 0, 0, 0])
    assert result.feedback.accuracy[4] == 0.0 and result.feedback.loss[4] == 0.0


def test_training_is_deterministic_given_seed():
    dataset = synthetic(96)
    runs = []
    for _ in range(2):
        model = make_model(seed=7)
        runs.append((train_local(model, dataset, epochs=2, batch_size=16, lr=0.05, seed=11), model))
    (ra, ma), (rb, mb) = runs
    assert ra.mean_loss == rb.mean_loss
    np.testing.assert_array_equal(ra.feedback.usage, rb.feedback.usage)
    sa, sb = ma.shared_state_dict(), mb.shared_state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    other = make_model(seed=7)
    train_local(other, dataset, epochs=2, batch_size=16, lr=0.05, seed=12)
    assert any(not np.array_equal(sa[k], v) for k, v in other.shared_state_dict().items())


def test_gate_learns_with_top_1_routing():
    """Switch convention: with r = 1 the gate still receives gradient and changes."""
    model = make_model(top_r=1)
    gate_before = model.gate.weight.detach().clone()
    train_local(model, synthetic(64), epochs=1, batch_size=16, lr=0.05, seed=0)
    assert not torch.equal(model.gate.weight, gate_before)


def test_evaluate_matches_manual_computation():
    dataset = synthetic(77, seed=9)
    model = make_model(seed=2)
    train_local(model, dataset, epochs=1, batch_size=16, lr=0.05, seed=0)
    result = evaluate(model, dataset, batch_size=10)  # several batches, a partial last one
    x, y = dataset.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert result.num_examples == 77
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_empty_and_invalid_inputs():
    empty = TensorDataset(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long))
    result = evaluate(make_model(), empty, batch_size=8)
    assert (result.num_examples, result.loss, result.accuracy) == (0, 0.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        train_local(make_model(), empty, epochs=1, batch_size=8, lr=0.1, seed=0)
    dataset = synthetic(8)
    for kwargs, name in ((dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(lr=-1.0), "lr")):
        settings = dict(epochs=1, batch_size=4, lr=0.1, seed=0) | kwargs
        with pytest.raises(ValueError, match=name):
            train_local(make_model(), dataset, **settings)
