"""Records and wire sizes: `message_bytes` equals what Flower's own serialiser produces."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import array_record_to_proto, message_to_proto

from server_app.records import ArrayCache, array_record_bytes, message_bytes, to_arrays, to_record
from server_app.strategy import FlexMoEStrategy
from tests.fake_clients import GLOBAL, HonestClient
from tests.in_process import run_config


def serialised(message: Message) -> int:
    return message_to_proto(message).ByteSize()


ARRAYS = {
    "extractor.conv.weight": np.random.default_rng(0).normal(size=(16, 1, 3, 3)).astype(np.float32),
    "experts.12.bias": np.zeros(10, np.float32),
    "experts.3.big": np.ones((200, 300), np.float64),  # data over 2**16 bytes: a 3-byte length varint
    "scalar": np.array(2.5, np.float32),  # shape () has no shape field at all
    "empty": np.zeros((0, 4), np.float32),
}


@pytest.mark.usefixtures("flower_identity")
class TestMessageBytes:
    def test_a_train_message_with_arrays_and_config(self):
        content = RecordDict({"arrays": to_record(ARRAYS), "config": ConfigRecord({"server-round": 7, "t": "ab"})})
        message = Message(content, message_type=MessageType.TRAIN, dst_node_id=2**40 + 17)
        assert message_bytes(message) == serialised(message) > sum(a.nbytes for a in ARRAYS.values())

    def test_replies_with_metrics_an_empty_record_and_an_error(self):
        sent = Message(
            RecordDict({"config": ConfigRecord({"num-experts": 4})}), message_type="query.describe", dst_node_id=5
        )
        metrics = MetricRecord({"num-examples": 40, "expert-usage": [1.0, 0.0, 3.5], "accuracy": 0.25})
        for reply in (
            Message(RecordDict({"metrics": metrics, "arrays": ArrayRecord()}), reply_to=sent),
            Message(RecordDict(), reply_to=sent),
            Message(Error(code=3, reason="client crashed"), reply_to=sent),
        ):
            assert message_bytes(reply) == serialised(reply)

    def test_every_message_of_a_strategy_round(self, fake_grid):
        config = {**run_config(), "num-experts": 4, "capacity": 2, "min-train-nodes": 3}
        from flexmoe_core.config import Settings

        strategy = FlexMoEStrategy(Settings.from_run_config(config), GLOBAL)
        clients = {100 + i: HonestClient(f"partition-{i}", 2, float(i), 50 + i) for i in range(3)}
        grid = fake_grid(clients)
        messages = strategy.train_messages(1, strategy.discover(grid))
        replies = grid.send_and_receive(messages)
        strategy.aggregate_train_replies(1, replies)
        evals = strategy.evaluate_messages(1)
        for message in [*messages, *replies, *evals, *grid.send_and_receive(evals)]:
            assert message_bytes(message) == serialised(message)
        assert array_record_bytes(to_record(GLOBAL)) == array_record_to_proto(to_record(GLOBAL)).ByteSize()


def test_array_cache_serialises_an_array_once_per_global_model():
    cache = ArrayCache()
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    first, second = cache.record(state, ["a", "b"]), cache.record(state, ["a"])
    # ArrayRecord wraps each Array anew but keeps its bytes: serialised once, shared by both records.
    assert first["a"].data is second["a"].data
    new_state = {**state, "a": state["a"] + 1}  # aggregation makes new arrays
    third = cache.record(new_state, ["a", "b"])
    assert third["a"].data is not first["a"].data and third["b"].data is first["b"].data
    assert to_arrays(third)["a"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_array_cache_arrays_equal_a_fresh_serialisation():
    cache = ArrayCache()
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert cache.array("w", fortran).data == Array(np.ascontiguousarray(fortran)).data
