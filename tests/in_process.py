"""A federation in one process: the real ClientApp handlers behind a fake Grid (no Ray, no SuperLink)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib
from flwr.app import Context, Error, Message, RecordDict

from client_app import app as client
from tests.conftest import FakeGrid

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "num-server-rounds": 2,
    "num-experts": 4,
    "capacity": 2,
    "max-samples-per-client": 80,
    "batch-size": 16,
    "local-epochs": 1,
    "min-train-nodes": 2,
    "node-wait-timeout": 5.0,
}


def run_config(**overrides: Any) -> dict[str, Any]:
    """pyproject defaults + small, fast settings + the test's overrides (kebab-case keys)."""
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return {**defaults, **SMALL, **{k.replace("_", "-"): v for k, v in overrides.items()}}


def node_context(
    node_id: int, partition_id: int, num_partitions: int, config: dict[str, Any], **node_config: Any
) -> Context:
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions, **node_config},
        state=RecordDict(),
        run_config=config,
    )


def handle(msg: Message, context: Context) -> Message:
    """Dispatch like Flower's ClientApp, turning an exception into an error reply as Flower does."""
    handlers = {"query.describe": client.describe, "train": client.train, "evaluate": client.evaluate}
    try:
        return handlers[msg.metadata.message_type](msg, context)
    except Exception as err:  # noqa: BLE001 - mirrors Flower's behaviour for a raising ClientApp
        return Message(Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=msg)


def federation(config: dict[str, Any], num_clients: int, first_node_id: int = 1000) -> FakeGrid:
    contexts = {first_node_id + i: node_context(first_node_id + i, i, num_clients, config) for i in range(num_clients)}
    return FakeGrid({node: (lambda msg, ctx=ctx: handle(msg, ctx)) for node, ctx in contexts.items()})
