"""A round's plan: who takes part (sampling) and which experts each participant holds (assignment)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexmoe_core.assignment import LoadTracker, assign
from flexmoe_core.config import Settings
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.replies import ClientInfo
from flexmoe_core.seeds import round_rng
from server_app.traffic import Traffic

# Random streams, each seeded from (seed, purpose, round) alone: the participants of a
# round never depend on how many numbers the assignment rule drew (see flexmoe_core.seeds).
SAMPLING_STREAM = "sampling"
ASSIGNMENT_STREAM = "assignment"


@dataclass
class RoundPlan:
    """What the server decided and sent this round; replies are checked against it."""

    node_ids: list[int]
    clients: list[ClientInfo]
    assignment: np.ndarray
    sent: dict[int, dict[str, np.ndarray]]  # per node, the arrays sent (views of that round's global model)
    solve_seconds: float
    traffic: Traffic
    decision: dict[str, Any] = field(default_factory=dict)  # the inputs of the assignment
    completed: list[int] = field(default_factory=list)
    replied: list[int] = field(default_factory=list)  # nodes that answered the training request at all
    evaluated: list[str] = field(default_factory=list)  # client ids sent an evaluation
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {node: i for i, node in enumerate(self.node_ids)}

    def row(self, node: int) -> int:
        return self.rows[node]

    def held(self, node: int) -> list[int]:
        return np.flatnonzero(self.assignment[self.rows[node]]).tolist()


def sample(settings: Settings, nodes: Mapping[int, ClientInfo], ready: list[int], server_round: int) -> list[int]:
    """Sample participants reproducibly: order by stable client id, draw from this round's own
    stream, so every method samples the same clients in every round."""
    ordered = sorted(ready, key=lambda n: nodes[n].client_id)
    size = min(len(ordered), max(settings.min_train_nodes, int(len(ordered) * settings.fraction_train)))
    rng = round_rng(settings.seed, SAMPLING_STREAM, server_round)
    picked = np.sort(rng.choice(len(ordered), size=size, replace=False))
    return [ordered[i] for i in picked]


def decide(
    settings: Settings,
    fitness: FitnessTable,
    loads: LoadTracker,
    clients: list[ClientInfo],
    everyone: list[ClientInfo],
    server_round: int,
    stream: str = ASSIGNMENT_STREAM,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The (N, E) assignment of `clients` and the inputs it was decided from.

    `everyone` is every client seen so far: the `static` round-robin is laid over all of them.
    `bias` is bias-greedy's per-expert bias (read by that method only, and then recorded).
    """
    s = settings
    ids = [c.client_id for c in clients]
    capacity = np.array([c.capacity for c in clients])
    scores = fitness.scores(ids)
    deficit = loads.deficit
    decision = {"capacity": capacity.tolist(), "fitness": scores.tolist(), "deficit": deficit.tolist()}
    if s.min_holders > 1:
        decision["min-holders"] = s.min_holders
    if s.assignment == "bias-greedy":
        decision["bias"] = [float(v) for v in (np.zeros(s.num_experts) if bias is None else bias)]
    if s.assignment == "static":
        return static_rows(everyone, ids, s.num_experts), decision
    # Only FLEX-MoE reads the deficit; the baselines are the textbook rules (see assignment.py).
    uses_deficit = s.assignment == "flexmoe"
    x = assign(
        scores,
        capacity,
        s.assignment,
        rng=round_rng(s.seed, stream, server_round),
        load_slack=s.load_slack,
        deficit=deficit if uses_deficit else None,
        deficit_weight=s.deficit_weight if uses_deficit else 0.0,
        solver=s.solver,
        min_holders=s.min_holders,
        bias=bias if s.assignment == "bias-greedy" else None,
        sinkhorn_tau=s.sinkhorn_tau,
        sinkhorn_iterations=s.sinkhorn_iterations,
    )
    return x, decision


def static_rows(everyone: list[ClientInfo], ids: list[str], num_experts: int) -> np.ndarray:
    # The round-robin is laid over every client seen so far (in id order), so a client keeps the
    # same experts whichever subset of clients is sampled in a round.
    unique = sorted({info.client_id: info for info in everyone}.values(), key=lambda c: c.client_id)
    full = assign(np.zeros((len(unique), num_experts)), np.array([c.capacity for c in unique]), "static")
    row_of = {c.client_id: i for i, c in enumerate(unique)}
    return full[[row_of[i] for i in ids]]
