"""Personalised evaluation: who is evaluated with which experts, and the accuracy over their replies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Message

from flexmoe_core import metrics as M
from flexmoe_core import protocol as P
from flexmoe_core.config import Settings
from flexmoe_core.remedies import adapted_outcome
from flexmoe_core.replies import ClientInfo, ReplyError, validate_eval_reply
from flexmoe_core.seeds import fixed_cohort
from server_app.planning import RoundPlan
from server_app.records import message_bytes

log = logging.getLogger("flexmoe.server")

EVAL_ASSIGNMENT_STREAM = "eval-assignment"

# (clients, round, stream) -> the (N, E) assignment the method's own rule gives them now.
Decide = Callable[[list[ClientInfo], int, str], np.ndarray]


def targets(
    settings: Settings,
    plan: RoundPlan,
    nodes: Mapping[int, ClientInfo],
    cohort: list[str],
    decide: Decide,
    server_round: int,
) -> list[tuple[int, list[int]]]:
    """Who is evaluated, with which experts.

    By default the clients that trained this round, with the experts they held. Under partial
    participation those change every round, so accuracy curves would compare different clients;
    with `eval-cohort = M` a fixed cohort of M clients (`cohort`, drawn once from the seed) is
    evaluated every round instead, each with the experts the method's own rule gives the cohort now
    (as if it were the round's participants; nothing is learned from it) and its latest gate.
    """
    if not settings.eval_cohort:
        # A round that accepted no update still evaluates the global model it keeps, on the
        # participants that answered, so a collapse under attack shows as a number, not a gap.
        evaluated = plan.completed or plan.replied
        return [(node, plan.held(node)) for node in evaluated]
    by_id = {info.client_id: node for node, info in nodes.items()}
    members = [by_id[c] for c in cohort if c in by_id]
    x = decide([nodes[n] for n in members], server_round, EVAL_ASSIGNMENT_STREAM)
    return [(node, np.flatnonzero(row).tolist()) for node, row in zip(members, x)]


def draw_cohort(settings: Settings, nodes: Mapping[int, ClientInfo]) -> list[str]:
    """The fixed evaluation cohort: `eval-cohort` client ids drawn from the seed among those known."""
    cohort = fixed_cohort(settings.seed, [info.client_id for info in nodes.values()], settings.eval_cohort)
    log.info("evaluation cohort (fixed for the run): %s", ", ".join(cohort))
    return cohort


def accuracy_metrics(
    plan: RoundPlan,
    replies: Iterable[Message],
    server_round: int,
    attackers: Collection[str] = (),
    client_of: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Accuracy over the valid evaluation replies (example-weighted, with its spread over clients).

    With `attackers` (the attack simulation's client ids; `client_of` maps a node to its client id),
    also `accuracy-honest`: the same mean over the other clients only. An attacker is evaluated like
    anyone, but a defence that leaves its updates out cannot be expected to serve it; what a defence
    protects is the honest clients' accuracy, read against theirs in a clean run.
    """
    outcomes, adapted, honest = [], [], []
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
            metrics = dict(reply.content.metric_records[P.METRICS])
            outcome = validate_eval_reply(metrics)
            pair = adapted_outcome(metrics)  # remedy `adapt-steps`: None unless the client adapted
            outcomes.append(outcome)
            adapted.append(pair)
            honest.append((client_of or {}).get(reply.metadata.src_node_id) not in attackers)
        except (ReplyError, KeyError) as err:
            log.warning("round %d: rejected evaluation of node %d: %s", server_round, reply.metadata.src_node_id, err)
    if not outcomes:
        return {}
    accuracies = np.array([o.accuracy for o in outcomes])
    examples = np.array([o.num_examples for o in outcomes], dtype=float)
    summary = M.accuracy_summary(accuracies, examples)
    extra: dict[str, float] = {}
    tuned_accuracies = [t[0] for t in adapted if t is not None]
    if len(tuned_accuracies) == len(outcomes):  # reported apart: `accuracy` stays the un-adapted model's
        tuned = M.accuracy_summary(np.array(tuned_accuracies), examples)
        extra = {
            "accuracy-adapted": float(tuned["mean"]),
            "accuracy-adapted-min": float(tuned["min"]),
            "accuracy-adapted-p10": float(tuned["p10"]),
            "accuracy-adapted-median": float(tuned["median"]),
        }
    keep = np.array(honest)
    if attackers and keep.any():
        extra["accuracy-honest"] = float(M.accuracy_summary(accuracies[keep], examples[keep])["mean"])
    return {
        "accuracy": float(summary["mean"]),
        "accuracy-min": float(summary["min"]),
        "accuracy-p10": float(summary["p10"]),
        "accuracy-median": float(summary["median"]),
        "eval-loss": float(np.average([o.loss for o in outcomes], weights=np.maximum(examples, 1e-12))),
        "num-evaluated": len(outcomes),
        **extra,
    }
