"""The training replies of a round: validated, aggregated into the global model, learned from.

A reply is accepted only when it is the answer of a participant, the first from that node, not
an error and valid (flexmoe_core.replies); nothing of a rejected reply reaches the model or Q.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from flexmoe_core import metrics as M
from flexmoe_core import protocol as P
from flexmoe_core.assignment import LoadTracker
from flexmoe_core.balancing import ExpertBias
from flexmoe_core.centered_clip import centered_clip
from flexmoe_core.config import Settings, dataset_shape
from flexmoe_core.fitness import FitnessTable
from flexmoe_core.replies import ClientInfo, ReplyError, TrainFeedback, validate_train_reply
from flexmoe_core.robust_aggregation import robust_aggregate, screen_updates
from server_app.planning import RoundPlan
from server_app.records import message_bytes, to_arrays

log = logging.getLogger("flexmoe.server")


@dataclass
class Outcome:
    """The round's training replies, sorted: accepted feedback by node, and the counts of the rest."""

    accepted: dict[int, TrainFeedback]
    failed: int = 0
    rejected: int = 0
    screened: int = 0  # accepted, then left out of the aggregate by the norm screen


def collect(
    plan: RoundPlan, replies: Iterable[Message], nodes: Mapping[int, ClientInfo], settings: Settings, server_round: int
) -> Outcome:
    """Validate every reply against what its node was sent; count the bytes that came back."""
    outcome = Outcome({})
    seen: set[int] = set()
    for reply in replies:
        node = reply.metadata.src_node_id
        if node not in plan.sent or node in seen:
            log.warning("round %d: ignoring an unexpected or repeated reply from node %d", server_round, node)
            continue
        seen.add(node)
        plan.replied.append(node)
        plan.traffic.up["train"] += message_bytes(reply)
        if reply.has_error():
            outcome.failed += 1
            log.warning("round %d: client %s failed: %s", server_round, nodes[node].client_id, reply.error.reason)
            continue
        try:
            arrays, metrics = _train_content(reply)
            outcome.accepted[node] = validate_train_reply(
                plan.sent[node],
                arrays,
                metrics,
                settings.num_experts,
                declared_examples=nodes[node].num_examples,
                num_classes=dataset_shape(settings.dataset).num_classes,
            )
            plan.traffic.count_dense_extra(reply)
        except ReplyError as err:
            outcome.rejected += 1
            log.warning(
                "round %d: rejected reply of client %s (node %d): %s", server_round, nodes[node].client_id, node, err
            )
    return outcome


def aggregate(
    global_state: Mapping[str, np.ndarray],
    plan: RoundPlan,
    outcome: Outcome,
    settings: Settings,
    references: dict[str, np.ndarray] | None = None,
    server_round: int = 0,
) -> dict[str, np.ndarray]:
    """The new global model from the accepted replies (under the configured robust rule).

    The norm screen (`norm-screen`) first leaves out the clients whose update is far longer than the
    round's others, logged with the client and the round and counted in `outcome.screened`; they still
    completed the round (their feedback is learnt from, as under every rule). centered-clip reads and
    updates `references` (the server's per-group history) in place, and logs every update its
    direction check dropped or down-weighted, with the client and the round.
    """
    s = settings
    updates = [outcome.accepted[n].update for n in plan.completed]
    labels = [plan.clients[plan.row(n)].client_id for n in plan.completed]
    screened = screen_updates(global_state, updates, s.norm_screen, labels)
    for left in screened.flags:
        log.warning(
            "round %d: left out client %s: its %s update's norm %.3g > norm-screen %.1f x the median (%.3g)",
            server_round,
            left.client,
            left.group,
            left.norm,
            s.norm_screen,
            left.limit,
        )
    outcome.screened = screened.dropped
    updates, labels = [updates[i] for i in screened.kept], [labels[i] for i in screened.kept]
    if s.robust_aggregation == "centered-clip":
        done = centered_clip(
            global_state,
            updates,
            s.num_experts,
            references,
            tau=s.clip_tau,
            clip_factor=s.clip_factor,
            momentum=s.clip_momentum,
            direction_threshold=s.direction_threshold,
            direction_action=s.direction_action,
            direction_reference=s.direction_reference,
            labels=labels,
        )
        for flag in done.flags:
            log.warning(
                "round %d: %s the %s update of client %s: cosine %.3f to the reference < direction-threshold %.2f",
                server_round,
                "dropped" if flag.action == "drop" else f"down-weighted (x{flag.factor:.2f})",
                flag.group,
                flag.client,
                flag.cosine,
                s.direction_threshold,
            )
        if references is not None:
            references.clear()
            references.update(done.references)
        return done.state
    return robust_aggregate(
        global_state,
        updates,
        s.num_experts,
        s.robust_aggregation,
        trim_fraction=s.trim_fraction,
        clip_factor=s.clip_factor,
    )


