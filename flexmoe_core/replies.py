"""Validation of what clients send back, before any of it can touch the global model or Q.

Edge clients fail, lie and run buggy code. A reply is accepted only if it carries
exactly the arrays it was sent (same keys, shapes, dtypes), every value is finite,
and its metrics are in range. A rejected reply raises `ReplyError` naming the
field, and the caller drops the whole reply: nothing of it is aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexmoe_core.aggregation import ClientUpdate
from flexmoe_core.protocol import (
    ACCURACY,
    ARRAYS,
    CAPACITY,
    CLIENT_ID,
    EXPERT_ACCURACY,
    EXPERT_CLASS_COUNTS,
    EXPERT_LOSS,
    EXPERT_USAGE,
    LOSS,
    NUM_EXAMPLES,
    TRAIN_LOSS,
    held_experts,
)


class ReplyError(ValueError):
    """A client's reply is unusable; `field` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class TrainFeedback:
    """A validated training reply: the update to aggregate and the fitness feedback."""

    update: ClientUpdate
    accuracy: np.ndarray
    loss: np.ndarray
    train_loss: float
    class_counts: np.ndarray | None = None  # (E, C): per expert, its top-1 samples per class


@dataclass(frozen=True)
class EvalOutcome:
    num_examples: int
    accuracy: float
    loss: float


def validate_train_reply(
    sent: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, Any],
    num_experts: int,
    declared_examples: int | None = None,
    num_classes: int | None = None,
) -> TrainFeedback:
    """Check a training reply against what was sent; return the parts the server uses.

    `declared_examples` is the training-set size the client declared when it joined: the
    example count weights its extractor update, so a client may not claim more in a reply
    (10**9 examples would otherwise take over the extractor's average). With `num_classes`, an
    optional `expert-class-counts` (E x C label histogram of each expert's top-1 samples) is checked
    too; without it, or when the client sends none, the feedback has no histogram.
    """
    _check_arrays(sent, arrays)
    num_examples = _count(metrics, NUM_EXAMPLES)
    if num_examples == 0:
        raise ReplyError(NUM_EXAMPLES, "a training reply must cover at least one example")
    if declared_examples is not None and num_examples > declared_examples:
        raise ReplyError(
            NUM_EXAMPLES,
            f"claims {num_examples} examples, more than the {declared_examples} it declared when it joined",
        )
    usage = _per_expert(metrics, EXPERT_USAGE, num_experts, low=0.0, high=float(num_examples))
    accuracy = _per_expert(metrics, EXPERT_ACCURACY, num_experts, low=0.0, high=1.0)
    loss = _per_expert(metrics, EXPERT_LOSS, num_experts, low=0.0, high=math.inf)
    train_loss = _scalar(metrics, TRAIN_LOSS, low=0.0, high=math.inf)
    held = held_experts(sent)
    unheld_usage = [e for e in range(num_experts) if e not in held and usage[e] > 0]
    if unheld_usage:
        raise ReplyError(EXPERT_USAGE, f"reports usage for experts {unheld_usage} it did not hold")
    class_counts = None
    if num_classes is not None and EXPERT_CLASS_COUNTS in metrics:
        class_counts = _class_counts(metrics, num_experts, num_classes, num_examples, held)
    update = ClientUpdate(state=dict(arrays), num_examples=num_examples, usage=usage)
    return TrainFeedback(update=update, accuracy=accuracy, loss=loss, train_loss=train_loss, class_counts=class_counts)


def _class_counts(
    metrics: Mapping[str, Any], num_experts: int, num_classes: int, num_examples: int, held: list[int]
) -> np.ndarray:
    """The (E, C) top-1 label histogram: non-negative integer counts, only on held experts, at most
    one top-1 expert per sample (total <= num-examples)."""
    value = metrics.get(EXPERT_CLASS_COUNTS)
    size = num_experts * num_classes
    if not isinstance(value, (list, tuple)) or len(value) != size:
        got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        raise ReplyError(
            EXPERT_CLASS_COUNTS,
            f"must be a list of num-experts x num-classes = {num_experts} x {num_classes} = {size} counts, got {got}",
        )
    counts = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.rint(counts)):
        raise ReplyError(EXPERT_CLASS_COUNTS, "counts must be finite non-negative integers")
    counts = counts.reshape(num_experts, num_classes)
    unheld = [e for e in range(num_experts) if e not in held and counts[e].sum() > 0]
    if unheld:
        raise ReplyError(EXPERT_CLASS_COUNTS, f"reports samples routed to experts {unheld} it did not hold")
    if counts.sum() > num_examples:
        raise ReplyError(
            EXPERT_CLASS_COUNTS, f"counts {int(counts.sum())} top-1 samples, more than its {num_examples} examples"
        )
    return counts


