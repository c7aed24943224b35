"""Per-device ONNX export: the file IS the model the run evaluated, and holds only the assigned experts.

A small run trains in-process (the real ClientApp handlers behind a fake Grid, gates on disk), then
each client is exported and run in onnxruntime directly (numpy in, numpy out: no project code on
the inference path) on that client's own test split.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flexmoe_core.aggregation import select_experts
from flexmoe_core.config import NodeSettings, Settings
from flexmoe_core.model import MoEClassifier
from flexmoe_core.results import load_checkpoint
from server_app.app import FederatedRun
from tests.in_process import federation, run_config

ort = pytest.importorskip("onnxruntime", reason='the export extra: pip install -e ".[export]"')
onnx = pytest.importorskip("onnx")

from flexmoe_core import export  # noqa: E402 - after the skip: the extra is what this module tests

NUM_CLIENTS = 3


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """2 rounds, 3 clients, E = 4, capacities 1 / 2 / 2; gates kept under client-state-dir."""
    from flwr.supercore.task_identity import TaskIdentity

    root = tmp_path_factory.mktemp("export-run")
    config = run_config(
        results_dir=str(root / "results"),
        client_state_dir=str(root / "client-state"),
        capacity_profile="1,2,2",
        expert_hidden=32,
        max_samples_per_client=90,
    )
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    try:
        FederatedRun(Settings.from_run_config(config), federation(config, NUM_CLIENTS)).execute()
    finally:
        TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None
    manifests = export.export_run(root / "results")
    return root, config, {m["client-id"]: m for m in manifests}


def session_of(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def client_test_split(config, partition_id):
    from client_app.app import local_data

    settings = Settings.from_run_config(config)
    node = NodeSettings.from_node_config({"partition-id": partition_id, "num-partitions": NUM_CLIENTS}, settings, 0)
    _, test_set = local_data(settings, node)
    images, labels = test_set.tensors
    return images.numpy(), labels.numpy()


def reference_model(root, client_id):
    """The framework's own model, rebuilt here from the checkpoint, the history and the gate file."""
    arrays, state = load_checkpoint(root / "results" / "checkpoint.npz")
    settings = Settings.from_run_config(state["config"])
    final = state["history"][-1]
    held = dict(zip(final["clients"], final["held"]))[client_id]
    model = MoEClassifier(settings.num_experts, held, **settings.model_kwargs())
    model.load_shared_state(select_experts(arrays, held))
    token, last = state["server"]["run-token"], state["server"]["round"]
    with np.load(root / "client-state" / f"run-{token}" / client_id / f"gate-round{last}.npz") as gate:
        model.load_gate_state({k: gate[k] for k in gate.files})
    return model.eval(), held


def test_onnx_runtime_gives_the_frameworks_logits_and_accuracy(trained_run):
    import torch

    root, config, manifests = trained_run
    weighted, examples, accuracies = 0.0, 0, []
    for pid in range(NUM_CLIENTS):
        client_id = f"partition-{pid}"
        manifest = manifests[client_id]
        images, labels = client_test_split(config, pid)
        session = session_of(root / "results" / "export" / client_id / "model.onnx")
        logits, expert_probs = session.run(None, {manifest["input"]["name"]: images})
        model, held = reference_model(root, client_id)
        with torch.no_grad():
            expected, routing = model.forward_with_routing(torch.from_numpy(images))
        assert np.abs(logits - expected.numpy()).max() <= 1e-4
        np.testing.assert_allclose(expert_probs, routing.gate_probs[:, held].numpy(), atol=1e-5)
        accuracy = float((logits.argmax(1) == labels).mean())
        assert accuracy == float((expected.numpy().argmax(1) == labels).mean())
        # batch 1, as on a device, gives the same answer as the whole split at once
        single = session.run(None, {"image": images[:1]})[0]
        np.testing.assert_allclose(single, logits[:1], atol=1e-5)
        weighted += accuracy * len(labels)
        examples += len(labels)
        accuracies.append(accuracy)
    # ...and these are the models the run itself evaluated in its last round.
    last = json.loads((root / "results" / "metrics.json").read_text())[-1]
    assert last["num-evaluated"] == NUM_CLIENTS
    assert weighted / examples == pytest.approx(last["accuracy"], abs=1e-12)
    assert min(accuracies) == pytest.approx(last["accuracy-min"], abs=1e-12)


def test_the_file_holds_only_the_assigned_experts(trained_run):
    root, _, manifests = trained_run
    final = json.loads((root / "results" / "final_assignment.json").read_text())
    held = dict(zip(final["clients"], final["held"]))
    full_path = root / "results" / "export" / "full" / "model.onnx"
    full_params = sum(export.onnx_parameters(full_path).values())
    for client_id, manifest in manifests.items():
        path = root / "results" / "export" / client_id / "model.onnx"
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        params = export.onnx_parameters(path)
        in_file = sorted({int(name.split(".")[1]) for name in params if name.startswith("experts.")})
        assert in_file == manifest["expert-ids"] == held[client_id]
        counts = manifest["parameters"]
        k = len(held[client_id])
        assert sum(params.values()) == counts["extractor"] + counts["gate"] + k * counts["per-expert"]
        assert counts["gate"] == 4 * (128 + 1)  # the gate scores all E = 4 experts, masked to the held ones
        assert sum(params.values()) < full_params == counts["extractor"] + counts["gate"] + 4 * counts["per-expert"]
        assert manifest["size-bytes"] == path.stat().st_size < manifest["full-model"]["size-bytes"]
        assert manifest["local-to-global"] == {str(j): e for j, e in enumerate(held[client_id])}
        assert manifest["input"]["shape"] == ["batch", 1, 28, 28] and len(manifest["class-names"]) == 10


def test_the_cli_exports_one_client_and_explains_a_missing_gate(trained_run, tmp_path, capsys):
    root, _, _ = trained_run
    out = tmp_path / "one"
    assert export.main([str(root / "results"), "--client", "partition-1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["full", "partition-1"]
    assert json.loads((out / "partition-1" / "manifest.json").read_text())["client-id"] == "partition-1"
    assert "partition-1" in capsys.readouterr().out

    assert export.main([str(root / "results"), "--client", "nobody", "--out", str(tmp_path / "x")]) == 2
    assert "completed no round" in capsys.readouterr().err
    empty = tmp_path / "empty-state"
    empty.mkdir()
    args = [str(root / "results"), "--all", "--state-dir", str(empty), "--out", str(tmp_path / "y")]
    assert export.main(args) == 2
    assert "no gate of client" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # checked before anything is written


def test_a_run_without_a_state_dir_is_a_clear_error(tmp_path):
    arrays = {"extractor.w": np.zeros(1, np.float32)}
    from flexmoe_core.results import save_checkpoint

    config = Settings().to_run_config()
    state = {"server": {"run-token": "abc", "round": 1}, "config": config, "rounds": [], "history": []}
    save_checkpoint(tmp_path / "checkpoint.npz", arrays, state)
    with pytest.raises(export.ExportError, match="client-state-dir was empty"):
        export.export_run(tmp_path)
