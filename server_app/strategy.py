"""The FLEX-MoE Flower strategy: a thin adapter from Flower messages to `flexmoe_core`.

Per round: discover clients (a `query` message asks each new node for its stable
client id and expert capacity), sample participants, solve the expert assignment,
send every client the shared extractor plus *only its* experts, validate replies,
aggregate experts weighted by usage, update the fitness table Q and the load
deficits, then evaluate each participant's personalised model.

Stock FedAvg cannot do this: it sends one shared RecordDict to every node and
rejects replies whose ArrayRecords have different keys.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import array_record_to_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flexmoe_core import metrics as M
from flexmoe_core import protocol as P
from flexmoe_core.aggregation import select_experts
from flexmoe_core.assignment import LoadTracker, assign
from flexmoe_core.config import Settings
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.replies import (
    ClientInfo,
    ReplyError,
    validate_description,
    validate_eval_reply,
    validate_train_reply,
)
from flexmoe_core.robust_aggregation import robust_aggregate
from flexmoe_core.seeds import round_rng

log = logging.getLogger("flexmoe.server")

DESCRIBE = f"{MessageType.QUERY}.{P.DESCRIBE}"
# Random streams, each seeded from (seed, purpose, round) alone: the participants of a
# round never depend on how many numbers the assignment rule drew (see flexmoe_core.seeds).
SAMPLING_STREAM = "sampling"
ASSIGNMENT_STREAM = "assignment"
EVAL_ASSIGNMENT_STREAM = "eval-assignment"
EVAL_COHORT_STREAM = "eval-cohort"


@dataclass
class RoundPlan:
    """What the server decided and sent this round; replies are checked against it."""

    node_ids: list[int]
    clients: list[ClientInfo]
    assignment: np.ndarray
    sent: dict[int, dict[str, np.ndarray]]
    solve_seconds: float
    decision: dict[str, Any] = field(default_factory=dict)  # the inputs of the assignment
    completed: list[int] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)  # client ids sent an evaluation
    metrics: dict[str, Any] = field(default_factory=dict)
    traffic: Traffic = field(init=False)

    rows: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {node: i for i, node in enumerate(self.node_ids)}
        self.traffic = Traffic()

    def row(self, node: int) -> int:
        return self.rows[node]

    def held(self, node: int) -> list[int]:
        return np.flatnonzero(self.assignment[self.rows[node]]).tolist()


@dataclass(frozen=True)
class Discovery:
    """The round loop's first step: the usable connected nodes, and the bytes describing new ones took."""

    ready: list[int]
    bytes: int


@dataclass
class Traffic:
    """Bytes of the serialised Flower messages (protobuf, as the Fleet API carries them, without
    transport framing) exchanged with the round's participants, per direction and phase, plus
    the array bytes a dense model would have added to the same messages."""

    down: dict[str, int] = field(default_factory=lambda: {"train": 0, "evaluate": 0})
    up: dict[str, int] = field(default_factory=lambda: {"train": 0, "evaluate": 0})
    dense_extra: int = 0
    discovery: int = 0

    @property
    def total(self) -> int:
        return sum(self.down.values()) + sum(self.up.values())


def message_bytes(message: Message) -> int:
    return message_to_proto(message).ByteSize()


def record_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return array_record_to_proto(to_record(arrays)).ByteSize()


def to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in record.items()}


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