@dataclass(frozen=True)
class ClientInfo:
    """What a node told us about itself (a validated describe reply): stable identity, how many
    experts it can hold and its declared training-set size."""

    client_id: str
    capacity: int
    num_examples: int


def validate_description(config: Mapping[str, Any], num_experts: int, max_examples: int) -> ClientInfo:
    """Check a describe reply's config (what a node says about itself when it joins)."""
    client_id = config.get(CLIENT_ID)
    capacity = config.get(CAPACITY)
    if not isinstance(client_id, str) or not client_id:
        raise ReplyError(CLIENT_ID, f"must be a non-empty string, got {client_id!r}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= num_experts:
        raise ReplyError(CAPACITY, f"must be an integer in 1..num-experts={num_experts}, got {capacity!r}")
    return ClientInfo(client_id, capacity, check_declared_examples(config.get(NUM_EXAMPLES, 0), max_examples))


def check_declared_examples(value: Any, ceiling: int) -> int:
    """A join-time size declaration: a non-negative integer not above `max-declared-examples`."""
    count = _count({NUM_EXAMPLES: value}, NUM_EXAMPLES)
    if count > ceiling:
        raise ReplyError(NUM_EXAMPLES, f"declares {count} training examples, above max-declared-examples={ceiling}")
    return count


def validate_eval_reply(metrics: Mapping[str, Any]) -> EvalOutcome:
    """Check an evaluation reply's metrics (accuracy in [0, 1], finite loss, example count)."""
    return EvalOutcome(
        num_examples=_count(metrics, NUM_EXAMPLES),
        accuracy=_scalar(metrics, ACCURACY, low=0.0, high=1.0),
        loss=_eval_loss(metrics),
    )


def _eval_loss(metrics: Mapping[str, Any]) -> float:
    """A test loss >= 0, or NaN / +inf: a model blown up by an attack still has an accuracy to report
    (its loss overflows first), and an evaluation that shows the collapse beats one that is dropped."""
    value = metrics.get(LOSS)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (math.isnan(value) or value == math.inf):
        return float(value)
    return _scalar(metrics, LOSS, low=0.0, high=math.inf)


def _check_arrays(sent: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> None:
    extra = sorted(set(arrays) - set(sent))
    if extra:
        raise ReplyError(ARRAYS, f"keys that were not sent to this client: {extra[:5]}")
    missing = sorted(set(sent) - set(arrays))
    if missing:
        raise ReplyError(ARRAYS, f"missing keys that were sent: {missing[:5]}")
    for key, reference in sent.items():
        value = arrays[key]
        if value.shape != reference.shape:
            raise ReplyError(f"{ARRAYS}[{key}]", f"shape {value.shape}, expected {reference.shape}")
        if value.dtype != reference.dtype:
            raise ReplyError(f"{ARRAYS}[{key}]", f"dtype {value.dtype}, expected {reference.dtype}")
        if not np.all(np.isfinite(value)):
            raise ReplyError(f"{ARRAYS}[{key}]", "contains NaN or Inf")


def _count(metrics: Mapping[str, Any], key: str) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReplyError(key, f"must be a non-negative integer, got {value!r}")
    if value < 0 or float(value) != int(value):
        raise ReplyError(key, f"must be a non-negative integer, got {value!r}")
    return int(value)


def _scalar(metrics: Mapping[str, Any], key: str, *, low: float, high: float) -> float:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReplyError(key, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ReplyError(key, f"must be in [{low}, {high}], got {value!r}")
    return float(value)


def _per_expert(metrics: Mapping[str, Any], key: str, num_experts: int, *, low: float, high: float) -> np.ndarray:
    value = metrics.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != num_experts:
        got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        raise ReplyError(key, f"must be a list of length num-experts={num_experts}, got {got}")
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ReplyError(key, "contains NaN or Inf")
    if np.any(array < low) or np.any(array > high):
        raise ReplyError(key, f"values must be in [{low}, {high}], got min {array.min()}, max {array.max()}")
    return array
