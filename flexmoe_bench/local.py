"""The `local` reference: every client trains its own model alone, with no federation.

The question it answers is whether federating helps a client at all (issue "When does balance
matter?", part 2). It is not an assignment rule and nothing is exchanged, so it runs in this
process instead of through Flower, but on exactly what the federated runs use: the same
partitions (client_app.app.local_data), the same evaluation cohort (flexmoe_core.seeds.fixed_cohort),
the model `dense` trains (extractor and all E experts, from the same initial global state and
the client's own initial gate), the same per-round data order and optimiser, and `local-epochs`
epochs per round for `num-server-rounds` rounds. Every cohort client is evaluated on its own test
split after every round, so its curves line up with the federated runs' rounds.

Clients train one after another, so `metrics.json` (one row per round over the cohort, with the
federated runs' accuracy definitions) is written once all are done; the load metrics of the
federated runs do not exist here and are absent, and no byte is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flexmoe_core import metrics as M
from flexmoe_core.config import NodeSettings, Settings
from flexmoe_core.files import atomic_write_json
from flexmoe_core.model import MoEClassifier, build_global_state, pick_device
from flexmoe_core.seeds import derive_seed, fixed_cohort
from flexmoe_core.train import evaluate, train_local

METHOD = "local"
# The model `local` trains is the dense one: all E experts, the full gate.
MODEL_OF = "dense"


def settings_of(run_config: dict[str, Any], defaults: dict[str, Any]) -> Settings:
    """The run's Settings, validated as the dense run of the same cell (the model local trains)."""
    return Settings.from_run_config({**defaults, **run_config, "assignment": MODEL_OF})


def cohort(settings: Settings, num_clients: int) -> list[int]:
    """Partition ids evaluated: the federated runs' fixed cohort, or every client without one."""
    ids = [f"partition-{p}" for p in range(num_clients)]
    chosen = fixed_cohort(settings.seed, ids, settings.eval_cohort) if settings.eval_cohort else ids
    return sorted(int(c.removeprefix("partition-")) for c in chosen)


def client_curve(settings: Settings, partition: int, num_clients: int) -> list[tuple[float, int, float]]:
    """(accuracy, test examples, loss) of one client's own model after each round of training alone."""
    from client_app.app import initial_gate_seed, local_data  # the client's own data and gate seed

    node = NodeSettings.from_node_config({"partition-id": partition, "num-partitions": num_clients}, settings, 0)
    train_set, test_set = local_data(settings, node)
    experts = list(range(settings.num_experts))
    model = MoEClassifier(
        settings.num_experts, experts, gate_seed=initial_gate_seed(settings, node), **settings.model_kwargs()
    )
    model.load_shared_state(build_global_state(settings.num_experts, seed=settings.seed, **settings.model_kwargs()))
    device = pick_device()
    curve = []
    for server_round in range(1, settings.num_server_rounds + 1):
        if len(train_set):  # a client with no training data keeps its initial model
            train_local(
                model,
                train_set,
                epochs=settings.local_epochs,
                batch_size=settings.batch_size,
                lr=settings.lr,
                seed=derive_seed(settings.seed, "data-order", node.client_id, server_round),
                device=device,
            )
        result = evaluate(model, test_set, batch_size=settings.batch_size, device=device)
        curve.append((result.accuracy, result.num_examples, result.loss))
    return curve


def round_rows(curves: list[list[tuple[float, int, float]]], seconds: list[float]) -> list[dict[str, Any]]:
    """One metrics row per round over the cohort, with the federated runs' accuracy definitions."""
    rows = []
    for r, round_seconds in enumerate(seconds):
        acc = np.array([c[r][0] for c in curves])
        examples = np.array([c[r][1] for c in curves], dtype=float)
        summary = M.accuracy_summary(acc, examples)
        loss = float(np.average([c[r][2] for c in curves], weights=np.maximum(examples, 1e-12)))
        rows.append(
            {
                "round": r + 1,
                "accuracy": summary["mean"],
                "accuracy-min": summary["min"],
                "accuracy-p10": summary["p10"],
                "accuracy-median": summary["median"],
                "eval-loss": loss,
                "num-evaluated": len(curves),
                "bytes-total-per-client": 0.0,
                "round-seconds": round_seconds,
                "server-seconds": 0.0,
            }
        )
    return rows


def run(
    settings: Settings,
    run_config: dict[str, Any],
    num_clients: int,
    results_dir: Path,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every cohort client alone; write config.json, metrics.json and an empty assignments.json."""
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / "config.json", {**run_config, "assignment": METHOD})
    atomic_write_json(results_dir / "assignments.json", [])
    members = cohort(settings, num_clients)
    curves, started = [], time.perf_counter()
    for done, partition in enumerate(members, 1):
        curves.append(client_curve(settings, partition, num_clients))
        elapsed = time.perf_counter() - started
        progress(f"    local: partition-{partition} trained alone ({done}/{len(members)}, {elapsed:.0f}s)")
    # Clients train one after another; a round's time is its share of the whole.
    per_round = (time.perf_counter() - started) / settings.num_server_rounds
    rows = round_rows(curves, [per_round] * settings.num_server_rounds)
    atomic_write_json(results_dir / "metrics.json", rows)
    return rows
