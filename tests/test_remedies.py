"""The remedies for few holders per expert (flexmoe_core.remedies), each checked on hand-made inputs,
and that with every default the method is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from client_app import app as client
from flexmoe_core import protocol as P
from flexmoe_core import remedies
from flexmoe_core.aggregation import ClientUpdate, aggregate, download_keys, payload_bytes, select_experts
from flexmoe_core.config import Settings, SettingsError
from flexmoe_core.model import MoEClassifier, build_global_state
from flexmoe_core.replies import ReplyError
from flexmoe_core.train import train_local
from server_app.state import ServerState
from server_app.strategy import FlexMoEStrategy, to_record
from tests.fake_clients import GLOBAL, E, HonestClient
from tests.in_process import node_context, run_config

SMALL = dict(num_classes=4, in_channels=1, image_size=8, top_r=2, expert_hidden=6)


def toy_data(n=24, seed=0, classes=4, size=8):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


# --------------------------------------------------------------------------- per-expert server step


def test_fedavgm_step_on_a_two_holder_delta_by_hand():
    previous = {"extractor.w": np.array([5.0]), "experts.0.w": np.array([1.0, 2.0]), "experts.1.w": np.array([7.0])}
    # Two holders of expert 0 with usages 1 and 3; expert 1 held by nobody.
    a = ClientUpdate({"extractor.w": np.array([6.0]), "experts.0.w": np.array([3.0, 0.0])}, 10, np.array([1.0, 0.0]))
    b = ClientUpdate({"extractor.w": np.array([8.0]), "experts.0.w": np.array([1.0, 4.0])}, 30, np.array([3.0, 0.0]))
    averaged = aggregate(previous, [a, b], 2)
    np.testing.assert_allclose(averaged["experts.0.w"], [1.5, 3.0])  # (1*[3,0] + 3*[1,4]) / 4
    velocity: dict[str, np.ndarray] = {}
    # 2 holders of 4 participants, lr 0.5 -> eta = 0.5 * 2/4 = 0.25; delta = [0.5, 1.0]; v = delta.
    out = remedies.expert_server_step(previous, averaged, {0: 2}, 4, velocity, lr=0.5, momentum=0.9, scale="holders")
    np.testing.assert_allclose(out["experts.0.w"], [1.0 + 0.25 * 0.5, 2.0 + 0.25 * 1.0])
    np.testing.assert_allclose(velocity["experts.0.w"], [0.5, 1.0])
    np.testing.assert_array_equal(out["extractor.w"], averaged["extractor.w"])  # shared: plain FedAvg (7.5)
    np.testing.assert_array_equal(out["experts.1.w"], [7.0])  # nobody held it: unchanged, no velocity
    assert "experts.1.w" not in velocity
    # Round 2: averaged delta [-0.2, 0.2] -> v = 0.9 * [0.5, 1.0] + [-0.2, 0.2] = [0.25, 1.1].
    second = {**out, "experts.0.w": out["experts.0.w"] + np.array([-0.2, 0.2])}
    out2 = remedies.expert_server_step(out, second, {0: 2}, 4, velocity, lr=0.5, momentum=0.9, scale="holders")
    np.testing.assert_allclose(velocity["experts.0.w"], [0.25, 1.1])
    np.testing.assert_allclose(out2["experts.0.w"], out["experts.0.w"] + 0.25 * np.array([0.25, 1.1]))
    # A round in which expert 0 is not held keeps its weights and its velocity.
    out3 = remedies.expert_server_step(out2, out2, {}, 4, velocity, lr=0.5, momentum=0.9, scale="holders")
    np.testing.assert_array_equal(out3["experts.0.w"], out2["experts.0.w"])
    np.testing.assert_allclose(velocity["experts.0.w"], [0.25, 1.1])


def test_server_step_without_scaling_or_momentum_is_lr_times_delta_and_keeps_dtype():
    previous = {"experts.0.w": np.array([1.0, 1.0], np.float32)}
    averaged = {"experts.0.w": np.array([3.0, -1.0], np.float32)}
    out = remedies.expert_server_step(previous, averaged, {0: 1}, 10, {}, lr=2.0, momentum=0.0, scale="none")
    np.testing.assert_allclose(out["experts.0.w"], [5.0, -3.0])
    assert out["experts.0.w"].dtype == np.float32
    assert remedies.step_is_default(1.0, 0.0, "none") and not remedies.step_is_default(1.0, 0.0, "holders")
    with pytest.raises(ValueError, match="expert-step-scale"):
        remedies.expert_server_step(previous, averaged, {0: 1}, 1, {}, lr=1.0, momentum=0.0, scale="share")


def strategy_for(**overrides):
    options = {"num_experts": E, "capacity": 2, "min_train_nodes": 2, "node_wait_timeout": 1.0, "seed": 5}
    return FlexMoEStrategy(Settings(**{**options, **overrides}), GLOBAL)


def play_round(strategy, grid, server_round):
    messages = strategy.configure_train(server_round, to_record(strategy.global_state), ConfigRecord(), grid)
    strategy.aggregate_train(server_round, grid.send_and_receive(messages))
    return strategy.plan


@pytest.mark.usefixtures("flower_identity")
def test_strategy_applies_the_step_per_expert_and_checkpoints_its_velocity(fake_grid):
    clients = {100 + i: HonestClient(f"client-{i}", 2, float(i + 1), 10) for i in range(4)}
    plain, stepped = strategy_for(), strategy_for(expert_server_lr=0.5, expert_step_scale="holders")
    for strategy in (plain, stepped):
        play_round(strategy, fake_grid(clients), 1)
    assert plain.state.velocity == {}  # the method: no step, no state
    plan = stepped.plan
    holders = remedies.holder_counts([plan.held(n) for n in plan.completed])
    for key, value in plain.global_state.items():
        expert = P.expert_of(key)
        if expert is None or expert not in holders:
            np.testing.assert_array_equal(stepped.global_state[key], value)
            continue
        eta = 0.5 * holders[expert] / len(plan.completed)
        np.testing.assert_allclose(stepped.global_state[key], GLOBAL[key] + eta * (value - GLOBAL[key]), rtol=1e-6)
        np.testing.assert_allclose(stepped.state.velocity[key], value - GLOBAL[key], rtol=1e-6)
    restored = ServerState.from_dict(stepped.state.to_dict())
    assert set(restored.velocity) == set(stepped.state.velocity)
    for key, value in stepped.state.velocity.items():
        np.testing.assert_array_equal(restored.velocity[key], value)


# --------------------------------------------------------------------------- proximal term


def test_prox_gradient_is_mu_times_the_distance_on_held_experts_only():
    torch.manual_seed(0)
    model = MoEClassifier(4, [1, 3], **SMALL)
    anchor = remedies.expert_anchor(model)
    assert set(anchor) == {n for n, _ in model.named_parameters() if n.startswith("experts.")}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    mu = 0.3
    model.zero_grad()
    remedies.proximal_term(model, anchor, mu).backward()
    for name, param in model.named_parameters():
        if name in anchor:
            torch.testing.assert_close(param.grad, mu * (param.detach() - anchor[name]))
        else:
            assert param.grad is None, name  # extractor and gate: untouched by the term
    # The value itself is (mu / 2) * squared distance.
    squared = sum(float((p.detach() - anchor[n]).pow(2).sum()) for n, p in model.named_parameters() if n in anchor)
    assert float(remedies.proximal_term(model, anchor, mu).detach()) == pytest.approx(0.5 * mu * squared, rel=1e-5)


def train_copy(prox_mu, **kwargs):
    torch.manual_seed(0)
    model = MoEClassifier(4, [0, 2], gate_seed=1, **SMALL)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_local(model, toy_data(), epochs=2, batch_size=8, lr=0.1, seed=3, prox_mu=prox_mu, **kwargs)
    return model, start, result


def test_prox_mu_zero_is_the_method_and_a_large_mu_holds_the_experts_near_their_start():
    torch.manual_seed(0)
    plain = MoEClassifier(4, [0, 2], gate_seed=1, **SMALL)
    train_local(plain, toy_data(), epochs=2, batch_size=8, lr=0.1, seed=3)
    zero, start, _ = train_copy(0.0)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(zero.state_dict()[key], value, rtol=0, atol=0)
    held, _, result = train_copy(2.0)  # lr x mu = 0.2: stable

    def moved(model):
        return sum(float((v - start[k]).norm()) for k, v in model.state_dict().items() if k.startswith("experts."))

    assert moved(held) < 0.5 * moved(zero)
    assert result.mean_loss > 0  # reported loss is the task's cross-entropy
    with pytest.raises(ValueError, match="prox_mu"):
        train_copy(-1.0)


# --------------------------------------------------------------------------- hidden experts


def test_hidden_expert_model_has_a_shared_classifier_and_its_parameter_groups():
    model = MoEClassifier(4, [0, 2], expert_kind="hidden", **SMALL)
    keys = list(model.state_dict())
    groups = {k.split(".")[0] for k in keys}
    assert groups == {"extractor", "experts", "gate", "classifier"}
    assert model.state_dict()["classifier.weight"].shape == (4, 128)
    assert model.state_dict()["experts.0.0.weight"].shape == (6, 128)
    assert model.state_dict()["experts.0.2.weight"].shape == (128, 6)  # feature -> hidden -> feature
    shared = model.shared_state_dict()
    assert "classifier.weight" in shared and not any(k.startswith("gate.") for k in shared)
    head = MoEClassifier(4, [0, 2], **SMALL)
    assert head.classifier is None and not any(k.startswith("classifier.") for k in head.state_dict())


def test_hidden_forward_matches_a_hand_assembled_computation():
    torch.manual_seed(1)
    model = MoEClassifier(4, [0, 1, 3], expert_kind="hidden", **SMALL).eval()
    x = torch.randn(5, 1, 8, 8)
    logits, routing = model.forward_with_routing(x)
    with torch.no_grad():
        f = model.extractor(x)
        gate = model.gate(f)
        mask = torch.tensor([True, True, False, True])
        probs = torch.softmax(gate.masked_fill(~mask, float("-inf")), dim=1)
        expected = []
        for i in range(5):
            held = [0, 1, 3]
            top = sorted(held, key=lambda e: -float(probs[i, e]))[:2]
            w = probs[i, top] / probs[i, top].sum()
            h = f[i] + sum(w[j] * model.experts[str(e)](f[i : i + 1])[0] for j, e in enumerate(top))
            expected.append(model.classifier.weight @ h + model.classifier.bias)
        torch.testing.assert_close(logits, torch.stack(expected), rtol=1e-5, atol=1e-5)
        own = model.classifier(f + model.experts["3"](f))
        torch.testing.assert_close(routing.expert_logits[:, 2], own, rtol=1e-5, atol=1e-6)


def test_head_kind_is_unchanged_by_the_option():
    torch.manual_seed(4)
    default = MoEClassifier(4, [1, 2], **SMALL)
    torch.manual_seed(4)
    explicit = MoEClassifier(4, [1, 2], expert_kind="head", **SMALL)
    for key, value in default.state_dict().items():
        torch.testing.assert_close(explicit.state_dict()[key], value, rtol=0, atol=0)


def test_classifier_is_shared_by_aggregation_download_and_bytes():
    state = build_global_state(4, seed=0, expert_kind="hidden", **SMALL)
    keys = download_keys(state, [2])
    assert {k for k in keys if k.startswith("classifier.")} == {"classifier.weight", "classifier.bias"}
    assert {P.expert_of(k) for k in keys} == {None, 2}
    # Bytes: the download is the shared part (extractor + classifier) plus one expert.
    shared = payload_bytes({k: v for k, v in state.items() if P.is_shared(k)})
    one_expert = payload_bytes({k: v for k, v in state.items() if P.expert_of(k) == 2})
    assert payload_bytes(select_experts(state, [2])) == shared + one_expert
    a = {k: np.full_like(state[k], 1.0) for k in download_keys(state, [0])}
    b = {k: np.full_like(state[k], 4.0) for k in download_keys(state, [1])}
    out = aggregate(
        state,
        [ClientUpdate(a, 10, np.array([5.0, 0, 0, 0])), ClientUpdate(b, 30, np.array([0, 5.0, 0, 0]))],
        4,
    )
    np.testing.assert_allclose(out["classifier.weight"], 1.0 * 0.25 + 4.0 * 0.75)  # FedAvg by examples
    np.testing.assert_allclose(out["experts.0.0.weight"], 1.0)  # its only holder
    np.testing.assert_array_equal(out["experts.3.0.weight"], state["experts.3.0.weight"])


# --------------------------------------------------------------------------- adaptation at evaluation


def test_adaptation_changes_only_held_experts_and_gate_and_never_the_original():
    torch.manual_seed(2)
    model = MoEClassifier(4, [0, 3], gate_seed=0, expert_kind="hidden", **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = remedies.adapt(model, toy_data(), steps=5, lr=0.5, batch_size=8, seed=1)
    for key, value in model.state_dict().items():  # the model itself (what would go back) is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("experts.", "gate.")) for k in changed)
    assert any(k.startswith("gate.") for k in changed) and any(k.startswith("experts.") for k in changed)
    assert all(p.requires_grad for p in model.parameters())
    again = remedies.adapt(model, toy_data(), steps=5, lr=0.5, batch_size=8, seed=1)
    for key, value in adapted.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    same = remedies.adapt(model, toy_data(), steps=0, lr=0.5, batch_size=8, seed=1)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in before.items())


def test_adapted_outcome_is_optional_and_checked():
    assert remedies.adapted_outcome({"accuracy": 0.5}) is None
    assert remedies.adapted_outcome({P.ACCURACY_ADAPTED: 0.75, P.LOSS_ADAPTED: 0.2}) == (0.75, 0.2)
    with pytest.raises(ReplyError, match=P.ACCURACY_ADAPTED):
        remedies.adapted_outcome({P.ACCURACY_ADAPTED: 1.5, P.LOSS_ADAPTED: 0.2})
    with pytest.raises(ReplyError, match=P.LOSS_ADAPTED):
        remedies.adapted_outcome({P.ACCURACY_ADAPTED: 0.5, P.LOSS_ADAPTED: -1.0})


@pytest.mark.usefixtures("flower_identity")
def test_client_evaluate_reports_adapted_accuracy_apart_and_keeps_its_gate():
    config = run_config(num_experts=4, adapt_steps=3, adapt_lr=0.05)
    ctx = node_context(7, 0, 3, config)
    state = build_global_state(4, seed=0, **Settings.from_run_config(config).model_kwargs())
    sent = select_experts(state, [1, 2])
    from flwr.app import Array, ArrayRecord

    def message(kind, server_round):
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in sent.items()}),
                "config": ConfigRecord({"server-round": server_round, "run-token": "run1"}),
            }
        )
        return Message(content, message_type=kind, dst_node_id=7)

    client.train(message("train", 1), ctx)
    gate = {k: v.numpy().copy() for k, v in ctx.state[client.GATE_KEY].items()}
    reply = client.evaluate(message("evaluate", 1), ctx)
    metrics = reply.content["metrics"]
    assert 0.0 <= metrics[P.ACCURACY_ADAPTED] <= 1.0 and P.LOSS_ADAPTED in metrics
    assert P.ARRAYS not in reply.content.array_records  # nothing of the adapted copy goes back
    for key, value in ctx.state[client.GATE_KEY].items():
        np.testing.assert_array_equal(value.numpy(), gate[key])
    plain = client.evaluate(message("evaluate", 1), node_context(8, 0, 3, run_config(num_experts=4)))
    assert P.ACCURACY_ADAPTED not in plain.content["metrics"]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("expert-kind", "tail", "expert-kind must be one of head, hidden"),
        ("expert-server-lr", 0.0, "expert-server-lr must be a finite number > 0"),
        ("expert-server-momentum", 1.0, "0 <= expert-server-momentum < 1"),
        ("expert-step-scale", "share", "expert-step-scale must be one of none, holders"),
        ("prox-mu", -0.1, "prox-mu must be >= 0"),
        ("logit-adjust", -0.5, "logit-adjust must be >= 0"),
        ("adapt-steps", -1, "adapt-steps must be >= 0"),
        ("adapt-lr", 0.0, "adapt-lr must be a finite number > 0"),
        ("adapt-rounds", "first", "adapt-rounds must be one of every, last"),
        ("logit-adjust-predict", "both", "logit-adjust-predict must be one of plain, prior"),
        ("logit-adjust-predict", "prior", "logit-adjust-predict = 'prior' needs logit-adjust > 0"),
    ],
)
def test_each_remedy_setting_is_validated_by_name(key, value, words):
    with pytest.raises(SettingsError, match=words):
        Settings.from_run_config({key: value})


def test_hidden_experts_need_the_plain_average():
    with pytest.raises(SettingsError, match="expert-kind = 'hidden'.*robust-aggregation"):
        Settings.from_run_config({"expert-kind": "hidden", "robust-aggregation": "median"})
    assert Settings.from_run_config({"expert-kind": "hidden"}).model_kwargs()["expert_kind"] == "hidden"


def test_defaults_are_the_method():
    s = Settings()
    assert (s.expert_kind, s.prox_mu, s.adapt_steps) == ("head", 0.0, 0)
    assert remedies.step_is_default(s.expert_server_lr, s.expert_server_momentum, s.expert_step_scale)


def test_train_with_prox_matches_the_plain_cross_entropy_gradient_plus_the_term():
    torch.manual_seed(0)
    model = MoEClassifier(4, [0, 1], gate_seed=0, **SMALL)
    anchor = remedies.expert_anchor(model)
    with torch.no_grad():
        model.experts["0"][0].weight.add_(1.0)
    images, labels = toy_data(8)[:]
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    task = model.experts["0"][0].weight.grad.clone()
    model.zero_grad()
    (F.cross_entropy(model(images), labels) + remedies.proximal_term(model, anchor, 0.2)).backward()
    torch.testing.assert_close(model.experts["0"][0].weight.grad, task + 0.2 * torch.ones_like(task))


# --------------------------------------------------------------------------- a whole run, resumed


@pytest.mark.usefixtures("flower_identity")
def test_a_run_with_every_remedy_resumes_exactly_with_its_velocity(tmp_path):
    import json

    from flexmoe_core.results import load_checkpoint
    from server_app.app import FederatedRun
    from tests.in_process import federation

    def run(name, rounds, resume=False, first_node_id=1000):
        config = run_config(
            num_server_rounds=rounds,
            results_dir=str(tmp_path / name),
            resume=resume,
            client_state_dir=str(tmp_path / name / "client-state"),
            expert_hidden=16,
            expert_kind="hidden",
            expert_server_lr=0.8,
            expert_server_momentum=0.5,
            expert_step_scale="holders",
            prox_mu=0.1,
            adapt_steps=2,
        )
        FederatedRun(Settings.from_run_config(config), federation(config, 3, first_node_id)).execute()
        return tmp_path / name

    full = run("full", 3)
    part = run("resumed", 2)
    run("resumed", 3, resume=True, first_node_id=5000)
    timing = ("round-seconds", "server-seconds", "solve-seconds", "discovery-seconds", "bytes-discovery")
    rows = [json.loads((p / "metrics.json").read_text()) for p in (full, part)]
    same = [[{k: v for k, v in r.items() if k not in timing} for r in rounds] for rounds in rows]
    assert same[0] == same[1]
    assert all("accuracy-adapted" in r for r in rows[0])
    arrays_full, _ = load_checkpoint(full / "checkpoint.npz")
    arrays_resumed, _ = load_checkpoint(part / "checkpoint.npz")
    assert any(k.startswith("velocity/experts.") for k in arrays_full)
    assert any(k.startswith("classifier.") for k in arrays_full)
    assert set(arrays_full) == set(arrays_resumed)
    for key, value in arrays_full.items():
        np.testing.assert_array_equal(arrays_resumed[key], value)


@pytest.mark.usefixtures("flower_identity")
def test_adaptation_leaves_the_run_and_its_accuracy_unchanged(tmp_path):
    import json

    from server_app.app import FederatedRun
    from tests.in_process import federation

    rows = []
    for steps in (0, 3):
        config = run_config(results_dir=str(tmp_path / f"a{steps}"), expert_hidden=16, adapt_steps=steps)
        FederatedRun(Settings.from_run_config(config), federation(config, 2)).execute()
        rows.append(json.loads((tmp_path / f"a{steps}" / "metrics.json").read_text()))
    timing = ("round-seconds", "server-seconds", "solve-seconds", "discovery-seconds")
    # The evaluation reply carries two more metrics, so its bytes differ; nothing else may.
    plain = [{k: v for k, v in r.items() if k not in timing and "bytes" not in k} for r in rows[0]]
    adapted = [
        {k: v for k, v in r.items() if k not in timing and "bytes" not in k and "adapted" not in k} for r in rows[1]
    ]
    assert plain == adapted
    assert [r["bytes-down-per-client"] for r in rows[0]] == [r["bytes-down-per-client"] for r in rows[1]]
    assert all("accuracy-adapted" in r and "accuracy-adapted" not in p for r, p in zip(rows[1], rows[0]))


def test_a_hidden_expert_model_exports_to_onnx_with_its_shared_classifier(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from flexmoe_core import export

    torch.manual_seed(3)
    model = MoEClassifier(4, [1, 2], gate_seed=0, expert_kind="hidden", **{**SMALL, "image_size": 28}).eval()
    path = export.export_onnx(model, tmp_path / "hidden.onnx", in_channels=1, image_size=28)
    params = export.onnx_parameters(path)
    assert {"classifier.weight", "classifier.bias"} <= set(params)
    counts = export.parameter_counts(model)
    assert sum(params.values()) == counts["total"] == counts["extractor"] + counts["gate"] + 2 * counts["per-expert"]
    images = torch.randn(3, 1, 28, 28)
    logits = ort.InferenceSession(str(path)).run(None, {export.INPUT_NAME: images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(images).numpy(), atol=1e-4)


# --------------------------------------------------------------------------- logit adjustment


def test_label_prior_is_add_one_smoothed():
    data = TensorDataset(torch.zeros(3, 1, 8, 8), torch.tensor([0, 0, 1]))
    torch.testing.assert_close(remedies.label_prior(data, 3), torch.tensor([3.0, 2.0, 1.0]) / 6.0)


def test_logit_adjusted_step_equals_a_hand_computed_sgd_step():
    data = toy_data(12)
    tau, lr = 1.0, 0.1
    torch.manual_seed(5)
    model = MoEClassifier(4, [0, 3], gate_seed=2, **SMALL)
    reference = MoEClassifier(4, [0, 3], gate_seed=2, **SMALL)
    reference.load_state_dict(model.state_dict())
    # One batch holding every sample: one SGD step (momentum's first step is the plain gradient step).
    train_local(model, data, epochs=1, batch_size=len(data), lr=lr, seed=0, logit_adjust=tau)
    images, labels = data[:]
    shift = tau * torch.log(remedies.label_prior(data, 4))
    reference.train()
    reference.zero_grad()
    F.cross_entropy(reference(images) + shift, labels).backward()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            torch.testing.assert_close(model.state_dict()[name], param - lr * param.grad, rtol=1e-4, atol=1e-6)
    plain = MoEClassifier(4, [0, 3], gate_seed=2, **SMALL)
    plain.load_state_dict(reference.state_dict())
    with pytest.raises(ValueError, match="logit_adjust"):
        train_local(plain, data, epochs=1, batch_size=4, lr=lr, seed=0, logit_adjust=-1.0)


def test_adaptation_in_every_round_or_only_the_last():
    assert [remedies.adapts_in(r, 3, "every") for r in (1, 2, 3)] == [True, True, True]
    assert [remedies.adapts_in(r, 3, "last") for r in (1, 2, 3)] == [False, False, True]
    with pytest.raises(ValueError, match="adapt-rounds must be one of every, last"):
        remedies.adapts_in(1, 3, "first")


@pytest.mark.usefixtures("flower_identity")
def test_last_round_adaptation_reports_the_adapted_copy_once_and_changes_nothing_else(tmp_path):
    import json

    from server_app.app import FederatedRun
    from tests.in_process import federation

    rows = {}
    for when in ("every", "last"):
        config = run_config(
            num_server_rounds=3, results_dir=str(tmp_path / when), expert_hidden=16, adapt_steps=3, adapt_rounds=when
        )
        FederatedRun(Settings.from_run_config(config), federation(config, 2)).execute()
        rows[when] = json.loads((tmp_path / when / "metrics.json").read_text())
    assert ["accuracy-adapted" in r for r in rows["last"]] == [False, False, True]
    # The last round's copy is the one `every` adapts in that round: same seed, same model, same steps.
    assert rows["last"][-1]["accuracy-adapted"] == rows["every"][-1]["accuracy-adapted"]
    assert [r["accuracy"] for r in rows["last"]] == [r["accuracy"] for r in rows["every"]]


class ConstantLogits(torch.nn.Module):
    """A classifier whose logits are the same for every image: only an offset can change its prediction."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, images):
        return self.logits.expand(images.shape[0], -1)


