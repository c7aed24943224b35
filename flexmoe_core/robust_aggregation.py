"""Poisoning-resistant aggregation of partial FLEX-MoE models, per parameter group.

Flower's robust strategies (FedTrimmedAvg, FedMedian, Krum, Bulyan) assume every
client holds the whole model; here each client holds the extractor plus its own
subset of experts, so the defences are applied per group:

* the extractor over all of the round's participants;
* each expert over the clients that held it (typically N*k/E, i.e. 2-3 holders).

Methods (`robust-aggregation`):

``none``          today's weighted average (:func:`flexmoe_core.aggregation.aggregate`).
``norm-clip``     each client's update u = theta_client - theta_global is clipped, group by
                  group, to ``clip-factor x median ||u||``. The median is taken over a POOL:
                  all extractor updates of the round form one pool, all (client, expert)
                  updates of the round another (experts share one shape). A median over one
                  expert's 2-3 holders would be no defence: one attacker among two holders
                  *is* half of that median. The clipped updates are then averaged with the
                  usual weights (examples for the extractor, usage for experts).
``trimmed-mean``  coordinate-wise mean over a group's holders after dropping the
                  ``floor(trim-fraction x n)`` largest and smallest values (unweighted, as
                  FedTrimmedAvg). When that trims nothing (too few holders) the group falls
                  back to the coordinate-wise median if it has at least 3 holders, and to the
                  plain weighted average with 1-2 holders, where no statistic can tell an
                  attacker from an honest client; see :func:`trim_count`.
``median``        coordinate-wise median over a group's holders (unweighted, as FedMedian).
``centered-clip`` history-centred clipping (flexmoe_core.centered_clip): each update's distance to
                  the group's reference (the server's last accepted update, with momentum) is
                  clipped to tau, so one holder moves a group by at most tau. It keeps state: the
                  server calls :func:`flexmoe_core.centered_clip.centered_clip` with its references;
                  here, without them, it is centred on zero (a first round).

An expert nobody held keeps its weights, as in plain aggregation, and every output
array has its global array's dtype.

Norm screening (`norm-screen` = F > 1, 0 = off) runs before any of these: a client whose update
of some group is longer than F x its pool's median norm (the pools of norm-clip) is dropped from
the round's aggregation altogether, every group of it, and reported (:func:`screen_updates`).
Clipping bounds such an update but still counts it, at up to clip-factor x an honest client's
pull and in whatever direction it points; with 2-3 holders per expert that pull decides an
expert. Screening judges a client by its whole update against pools of every participant, where
an honest majority exists, so an update blown up by s >> F never reaches the average. An update
scaled by s <= F passes and is left to the rule after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flexmoe_core import checks
from flexmoe_core.aggregation import ClientUpdate, State, aggregate
from flexmoe_core.centered_clip import centered_clip, group_kind, group_of

ROBUST_METHODS = ("none", "norm-clip", "trimmed-mean", "median", "centered-clip")


@dataclass(frozen=True)
class ScreenFlag:
    """A group of a client's update longer than its pool allows, which dropped the client."""

    client: str
    group: str
    norm: float
    limit: float


@dataclass
class Screened:
    """The updates a norm screen kept (indices into its input, in order) and why it dropped the rest."""

    kept: list[int]
    flags: list[ScreenFlag] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        """How many clients the screen dropped."""
        return len({f.client for f in self.flags})


def robust_aggregate(
    global_state: State,
    updates: Sequence[ClientUpdate],
    num_experts: int,
    method: str = "none",
    *,
    trim_fraction: float = 0.2,
    clip_factor: float = 2.0,
) -> dict[str, np.ndarray]:
    """The new global state under the chosen defence (see the module docstring)."""
    checks.choice("robust aggregation", method, ROBUST_METHODS)
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must lie in [0, 0.5), got {trim_fraction!r}")
    if not clip_factor > 0.0:
        raise ValueError(f"clip_factor must be > 0, got {clip_factor!r}")
    if method == "none" or not updates:
        return aggregate(global_state, updates, num_experts)
    if method == "norm-clip":
        return aggregate(global_state, clip_updates(global_state, updates, clip_factor), num_experts)
    if method == "centered-clip":
        return centered_clip(global_state, updates, num_experts, clip_factor=clip_factor).state
    # Validation (keys, shapes, experts) as in plain aggregation, then replace every held group.
    result = aggregate(global_state, updates, num_experts)
    for group, holders in _groups(updates).items():
        keys = [k for k in global_state if group_of(k) == group]
        for key in keys:
            stack = np.stack([np.asarray(updates[i].state[key], dtype=np.float64) for i in holders])
            value = _coordinatewise(stack, method, trim_fraction)
            if value is not None:
                result[key] = _cast(value, global_state[key].dtype)
    return result


