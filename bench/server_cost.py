"""Benchmark of the server's own work per round: what the FLEX-MoE ServerApp adds to a round.

How to run (from the repository root)::

    .venv/bin/python bench/server_cost.py                        # 10, 100, 1,000 clients, 20 per round
    .venv/bin/python bench/server_cost.py --clients 10 --rounds 10 --out results/bench/server_cost.json
    # the study's main-grid cell (main-flexmoe-fashion-mnist-dirichlet-s1)
    .venv/bin/python bench/server_cost.py --clients 10 --set max-samples-per-client=400 --set seed=1

The real round loop (`server_app.app.FederatedRun` with the real strategy, model and results
writer) runs against an in-process grid of simulated clients. A simulated client answers at
once with a well-formed reply (its arrays are the sent ones plus a small perturbation, its
feedback plausible), so the time measured is the server's alone: sampling, the assignment
solve, message building, byte accounting, reply validation, aggregation, fitness and load
updates, evaluation planning (the run's `server-seconds`, as real runs record it) and the
results and checkpoint writing after each round (`persist`, outside `server-seconds`).

Server share: server time over the round time it is part of. The clients' part is measured in
the same run: one real client of the configuration trains (local epochs on its samples) and
evaluates, on one intra-op thread (median of 3); the simulation engine on this 2-core machine runs
one ClientApp per core, so a round's client time is taken as participants x that time / `--parallel`
(default 2). A real run's own `server-seconds / round-seconds` is the check on this estimate (see
docs/benchmarks.md).

Results: a table on stdout and JSON (default results/bench/server_cost.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from flexmoe_core import protocol as P  # noqa: E402
from flexmoe_core.config import Settings  # noqa: E402
from server_app.app import FederatedRun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class SimulatedClient:
    """Answers describe / train / evaluate at once with valid replies (no training)."""

    def __init__(self, index: int, capacity: int, num_examples: int, num_experts: int) -> None:
        self.client_id = f"partition-{index}"
        self.capacity, self.num_examples, self.num_experts = capacity, num_examples, num_experts
        self.rng = np.random.default_rng(index)

    def __call__(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        if kind.startswith("query"):
            info = {P.CLIENT_ID: self.client_id, P.CAPACITY: self.capacity, P.NUM_EXAMPLES: self.num_examples}
            return Message(RecordDict({P.CONFIG: ConfigRecord(info)}), reply_to=msg)
        if kind == "train":
            return self._train(msg)
        metrics = {P.NUM_EXAMPLES: self.num_examples // 4, P.ACCURACY: float(self.rng.uniform(0.5, 0.9)), P.LOSS: 0.5}
        return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)

    def _train(self, msg: Message) -> Message:
        sent = msg.content.array_records[P.ARRAYS]
        trained = {k: Array((v.numpy() + np.float32(1e-3)).astype(np.float32)) for k, v in sent.items()}
        held = sorted(P.held_experts(list(sent.keys())))
        usage = np.zeros(self.num_experts)
        usage[held] = self.num_examples / len(held)
        accuracy = np.zeros(self.num_experts)
        accuracy[held] = self.rng.uniform(0.3, 0.9, len(held))
        metrics = {
            P.NUM_EXAMPLES: self.num_examples,
            P.TRAIN_LOSS: 0.7,
            P.EXPERT_USAGE: usage.tolist(),
            P.EXPERT_ACCURACY: accuracy.tolist(),
            P.EXPERT_LOSS: (1.0 - accuracy).tolist(),
        }
        return Message(RecordDict({P.ARRAYS: ArrayRecord(trained), P.METRICS: MetricRecord(metrics)}), reply_to=msg)


class SimulatedGrid:
    """Duck-typed Grid over in-process simulated clients."""

    def __init__(self, clients: dict[int, SimulatedClient]) -> None:
        self.clients = clients

    def get_node_ids(self) -> list[int]:
        return list(self.clients)

    def send_and_receive(self, messages, *, timeout=None):
        return [self.clients[m.metadata.dst_node_id](m) for m in messages]


def set_task_identity() -> None:
    """Flower 1.42 stamps every Message with the running task's identity, which a SuperExec sets;
    in-process there is none, so give the bench one (as tests/conftest.py does)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def settings_for(config: dict[str, Any], clients: int, per_round: int, rounds: int, results: Path) -> Settings:
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    run_config = {
        **defaults,
        **config,
        "num-server-rounds": rounds,
        "fraction-train": min(1.0, per_round / clients),
        "min-train-nodes": min(per_round, clients),
        "results-dir": str(results),
    }
    return Settings.from_run_config(run_config)


