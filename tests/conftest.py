"""Shared test fixtures: a Flower task identity for building messages in-process, a fake Grid."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

# One intra-op thread, as Flower's Ray backend gives each client: stable timings on 2-core machines.
torch.set_num_threads(1)


@pytest.fixture
def flower_identity():
    """Messages need a run/task identity, which Flower sets only inside its own processes."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


class FakeGrid:
    """Duck-typed Grid: routes each message to an in-process handler; `None` means no reply."""

    def __init__(self, handlers: dict[int, Callable]) -> None:
        self.handlers = handlers
        self.sent: list[list] = []

    def get_node_ids(self):
        return list(self.handlers)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.append(messages)
        replies = []
        for message in messages:
            reply = self.handlers[message.metadata.dst_node_id](message)
            if reply is not None:
                replies.append(reply)
        return replies


@pytest.fixture
def fake_grid():
    return FakeGrid