def trim_count(holders: int, trim_fraction: float) -> int:
    """Values dropped from EACH end of a coordinate; 0 means trimming cannot act on this group."""
    count = math.floor(trim_fraction * holders)
    return count if holders - 2 * count >= 1 else 0


def screen_updates(
    global_state: State, updates: Sequence[ClientUpdate], factor: float, labels: Sequence[str] | None = None
) -> Screened:
    """Keep the clients none of whose groups is longer than factor x its pool's median norm
    (`norm-screen`; factor 0 keeps every client). See the module docstring for why whole clients."""
    if factor == 0.0:
        return Screened(list(range(len(updates))))
    if not factor > 1.0:
        raise ValueError(f"norm-screen must be 0 (off) or > 1 (a factor of the median norm), got {factor!r}")
    names = list(labels) if labels is not None else [f"update-{i}" for i in range(len(updates))]
    norms = _norms(global_state, updates)
    bound = _pooled_bounds(norms, factor)
    over = sorted((i, group) for (i, group), norm in norms.items() if norm > bound[group_kind(group)])
    flags = [ScreenFlag(names[i], group, norms[(i, group)], bound[group_kind(group)]) for i, group in over]
    dropped = {i for i, _ in over}
    return Screened([i for i in range(len(updates)) if i not in dropped], flags)


def clip_updates(global_state: State, updates: Sequence[ClientUpdate], clip_factor: float) -> list[ClientUpdate]:
    """Each client's update clipped per group to clip_factor x the pooled median norm of its kind."""
    norms = _norms(global_state, updates)
    bound = _pooled_bounds(norms, clip_factor)
    clipped = []
    for i, update in enumerate(updates):
        state = dict(update.state)
        for group in _held_groups(update):
            norm, limit = norms[(i, group)], bound[group_kind(group)]
            if norm > limit:
                scale = limit / norm
                for key in _keys(update, group):
                    base = np.asarray(global_state[key], dtype=np.float64)
                    value = base + scale * (np.asarray(state[key], dtype=np.float64) - base)
                    state[key] = value.astype(np.asarray(global_state[key]).dtype)
        clipped.append(ClientUpdate(state=state, num_examples=update.num_examples, usage=update.usage))
    return clipped


# ----------------------------------------------------------------------------- helpers


def _norms(global_state: State, updates: Sequence[ClientUpdate]) -> dict[tuple[int, str], float]:
    """(update index, group) -> the norm of that group's update."""
    return {(i, g): _update_norm(global_state, u, g) for i, u in enumerate(updates) for g in _held_groups(u)}


def _pooled_bounds(norms: dict[tuple[int, str], float], factor: float) -> dict[str, float]:
    """Per kind of group (extractor, expert): factor x the median norm over the round's updates of that kind."""
    return {
        kind: factor * float(np.median([n for (_, g), n in norms.items() if group_kind(g) == kind]))
        for kind in {group_kind(g) for _, g in norms}
    }


def _held_groups(update: ClientUpdate) -> list[str]:
    return sorted({g for g in map(group_of, update.state) if g is not None})


def _keys(update: ClientUpdate, group: str) -> list[str]:
    return [k for k in update.state if group_of(k) == group]


def _groups(updates: Sequence[ClientUpdate]) -> dict[str, list[int]]:
    """Group -> indices of the updates that hold it."""
    holders: dict[str, list[int]] = {}
    for i, update in enumerate(updates):
        for group in _held_groups(update):
            holders.setdefault(group, []).append(i)
    return holders


def _update_norm(global_state: State, update: ClientUpdate, group: str) -> float:
    squares = sum(
        float(
            np.sum((np.asarray(update.state[k], dtype=np.float64) - np.asarray(global_state[k], dtype=np.float64)) ** 2)
        )
        for k in _keys(update, group)
    )
    return math.sqrt(squares)


def _coordinatewise(stack: np.ndarray, method: str, trim_fraction: float) -> np.ndarray | None:
    """Median or trimmed mean over axis 0; None keeps the weighted average (1-2 holders, no trim)."""
    holders = stack.shape[0]
    if method == "median":
        return np.median(stack, axis=0)
    count = trim_count(holders, trim_fraction)
    if count == 0:
        return np.median(stack, axis=0) if holders >= 3 else None
    ordered = np.sort(stack, axis=0)
    return ordered[count : holders - count].mean(axis=0)


def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        value = np.rint(value)
    return value.astype(dtype)
