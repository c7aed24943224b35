"""Everything the server carries from one round to the next, and its checkpoint form."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flexmoe_core.assignment import LoadTracker
from flexmoe_core.balancing import ExpertBias
from flexmoe_core.config import Settings
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.replies import ClientInfo


@dataclass
class ServerState:
    """The global model, Q, the load deficits, bias-greedy's expert bias, and who the server knows.

    The random streams need no state: sampling, assignment and the evaluation cohort draw from
    generators seeded by (seed, purpose, round) alone.
    """

    global_state: dict[str, np.ndarray]
    fitness: FitnessTable
    loads: LoadTracker
    run_token: str = field(default_factory=lambda: secrets.token_hex(8))
    round: int = 0  # last round whose training was aggregated
    cohort: list[str] = field(default_factory=list)  # fixed evaluation cohort (eval-cohort > 0)
    nodes: dict[int, ClientInfo] = field(default_factory=dict)
    # centered-clip's per-group references (flexmoe_core.centered_clip), keyed like the model; else empty.
    references: dict[str, np.ndarray] = field(default_factory=dict)
    bias: ExpertBias | None = None  # bias-greedy's per-expert bias (zeros under every other method)
    # The per-expert server step's velocity (flexmoe_core.remedies; expert-server-momentum), keyed like
    # the model's expert keys; empty when the step is off.
    velocity: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bias is None:
            self.bias = ExpertBias(self.loads.num_experts)

    @classmethod
    def fresh(cls, settings: Settings, global_state: Mapping[str, np.ndarray]) -> ServerState:
        fitness = FitnessTable(
            settings.num_experts,
            mode=settings.fitness,
            ema_beta=settings.ema_beta,
            loss_alpha=settings.loss_alpha,
            initial=settings.initial_fitness,
        )
        return cls(dict(global_state), fitness, LoadTracker(settings.num_experts))

    def to_dict(self) -> dict[str, Any]:
        """`"global"`, `"references"` and `"velocity"` hold arrays, the rest is JSON-safe."""
        return {
            "global": dict(self.global_state),
            "fitness": self.fitness.to_dict(),
            "loads": self.loads.to_dict(),
            "run-token": self.run_token,  # clients find the gates this run stored under it
            "round": self.round,
            "cohort": list(self.cohort),
            "references": dict(self.references),
            "velocity": dict(self.velocity),
            "nodes": {str(node): asdict(info) for node, info in self.nodes.items()},
            "bias": self.expert_bias.to_dict(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ServerState:
        """Inverse of `to_dict` (e.g. from a checkpoint). Nodes that are no longer connected are
        dropped at the next discovery."""
        return cls(
            global_state=dict(state["global"]),
            fitness=FitnessTable.from_dict(state["fitness"]),
            loads=LoadTracker.from_dict(state["loads"]),
            run_token=str(state["run-token"]),
            round=int(state["round"]),
            cohort=list(state.get("cohort", [])),
            references=dict(state.get("references", {})),
            velocity=dict(state.get("velocity", {})),
            nodes={int(node): ClientInfo(**info) for node, info in state.get("nodes", {}).items()},
            bias=ExpertBias.from_dict(state["bias"]) if "bias" in state else None,  # older checkpoints: zeros
        )

    @property
    def expert_bias(self) -> ExpertBias:
        assert self.bias is not None  # set in __post_init__
        return self.bias