class FlexMoEStrategy(Strategy):
    """Fitness-driven, load-balanced expert assignment (or a baseline, by `settings.assignment`)."""

    def __init__(self, settings: Settings, global_state: Mapping[str, np.ndarray]) -> None:
        self.settings = settings
        self.num_experts = settings.num_experts
        self.global_state = dict(global_state)
        self.fitness = FitnessTable(
            settings.num_experts,
            mode=settings.fitness,
            ema_beta=settings.ema_beta,
            loss_alpha=settings.loss_alpha,
            initial=settings.initial_fitness,
        )
        self.loads = LoadTracker(settings.num_experts)
        self.run_token = secrets.token_hex(8)
        self.nodes: dict[int, ClientInfo] = {}
        self.refused: dict[int, ClientInfo] = {}  # nodes whose client id another connected node holds
        self._warned: set[int] = set()
        self.plan: RoundPlan | None = None
        self.cohort: list[str] = []  # fixed evaluation cohort (eval-cohort > 0), drawn at the first evaluation
        self.round = 0  # last round whose training was aggregated
        self.dense_record_bytes = record_bytes(self.global_state)

    # ------------------------------------------------------------------ server state
    def state_dict(self) -> dict[str, Any]:
        """Everything the server carries from one round to the next; `"global"` holds the arrays,
        the rest is JSON-safe. The random streams need no state: sampling, assignment and the
        evaluation cohort draw from generators seeded by (seed, purpose, round) alone."""
        return {
            "global": dict(self.global_state),
            "fitness": self.fitness.to_dict(),
            "loads": self.loads.to_dict(),
            "run-token": self.run_token,  # clients find the gates this run stored under it
            "round": self.round,
            "cohort": list(self.cohort),
            "nodes": {str(node): asdict(info) for node, info in self.nodes.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (e.g. from a checkpoint)."""
        self.global_state = dict(state["global"])
        self.fitness = FitnessTable.from_dict(state["fitness"])
        self.loads = LoadTracker.from_dict(state["loads"])
        self.run_token = str(state["run-token"])
        self.round = int(state["round"])
        self.cohort = list(state.get("cohort", []))
        # Nodes that are no longer connected are dropped at the next discovery (see _admit).
        self.nodes = {int(node): ClientInfo(**info) for node, info in state.get("nodes", {}).items()}

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

    def train_messages(
        self, server_round: int, discovery: Discovery, config: ConfigRecord | None = None
    ) -> list[Message]:
        """Sample the round's participants, solve the assignment, and build each one's message."""
        node_ids = self.sample(discovery.ready, server_round)
        clients = [self.nodes[n] for n in node_ids]
        start = time.perf_counter()
        x, decision = self.assign(clients, server_round)
        solve_seconds = time.perf_counter() - start
        sent = {n: select_experts(self.global_state, np.flatnonzero(row).tolist()) for n, row in zip(node_ids, x)}
        self.plan = RoundPlan(node_ids, clients, x, sent, solve_seconds, decision)
        self.plan.traffic.discovery = discovery.bytes
        config = config or ConfigRecord()
        messages = [self._message(n, sent[n], server_round, config, MessageType.TRAIN) for n in node_ids]
        self._count_down(self.plan, "train", messages)
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
        plan = self._require_plan()
        accepted: dict[int, Any] = {}
        failed, rejected = 0, 0
        seen: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in plan.sent or node in seen:
                log.warning("round %d: ignoring an unexpected or repeated reply from node %d", server_round, node)
                continue
            seen.add(node)
            plan.traffic.up["train"] += message_bytes(reply)
            if reply.has_error():
                failed += 1
                log.warning(
                    "round %d: client %s failed: %s", server_round, self.nodes[node].client_id, reply.error.reason
                )
                continue
            try:
                arrays, metrics = _train_content(reply)
                accepted[node] = validate_train_reply(
                    plan.sent[node], arrays, metrics, self.num_experts, declared_examples=self.nodes[node].num_examples
                )
                plan.traffic.dense_extra += self.dense_record_bytes - record_bytes(arrays)
            except ReplyError as err:
                rejected += 1
                log.warning(
                    "round %d: rejected reply of client %s (node %d): %s",
                    server_round,
                    self.nodes[node].client_id,
                    node,
                    err,
                )
        timed_out = len(plan.node_ids) - len(accepted) - failed - rejected
        if timed_out:
            log.warning(
                "round %d: %d client(s) did not reply within round-timeout=%.0fs",
                server_round,
                timed_out,
                self.settings.round_timeout,
            )
        plan.completed = [n for n in plan.node_ids if n in accepted]
        s = self.settings
        self.global_state = robust_aggregate(
            self.global_state,
            [accepted[n].update for n in plan.completed],
            self.num_experts,
            s.robust_aggregation,
            trim_fraction=s.trim_fraction,
            clip_factor=s.clip_factor,
        )
        self._learn_from(plan, accepted)
        self.round = server_round
        plan.metrics = self._train_metrics(plan, accepted, failed, rejected, timed_out)
        return plan.metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's Strategy API over `evaluate_messages`."""
        self.global_state = to_arrays(arrays)
        return self.evaluate_messages(server_round, config)

    def evaluate_messages(self, server_round: int, config: ConfigRecord | None = None) -> list[Message]:
        """Personalised evaluation: the new global extractor with the client's experts and its own
        gate, on its local test split."""
        plan = self._require_plan()
        targets = self._evaluation_targets(plan, server_round)
        plan.evaluated = [self.nodes[node].client_id for node, _ in targets]
        config = config or ConfigRecord()
        messages = [
            self._message(node, select_experts(self.global_state, held), server_round, config, MessageType.EVALUATE)
            for node, held in targets
        ]
        self._count_down(plan, "evaluate", messages)
        return messages

    def _evaluation_targets(self, plan: RoundPlan, server_round: int) -> list[tuple[int, list[int]]]:
        """Who is evaluated, with which experts.

        By default the clients that trained this round, with the experts they held. Under partial
        participation those change every round, so accuracy curves would compare different clients;
        with `eval-cohort = M` a fixed cohort of M clients (drawn once from the seed) is evaluated
        every round instead, each with the experts the method's own rule gives the cohort now (as if
        it were the round's participants; nothing is learned from it) and its latest gate.
        """
        if not self.settings.eval_cohort:
            return [(node, plan.held(node)) for node in plan.completed]
        by_id = {info.client_id: node for node, info in self.nodes.items()}
        nodes = [by_id[c] for c in self._cohort_ids() if c in by_id]
        x, _ = self._decide([self.nodes[n] for n in nodes], server_round, EVAL_ASSIGNMENT_STREAM)
        return [(node, np.flatnonzero(row).tolist()) for node, row in zip(nodes, x)]

    def _cohort_ids(self) -> list[str]:
        if not self.cohort:
            known = sorted(info.client_id for info in self.nodes.values())
            rng = round_rng(self.settings.seed, EVAL_COHORT_STREAM, 0)
            size = min(self.settings.eval_cohort, len(known))
            self.cohort = sorted(known[i] for i in rng.choice(len(known), size=size, replace=False))
            log.info("evaluation cohort (fixed for the run): %s", ", ".join(self.cohort))
        return self.cohort

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's Strategy API over `evaluation_metrics`."""
        return MetricRecord(self.evaluation_metrics(server_round, replies))

    def evaluation_metrics(self, server_round: int, replies: Iterable[Message]) -> dict[str, Any]:
        """Accuracy over the valid evaluation replies, plus the round's traffic."""
        plan = self._require_plan()
        outcomes = []
        for reply in replies:
            plan.traffic.up["evaluate"] += message_bytes(reply)
            if reply.has_error():
                log.warning(
                    "round %d: evaluation failed on node %d: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            try:
                outcomes.append(validate_eval_reply(dict(reply.content.metric_records[P.METRICS])))
            except (ReplyError, KeyError) as err:
                log.warning(
                    "round %d: rejected evaluation of node %d: %s", server_round, reply.metadata.src_node_id, err
                )
        traffic = self._traffic_metrics(plan)
        if not outcomes:
            return dict(traffic)
        accuracies = np.array([o.accuracy for o in outcomes])
        examples = np.array([o.num_examples for o in outcomes], dtype=float)
        summary = M.accuracy_summary(accuracies, examples)
        return {
            "accuracy": float(summary["mean"]),
            "accuracy-min": float(summary["min"]),
            "accuracy-p10": float(summary["p10"]),
            "accuracy-median": float(summary["median"]),
            "eval-loss": float(np.average([o.loss for o in outcomes], weights=np.maximum(examples, 1e-12))),
            "num-evaluated": len(outcomes),
            **traffic,
        }

    # ------------------------------------------------------------------ clients
    def discover(self, grid: Grid) -> Discovery:
        """Describe newly connected nodes; wait (bounded) until `min-train-nodes` are known."""
        deadline = time.monotonic() + self.settings.node_wait_timeout
        discovery_bytes = 0
        while True:
            connected = sorted(grid.get_node_ids())
            discovery_bytes += self._describe_new(grid, connected)
            self._admit(connected)
            ready = [n for n in connected if n in self.nodes]
            if len(ready) >= self.settings.min_train_nodes:
                return Discovery(ready, discovery_bytes)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"only {len(ready)} usable client(s) connected after node-wait-timeout="
                    f"{self.settings.node_wait_timeout:.0f}s, min-train-nodes={self.settings.min_train_nodes}: "
                    "start more SuperNodes or lower min-train-nodes"
                )
            log.info(
                "waiting for clients: %d connected and described, need min-train-nodes=%d",
                len(ready),
                self.settings.min_train_nodes,
            )
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _describe_new(self, grid: Grid, connected: list[int]) -> int:
        new = [n for n in connected if n not in self.nodes and n not in self.refused]
        if not new:
            return 0
        messages = [
            Message(
                RecordDict({P.CONFIG: ConfigRecord({P.NUM_EXPERTS: self.num_experts})}),
                message_type=DESCRIBE,
                dst_node_id=n,
            )
            for n in new
        ]
        traffic = sum(message_bytes(m) for m in messages)
        for reply in grid.send_and_receive(messages, timeout=self.settings.round_timeout):
            traffic += message_bytes(reply)
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ReplyError("describe", reply.error.reason or "error without a reason")
                self.refused[node] = validate_description(  # admitted by _admit
                    reply.content.config_records[P.CONFIG], self.num_experts, self.settings.max_declared_examples
                )
            except (ReplyError, KeyError) as err:
                log.warning("node %d could not describe itself and is left out: %s", node, err)
        return traffic

    def _admit(self, connected: list[int]) -> None:
        """Admit described nodes whose client id no *connected* node holds.

        A client id keys a fitness row, so two live nodes may not share one. A node that has
        gone is forgotten, so the same client reconnecting under a new node id (a restarted
        device without SuperNode authentication gets one) is admitted again, with its row.
        """
        live = set(connected)
        for node in [n for n in self.nodes if n not in live]:
            log.info("client %s left (node %d)", self.nodes.pop(node).client_id, node)
        for node in [n for n in self.refused if n not in live]:
            del self.refused[node]
        taken = {info.client_id: node for node, info in self.nodes.items()}
        for node in sorted(self.refused):
            info = self.refused[node]
            if info.client_id in taken:
                if node not in self._warned:  # once per node, not once per round
                    log.warning(
                        "node %d claims client-id %r, already used by connected node %d: left out",
                        node,
                        info.client_id,
                        taken[info.client_id],
                    )
                    self._warned.add(node)
                continue
            del self.refused[node]
            self.nodes[node] = info
            taken[info.client_id] = node
            log.info(
                "client %s joined (node %d, capacity %d, %d examples)",
                info.client_id,
                node,
                info.capacity,
                info.num_examples,
            )

    def sample(self, ready: list[int], server_round: int) -> list[int]:
        """Sample participants reproducibly: order by stable client id, draw from this round's own
        stream, so every method samples the same clients in every round."""
        ordered = sorted(ready, key=lambda n: self.nodes[n].client_id)
        size = min(len(ordered), max(self.settings.min_train_nodes, int(len(ordered) * self.settings.fraction_train)))
        rng = round_rng(self.settings.seed, SAMPLING_STREAM, server_round)
        picked = np.sort(rng.choice(len(ordered), size=size, replace=False))
        return [ordered[i] for i in picked]

    def assign(self, clients: list[ClientInfo], server_round: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The round's (N, E) assignment and the inputs it was decided from."""
        return self._decide(clients, server_round, ASSIGNMENT_STREAM)

    def _decide(self, clients: list[ClientInfo], server_round: int, stream: str) -> tuple[np.ndarray, dict[str, Any]]:
        s = self.settings
        ids = [c.client_id for c in clients]
        capacity = np.array([c.capacity for c in clients])
        scores = self.fitness.scores(ids)
        deficit = self.loads.deficit
        decision = {"capacity": capacity.tolist(), "fitness": scores.tolist(), "deficit": deficit.tolist()}
        if s.assignment == "static":
            return self._static_rows(ids), decision
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
        )
        return x, decision

    def _static_rows(self, ids: list[str]) -> np.ndarray:
        # The round-robin is laid over every client seen so far (in id order), so a client keeps the
        # same experts whichever subset of clients is sampled in a round.
        everyone = sorted({info.client_id: info for info in self.nodes.values()}.values(), key=lambda c: c.client_id)
        full = assign(np.zeros((len(everyone), self.num_experts)), np.array([c.capacity for c in everyone]), "static")
        row_of = {c.client_id: i for i, c in enumerate(everyone)}
        return full[[row_of[i] for i in ids]]

    # ------------------------------------------------------------------ learning + metrics
    def _learn_from(self, plan: RoundPlan, accepted: Mapping[int, Any]) -> None:
        """Q and deficits learn only from clients that finished the round with a valid reply."""
        for node in plan.completed:
            feedback = accepted[node]
            # Every held expert is scored: one the gate never selected scores 0 (FitnessTable.update),
            # so it cannot keep its optimistic initial value and be re-assigned to this client forever.
            self.fitness.update(
                self.nodes[node].client_id,
                plan.held(node),
                feedback.accuracy,
                feedback.loss,
                usage=feedback.update.usage,
            )
        if plan.completed:
            rows = [plan.row(n) for n in plan.completed]
            capacity = np.array([plan.clients[r].capacity for r in rows])
            self.loads.update(plan.assignment[rows], capacity)

    def _train_metrics(
        self, plan: RoundPlan, accepted: Mapping[int, Any], failed: int, rejected: int, timed_out: int
    ) -> dict[str, Any]:
        load = M.expert_load(plan.assignment)
        routed = (
            np.sum([accepted[n].update.usage for n in plan.completed], axis=0)
            if plan.completed
            else np.zeros(self.num_experts)
        )
        examples = [accepted[n].update.num_examples for n in plan.completed]
        losses = [accepted[n].train_loss for n in plan.completed]
        return {
            "num-sampled": len(plan.node_ids),
            "num-completed": len(plan.completed),
            "num-failed": failed,
            "num-rejected": rejected,
            "num-timed-out": timed_out,
            "train-loss": float(np.average(losses, weights=examples)) if examples else float("nan"),
            "expert-load": load.astype(float).tolist(),
            "load-variance": M.variance(load),
            "load-cv": M.coefficient_of_variation(load),
            "load-jain": M.jain_index(load),
            "routed-load": routed.astype(float).tolist(),
            "routed-load-variance": M.variance(routed),
            "routed-load-cv": M.coefficient_of_variation(routed),
            "routed-load-jain": M.jain_index(routed),
            "solve-seconds": plan.solve_seconds,
        }

    def _traffic_metrics(self, plan: RoundPlan) -> dict[str, float]:
        """Bytes per participant (mean over the round's sampled clients), and the ratio to what the
        same messages would have weighed carrying all E experts (exactly 1 for `dense`)."""
        t = plan.traffic
        trained, evaluated = max(len(plan.node_ids), 1), max(len(plan.evaluated), 1)
        per_client = {
            "bytes-down-train-per-client": t.down["train"] / trained,
            "bytes-down-eval-per-client": t.down["evaluate"] / evaluated,
            "bytes-up-train-per-client": t.up["train"] / trained,
            "bytes-up-eval-per-client": t.up["evaluate"] / evaluated,
        }
        return {
            **per_client,
            "bytes-down-per-client": per_client["bytes-down-train-per-client"]
            + per_client["bytes-down-eval-per-client"],
            "bytes-up-per-client": per_client["bytes-up-train-per-client"] + per_client["bytes-up-eval-per-client"],
            "bytes-total-per-client": sum(per_client.values()),
            "bytes-total-vs-dense": t.total / (t.total + t.dense_extra) if t.total else float("nan"),
            "bytes-discovery": float(t.discovery),
        }

    def _count_down(self, plan: RoundPlan, phase: str, messages: list[Message]) -> None:
        for message in messages:
            plan.traffic.down[phase] += message_bytes(message)
            sent = array_record_to_proto(message.content.array_records[P.ARRAYS]).ByteSize()
            plan.traffic.dense_extra += self.dense_record_bytes - sent

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
        self, node: int, arrays: Mapping[str, np.ndarray], server_round: int, config: ConfigRecord, message_type: str
    ) -> Message:
        # A fresh RecordDict per node: each client gets its own expert subset.
        round_config = ConfigRecord({**dict(config), P.SERVER_ROUND: server_round, P.RUN_TOKEN: self.run_token})
        return Message(
            RecordDict({P.ARRAYS: to_record(arrays), P.CONFIG: round_config}),
            message_type=message_type,
            dst_node_id=node,
        )

    def _require_plan(self) -> RoundPlan:
        if self.plan is None:
            raise RuntimeError("configure_train must run before aggregation/evaluation in a round")
        return self.plan


def _train_content(reply: Message) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    content = reply.content
    if P.ARRAYS not in content.array_records:
        raise ReplyError(P.ARRAYS, f"the reply carries no ArrayRecord {P.ARRAYS!r}")
    if P.METRICS not in content.metric_records:
        raise ReplyError(P.METRICS, f"the reply carries no MetricRecord {P.METRICS!r}")
    return to_arrays(content.array_records[P.ARRAYS]), dict(content.metric_records[P.METRICS])
