"""Bytes a round exchanges with its participants, and what a dense model would have added."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import Message

from flexmoe_core import protocol as P
from server_app.records import array_record_bytes, message_bytes


@dataclass
class Traffic:
    """Bytes of the serialised Flower messages (protobuf, as the Fleet API carries them, without
    transport framing) exchanged with the round's participants, per direction and phase, plus
    the array bytes a dense model would have added to the same messages."""

    dense_record_bytes: int  # the ArrayRecord of the whole model (extractor + all E experts)
    down: dict[str, int] = field(default_factory=lambda: {"train": 0, "evaluate": 0})
    up: dict[str, int] = field(default_factory=lambda: {"train": 0, "evaluate": 0})
    dense_extra: int = 0
    discovery: int = 0

    @property
    def total(self) -> int:
        return sum(self.down.values()) + sum(self.up.values())

    def count_down(self, phase: str, messages: list[Message]) -> None:
        for message in messages:
            self.down[phase] += message_bytes(message)
            self.count_dense_extra(message)

    def count_dense_extra(self, message: Message) -> None:
        """What the message's arrays would have weighed with all E experts, minus what they weigh."""
        sent = array_record_bytes(message.content.array_records[P.ARRAYS])
        self.dense_extra += self.dense_record_bytes - sent

    def metrics(self, trained: int, evaluated: int) -> dict[str, float]:
        """Bytes per participant (mean over the round's sampled clients), and the ratio to what the
        same messages would have weighed carrying all E experts (exactly 1 for `dense`)."""
        trained, evaluated = max(trained, 1), max(evaluated, 1)
        per_client = {
            "bytes-down-train-per-client": self.down["train"] / trained,
            "bytes-down-eval-per-client": self.down["evaluate"] / evaluated,
            "bytes-up-train-per-client": self.up["train"] / trained,
            "bytes-up-eval-per-client": self.up["evaluate"] / evaluated,
        }
        return {
            **per_client,
            "bytes-down-per-client": per_client["bytes-down-train-per-client"]
            + per_client["bytes-down-eval-per-client"],
            "bytes-up-per-client": per_client["bytes-up-train-per-client"] + per_client["bytes-up-eval-per-client"],
            "bytes-total-per-client": sum(per_client.values()),
            "bytes-total-vs-dense": self.total / (self.total + self.dense_extra) if self.total else float("nan"),
            "bytes-discovery": float(self.discovery),
        }