def learn(
    fitness: FitnessTable, loads: LoadTracker, plan: RoundPlan, outcome: Outcome, nodes: Mapping[int, ClientInfo]
) -> None:
    """Q and deficits learn only from clients that finished the round with a valid reply."""
    for node in plan.completed:
        feedback = outcome.accepted[node]
        # Every held expert is scored: one the gate never selected scores 0 (FitnessTable.update),
        # so it cannot keep its optimistic initial value and be re-assigned to this client forever.
        fitness.update(
            nodes[node].client_id, plan.held(node), feedback.accuracy, feedback.loss, usage=feedback.update.usage
        )
    if plan.completed:
        rows = [plan.row(n) for n in plan.completed]
        capacity = np.array([plan.clients[r].capacity for r in rows])
        loads.update(plan.assignment[rows], capacity)


def learn_bias(bias: ExpertBias, plan: RoundPlan, rate: float) -> None:
    """bias-greedy's step, from the load of the clients that completed the round (as the deficits)."""
    if plan.completed:
        bias.update(plan.assignment[[plan.row(n) for n in plan.completed]], rate)


def specialisation(plan: RoundPlan, outcome: Outcome, num_experts: int) -> dict[str, Any]:
    """Each expert's class mix this round: the entropy (bits) of the labels of its top-1 samples,
    summed over the completed clients that reported a histogram; nan where an expert saw none."""
    reported = [c for n in plan.completed if (c := outcome.accepted[n].class_counts) is not None]
    if not reported:
        return {"expert-class-entropy": [float("nan")] * num_experts, "class-entropy-mean": float("nan")}
    entropy = M.class_entropy(np.sum(reported, axis=0))
    seen = entropy[~np.isnan(entropy)]
    return {
        "expert-class-entropy": [float(v) for v in entropy],
        "class-entropy-mean": float(seen.mean()) if seen.size else float("nan"),
    }


def round_metrics(plan: RoundPlan, outcome: Outcome, num_experts: int) -> dict[str, Any]:
    accepted = outcome.accepted
    load = M.expert_load(plan.assignment)
    routed = (
        np.sum([accepted[n].update.usage for n in plan.completed], axis=0) if plan.completed else np.zeros(num_experts)
    )
    examples = [accepted[n].update.num_examples for n in plan.completed]
    losses = [accepted[n].train_loss for n in plan.completed]
    return {
        "num-sampled": len(plan.node_ids),
        "num-completed": len(plan.completed),
        "num-failed": outcome.failed,
        "num-rejected": outcome.rejected,
        "num-screened": outcome.screened,
        "num-timed-out": len(plan.node_ids) - len(accepted) - outcome.failed - outcome.rejected,
        "train-loss": float(np.average(losses, weights=examples)) if examples else float("nan"),
        "expert-load": load.astype(float).tolist(),
        "load-variance": M.variance(load),
        "load-cv": M.coefficient_of_variation(load),
        "load-jain": M.jain_index(load),
        "routed-load": routed.astype(float).tolist(),
        "routed-load-variance": M.variance(routed),
        "routed-load-cv": M.coefficient_of_variation(routed),
        "routed-load-jain": M.jain_index(routed),
        **specialisation(plan, outcome, num_experts),
        "solve-seconds": plan.solve_seconds,
    }


def _train_content(reply: Message) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    content = reply.content
    if P.ARRAYS not in content.array_records:
        raise ReplyError(P.ARRAYS, f"the reply carries no ArrayRecord {P.ARRAYS!r}")
    if P.METRICS not in content.metric_records:
        raise ReplyError(P.METRICS, f"the reply carries no MetricRecord {P.METRICS!r}")
    return to_arrays(content.array_records[P.ARRAYS]), dict(content.metric_records[P.METRICS])
