"""FLEX-MoE ClientApp: train / evaluate the assigned experts; the gate never leaves the device.

The server sends the shared extractor plus only the experts this client holds this
round; the client builds a model with exactly those experts, restores its personal
gate, trains, and returns exactly the keys it was sent, plus per-expert feedback
(usage, accuracy, loss) as fixed-length lists of length num-experts, and the label histogram of
each expert's top-1 samples (num-experts x num-classes).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.partitions import FlowerPartitioning
from client_app.poisoning import flip_labels, poison_update
from flexmoe_core import protocol as P
from flexmoe_core.config import NodeSettings, Settings, SettingsError, dataset_shape
from flexmoe_core.data import client_datasets
from flexmoe_core.files import atomic_write_bytes
from flexmoe_core.model import MoEClassifier, pick_device
from flexmoe_core.remedies import adapt, adapts_in, prediction_offset
from flexmoe_core.seeds import derive_seed
from flexmoe_core.train import evaluate as evaluate_model
from flexmoe_core.train import train_local

app = ClientApp()

GATE_KEY = "gate"
GATE_ROUND_KEY = "gate-round"
GATES_KEPT = 3  # on-disk gate snapshots kept, so a server resumed a round or two back finds its gate


@app.query(P.DESCRIBE)
def describe(msg: Message, context: Context) -> Message:
    """Tell the server who we are (stable client id), how many experts we hold and our data size.

    A client that cannot start (bad settings or node config, no data) answers with its error, once:
    the server then stops before round 1 with it, instead of asking again until node-wait-timeout.
    """
    try:
        settings, node = load_settings(context)
        train_set, _ = local_data(settings, node)
    except (OSError, ValueError, RuntimeError) as err:  # SettingsError is a ValueError
        error = ConfigRecord({P.SETUP_ERROR: f"{type(err).__name__}: {err}"})
        return Message(RecordDict({P.CONFIG: error}), reply_to=msg)
    info = ConfigRecord({P.CLIENT_ID: node.client_id, P.CAPACITY: node.capacity, P.NUM_EXAMPLES: len(train_set)})
    return Message(RecordDict({P.CONFIG: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings, node = load_settings(context)
    if node.client_id in settings.crashing_clients:
        raise RuntimeError(f"injected crash of client {node.client_id} (crash-clients setting)")
    server_round = _config_int(msg, P.SERVER_ROUND)
    model = build_model(msg, settings, context, node, gate_round=server_round - 1)
    train_set, _ = local_data(settings, node)
    attacking = node.client_id in settings.attacking_clients
    if attacking and settings.attack == "label-flip":
        train_set = label_flipped(train_set, dataset_shape(settings.dataset).num_classes)
    result = train_local(
        model,
        train_set,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=derive_seed(settings.seed, "data-order", node.client_id, server_round),
        device=pick_device(),
        prox_mu=settings.prox_mu,
        logit_adjust=settings.logit_adjust,
    )
    store_gate(context, node, model, server_round, _run_token(msg))
    feedback = result.feedback
    metrics = MetricRecord(
        {
            P.NUM_EXAMPLES: int(result.num_examples),
            P.TRAIN_LOSS: float(result.mean_loss),
            P.EXPERT_USAGE: [float(v) for v in feedback.usage],
            P.EXPERT_ACCURACY: [float(v) for v in feedback.accuracy],
            P.EXPERT_LOSS: [float(v) for v in feedback.loss],
        }
    )
    if feedback.class_counts is not None:  # E x C floats: what each expert's top-1 samples were
        metrics[P.EXPERT_CLASS_COUNTS] = [float(v) for v in feedback.class_counts.ravel()]
    trained = model.shared_state_dict()
    if attacking:  # research setting `attack`: poisoned, yet finite and well-formed
        sent = _arrays(msg)
        trained = poison_update(
            sent,
            trained,
            settings.attack,
            settings.attack_scale,
            seed=derive_seed(settings.seed, "attack", node.client_id, server_round),
        )
    arrays = ArrayRecord({k: Array(v) for k, v in trained.items()})
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: metrics}), reply_to=msg)


def label_flipped(dataset, num_classes: int):
    """The same images with every label y replaced by C - 1 - y (the `label-flip` attack)."""
    import torch
    from torch.utils.data import TensorDataset

    images, labels = dataset.tensors
    return TensorDataset(images, torch.from_numpy(flip_labels(labels.numpy(), num_classes)))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings, node = load_settings(context)
    server_round = _config_int(msg, P.SERVER_ROUND)
    model = build_model(msg, settings, context, node, gate_round=server_round)
    train_set, test_set = local_data(settings, node)
    offset = prediction_offset(train_set, model.num_classes, settings.logit_adjust, settings.logit_adjust_predict)
    result = evaluate_model(model, test_set, batch_size=settings.batch_size, device=pick_device(), logit_offset=offset)
    metrics = MetricRecord(
        {P.NUM_EXAMPLES: int(result.num_examples), P.ACCURACY: float(result.accuracy), P.LOSS: float(result.loss)}
    )
    if settings.adapt_steps > 0 and adapts_in(server_round, settings.num_server_rounds, settings.adapt_rounds):
        # remedy `adapt-steps`: a tuned copy, reported beside the un-adapted model
        adapted = adapt(
            model,
            train_set,
            steps=settings.adapt_steps,
            lr=settings.adapt_lr,
            batch_size=settings.batch_size,
            seed=derive_seed(settings.seed, "adapt", node.client_id, server_round),
            device=pick_device(),
        )
        tuned = evaluate_model(adapted, test_set, batch_size=settings.batch_size, device=pick_device())
        metrics[P.ACCURACY_ADAPTED] = float(tuned.accuracy)
        metrics[P.LOSS_ADAPTED] = float(tuned.loss)
    return Message(RecordDict({P.METRICS: metrics}), reply_to=msg)


def load_settings(context: Context) -> tuple[Settings, NodeSettings]:
    settings = Settings.from_run_config(context.run_config)
    node = NodeSettings.from_node_config(context.node_config, settings, context.node_id)
    if node.partition_id is None or node.num_partitions is None:
        raise SettingsError(
            [
                "partition-id and num-partitions are required in the node config "
                '(e.g. --node-config "partition-id=0 num-partitions=3")'
            ],
            source="node config",
        )
    return settings, node


def local_data(settings: Settings, node: NodeSettings):
    """This client's (train, test) split; cached in-process because every round asks again."""
    assert node.partition_id is not None and node.num_partitions is not None  # required by load_settings
    return client_datasets(
        settings.dataset,
        node.partition_id,
        node.num_partitions,
        partitioner=FlowerPartitioning.of(settings),
        seed=settings.seed,
        test_fraction=settings.test_fraction,
        max_samples=settings.max_samples_per_client,
        data_dir=settings.data_dir or None,
        allow_download=settings.allow_download,
    )


