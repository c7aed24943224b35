"""MoEClassifier: masked top-r routing, partial expert holding, state exchange."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexmoe_core.model import (
    MoEClassifier,
    build_global_state,
    pick_device,
)

E = 8


def tiny_model(held, top_r=2, seed=0, **kwargs) -> MoEClassifier:
    torch.manual_seed(seed)
    return MoEClassifier(E, held, num_classes=5, in_channels=1, image_size=8, top_r=top_r, expert_hidden=6, **kwargs)


def batch(n=6, seed=1, channels=1, size=8) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_unheld_experts_absent_from_parameters_and_state():
    model = tiny_model([6, 2, 4])
    assert model.held_experts == (2, 4, 6)
    expert_ids = {int(k.split(".")[1]) for k in model.state_dict() if k.startswith("experts.")}
    assert expert_ids == {2, 4, 6}
    param_expert_ids = {int(n.split(".")[1]) for n, _ in model.named_parameters() if n.startswith("experts.")}
    assert param_expert_ids == {2, 4, 6}
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"extractor", "experts", "gate"}
    # The gate still scores all E experts, so its shape survives reassignment.
    assert model.state_dict()["gate.weight"].shape[0] == E


def hand_mixture(model: MoEClassifier, x: torch.Tensor, r: int, renormalise: bool) -> np.ndarray:
    """Independent reference: features -> per-expert logits and gate softmax over held only."""
    with torch.no_grad():
        feats = model.extractor(x)
        gate_logits = model.gate(feats).numpy().astype(np.float64)
        held = list(model.held_experts)
        outs = {e: model.experts[str(e)](feats).numpy().astype(np.float64) for e in held}
    result = np.zeros((x.shape[0], model.num_classes))
    for i in range(x.shape[0]):
        z = gate_logits[i, held]
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p)[:r]
        w = p[order] / p[order].sum() if renormalise else p[order]
        for weight, pos in zip(w, order):
            result[i] += weight * outs[held[pos]][i]
    return result


@pytest.mark.parametrize("held,top_r", [([1, 3, 5, 7], 2), ([0, 2, 4], 3), ([0, 1, 2, 3, 4], 9)])
def test_top_r_mixture_matches_hand_computation(held, top_r):
    model = tiny_model(held, top_r=top_r)
    x = batch()
    logits = model(x).detach().numpy()
    r = min(top_r, len(held))
    np.testing.assert_allclose(logits, hand_mixture(model, x, r, renormalise=True), rtol=1e-5, atol=1e-6)


def test_top_1_uses_unrenormalised_probability():
    model = tiny_model([0, 3, 5], top_r=1)
    x = batch()
    logits = model(x).detach().numpy()
    expected = hand_mixture(model, x, 1, renormalise=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    # And it is really different from the renormalised (weight 1) version.
    assert not np.allclose(logits, hand_mixture(model, x, 1, renormalise=True), atol=1e-4)


def test_gate_probabilities_zero_on_unheld_and_sum_to_one():
    model = tiny_model([1, 6])
    _, routing = model.forward_with_routing(batch())
    probs = routing.gate_probs.detach()
    unheld = [e for e in range(E) if e not in (1, 6)]
    assert torch.all(probs[:, unheld] == 0.0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(probs.shape[0]))
    assert torch.all(probs[:, [1, 6]] > 0)
    # top-1 ids are global ids of held experts and agree with the probabilities.
    assert set(routing.top1.tolist()) <= {1, 6}
    assert torch.equal(routing.top1, probs.argmax(dim=1))
    assert routing.expert_logits.shape == (6, 2, 5)
    torch.testing.assert_close(
        routing.top1_expert_logits(), routing.expert_logits[torch.arange(6), (routing.top1 == 6).long()]
    )


def test_single_held_expert_gets_probability_one():
    model = tiny_model([4], top_r=2)
    x = batch()
    logits, routing = model.forward_with_routing(x)
    assert torch.all(routing.gate_probs[:, 4] == 1.0)
    with torch.no_grad():
        expected = model.experts["4"](model.extractor(x))
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("top_r", [1, 2])
def test_backward_reaches_gate_extractor_and_held_experts_only(top_r):
    model = tiny_model([0, 2, 5], top_r=top_r)
    y = torch.arange(6) % 5
    loss = torch.nn.functional.cross_entropy(model(batch()), y)
    loss.backward()
    gate_grad = model.gate.weight.grad
    assert gate_grad is not None and gate_grad[[0, 2, 5]].abs().sum() > 0
    # Masked (unheld) gate rows get exactly zero gradient.
    assert torch.all(gate_grad[[1, 3, 4, 6, 7]] == 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.extractor.parameters())
    # Exactly the experts chosen (top-r) for at least one sample get gradient.
    with torch.no_grad():
        probs = model.forward_with_routing(batch())[1].gate_probs
    chosen = set(probs.topk(top_r, dim=1).indices.flatten().tolist())
    for e in (0, 2, 5):
        grad = model.experts[str(e)][2].weight.grad
        if e in chosen:
            assert grad is not None and grad.abs().sum() > 0
        else:
            assert grad is None or torch.all(grad == 0)


def test_state_bytes_scale_with_held_count():
    def shared_bytes(k: int) -> int:
        model = MoEClassifier(E, list(range(k)))
        return sum(a.nbytes for a in model.shared_state_dict().values())

    model = MoEClassifier(E, [0])
    extractor_params = sum(p.numel() for p in model.extractor.parameters())
    expert_params = sum(p.numel() for p in model.experts["0"].parameters())
    assert shared_bytes(2) == 4 * (extractor_params + 2 * expert_params)
    assert shared_bytes(8) == 4 * (extractor_params + 8 * expert_params)
    assert shared_bytes(2) / shared_bytes(8) == pytest.approx(
        (extractor_params + 2 * expert_params) / (extractor_params + 8 * expert_params)
    )


def test_shared_state_round_trip_and_copies():
    source = tiny_model([1, 2], seed=3)
    target = tiny_model([1, 2], seed=4)
    state = source.shared_state_dict()
    assert all(a.dtype == np.float32 for a in state.values())
    assert not any(k.startswith("gate.") for k in state)
    target.load_shared_state(state)
    x = batch()
    # Same extractor + experts; gates differ, so compare per-expert logits.
    _, ra = source.forward_with_routing(x)
    _, rb = target.forward_with_routing(x)
    torch.testing.assert_close(ra.expert_logits, rb.expert_logits)
    # Returned arrays are copies: changing the model later does not change them.
    before = state["extractor.project.0.weight"].copy()
    with torch.no_grad():
        source.extractor.project[0].weight.add_(1.0)
    np.testing.assert_array_equal(state["extractor.project.0.weight"], before)


def test_load_shared_state_is_strict():
    model = tiny_model([1, 2])
    state = model.shared_state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("experts.2.")}
    with pytest.raises(ValueError, match=r"missing keys \['experts\.2\.0\.bias'"):
        model.load_shared_state(missing)
    other = tiny_model([1, 2, 3]).shared_state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['experts\.3\.0\.bias'"):
        model.load_shared_state(other)
    with pytest.raises(ValueError, match="unexpected keys.*gate.weight"):
        model.load_shared_state({**state, **model.gate_state()})
    bad_shape = dict(state)
    bad_shape["experts.1.0.bias"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="experts.1.0.bias.*shape"):
        model.load_shared_state(bad_shape)


def test_gate_state_round_trip_survives_reassignment():
    old = tiny_model([0, 1], seed=5)
    new = tiny_model([5, 6, 7], seed=6)  # next round: different experts, same gate
    new.load_gate_state(old.gate_state())
    torch.testing.assert_close(new.gate.weight, old.gate.weight)
    with pytest.raises(ValueError, match="missing keys"):
        new.load_gate_state({"gate.weight": old.gate_state()["gate.weight"]})


def test_build_global_state_has_all_experts_and_is_deterministic():
    kwargs = dict(num_classes=5, image_size=8, expert_hidden=6)
    rng_before = torch.get_rng_state()
    a = build_global_state(E, seed=11, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    b = build_global_state(E, seed=11, **kwargs)
    c = build_global_state(E, seed=12, **kwargs)
    assert {int(k.split(".")[1]) for k in a if k.startswith("experts.")} == set(range(E))
    assert not any(k.startswith("gate.") for k in a)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    # Experts start different from each other (otherwise assignment would be moot).
    assert not np.array_equal(a["experts.0.0.weight"], a["experts.1.0.weight"])
    # A client model holding a subset loads its slice of the global state.
    client = tiny_model([2, 7])
    client.load_shared_state(
        {k: v for k, v in a.items() if not k.startswith("experts.") or k.split(".")[1] in ("2", "7")}
    )
    np.testing.assert_array_equal(client.shared_state_dict()["experts.7.2.weight"], a["experts.7.2.weight"])


@pytest.mark.parametrize("arch,channels,size", [("cnn", 1, 28), ("cnn", 3, 32), ("resnet", 3, 32), ("resnet", 1, 28)])
def test_architectures_accept_any_shape(arch, channels, size):
    model = MoEClassifier(E, [0, 3], num_classes=43, in_channels=channels, image_size=size, arch=arch)
    out = model(batch(2, channels=channels, size=size))
    assert out.shape == (2, 43)
    assert all(k.split(".")[0] in ("extractor", "experts", "gate") for k in model.state_dict())
    # Only float parameters in the state (GroupNorm, no BatchNorm buffers to federate).
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(held_experts=[]), "at least one"),
        (dict(held_experts=[0, 8]), "out of range"),
        (dict(held_experts=[-1]), "out of range"),
        (dict(held_experts=[1, 1]), "duplicates"),
        (dict(held_experts=[0], top_r=0), "top_r"),
        (dict(held_experts=[0], arch="vit"), "arch"),
        (dict(held_experts=[0], image_size=2), "image_size"),
    ],
)
def test_invalid_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEClassifier(E, **kwargs)
    with pytest.raises(ValueError, match="num_experts"):
        MoEClassifier(0, [0])


def test_pick_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
