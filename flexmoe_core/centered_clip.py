"""History-centred clipping per parameter group (`robust-aggregation = "centered-clip"`).

After Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust Optimization"
(ICML 2021). For each tensor group g (the extractor, each expert; gates never reach the
server) the server keeps a reference r_g: its last accepted update of g, with momentum. A
client's update is u_i = theta_i - theta_global, restricted to g, and the group moves by

    v_g = r_g + sum_i w_i clip(u_i - r_g, tau_g) / sum_i w_i,     clip(d, tau) = d min(1, tau/||d||)

with the usual weights w_i (examples for the extractor, usage for an expert, examples when every
usage is 0). However large an update is and however many holders the group has, one holder moves
the group by at most ``w_i / sum w * tau_g <= tau_g`` away from where the others put it: the bound
this defence gives, and why it still works with an expert's 2-3 holders where a coordinate-wise
median or trimmed mean has nothing to out-vote an attacker with.

``tau_g``: the setting `clip-tau` when > 0, else `clip-factor` x the median distance
``||u_i - r_g||`` over this round's updates *of the same kind* (one pool for the extractor, one
for all experts, as in norm-clip: a median over one expert's 2-3 holders would be half an
attacker).

Direction check (`direction-threshold`, off at -1): an update whose cosine to a reference
direction is below the threshold is dropped (`direction-action = "drop"`) or has its weight
multiplied by ``max(0, (1 + cos) / (1 + threshold))`` (``"down-weight"``); every flag is returned
(client label, group, cosine) for the caller to log with the round. `direction-reference` picks
the direction:

``history``  r_g itself, the server's last accepted update. Measured on the attack table's
             federation (fashion-mnist, Dirichlet 0.8, 10 clients, 1 local epoch), honest updates
             have cosines of -0.3 .. +0.25 to the previous round's update (non-IID clients, and
             an expert's holders change every round), so a threshold there drops honest updates
             about as often as flipped ones; acts from a group's second aggregation on.
``round``    (default) ``r_g + sum_i w_i clip(u_i - r_g, tau) / sum_i w_i``, this round's clipped
             consensus before the check: an update flipped against the others points away from
             it (cosines -0.2 .. -0.4 for the sign-flipping clients' extractor updates there),
             and it exists from round 1.

The extractor is the one group every participant holds, so its consensus is the one a statistic
can trust; an expert's 2-3 holders are not (one attacker of two holders *is* half the consensus).
A client flagged on the extractor is therefore flagged on every expert it holds that round too,
with the same factor, besides each expert's own check.

The reference after the round is ``r_g <- momentum r_g + (1 - momentum) v_g``; a group nobody
held, or whose every update was dropped, keeps its weights and its reference. The references are
plain float64 arrays keyed like the model (`references`), the whole state of this defence: the
server checkpoints them and a resumed run continues with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flexmoe_core.aggregation import ClientUpdate, State, aggregate
from flexmoe_core.protocol import expert_of, is_extractor

DIRECTION_ACTIONS = ("drop", "down-weight")
DIRECTION_REFERENCES = ("history", "round")


@dataclass(frozen=True)
class DirectionFlag:
    """An update the direction check acted on."""

    client: str
    group: str
    cosine: float
    action: str  # "drop" | "down-weight"
    factor: float  # the weight multiplier applied (0 when dropped)


@dataclass
class CenteredClipResult:
    state: dict[str, np.ndarray]  # the new global model
    references: dict[str, np.ndarray]  # the new references (float64, model keys)
    flags: list[DirectionFlag] = field(default_factory=list)
    taus: dict[str, float] = field(default_factory=dict)  # group -> tau used this round


def check_parameters(tau: float, clip_factor: float, momentum: float, threshold: float, action: str) -> None:
    if not (math.isfinite(tau) and tau >= 0.0):
        raise ValueError(f"clip-tau must be a finite number >= 0 (0 = from the update norms), got {tau!r}")
    if not (math.isfinite(clip_factor) and clip_factor > 0.0):
        raise ValueError(f"clip-factor must be > 0, got {clip_factor!r}")
    if not (math.isfinite(momentum) and 0.0 <= momentum < 1.0):
        raise ValueError(f"clip-momentum must be in [0, 1), got {momentum!r}")
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ValueError(f"direction-threshold must be in [-1, 1] (-1 = off), got {threshold!r}")
    if action not in DIRECTION_ACTIONS:
        raise ValueError(f"direction-action must be one of {', '.join(DIRECTION_ACTIONS)}; got {action!r}")


def centered_clip(
    global_state: State,
    updates: Sequence[ClientUpdate],
    num_experts: int,
    references: Mapping[str, np.ndarray] | None = None,
    *,
    tau: float = 0.0,
    clip_factor: float = 2.0,
    momentum: float = 0.0,
    direction_threshold: float = -1.0,
    direction_action: str = "drop",
    direction_reference: str = "round",
    labels: Sequence[str] | None = None,
) -> CenteredClipResult:
    """One round of centred clipping; `references` is not modified (see the module docstring)."""
    check_parameters(tau, clip_factor, momentum, direction_threshold, direction_action)
    if direction_reference not in DIRECTION_REFERENCES:
        raise ValueError(
            f"direction-reference must be one of {', '.join(DIRECTION_REFERENCES)}; got {direction_reference!r}"
        )
    refs = {k: np.asarray(v, dtype=np.float64) for k, v in (references or {}).items()}
    # Validates keys, shapes and experts as plain aggregation does; its copies are the result's base.
    result = aggregate(global_state, [], num_experts)
    if updates:
        aggregate(global_state, updates, num_experts)
    names = list(labels) if labels is not None else [f"update-{i}" for i in range(len(updates))]
    if len(names) != len(updates):
        raise ValueError(f"labels: {len(names)} given for {len(updates)} updates")

    groups = _groups(global_state, updates)
    deltas: dict[tuple[str, int], np.ndarray] = {}  # (group, update) -> u_i - r_g, flat float64
    raw: dict[tuple[str, int], np.ndarray] = {}  # (group, update) -> u_i, flat float64
    for group, (keys, holders) in groups.items():
        base = np.concatenate([np.asarray(global_state[k], dtype=np.float64).ravel() for k in keys])
        ref = _flat_reference(refs, keys, global_state)
        for i in holders:
            u = np.concatenate([np.asarray(updates[i].state[k], dtype=np.float64).ravel() for k in keys]) - base
            raw[(group, i)] = u
            deltas[(group, i)] = u - ref
    pooled = _pooled_taus(deltas, clip_factor) if tau == 0.0 else {}

    new_refs = dict(refs)
    out = CenteredClipResult(result, new_refs)
    suspects: dict[int, tuple[float, float]] = {}  # update -> (extractor cosine, weight factor)
    for group, (keys, holders) in sorted(groups.items(), key=lambda item: item[0] != "extractor"):
        ref = _flat_reference(refs, keys, global_state)
        weights = _weights(updates, holders, group)
        limit = tau if tau > 0.0 else pooled[group_kind(group)]
        if direction_reference == "round":  # this round's clipped consensus, before the check
            direction = ref + _step(deltas, group, holders, weights, limit)
        else:
            direction = ref
        has_ref = bool(np.any(direction != 0.0)) and direction_threshold > -1.0
        for j, i in enumerate(holders):
            if i in suspects and group != "extractor":  # flagged on the extractor: distrusted everywhere
                weights[j] *= suspects[i][1]
                out.flags.append(DirectionFlag(names[i], group, suspects[i][0], direction_action, suspects[i][1]))
                continue
            if not has_ref:
                continue
            cosine = _cosine(raw[(group, i)], direction)
            if cosine < direction_threshold:
                factor = 0.0 if direction_action == "drop" else max(0.0, (1.0 + cosine) / (1.0 + direction_threshold))
                weights[j] *= factor
                out.flags.append(DirectionFlag(names[i], group, cosine, direction_action, factor))
                if group == "extractor":
                    suspects[i] = (cosine, factor)
        if weights.sum() <= 0.0:
            continue  # every holder dropped (or zero weight): weights and reference kept
        out.taus[group] = limit
        v = ref + _step(deltas, group, holders, weights, limit)
        offset = 0
        for key in keys:
            size = int(np.asarray(global_state[key]).size)
            part = v[offset : offset + size].reshape(np.shape(global_state[key]))
            offset += size
            value = np.asarray(global_state[key], dtype=np.float64) + part
            dtype = np.asarray(global_state[key]).dtype
            result[key] = (np.rint(value) if np.issubdtype(dtype, np.integer) else value).astype(dtype)
            previous = refs.get(key, np.zeros(np.shape(global_state[key])))
            new_refs[key] = momentum * previous + (1.0 - momentum) * part
    return out


# ----------------------------------------------------------------------------- helpers


def group_of(key: str) -> str | None:
    """'extractor' or 'expert-<e>' for a model key; None for anything else (a gate)."""
    expert = expert_of(key)
    if expert is not None:
        return f"expert-{expert}"
    return "extractor" if is_extractor(key) else None


def group_kind(group: str) -> str:
    """'extractor' or 'expert': the groups whose update norms are pooled together."""
    return "extractor" if group == "extractor" else "expert"


def _groups(global_state: State, updates: Sequence[ClientUpdate]) -> dict[str, tuple[list[str], list[int]]]:
    """Group -> (its keys in the global state's order, indices of the updates that hold it)."""
    keys: dict[str, list[str]] = {}
    for key in global_state:
        group = group_of(key)
        if group is not None:
            keys.setdefault(group, []).append(key)
    out: dict[str, tuple[list[str], list[int]]] = {}
    for group, members in keys.items():
        holders = [i for i, u in enumerate(updates) if all(k in u.state for k in members)]
        if holders:
            out[group] = (members, holders)
    return out


def _flat_reference(refs: Mapping[str, np.ndarray], keys: list[str], global_state: State) -> np.ndarray:
    return np.concatenate(
        [np.asarray(refs.get(k, np.zeros(np.shape(global_state[k]))), dtype=np.float64).ravel() for k in keys]
    )


def _weights(updates: Sequence[ClientUpdate], holders: list[int], group: str) -> np.ndarray:
    examples = np.array([updates[i].num_examples for i in holders], dtype=np.float64)
    if group == "extractor":
        return examples
    expert = int(group.split("-", 1)[1])
    usage = np.array([updates[i].usage[expert] for i in holders], dtype=np.float64)
    return usage if usage.sum() > 0.0 else examples


def _pooled_taus(deltas: Mapping[tuple[str, int], np.ndarray], clip_factor: float) -> dict[str, float]:
    norms: dict[str, list[float]] = {}
    for (group, _), d in deltas.items():
        norms.setdefault(group_kind(group), []).append(float(np.linalg.norm(d)))
    return {kind: clip_factor * float(np.median(values)) for kind, values in norms.items()}


def _step(
    deltas: Mapping[tuple[str, int], np.ndarray], group: str, holders: list[int], weights: np.ndarray, limit: float
) -> np.ndarray:
    """sum_i w_i clip(u_i - r, tau) / sum_i w_i over the group's holders."""
    step = np.zeros_like(deltas[(group, holders[0])])
    for j, i in enumerate(holders):
        if weights[j] > 0.0:
            step += weights[j] * _clip(deltas[(group, i)], limit)
    return step / weights.sum() if weights.sum() > 0.0 else step


def _clip(d: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(d))
    return d if norm <= limit or norm == 0.0 else d * (limit / norm)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0.0 and nb > 0.0 else 0.0