def test_the_prior_put_back_is_tau_log_of_the_smoothed_label_frequencies():
    labels = torch.tensor([0, 0, 0, 1])  # 3 of class 0, 1 of class 1, none of class 2
    data = TensorDataset(torch.zeros(4, 1, 2, 2), labels)
    assert remedies.prediction_offset(data, 3, 2.0, "plain") is None
    expected = 2.0 * torch.log(torch.tensor([4 / 7, 2 / 7, 1 / 7]))  # (count + 1) / (n + C)
    torch.testing.assert_close(remedies.prediction_offset(data, 3, 2.0, "prior"), expected)
    with pytest.raises(ValueError, match="logit-adjust-predict must be one of plain, prior"):
        remedies.prediction_offset(data, 3, 2.0, "balanced")


def test_evaluation_with_the_prior_predicts_the_clients_own_majority():
    from flexmoe_core.train import evaluate

    model = ConstantLogits([0.0, 0.5])  # plain logits prefer class 1 for every image
    test = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 0, 1]))
    plain = evaluate(model, test, batch_size=2)
    assert plain.accuracy == 0.25
    offset = torch.log(torch.tensor([0.8, 0.2]))  # this client's prior: class 0 four times as likely
    shifted = evaluate(model, test, batch_size=2, logit_offset=offset)
    assert shifted.accuracy == 0.75  # argmax(0 + log .8, .5 + log .2) = class 0 for every image
    by_hand = F.cross_entropy(torch.tensor([0.0, 0.5]) + offset, torch.tensor(0)).item() * 3
    by_hand += F.cross_entropy(torch.tensor([0.0, 0.5]) + offset, torch.tensor(1)).item()
    assert shifted.loss == pytest.approx(by_hand / 4, rel=1e-6)


@pytest.mark.usefixtures("flower_identity")
def test_predicting_with_the_prior_changes_evaluation_only(tmp_path):
    import json

    from server_app.app import FederatedRun
    from tests.in_process import federation

    rows = {}
    for rule in ("plain", "prior"):
        config = run_config(
            results_dir=str(tmp_path / rule), expert_hidden=16, logit_adjust=1.0, logit_adjust_predict=rule
        )
        FederatedRun(Settings.from_run_config(config), federation(config, 2)).execute()
        rows[rule] = json.loads((tmp_path / rule / "metrics.json").read_text())
    trained = ("train-loss", "expert-load", "routed-load")
    for plain, prior in zip(rows["plain"], rows["prior"]):
        assert all(k in plain for k in trained)
        assert {k: plain[k] for k in trained} == {k: prior[k] for k in trained}
    assert any(p["accuracy"] != q["accuracy"] for p, q in zip(rows["plain"], rows["prior"]))
