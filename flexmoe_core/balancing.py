"""Balancing baselines from the MoE-routing literature, as expert-assignment rules.

Both are the textbook rules, applied to the server's fitness table Q (clients x experts, values
in [0, 1]) instead of a router's token x expert scores; neither reads FLEX-MoE's deficit term.

``bias-greedy`` (auxiliary-loss-free balancing, DeepSeek-V3, arXiv 2412.19437, section 2.1.2):
every expert e has a bias b_e that is used for selection only. Each client takes its top-k_c
experts of ``Q[c] + b``; after every round the server moves each bias one fixed step towards
balance, ``b_e += u * sign(mean load - load_e)``, where load_e counts the clients that held e
among those that completed the round and the mean is over the E experts. An expert held less
than average becomes more attractive next round, one held more becomes less attractive; the
step u is the setting ``bias-update-rate``. DeepSeek also keeps the bias out of the gating
weights; here the server has no gating weights at all, only the selection.

``sinkhorn`` (Sinkhorn-balanced routing as in S-BASE and Megatron-LM's Sinkhorn router): start
from ``exp(Q / tau)`` with its rows normalised to the capacities, then rescale its columns and
rows alternately, for a fixed number of iterations, so that every column sums to the equal-load
target ``L* = sum_c k_c / E`` and every row to the client's capacity k_c (the last step normalises
rows, so rows are exact and columns are within the iterations' tolerance). Each client then takes
its top-k_c experts of the balanced scores, ties broken at random from the method's own generator
as ``greedy`` does. Top-k of balanced scores is balanced only in expectation: where a client's
scores tie (e.g. every untried expert at the optimistic initial Q), the shared column factors rank
the tied experts alike for every such client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

ASSIGNMENT_DTYPE = np.int64


# ---------------------------------------------------------------------------- top-k


def top_k_rows(scores: np.ndarray, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, E) 0/1: row c holds its k_c highest-scoring experts, ties broken by a random key."""
    num_clients, num_experts = scores.shape
    # lexsort: the last key is primary -> by -score, ties by the random key.
    order = np.lexsort((rng.random(scores.shape), -scores), axis=-1)
    take = np.arange(num_experts)[None, :] < np.asarray(capacity)[:, None]
    x = np.zeros((num_clients, num_experts), dtype=ASSIGNMENT_DTYPE)
    x[np.arange(num_clients)[:, None], order] = take
    return x


# ----------------------------------------------------------------------- bias-greedy


def bias_update(bias: np.ndarray, load: np.ndarray, rate: float) -> np.ndarray:
    """One DeepSeek-V3 bias step: ``b + rate * sign(mean(load) - load)`` (a new array)."""
    load = np.asarray(load, dtype=np.float64)
    return np.asarray(bias, dtype=np.float64) + float(rate) * np.sign(load.mean() - load)


def as_bias(bias: Any, num_experts: int) -> np.ndarray:
    """The bias as a finite (E,) float64 array; None means zeros."""
    if bias is None:
        return np.zeros(num_experts)
    try:
        array = np.asarray(bias, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bias must be a numeric (E,) array: {exc}") from exc
    if array.shape != (num_experts,):
        raise ValueError(f"bias must have shape (E,) = ({num_experts},), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("bias must be finite (found NaN or inf)")
    return array


def assign_bias_greedy(
    scores: np.ndarray, capacity: np.ndarray, bias: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Top-k_c of ``Q + b`` per client (the bias shifts selection only)."""
    return top_k_rows(scores + np.asarray(bias, dtype=np.float64)[None, :], capacity, rng)


class ExpertBias:
    """The bias-greedy rule's server state: one bias per expert, stepped after every round.

    Checkpointed with the rest of the server state (``to_dict`` / ``from_dict``, lossless through
    JSON), so a resumed run continues with the bias it had.
    """

    def __init__(self, num_experts: int) -> None:
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_experts = int(num_experts)
        self._bias = np.zeros(self.num_experts, dtype=np.float64)
        self.rounds = 0

    @property
    def values(self) -> np.ndarray:
        return self._bias.copy()

    def update(self, x: Any, rate: float) -> None:
        """One round: x is the (N, E) assignment of the clients that completed it, rate the step u."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_experts:
            raise ValueError(f"assignment x must have shape (N, E={self.num_experts}), got {x.shape}")
        if not math.isfinite(float(rate)) or float(rate) < 0:
            raise ValueError(f"bias update rate must be a finite number >= 0, got {rate!r}")
        self._bias = bias_update(self._bias, x.sum(axis=0), rate)
        self.rounds += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_experts": self.num_experts,
            "rounds": self.rounds,
            "bias": [float(v) for v in self._bias],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ExpertBias:
        tracker = cls(int(state["num_experts"]))
        bias = np.asarray(state["bias"], dtype=np.float64)
        if bias.shape != (tracker.num_experts,):
            raise ValueError(f"bias must have length num_experts={tracker.num_experts}, got {bias.shape}")
        tracker._bias = bias.copy()
        tracker.rounds = int(state.get("rounds", 0))
        return tracker


# -------------------------------------------------------------------------- sinkhorn


def sinkhorn_balance(scores: np.ndarray, capacity: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """Sinkhorn-Knopp scaling of ``exp(Q / tau)``: rows to k_c, then `iterations` times columns to
    ``sum(k) / E`` and rows to k_c again (so rows are exact, columns converge).

    The first row normalisation makes each row ``k_c * softmax(Q[c] / tau)``, computed with the row's
    maximum subtracted (a per-row constant, which that normalisation removes), so no entry
    overflows for any tau > 0. A column whose entries all underflow to 0 stays 0 (never 0 / 0).
    """
    if not (math.isfinite(float(tau)) and float(tau) > 0):
        raise ValueError(f"sinkhorn tau must be a finite number > 0, got {tau!r}")
    if int(iterations) < 1:
        raise ValueError(f"sinkhorn iterations must be >= 1, got {iterations!r}")
    capacity = np.asarray(capacity, dtype=np.float64)
    logits = scores / float(tau)
    matrix = np.exp(logits - logits.max(axis=1, keepdims=True))
    matrix *= capacity[:, None] / matrix.sum(axis=1, keepdims=True)
    target = capacity.sum() / scores.shape[1]
    tiny = np.finfo(np.float64).tiny
    for _ in range(int(iterations)):
        matrix *= target / np.maximum(matrix.sum(axis=0, keepdims=True), tiny)
        matrix *= capacity[:, None] / matrix.sum(axis=1, keepdims=True)
    return matrix


def assign_sinkhorn(
    scores: np.ndarray, capacity: np.ndarray, rng: np.random.Generator, *, tau: float, iterations: int
) -> np.ndarray:
    """Top-k_c per client of the Sinkhorn-balanced scores."""
    return top_k_rows(sinkhorn_balance(scores, capacity, tau, iterations), capacity, rng)
