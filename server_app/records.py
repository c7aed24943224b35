"""Flower records <-> numpy arrays, and the exact wire size of a message without serialising it.

`ArrayCache` serialises each global array once per version of the global model: a round sends
the same extractor (and each expert) to many clients, and `flwr.app.Array(ndarray)` copies the
array through `np.save` every time it is called. An `Array` is never mutated after it is built,
so one object can sit in many messages.

`message_bytes` is what `message_to_proto(message).ByteSize()` returns (tests/test_records.py
checks it on every kind of message the app exchanges), computed from the lengths of the arrays'
bytes instead of copying them into a protobuf: every field of Flower's Message, RecordDict,
ArrayRecord and Array protos is length-delimited with a one-byte tag, so a field of payload L
weighs 1 + varint(L) + L.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.serde import error_to_proto, metadata_to_proto, recorddict_to_proto


def to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: to_numpy(value) for key, value in record.items()}


_NPY_MAGIC = b"\x93NUMPY"


def to_numpy(array: Array) -> np.ndarray:
    """`array.numpy()` without its per-array header parse (`np.load` evaluates the header with
    `ast.literal_eval`, most of a reply's decode time): a read-only view of the `.npy` bytes,
    laid out by the Array's own dtype and shape. Anything else than the C-ordered `.npy` that
    `Array(ndarray)` writes for that dtype and shape goes through `np.load` as before."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == _NPY_MAGIC and data[6] in (1, 2, 3):
        width = 2 if data[6] == 1 else 4
        start = 8 + width + int.from_bytes(data[8 : 8 + width], "little")
        header = data[8 + width : start].decode("latin1")
        dtype = np.dtype(array.dtype)
        shape = tuple(array.shape)
        if (
            "'fortran_order': False" in header
            and f"'descr': {dtype.str!r}" in header
            and f"'shape': {shape!r}" in header
            and len(data) - start == dtype.itemsize * int(np.prod(shape))
        ):
            return np.frombuffer(data, dtype=dtype, offset=start).reshape(shape)
    return array.numpy()


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


class ArrayCache:
    """One serialised `Array` per global array, rebuilt only when the array object changes."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[np.ndarray, Array]] = {}

    def record(self, state: Mapping[str, np.ndarray], keys: list[str]) -> ArrayRecord:
        return ArrayRecord({key: self.array(key, state[key]) for key in keys})

    def array(self, key: str, value: np.ndarray) -> Array:
        entry = self._entries.get(key)
        if entry is None or entry[0] is not value:  # identity: a new global model has new arrays
            entry = (value, Array(np.ascontiguousarray(value)))
            self._entries[key] = entry
        return entry[1]


def _varint(value: int) -> int:
    return max(1, (int(value).bit_length() + 6) // 7)


def _field(length: int) -> int:
    """Bytes of one length-delimited field (one-byte tag) whose payload is `length` bytes."""
    return 1 + _varint(length) + length


def _text(value: str) -> int:
    """A proto3 string field: absent (0 bytes) when empty."""
    return _field(len(value.encode())) if value else 0


def array_bytes(array: Array) -> int:
    """ByteSize of the Array proto (dtype, packed int32 shape, stype, data)."""
    size = _header_bytes(array.dtype, array.stype, tuple(array.shape))
    return size + _field(len(array.data)) if array.data else size


@functools.lru_cache(maxsize=1024)
def _header_bytes(dtype: str, stype: str, shape: tuple[int, ...]) -> int:
    # A model has a few dozen distinct (dtype, shape) pairs: each is worked out once.
    size = _text(dtype) + _text(stype)
    return size + _field(sum(_varint(d) for d in shape)) if shape else size


def array_record_bytes(record: ArrayRecord) -> int:
    """ByteSize of the ArrayRecord proto: one (key, Array) item per array."""
    return sum(_field(_text(key) + _field(array_bytes(value))) for key, value in record.items())


def message_bytes(message: Message) -> int:
    """Bytes of the serialised message (the protobuf the Fleet API carries, without transport framing)."""
    size = _field(metadata_to_proto(message.metadata).ByteSize())
    if message.has_content():
        size += _field(_content_bytes(message.content))
    if message.has_error():
        size += _field(error_to_proto(message.error).ByteSize())
    return size


def _content_bytes(content: RecordDict) -> int:
    arrays = {key: rec for key, rec in content.items() if isinstance(rec, ArrayRecord)}
    others = RecordDict({key: rec for key, rec in content.items() if key not in arrays})
    size = recorddict_to_proto(others).ByteSize()
    return size + sum(_field(_text(key) + _field(array_record_bytes(rec))) for key, rec in arrays.items())
