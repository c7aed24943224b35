"""The FLEX-MoE Flower strategy: a thin adapter from Flower messages to `flexmoe_core`.

Per round: discover clients (server_app.discovery), sample participants and solve the expert
assignment (server_app.planning), send every client the shared extractor plus *only its*
experts, validate and aggregate the replies and learn Q and the load deficits from them
(server_app.training), then evaluate each participant's personalised model
(server_app.evaluation). What carries over between rounds is a `ServerState`.

Stock FedAvg cannot do this: it sends one shared RecordDict to every node and
rejects replies whose ArrayRecords have different keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flexmoe_core import protocol as P
from flexmoe_core.aggregation import download_keys
from flexmoe_core.assignment import LoadTracker, prepare_solver
from flexmoe_core.config import Settings
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.remedies import expert_server_step, holder_counts, step_is_default
from flexmoe_core.replies import ClientInfo
from server_app import evaluation, planning, training
from server_app.discovery import Discovery, NodeRegistry
from server_app.planning import RoundPlan
from server_app.records import ArrayCache, array_record_bytes, to_arrays, to_record
from server_app.state import ServerState
from server_app.traffic import Traffic

__all__ = ["FlexMoEStrategy", "RoundPlan", "to_arrays", "to_record"]

log = logging.getLogger("flexmoe.server")


class FlexMoEStrategy(Strategy):
    """Fitness-driven, load-balanced expert assignment (or a baseline, by `settings.assignment`)."""

    def __init__(self, settings: Settings, global_state: Mapping[str, np.ndarray]) -> None:
        self.settings = settings
        self.num_experts = settings.num_experts
        self.state = ServerState.fresh(settings, global_state)
        self.registry = NodeRegistry(settings)
        self.registry.nodes = self.state.nodes
        self.plan: RoundPlan | None = None
        self.arrays = ArrayCache()
        self.dense_record_bytes = array_record_bytes(to_record(self.state.global_state))
        if settings.assignment == "flexmoe":
            prepare_solver(settings.solver)

    # ------------------------------------------------------------------ server state
    @property
    def global_state(self) -> dict[str, np.ndarray]:
        return self.state.global_state

    @global_state.setter
    def global_state(self, value: Mapping[str, np.ndarray]) -> None:
        self.state.global_state = dict(value)

    @property
    def fitness(self) -> FitnessTable:
        return self.state.fitness

    @property
    def loads(self) -> LoadTracker:
        return self.state.loads

    @property
    def nodes(self) -> dict[int, ClientInfo]:
        return self.state.nodes

    @property
    def round(self) -> int:
        return self.state.round

    @property
    def run_token(self) -> str:
        return self.state.run_token

    def state_dict(self) -> dict[str, Any]:
        """Everything the server carries from one round to the next (see `ServerState`)."""
        return self.state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (e.g. from a checkpoint)."""
        self.state = ServerState.from_dict(state)
        self.registry.nodes = self.state.nodes

    # ------------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        s = self.settings
        log.info(
            "FLEX-MoE strategy: assignment=%s solver=%s E=%d capacity=%s fitness=%s beta=%.2f "
            "load-slack=%.2f deficit-weight=%.2f fraction-train=%.2f",
            s.assignment,
            s.solver,
            s.num_experts,
            s.capacity_profile or s.capacity,
            s.fitness,
            s.ema_beta,
            s.load_slack,
            s.deficit_weight,
            s.fraction_train,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's Strategy API (as `Strategy.start` calls it): discovery, then the round's messages.
        The FLEX-MoE round loop (`server_app.app.FederatedRun`) runs the two steps itself."""
        self.global_state = to_arrays(arrays)
        return self.train_messages(server_round, self.discover(grid), config)

    def discover(self, grid: Grid) -> Discovery:
        """Describe newly connected nodes; wait (bounded) until `min-train-nodes` are known."""
        return self.registry.discover(grid)

    def train_messages(
        self, server_round: int, discovery: Discovery, config: ConfigRecord | None = None
    ) -> list[Message]:
        """Sample the round's participants, solve the assignment, and build each one's message."""
        node_ids = planning.sample(self.settings, self.nodes, discovery.ready, server_round)
        clients = [self.nodes[n] for n in node_ids]
        start = time.perf_counter()
        x, decision = self.assign(clients, server_round)
        solve_seconds = time.perf_counter() - start
        keys = {n: download_keys(self.global_state, np.flatnonzero(row).tolist()) for n, row in zip(node_ids, x)}
        sent = {n: {k: self.global_state[k] for k in keys[n]} for n in node_ids}
        traffic = Traffic(self.dense_record_bytes, discovery=discovery.bytes)
        self.plan = RoundPlan(node_ids, clients, x, sent, solve_seconds, traffic, decision)
        config = config or ConfigRecord()
        messages = [self._message(n, keys[n], server_round, config, MessageType.TRAIN) for n in node_ids]
        traffic.count_down("train", messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's Strategy API over `aggregate_train_replies`."""
        metrics = self.aggregate_train_replies(server_round, replies)
        return to_record(self.global_state), MetricRecord(metrics)

    def aggregate_train_replies(self, server_round: int, replies: Iterable[Message]) -> dict[str, Any]:
        """Validate the training replies, aggregate the accepted ones into the global model, and
        learn the fitness and load deficits from them; returns the round's training metrics."""
        plan, s = self._require_plan(), self.settings
        outcome = training.collect(plan, replies, self.nodes, self.settings, server_round)
        timed_out = len(plan.node_ids) - len(outcome.accepted) - outcome.failed - outcome.rejected
        if timed_out:
            log.warning(
                "round %d: %d client(s) did not reply within round-timeout=%.0fs",
                server_round,
                timed_out,
                self.settings.round_timeout,
            )
        plan.completed = [n for n in plan.node_ids if n in outcome.accepted]
        previous = self.global_state
        self.global_state = training.aggregate(
            self.global_state, plan, outcome, self.settings, self.state.references, server_round
        )
        if not step_is_default(s.expert_server_lr, s.expert_server_momentum, s.expert_step_scale):
            self.global_state = expert_server_step(  # remedy: a per-expert FedAvgM step (flexmoe_core.remedies)
                previous,
                self.global_state,
                holder_counts([plan.held(n) for n in plan.completed]),
                len(plan.completed),
                self.state.velocity,
                lr=s.expert_server_lr,
                momentum=s.expert_server_momentum,
                scale=s.expert_step_scale,
            )
        training.learn(self.fitness, self.loads, plan, outcome, self.nodes)
        if self.settings.assignment == "bias-greedy":
            training.learn_bias(self.state.expert_bias, plan, self.settings.bias_update_rate)
        self.state.round = server_round
        plan.metrics = training.round_metrics(plan, outcome, self.num_experts)
        plan.metrics["no-update-accepted"] = int(not plan.completed)
        if not plan.completed:
            log.warning("round %d: no update accepted: the global model is kept (and evaluated)", server_round)
        return plan.metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's Strategy API over `evaluate_messages`."""
        self.global_state = to_arrays(arrays)
        return self.evaluate_messages(server_round, config)

    def evaluate_messages(self, server_round: int, config: ConfigRecord | None = None) -> list[Message]:
        """Personalised evaluation: the new global extractor with the client's experts and its own
        gate, on its local test split (see `server_app.evaluation.targets` for who)."""
        plan = self._require_plan()
        if self.settings.eval_cohort and not self.state.cohort:
            self.state.cohort = evaluation.draw_cohort(self.settings, self.nodes)
        targets = evaluation.targets(self.settings, plan, self.nodes, self.state.cohort, self._rule, server_round)
        plan.evaluated = [self.nodes[node].client_id for node, _ in targets]
        config = config or ConfigRecord()
        messages = [
            self._message(node, download_keys(self.global_state, held), server_round, config, MessageType.EVALUATE)
            for node, held in targets
        ]
        plan.traffic.count_down("evaluate", messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's Strategy API over `evaluation_metrics`."""
        return MetricRecord(self.evaluation_metrics(server_round, replies))

    def evaluation_metrics(self, server_round: int, replies: Iterable[Message]) -> dict[str, Any]:
        """Accuracy over the valid evaluation replies, plus the round's traffic."""
        plan = self._require_plan()
        client_of = {node: info.client_id for node, info in self.nodes.items()}
        accuracy = evaluation.accuracy_metrics(plan, replies, server_round, self.settings.attacking_clients, client_of)
        return {**accuracy, **plan.traffic.metrics(len(plan.node_ids), len(plan.evaluated))}

    # ------------------------------------------------------------------ assignment
    def assign(self, clients: list[ClientInfo], server_round: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The round's (N, E) assignment and the inputs it was decided from."""
        everyone = list(self.nodes.values())
        bias = self.state.expert_bias.values
        return planning.decide(self.settings, self.fitness, self.loads, clients, everyone, server_round, bias=bias)

    def _rule(self, clients: list[ClientInfo], server_round: int, stream: str) -> np.ndarray:
        everyone = list(self.nodes.values())
        bias = self.state.expert_bias.values
        return planning.decide(
            self.settings, self.fitness, self.loads, clients, everyone, server_round, stream, bias=bias
        )[0]

    def assignment_record(self, server_round: int) -> dict[str, Any]:
        """The round's decision by stable client id: who held what, and the inputs it was made from
        (capacity, each client's fitness row and the deficit), so anyone can re-check it offline."""
        plan = self._require_plan()
        return {
            "round": server_round,
            "clients": [c.client_id for c in plan.clients],
            "held": [np.flatnonzero(row).tolist() for row in plan.assignment],
            "completed": [plan.clients[plan.row(n)].client_id for n in plan.completed],
            **plan.decision,
            "evaluated": plan.evaluated,
        }

    # ------------------------------------------------------------------ helpers
    def _message(
        self, node: int, keys: list[str], server_round: int, config: ConfigRecord, message_type: str
    ) -> Message:
        # A fresh RecordDict per node: each client gets its own expert subset. The Arrays in it are
        # shared between messages (serialised once per global model, see server_app.records).
        round_config = ConfigRecord({**dict(config), P.SERVER_ROUND: server_round, P.RUN_TOKEN: self.state.run_token})
        return Message(
            RecordDict({P.ARRAYS: self.arrays.record(self.global_state, keys), P.CONFIG: round_config}),
            message_type=message_type,
            dst_node_id=node,
        )

    def _require_plan(self) -> RoundPlan:
        if self.plan is None:
            raise RuntimeError("configure_train must run before aggregation/evaluation in a round")
        return self.plan