def measure_server(settings: Settings, clients: int) -> dict[str, Any]:
    """Run the real round loop against simulated clients; per-round server and persist seconds."""
    examples = int(settings.max_samples_per_client * (1 - settings.test_fraction))
    grid = SimulatedGrid(
        {1000 + i: SimulatedClient(i, settings.capacity, examples, settings.num_experts) for i in range(clients)}
    )
    run = FederatedRun(settings, grid)  # type: ignore[arg-type]
    persist: list[float] = []
    inner = run._persist

    def timed_persist(server_round: int) -> None:
        start = time.perf_counter()
        inner(server_round)
        persist.append(time.perf_counter() - start)

    run._persist = timed_persist  # type: ignore[method-assign]
    run.execute()
    rows = run.rounds
    return {
        "discovery-seconds-round-1": rows[0]["discovery-seconds"],
        "server-seconds": [r["server-seconds"] for r in rows],
        "solve-seconds": [r["solve-seconds"] for r in rows],
        "persist-seconds": persist,
        "participants": rows[-1]["num-sampled"],
    }


def measure_client(settings: Settings, repeats: int = 3) -> float:
    """Wall seconds of one real client's training (local epochs) and evaluation, on one intra-op
    thread as each simulated ClientApp gets here; the median of `repeats` (the machine is shared)."""
    import torch

    from client_app.app import local_data
    from flexmoe_core.config import NodeSettings
    from flexmoe_core.model import MoEClassifier
    from flexmoe_core.train import evaluate, train_local

    node = NodeSettings.from_node_config({"partition-id": 0, "num-partitions": 10}, settings, 0)
    train_set, test_set = local_data(settings, node)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds = []
    try:
        for _ in range(repeats):
            model = MoEClassifier(settings.num_experts, list(range(settings.capacity)), **settings.model_kwargs())
            start = time.perf_counter()
            train_local(
                model, train_set, epochs=settings.local_epochs, batch_size=settings.batch_size, lr=settings.lr, seed=0
            )
            evaluate(model, test_set, batch_size=settings.batch_size)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(seconds)


def steady(values: list[float]) -> float:
    """Median over rounds after the first (round 1 compiles the cvxpy problem and warms caches)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/main.toml", help="run config TOML (default: the main job's)")
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated federation sizes")
    parser.add_argument("--per-round", type=int, default=20, help="participants per round (all if fewer)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=2, help="clients the engine trains at once (one per core)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override (TOML)")
    parser.add_argument("--out", default="results/bench/server_cost.json")
    args = parser.parse_args(argv)
    set_task_identity()
    config = tomllib.loads((ROOT / args.config).read_text())
    config.update(tomllib.loads("\n".join(args.set)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = settings_for(config, 10, args.per_round, 1, Path(tmp) / "probe")
        client_seconds = measure_client(probe)
        for n in [int(c) for c in args.clients.split(",")]:
            settings = settings_for(config, n, args.per_round, args.rounds, Path(tmp) / f"n{n}")
            server = measure_server(settings, n)
            server_s, persist_s = steady(server["server-seconds"]), steady(server["persist-seconds"])
            clients_s = server["participants"] * client_seconds / args.parallel
            rows.append(
                {
                    "clients": n,
                    "participants": server["participants"],
                    "server-ms": 1000 * server_s,
                    "solve-ms": 1000 * steady(server["solve-seconds"]),
                    "persist-ms": 1000 * persist_s,
                    "client-seconds": clients_s,
                    "server-share": server_s / (server_s + clients_s),
                    "server-share-with-persist": (server_s + persist_s) / (server_s + persist_s + clients_s),
                    "discovery-seconds-round-1": server["discovery-seconds-round-1"],
                    **{f"raw-{k}": v for k, v in server.items() if isinstance(v, list)},
                }
            )
    header = f"{'clients':>7} {'per round':>9} {'server ms':>9} {'solve ms':>8} {'persist ms':>10} "
    header += f"{'clients s':>9} {'share':>6} {'+persist':>8} {'discovery s':>11}"
    print(f"config {args.config} {' '.join(args.set)}; one client's train + eval: {client_seconds:.2f} s")
    print(header)
    for r in rows:
        print(
            f"{r['clients']:>7} {r['participants']:>9} {r['server-ms']:>9.1f} {r['solve-ms']:>8.1f} "
            f"{r['persist-ms']:>10.1f} {r['client-seconds']:>9.2f} {100 * r['server-share']:>5.2f}% "
            f"{100 * r['server-share-with-persist']:>7.2f}% {r['discovery-seconds-round-1']:>11.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    payload = {
        "config": args.config,
        "set": args.set,
        "client-seconds-one": client_seconds,
        "machine": machine,
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