def build_model(
    msg: Message, settings: Settings, context: Context, node: NodeSettings, gate_round: int
) -> MoEClassifier:
    """A model holding exactly the experts in the message, with this client's own gate."""
    state = _arrays(msg)
    held = P.held_experts(state)
    # The extractor and experts are overwritten by the server's arrays; only the gate's initial
    # values are the client's own. Seeded by (seed, client id) alone: the same under every method
    # and capacity, and reproducible, so a resumed run equals an uninterrupted one.
    model = MoEClassifier(
        settings.num_experts, held, gate_seed=initial_gate_seed(settings, node), **settings.model_kwargs()
    )
    model.load_shared_state(state)
    gate = load_gate(context, node, gate_round, _run_token(msg))
    if gate is not None:
        model.load_gate_state(gate)
    return model


def initial_gate_seed(settings: Settings, node: NodeSettings) -> int:
    return derive_seed(settings.seed, "gate", node.client_id)


def gate_folder(node: NodeSettings, run_token: str) -> Path:
    """Where this client keeps its gates for one run: another run (another token) never looks here."""
    return P.gate_folder(node.state_dir, run_token, node.client_id)


def store_gate(context: Context, node: NodeSettings, model: MoEClassifier, server_round: int, run_token: str) -> None:
    """Keep the personal gate in the node's state and, if a state dir is set, on disk per round."""
    gate = model.gate_state()
    context.state[GATE_KEY] = ArrayRecord({k: Array(v) for k, v in gate.items()})
    context.state[GATE_ROUND_KEY] = ConfigRecord({"round": server_round, P.RUN_TOKEN: run_token})
    if node.state_dir:
        folder = gate_folder(node, run_token)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **gate)
        atomic_write_bytes(folder / P.gate_file(server_round), buffer.getvalue())
        for old in sorted(folder.glob("gate-round*.npz"), key=_round_of)[:-GATES_KEPT]:
            old.unlink(missing_ok=True)


def load_gate(context: Context, node: NodeSettings, wanted_round: int, run_token: str) -> dict[str, np.ndarray] | None:
    """The gate this run stored after `wanted_round` (disk snapshot if the in-memory one is from
    another round); None (a fresh gate) if this run has stored none."""
    in_memory = None
    if GATE_KEY in context.state and context.state[GATE_ROUND_KEY].get(P.RUN_TOKEN) == run_token:
        in_memory = {k: v.numpy() for k, v in context.state.array_records[GATE_KEY].items()}
        if _int(context.state[GATE_ROUND_KEY]["round"]) == wanted_round:
            return in_memory
    if node.state_dir:
        path = gate_folder(node, run_token) / P.gate_file(wanted_round)
        if path.is_file():
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
    return in_memory


def _round_of(path: Path) -> int:
    return P.gate_round_of(path)


def _run_token(msg: Message) -> str:
    token = msg.content.config_records[P.CONFIG].get(P.RUN_TOKEN, "")
    if not isinstance(token, str) or not token.isalnum():
        raise ValueError(f"the server sent no valid {P.RUN_TOKEN!r} in the config (got {token!r})")
    return token


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in msg.content.array_records[P.ARRAYS].items()}


def _config_int(msg: Message, key: str) -> int:
    return _int(msg.content.config_records[P.CONFIG][key])


def _int(value: object) -> int:
    # The server always sends integers here; anything else is a protocol error, not a number to coerce.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
