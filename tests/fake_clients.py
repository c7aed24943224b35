"""In-process fake clients for strategy tests: honest, failing, silent and malicious ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

E = 4
GLOBAL = {
    "extractor.w": np.zeros(2, np.float32),
    **{f"experts.{e}.w": np.full(2, 10.0 * e, np.float32) for e in range(E)},
}


class HonestClient:
    """Returns every sent array filled with `value`, and fixed feedback for the experts it held."""

    def __init__(
        self,
        client_id: str,
        capacity: int,
        value: float,
        num_examples: int,
        usage: Callable[[list[int]], list[float]] | None = None,
        accuracy: float = 0.8,
    ) -> None:
        self.client_id, self.capacity, self.value, self.num_examples = client_id, capacity, value, num_examples
        self.usage = usage or (lambda held: [num_examples / len(held)] * len(held))
        self.accuracy = accuracy
        self.received: list[Message] = []
        self.replies: list[Message] = []

    def __call__(self, msg: Message) -> Message | None:
        self.received.append(msg)
        reply = self.reply(msg)
        self.replies.append(reply)
        return reply

    def reply(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        if kind == "query.describe":
            return Message(
                RecordDict(
                    {
                        "config": ConfigRecord(
                            {"client-id": self.client_id, "capacity": self.capacity, "num-examples": self.num_examples}
                        )
                    }
                ),
                reply_to=msg,
            )
        if kind == "train":
            return self.train_reply(msg)
        return Message(
            RecordDict(
                {"metrics": MetricRecord({"num-examples": self.num_examples, "accuracy": self.accuracy, "loss": 0.5})}
            ),
            reply_to=msg,
        )

    def held(self, msg: Message) -> list[int]:
        return sorted({int(k.split(".")[1]) for k in msg.content["arrays"] if k.startswith("experts.")})

    def train_arrays(self, msg: Message) -> dict[str, np.ndarray]:
        return {k: np.full_like(v.numpy(), self.value) for k, v in msg.content["arrays"].items()}

    def train_metrics(self, msg: Message) -> dict:
        held = self.held(msg)
        usage, accuracy, loss = [0.0] * E, [0.0] * E, [0.0] * E
        for e, u in zip(held, self.usage(held)):
            usage[e], accuracy[e], loss[e] = float(u), self.accuracy, 0.5
        return {
            "num-examples": self.num_examples,
            "train-loss": 0.5,
            "expert-usage": usage,
            "expert-accuracy": accuracy,
            "expert-loss": loss,
        }

    def train_reply(self, msg: Message) -> Message:
        arrays = ArrayRecord({k: Array(v) for k, v in self.train_arrays(msg).items()})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(self.train_metrics(msg))}), reply_to=msg)


class CrashingClient(HonestClient):
    """Replies to training with an error, as Flower does when a ClientApp raises."""

    def __call__(self, msg: Message) -> Message | None:
        if msg.metadata.message_type == "train":
            self.received.append(msg)
            return Message(Error(code=1, reason="ClientApp raised: out of memory"), reply_to=msg)
        return super().__call__(msg)


class SilentClient(HonestClient):
    """Never answers a training message (a timed-out device)."""

    def __call__(self, msg: Message) -> Message | None:
        if msg.metadata.message_type == "train":
            self.received.append(msg)
            return None
        return super().__call__(msg)


class TamperingClient(HonestClient):
    """Honest except for one tampering function applied to its training reply."""

    def __init__(self, *args, tamper: Callable[[dict, dict], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tamper = tamper

    def train_reply(self, msg: Message) -> Message:
        arrays, metrics = self.train_arrays(msg), self.train_metrics(msg)
        self.tamper(arrays, metrics)
        record = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
        return Message(RecordDict({"arrays": record, "metrics": MetricRecord(metrics)}), reply_to=msg)
