"""Server-side aggregation of partial FLEX-MoE models.

Model states are flat mappings str -> numpy array whose key prefixes name the three
parameter groups of the method:

    extractor.*      shared feature extractor psi: every client holds it, FedAvg'd by
                     example counts;
    classifier.*     with `expert-kind = "hidden"`, the classifier after the mixture: shared,
                     treated exactly like the extractor (protocol.is_shared);
    experts.{e}.*    expert e: only the clients assigned e hold it; averaged weighted
                     by how many samples each client routed to it (usage);
    gate.*           the client's personal gate: never leaves the client in the method,
                     and is ignored here if a client sends it anyway.

The server's global state holds the extractor and all E experts, never a gate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexmoe_core import checks
from flexmoe_core.protocol import GATE_PREFIX, expert_of, is_shared

State = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sent back after local training.

    Attributes:
        state: the parameters it trained (extractor + its held experts; a gate, if
            present, is ignored).
        num_examples: local training examples, the FedAvg weight of the extractor.
        usage: (E,) samples the client routed to each expert (zeros for unheld ones),
            the aggregation weight of each expert.
    """

    state: State
    num_examples: int
    usage: np.ndarray

    def __post_init__(self) -> None:
        count = self.num_examples
        checks.integer("num_examples", count, minimum=0)
        usage = np.asarray(self.usage, dtype=np.float64)
        if usage.ndim != 1:
            raise ValueError(f"usage must be a 1-D array (one value per expert), got shape {usage.shape}")
        if not np.all(np.isfinite(usage)) or np.any(usage < 0):
            raise ValueError(f"usage must be finite and >= 0, got {usage.tolist()}")
        # Frozen dataclass: normalise the fields through object.__setattr__.
        object.__setattr__(self, "num_examples", int(count))
        object.__setattr__(self, "usage", usage)


def _check_num_experts(num_experts: Any) -> int:
    return checks.integer("num_experts", num_experts, minimum=1)


def _check_update(index: int, update: ClientUpdate, global_state: State, num_experts: int) -> None:
    if update.usage.shape != (num_experts,):
        raise ValueError(f"update {index}: usage must have shape ({num_experts},), got {update.usage.shape}")
    for key, value in update.state.items():
        if key.startswith(GATE_PREFIX):
            continue  # personal, never aggregated: its keys need not exist globally
        if key not in global_state:
            raise ValueError(f"update {index}: key {key!r} is absent from the global state")
        expert = expert_of(key)
        if expert is None and not is_shared(key):
            raise ValueError(f"update {index}: key {key!r} is neither a shared (extractor) nor an expert key")
        if expert is not None and expert >= num_experts:
            raise ValueError(f"update {index}: key {key!r} names expert {expert}, but num_experts is {num_experts}")
        shape = np.shape(value)
        if shape != global_state[key].shape:
            raise ValueError(
                f"update {index}: key {key!r} has shape {shape}, global state has {global_state[key].shape}"
            )


def _weighted_mean(arrays: Sequence[np.ndarray], weights: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """sum_i w_i a_i / sum_i w_i, computed in float64 and cast back to `dtype`."""
    total = np.zeros(np.shape(arrays[0]), dtype=np.float64)
    for array, weight in zip(arrays, weights):
        if weight != 0.0:
            total += weight * np.asarray(array, dtype=np.float64)
    total /= weights.sum()
    if np.issubdtype(dtype, np.integer):
        # Integer buffers (e.g. batch counters): round instead of truncating toward 0.
        total = np.rint(total)
    return total.astype(dtype)


def _first_positive(*candidates: np.ndarray) -> np.ndarray | None:
    """The first weight vector with a positive sum, or None when all sum to 0."""
    for weights in candidates:
        if weights.sum() > 0.0:
            return weights
    return None


def aggregate(global_state: State, updates: Sequence[ClientUpdate], num_experts: int) -> dict[str, np.ndarray]:
    """New global state from the round's client updates.

    - shared keys (extractor, classifier): mean over the updates that contain the key,
      weighted by num_examples;
    - expert e keys: mean over the updates that contain the key (the clients that held
      e), weighted by usage[e]; if those usages are all 0, weighted by num_examples;
    - a key no update contains (an expert nobody held), or whose weights are all 0,
      keeps its global value;
    - gate keys in updates are ignored and never appear in the output.

    Arithmetic is float64; each output array has its global array's dtype.
    """
    num_experts = _check_num_experts(num_experts)
    for index, update in enumerate(updates):
        if not isinstance(update, ClientUpdate):
            raise ValueError(f"update {index} must be a ClientUpdate, got {type(update).__name__}")
        _check_update(index, update, global_state, num_experts)

    result = {key: np.array(value, copy=True) for key, value in global_state.items()}
    if not updates:
        return result

    examples = np.asarray([u.num_examples for u in updates], dtype=np.float64)
    for key, global_value in global_state.items():
        holders = [i for i, u in enumerate(updates) if key in u.state]
        if not holders:
            continue
        expert = expert_of(key)
        holder_examples = examples[holders]
        if expert is None:
            weights = _first_positive(holder_examples)
        else:
            holder_usage = np.asarray([updates[i].usage[expert] for i in holders])
            weights = _first_positive(holder_usage, holder_examples)
        if weights is None:
            continue  # every holder reports zero weight: nothing was learned, keep global
        arrays = [updates[i].state[key] for i in holders]
        result[key] = _weighted_mean(arrays, weights, np.asarray(global_value).dtype)
    return result


def select_experts(global_state: State, held: Iterable[int]) -> dict[str, np.ndarray]:
    """A client's download: the extractor plus the experts in `held` (copies), no gate.

    Raises ValueError for a repeated expert id or one with no keys in the global state.
    """
    return {key: np.array(global_state[key], copy=True) for key in download_keys(global_state, held)}


def download_keys(global_state: State, held: Iterable[int]) -> list[str]:
    """The keys of a client's download (extractor + the experts in `held`), in the state's order.

    Raises ValueError for a repeated expert id or one with no keys in the global state.
    """
    held_ids = checks.integers("held expert ids", held)
    wanted = set(held_ids)
    if len(wanted) != len(held_ids):
        raise ValueError(f"held expert ids must not repeat, got {held_ids!r}")
    present = {expert_of(key) for key in global_state} - {None}
    missing = sorted(wanted - present)
    if missing:
        raise ValueError(f"held experts {missing} have no keys in the global state")
    return [key for key in global_state if ((expert := expert_of(key)) is None and is_shared(key)) or expert in wanted]


def payload_bytes(state: State) -> int:
    """Total size in bytes of a state's arrays (what travels over the network, unframed)."""
    return int(sum(np.asarray(value).nbytes for value in state.values()))
