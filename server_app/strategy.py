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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flexmoe_core import metrics as M
from flexmoe_core.aggregation import aggregate, payload_bytes, select_experts
from flexmoe_core.assignment import LoadTracker, assign
from flexmoe_core.config import Settings
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.replies import ReplyError, validate_eval_reply, validate_train_reply

log = logging.getLogger("flexmoe.server")

DESCRIBE = f"{MessageType.QUERY}.describe"


@dataclass(frozen=True)
class ClientInfo:
    """What a node told us about itself: stable identity and how many experts it can hold."""

    client_id: str
    capacity: int
    num_examples: int


@dataclass
class RoundPlan:
    """What the server decided and sent this round; replies are checked against it."""

    node_ids: list[int]
    clients: list[ClientInfo]
    assignment: np.ndarray
    sent: dict[int, dict[str, np.ndarray]]
    solve_seconds: float
    discovery_seconds: float  # waiting for and describing new nodes: not server compute
    completed: list[int] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    rows: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = {node: i for i, node in enumerate(self.node_ids)}

    def row(self, node: int) -> int:
        return self.rows[node]

    def held(self, node: int) -> list[int]:
        return np.flatnonzero(self.assignment[self.rows[node]]).tolist()


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
        self.fitness = FitnessTable(settings.num_experts, mode=settings.fitness, ema_beta=settings.ema_beta,
                                    loss_alpha=settings.loss_alpha, initial=settings.initial_fitness)
        self.loads = LoadTracker(settings.num_experts)
        # One generator drives sampling and randomised assignment, so a checkpoint can restore it.
        self.rng = np.random.default_rng(settings.seed)
        self.nodes: dict[int, ClientInfo] = {}
        self.plan: RoundPlan | None = None
        self.dense_bytes = payload_bytes(self.global_state)

    # ------------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        s = self.settings
        log.info("FLEX-MoE strategy: assignment=%s solver=%s E=%d capacity=%s fitness=%s beta=%.2f "
                 "load-slack=%.2f deficit-weight=%.2f fraction-train=%.2f", s.assignment, s.solver,
                 s.num_experts, s.capacity_profile or s.capacity, s.fitness, s.ema_beta, s.load_slack,
                 s.deficit_weight, s.fraction_train)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_state = to_arrays(arrays)
        waited = time.perf_counter()
        node_ids = self.sample(self.wait_for_clients(grid))
        discovery_seconds = time.perf_counter() - waited
        clients = [self.nodes[n] for n in node_ids]
        start = time.perf_counter()
        x = self.assign(clients)
        solve_seconds = time.perf_counter() - start
        sent = {n: select_experts(self.global_state, np.flatnonzero(row).tolist()) for n, row in zip(node_ids, x)}
        self.plan = RoundPlan(node_ids, clients, x, sent, solve_seconds, discovery_seconds)
        return [self._message(n, sent[n], server_round, config, MessageType.TRAIN) for n in node_ids]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        plan = self._require_plan()
        accepted: dict[int, Any] = {}
        failed, rejected = 0, 0
        bytes_up: list[int] = []
        seen: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in plan.sent or node in seen:
                log.warning("round %d: ignoring an unexpected or repeated reply from node %d", server_round, node)
                continue
            seen.add(node)
            if reply.has_error():
                failed += 1
                log.warning("round %d: client %s failed: %s", server_round, self.nodes[node].client_id,
                            reply.error.reason)
                continue
            try:
                arrays, metrics = _train_content(reply)
                accepted[node] = validate_train_reply(plan.sent[node], arrays, metrics, self.num_experts)
                bytes_up.append(payload_bytes(arrays))
            except ReplyError as err:
                rejected += 1
                log.warning("round %d: rejected reply of client %s (node %d): %s", server_round,
                            self.nodes[node].client_id, node, err)
        timed_out = len(plan.node_ids) - len(accepted) - failed - rejected
        if timed_out:
            log.warning("round %d: %d client(s) did not reply within round-timeout=%.0fs", server_round,
                        timed_out, self.settings.round_timeout)
        plan.completed = [n for n in plan.node_ids if n in accepted]
        self.global_state = aggregate(self.global_state, [accepted[n].update for n in plan.completed],
                                      self.num_experts)
        self._learn_from(plan, accepted)
        plan.metrics = self._train_metrics(plan, accepted, failed, rejected, timed_out, bytes_up)
        return to_record(self.global_state), MetricRecord(plan.metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        # Personalised evaluation: each client that trained evaluates the new global extractor with
        # the experts it held this round and its own gate, on its local test split.
        plan = self._require_plan()
        state = to_arrays(arrays)
        messages = []
        for node in plan.completed:
            held = plan.held(node)
            messages.append(self._message(node, select_experts(state, held), server_round, config,
                                          MessageType.EVALUATE))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        outcomes = []
        for reply in replies:
            if reply.has_error():
                log.warning("round %d: evaluation failed on node %d: %s", server_round,
                            reply.metadata.src_node_id, reply.error.reason)
                continue
            try:
                outcomes.append(validate_eval_reply(dict(reply.content["metrics"])))
            except (ReplyError, KeyError) as err:
                log.warning("round %d: rejected evaluation of node %d: %s", server_round,
                            reply.metadata.src_node_id, err)
        if not outcomes:
            return None
        accuracies = np.array([o.accuracy for o in outcomes])
        examples = np.array([o.num_examples for o in outcomes], dtype=float)
        summary = M.accuracy_summary(accuracies, examples)
        return MetricRecord({
            "accuracy": float(summary["mean"]),
            "accuracy-min": float(summary["min"]),
            "accuracy-p10": float(summary["p10"]),
            "accuracy-median": float(summary["median"]),
            "eval-loss": float(np.average([o.loss for o in outcomes], weights=np.maximum(examples, 1e-12))),
            "num-evaluated": len(outcomes),
        })

    # ------------------------------------------------------------------ clients
    def wait_for_clients(self, grid: Grid) -> list[int]:
        """Describe newly connected nodes; wait (bounded) until `min-train-nodes` are known."""
        deadline = time.monotonic() + self.settings.node_wait_timeout
        while True:
            connected = sorted(grid.get_node_ids())
            self._describe_new(grid, connected)
            ready = [n for n in connected if n in self.nodes]
            if len(ready) >= self.settings.min_train_nodes:
                return ready
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"only {len(ready)} usable client(s) connected after node-wait-timeout="
                    f"{self.settings.node_wait_timeout:.0f}s, min-train-nodes={self.settings.min_train_nodes}: "
                    "start more SuperNodes or lower min-train-nodes")
            log.info("waiting for clients: %d connected and described, need min-train-nodes=%d",
                     len(ready), self.settings.min_train_nodes)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _describe_new(self, grid: Grid, connected: list[int]) -> None:
        new = [n for n in connected if n not in self.nodes]
        if not new:
            return
        messages = [Message(RecordDict({"config": ConfigRecord({"num-experts": self.num_experts})}),
                            message_type=DESCRIBE, dst_node_id=n) for n in new]
        taken = {info.client_id for info in self.nodes.values()}
        for reply in grid.send_and_receive(messages, timeout=self.settings.round_timeout):
            node = reply.metadata.src_node_id
            try:
                info = _client_info(reply, self.num_experts)
            except (ReplyError, KeyError) as err:
                log.warning("node %d could not describe itself and is left out: %s", node, err)
                continue
            if info.client_id in taken:
                log.warning("node %d claims client-id %r, already used by a connected node: left out",
                            node, info.client_id)
                continue
            taken.add(info.client_id)
            self.nodes[node] = info
            log.info("client %s joined (node %d, capacity %d, %d examples)", info.client_id, node,
                     info.capacity, info.num_examples)

    def sample(self, ready: list[int]) -> list[int]:
        """Sample participants reproducibly: order by stable client id, draw with the seeded rng."""
        ordered = sorted(ready, key=lambda n: self.nodes[n].client_id)
        size = min(len(ordered), max(self.settings.min_train_nodes,
                                     int(len(ordered) * self.settings.fraction_train)))
        picked = np.sort(self.rng.choice(len(ordered), size=size, replace=False))
        return [ordered[i] for i in picked]

    def assign(self, clients: list[ClientInfo]) -> np.ndarray:
        s = self.settings
        ids = [c.client_id for c in clients]
        capacity = np.array([c.capacity for c in clients])
        if s.assignment == "static":
            return self._static_rows(ids)
        scores = self.fitness.scores(ids)
        return assign(scores, capacity, s.assignment, rng=self.rng, load_slack=s.load_slack,
                      deficit=self.loads.deficit, deficit_weight=s.deficit_weight, solver=s.solver)

    def _static_rows(self, ids: list[str]) -> np.ndarray:
        # The round-robin is laid over every client seen so far (in id order), so a client keeps the
        # same experts whichever subset of clients is sampled in a round.
        everyone = sorted({info.client_id: info for info in self.nodes.values()}.values(),
                          key=lambda c: c.client_id)
        full = assign(np.zeros((len(everyone), self.num_experts)), np.array([c.capacity for c in everyone]),
                      "static")
        row_of = {c.client_id: i for i, c in enumerate(everyone)}
        return full[[row_of[i] for i in ids]]

    # ------------------------------------------------------------------ learning + metrics
    def _learn_from(self, plan: RoundPlan, accepted: Mapping[int, Any]) -> None:
        """Q and deficits learn only from clients that finished the round with a valid reply."""
        for node in plan.completed:
            feedback = accepted[node]
            # Only experts that actually received samples were measured; an expert the gate never
            # picked this round has no accuracy or loss to learn from.
            measured = [e for e in plan.held(node) if feedback.update.usage[e] > 0]
            self.fitness.update(self.nodes[node].client_id, measured, feedback.accuracy, feedback.loss)
        if plan.completed:
            rows = [plan.row(n) for n in plan.completed]
            capacity = np.array([plan.clients[r].capacity for r in rows])
            self.loads.update(plan.assignment[rows], capacity)

    def _train_metrics(self, plan: RoundPlan, accepted: Mapping[int, Any], failed: int, rejected: int,
                       timed_out: int, bytes_up: list[int]) -> dict[str, Any]:
        load = M.expert_load(plan.assignment)
        routed = np.sum([accepted[n].update.usage for n in plan.completed], axis=0) if plan.completed \
            else np.zeros(self.num_experts)
        examples = [accepted[n].update.num_examples for n in plan.completed]
        losses = [accepted[n].train_loss for n in plan.completed]
        bytes_down = [payload_bytes(arrays) for arrays in plan.sent.values()]
        mean_down = float(np.mean(bytes_down))
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
            "bytes-down-per-client": mean_down,
            "bytes-up-per-client": float(np.mean(bytes_up)) if bytes_up else 0.0,
            "bytes-down-vs-dense": mean_down / self.dense_bytes,
            "solve-seconds": plan.solve_seconds,
            "discovery-seconds": plan.discovery_seconds,
        }

    def assignment_record(self, server_round: int) -> dict[str, Any]:
        """The round's assignment by stable client id (for results and the heatmap)."""
        plan = self._require_plan()
        return {
            "round": server_round,
            "clients": [c.client_id for c in plan.clients],
            "held": [np.flatnonzero(row).tolist() for row in plan.assignment],
            "completed": [self.nodes[n].client_id for n in plan.completed],
        }

    # ------------------------------------------------------------------ helpers
    def _message(self, node: int, arrays: Mapping[str, np.ndarray], server_round: int, config: ConfigRecord,
                 message_type: str) -> Message:
        # A fresh RecordDict per node: each client gets its own expert subset.
        round_config = ConfigRecord({**dict(config), "server-round": server_round})
        return Message(RecordDict({"arrays": to_record(arrays), "config": round_config}),
                       message_type=message_type, dst_node_id=node)

    def _require_plan(self) -> RoundPlan:
        if self.plan is None:
            raise RuntimeError("configure_train must run before aggregation/evaluation in a round")
        return self.plan


def _train_content(reply: Message) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    content = reply.content
    if "arrays" not in content.array_records:
        raise ReplyError("arrays", "the reply carries no ArrayRecord 'arrays'")
    if "metrics" not in content.metric_records:
        raise ReplyError("metrics", "the reply carries no MetricRecord 'metrics'")
    return to_arrays(content["arrays"]), dict(content["metrics"])


def _client_info(reply: Message, num_experts: int) -> ClientInfo:
    if reply.has_error():
        raise ReplyError("describe", reply.error.reason)
    config = reply.content["config"]
    client_id = config.get("client-id")
    capacity = config.get("capacity")
    num_examples = config.get("num-examples", 0)
    if not isinstance(client_id, str) or not client_id:
        raise ReplyError("client-id", f"must be a non-empty string, got {client_id!r}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= num_experts:
        raise ReplyError("capacity", f"must be an integer in 1..num-experts={num_experts}, got {capacity!r}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ReplyError("num-examples", f"must be a non-negative integer, got {num_examples!r}")
    return ClientInfo(client_id, capacity, num_examples)
