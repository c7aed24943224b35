"""The price of holding k of E experts, measured (issue #25, part 1): `python -m flexmoe_bench.diagnosis`.

Runs one cell with the real code path (the ServerApp's round loop `server_app.app.FederatedRun` and
the ClientApp's handlers, in this process behind a recording Grid: no Ray, no SuperLink) and
measures the mechanism behind a sparse model's gap:

* per expert and round: its holders (participants that completed the round holding it), the
  samples routed to it, the class mix it was trained on, and its accuracy on a fixed balanced
  probe set (drawn from the dataset's test split with `--probe-seed`) before the round (the global
  expert the round started from) and after it (the aggregate), overall and per class: the
  per-round forgetting, and whether it falls on the classes the round's holders did not have;
* per client of the evaluation cohort (every client when `eval-cohort` = 0), after the last round:
  the accuracy with the experts it holds, with the best k experts in hindsight (every k-subset of
  the E experts under its own gate, the subset chosen on its own test split, so an upper bound),
  with all E experts under its gate (no capacity limit, same trained model), and the accuracy the
  same client reaches in a `dense` run of the same cell (`--no-dense` skips that second run).

The class mix comes in two forms: `class-mix-top1` is the `expert-class-counts` the clients
report (the labels of the samples whose top-1 held expert it was), `class-mix-routed` the holders'
training-label histograms weighted by the share of their samples routed to the expert (usage /
examples; with k = r every held expert sees every sample, so this is what trained it). The classes
its holders "had" in a round are those with at least `--seen-share` of that mix; the probe's
per-class drop is averaged over them and over the others (`drop-seen-classes`, `drop-unseen-classes`).

Writes to `--out`: diagnosis.json (everything, with the run config), experts.csv, clients.csv,
forgetting.png, class-drop.png, clients.png, and the run's own results under run/ (and dense/).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message, RecordDict
from torch import nn

from client_app import app as client
from flexmoe_bench.experiment import APP_DIR, load_overrides
from flexmoe_bench.study import app_defaults
from flexmoe_core import protocol as P
from flexmoe_core.config import NodeSettings, Settings
from flexmoe_core.data import load_dataset, spec_of, to_float_images
from flexmoe_core.files import atomic_write_json
from flexmoe_core.model import MoEClassifier
from server_app.app import FederatedRun

# --------------------------------------------------------------------------- an in-process federation


@dataclass
class Client:
    """One simulated node: its Flower context, and what it was sent and answered, by round."""

    node_id: int
    context: Context
    sent_eval: dict[int, list[int]] = field(default_factory=dict)  # round -> experts held at evaluation
    eval_accuracy: dict[int, float] = field(default_factory=dict)  # round -> reported accuracy
    train: dict[int, dict[str, Any]] = field(default_factory=dict)  # round -> train reply metrics


class RecordingGrid:
    """Duck-typed Flower Grid: hands each message to the ClientApp's handler in this process (an
    exception becomes an error reply, as Flower does) and keeps what it needs to diagnose."""

    def __init__(self, clients: Mapping[int, Client]) -> None:
        self.clients = dict(clients)

    def get_node_ids(self) -> list[int]:
        return list(self.clients)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        handlers = {"query.describe": client.describe, "train": client.train, "evaluate": client.evaluate}
        replies = []
        for message in messages:
            node = self.clients[message.metadata.dst_node_id]
            kind = message.metadata.message_type
            try:
                reply = handlers[kind](message, node.context)
            except Exception as err:  # noqa: BLE001 - mirrors Flower's behaviour for a raising ClientApp
                reply = Message(Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=message)
            replies.append(reply)
            if reply.has_error():
                continue
            config: dict[str, Any] = dict(message.content.config_records.get(P.CONFIG, {}))
            server_round = _as_int(config.get(P.SERVER_ROUND, 0))
            metrics = dict(reply.content.metric_records[P.METRICS]) if P.METRICS in reply.content.metric_records else {}
            if kind == "train":
                node.train[server_round] = metrics
            elif kind == "evaluate":
                node.sent_eval[server_round] = P.held_experts(message.content.array_records[P.ARRAYS].keys())
                node.eval_accuracy[server_round] = float(metrics[P.ACCURACY])  # type: ignore[arg-type]
        return replies


@contextmanager
def flower_identity() -> Iterator[None]:
    """Messages need a run/task identity, which Flower sets only inside its own processes."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    try:
        yield
    finally:
        TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None  # type: ignore[assignment]


def _as_int(value: Any) -> int:
    return int(value)


class SnapshotRun(FederatedRun):
    """The ServerApp's round loop, keeping the global model as it was after every round."""

    def __init__(self, settings: Settings, grid: Any) -> None:
        super().__init__(settings, grid)
        self.snapshots: list[dict[str, np.ndarray]] = [_copy(self.strategy.global_state)]

    def _round(self, server_round: int) -> dict[str, Any]:
        row = super()._round(server_round)
        self.snapshots.append(_copy(self.strategy.global_state))
        return row


def _copy(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in state.items()}


def federate(config: Mapping[str, Any], num_clients: int) -> tuple[SnapshotRun, dict[int, Client]]:
    """Run the cell to the end in this process; the run (with its snapshots) and the clients."""
    settings = Settings.from_run_config(dict(config))
    clients = {
        1000 + i: Client(
            1000 + i,
            Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_clients},
                state=RecordDict(),
                run_config=dict(config),
            ),
        )
        for i in range(num_clients)
    }
    run = SnapshotRun(settings, RecordingGrid(clients))
    run.execute()
    return run, clients


# --------------------------------------------------------------------------- probe and experts


def probe_set(settings: Settings, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` test-split images of every class (fewer where a class has fewer), drawn with `seed`."""
    data = load_dataset(settings.dataset, settings.data_dir or None, settings.allow_download)
    rng = np.random.default_rng(seed)
    index = np.concatenate(
        [
            rng.choice(
                np.flatnonzero(data.test_y == c), size=min(per_class, int(np.sum(data.test_y == c))), replace=False
            )
            for c in range(data.num_classes)
        ]
    )
    index.sort()
    images = to_float_images(data.test_x[index], spec_of(settings.dataset))
    return images, torch.from_numpy(np.asarray(data.test_y[index], dtype=np.int64))


def full_model(settings: Settings, state: Mapping[str, np.ndarray], gate_seed: int = 0) -> MoEClassifier:
    model = MoEClassifier(
        settings.num_experts, list(range(settings.num_experts)), gate_seed=gate_seed, **settings.model_kwargs()
    )
    model.load_shared_state(state)
    return model.eval()


@torch.no_grad()
def expert_probe_accuracy(
    settings: Settings, state: Mapping[str, np.ndarray], images: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Each expert's OWN accuracy on the probe set, overall (E,) and per class (E, C), under `state`'s
    extractor (the gate plays no part in an expert's own logits)."""
    model = full_model(settings, state)
    logits = torch.cat([model.forward_with_routing(x)[1].expert_logits for x in images.split(512)])  # (N, E, C)
    correct = (logits.argmax(dim=2) == labels[:, None]).double().numpy()  # (N, E)
    classes = logits.shape[2]
    per_class = np.stack([correct[labels.numpy() == c].mean(axis=0) for c in range(classes)], axis=1)  # (E, C)
    return correct.mean(axis=0), per_class


# --------------------------------------------------------------------------- per-client hindsight


@torch.no_grad()
def subset_accuracies(
    settings: Settings,
    state: Mapping[str, np.ndarray],
    gate: Mapping[str, np.ndarray],
    images: torch.Tensor,
    labels: torch.Tensor,
    subsets: Iterable[tuple[int, ...]],
) -> dict[tuple[int, ...], float]:
    """The client's accuracy with each expert subset under its own gate, through the model's own
    forward (the extractor runs once; its features are fed to models holding each subset)."""
    base = full_model(settings, state)
    features = base.extractor(images)
    out = {}
    for subset in subsets:
        model = MoEClassifier(settings.num_experts, list(subset), **settings.model_kwargs())
        model.load_shared_state({k: v for k, v in state.items() if P.expert_of(k) is None or P.expert_of(k) in subset})
        model.load_gate_state(gate)
        model.extractor = nn.Identity()  # type: ignore[assignment]
        model.eval()
        out[tuple(subset)] = float((model(features).argmax(dim=1) == labels).double().mean()) if len(labels) else 0.0
    return out


def client_gate(settings: Settings, node: Client) -> dict[str, np.ndarray]:
    """The gate the client keeps (its latest), or the initial one it would start from."""
    if client.GATE_KEY in node.context.state:
        return {k: v.numpy() for k, v in node.context.state.array_records[client.GATE_KEY].items()}
    ids = NodeSettings.from_node_config(node.context.node_config, settings, node.node_id)
    model = MoEClassifier(
        settings.num_experts, [0], gate_seed=client.initial_gate_seed(settings, ids), **settings.model_kwargs()
    )
    return model.gate_state()


def client_rows(settings: Settings, run: SnapshotRun, clients: Mapping[int, Client]) -> list[dict[str, Any]]:
    last = run.rounds[-1]["round"]
    final = run.snapshots[-1]
    rows = []
    for node in clients.values():
        if last not in node.sent_eval:
            continue  # not evaluated in the last round
        ids = NodeSettings.from_node_config(node.context.node_config, settings, node.node_id)
        _, test_set = client.local_data(settings, ids)
        images, labels = test_set.tensors
        held = tuple(node.sent_eval[last])
        gate = client_gate(settings, node)
        k = len(held)
        subsets = list(itertools.combinations(range(settings.num_experts), k))
        every = tuple(range(settings.num_experts))
        scores = subset_accuracies(settings, final, gate, images, labels, subsets + [every])
        best = max(subsets, key=lambda s: (scores[s], [-e for e in s]))
        rows.append(
            {
                "client": ids.client_id,
                "test-examples": int(len(labels)),
                "held": list(held),
                "accuracy-reported": node.eval_accuracy[last],
                "accuracy-held": scores[held],
                "accuracy-best-k": scores[best],
                "best-k": list(best),
                "accuracy-all-experts": scores[every],
                "held-rank": 1 + sum(1 for s in subsets if scores[s] > scores[held]),
                "rounds-trained": len(node.train),
                "subsets": len(subsets),
            }
        )
    return rows


# --------------------------------------------------------------------------- per expert and round


def label_histograms(settings: Settings, clients: Mapping[int, Client]) -> dict[str, np.ndarray]:
    """client id -> its training split's label counts (C,)."""
    classes = spec_of(settings.dataset).num_classes
    out = {}
    for node in clients.values():
        ids = NodeSettings.from_node_config(node.context.node_config, settings, node.node_id)
        train_set, _ = client.local_data(settings, ids)
        out[ids.client_id] = np.bincount(train_set.tensors[1].numpy(), minlength=classes).astype(np.float64)
    return out


def expert_rows(
    settings: Settings,
    run: SnapshotRun,
    clients: Mapping[int, Client],
    images: torch.Tensor,
    labels: torch.Tensor,
    seen_share: float = 0.05,
) -> list[dict[str, Any]]:
    """One row per (round, expert). A class is one the expert's holders "had" that round when it is at
    least `seen_share` of the samples routed to the expert (`class-mix-routed`)."""
    E, C = settings.num_experts, spec_of(settings.dataset).num_classes
    by_id = {
        NodeSettings.from_node_config(n.context.node_config, settings, n.node_id).client_id: n for n in clients.values()
    }
    histograms = label_histograms(settings, clients)
    probes = [expert_probe_accuracy(settings, s, images, labels) for s in run.snapshots]
    rows = []
    for record, metrics in zip(run.history, run.rounds):
        t = int(record["round"])
        held_by = dict(zip(record["clients"], record["held"]))
        completed = record["completed"]
        (before, before_c), (after, after_c) = probes[t - 1], probes[t]
        for e in range(E):
            holders = [c for c in completed if e in held_by[c]]
            top1, routed = np.zeros(C), np.zeros(C)
            for c in holders:
                reply = by_id[c].train[t]
                usage = float(reply[P.EXPERT_USAGE][e])
                routed += histograms[c] * usage / max(float(reply[P.NUM_EXAMPLES]), 1.0)
                if P.EXPERT_CLASS_COUNTS in reply:
                    top1 += np.asarray(reply[P.EXPERT_CLASS_COUNTS], dtype=np.float64).reshape(E, C)[e]
            drop = before_c[e] - after_c[e]
            seen = routed >= seen_share * routed.sum() if routed.sum() > 0 else np.zeros(C, dtype=bool)
            rows.append(
                {
                    "round": t,
                    "expert": e,
                    "holders": len(holders),
                    "holder-ids": holders,
                    "samples": float(metrics["routed-load"][e]),
                    "class-mix-top1": top1.tolist(),
                    "class-mix-routed": routed.tolist(),
                    "classes-seen": int(seen.sum()),
                    "probe-before": float(before[e]),
                    "probe-after": float(after[e]),
                    "forgetting": float(before[e] - after[e]),
                    "class-probe-before": before_c[e].tolist(),
                    "class-probe-after": after_c[e].tolist(),
                    "drop-unseen-classes": float(drop[~seen].mean()) if holders and (~seen).any() else None,
                    "drop-seen-classes": float(drop[seen].mean()) if holders and seen.any() else None,
                }
            )
    return rows


# --------------------------------------------------------------------------- summary and outputs


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(experts: list[dict[str, Any]], clients_: list[dict[str, Any]], dense: dict[str, float]) -> dict[str, Any]:
    held_rows = [r for r in experts if r["holders"] > 0]
    out: dict[str, Any] = {
        "holders-per-expert-round": _mean(r["holders"] for r in experts),
        "expert-rounds-held": len(held_rows),
        "expert-rounds": len(experts),
        "forgetting-when-held-mean": _mean(r["forgetting"] for r in held_rows),
        "fraction-held-rounds-with-probe-drop": (
            float(np.mean([r["forgetting"] > 0 for r in held_rows])) if held_rows else None
        ),
        "drop-on-unseen-classes-mean": _mean(r["drop-unseen-classes"] for r in held_rows),
        "drop-on-seen-classes-mean": _mean(r["drop-seen-classes"] for r in held_rows),
        "classes-seen-when-held-mean": _mean(r["classes-seen"] for r in held_rows),
        "final-probe-accuracy-mean": _mean(r["probe-after"] for r in experts if r["round"] == experts[-1]["round"]),
    }
    if clients_:
        for key in ("accuracy-held", "accuracy-best-k", "accuracy-all-experts", "accuracy-reported"):
            out[f"clients-{key}-mean"] = _mean(r[key] for r in clients_)
        out["clients-held-is-best-k"] = int(sum(r["held-rank"] == 1 for r in clients_))
        out["clients-held-rank-mean"] = _mean(r["held-rank"] for r in clients_)
        out["clients-subsets"] = clients_[0]["subsets"]
        out["clients-rounds-trained-mean"] = _mean(r["rounds-trained"] for r in clients_)
        out["clients-never-trained"] = int(sum(r["rounds-trained"] == 0 for r in clients_))
        out["clients"] = len(clients_)
        if dense:
            out["clients-accuracy-dense-run-mean"] = _mean(dense.get(r["client"]) for r in clients_)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def plot(
    out: Path, experts: list[dict[str, Any]], clients_: list[dict[str, Any]], dense: dict[str, float], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E = 1 + max(r["expert"] for r in experts)
    rounds = sorted({r["round"] for r in experts})
    cols = min(4, E)
    rows_ = (E + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.6 * rows_), sharex=True, sharey=True, squeeze=False)
    for e in range(E):
        ax = axes[e // cols][e % cols]
        mine = [r for r in experts if r["expert"] == e]
        xs = [0] + rounds
        ax.plot(xs, [mine[0]["probe-before"]] + [r["probe-after"] for r in mine], color="tab:blue", lw=1.2)
        for r in mine:
            if r["holders"]:
                change = -r["forgetting"]
                colour = "tab:red" if change < -0.005 else "tab:green" if change > 0.005 else "tab:grey"
                ax.plot([r["round"] - 1, r["round"]], [r["probe-before"], r["probe-after"]], color=colour, lw=2.2)
                ax.annotate(str(r["holders"]), (r["round"], r["probe-after"]), fontsize=7, ha="center", va="bottom")
        ax.set_title(f"expert {e}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("round")
    for row in axes:
        row[0].set_ylabel("probe accuracy")
    fig.suptitle(
        f"{title}\nexpert's own accuracy on a balanced probe after each round; held rounds coloured "
        "(red: fell, green: rose, grey: within 0.005), number = holders",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "forgetting.png", dpi=110)
    plt.close(fig)

    held = [
        r
        for r in experts
        if r["holders"] and r["drop-unseen-classes"] is not None and r["drop-seen-classes"] is not None
    ]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    if held:
        points = ax.scatter(
            [r["drop-seen-classes"] for r in held],
            [r["drop-unseen-classes"] for r in held],
            c=[r["holders"] for r in held],
            cmap="viridis",
            s=22,
        )
        low = min(min(r["drop-seen-classes"] for r in held), min(r["drop-unseen-classes"] for r in held), 0.0)
        high = max(max(r["drop-seen-classes"] for r in held), max(r["drop-unseen-classes"] for r in held), 0.0)
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        fig.colorbar(points, ax=ax, label="holders")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("probe drop on classes its holders had (this round)")
    ax.set_ylabel("probe drop on classes they did not have")
    ax.set_title("per held expert and round (colour: holders)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "class-drop.png", dpi=110)
    plt.close(fig)

    if clients_:
        order = sorted(clients_, key=lambda r: r["accuracy-held"])
        x = np.arange(len(order))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 2), 3.8))
        series = [
            ("accuracy-held", "held experts"),
            ("accuracy-best-k", "best k in hindsight"),
            ("accuracy-all-experts", "all E experts, same model"),
        ]
        width = 0.8 / (len(series) + (1 if dense else 0))
        for i, (key, label) in enumerate(series):
            ax.bar(x + i * width, [r[key] for r in order], width, label=label)
        if dense:
            ax.bar(x + len(series) * width, [dense.get(r["client"], np.nan) for r in order], width, label="dense run")
        ax.set_xticks(x + 0.4 - width / 2, [r["client"].removeprefix("partition-") for r in order], fontsize=7)
        ax.set_xlabel("client (partition id)")
        ax.set_ylabel("test accuracy, last round")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "clients.png", dpi=110)
        plt.close(fig)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=APP_DIR / "conf" / "diagnosis-small.toml", help="run-config TOML"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--num-clients",
        type=int,
        default=None,
        help="simulated clients (default: the file's [diagnosis] num-clients, else 10)",
    )
    parser.add_argument("--out", type=Path, default=APP_DIR / "results" / "diagnosis")
    parser.add_argument("--probe-per-class", type=int, default=100, help="probe images per class (test split)")
    parser.add_argument("--probe-seed", type=int, default=0, help="the probe set's own seed (fixed across runs)")
    parser.add_argument(
        "--seen-share",
        type=float,
        default=0.05,
        help="a class counts as one an expert's holders had when it is at least this share of its routed samples",
    )
    parser.add_argument("--no-dense", action="store_true", help="skip the dense run of the same cell")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra run-config override")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = load_overrides(args.config, args.set)
    meta = overrides.pop("diagnosis", {})
    unknown = sorted(set(meta) - {"num-clients"})
    if unknown:  # e.g. run-config keys written below the [diagnosis] header, which TOML puts inside it
        raise SystemExit(f"{args.config}: [diagnosis] allows only num-clients, got {unknown} (put it last)")
    num_clients = args.num_clients or int(meta.get("num-clients", 10))
    defaults = app_defaults()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = {**defaults, **overrides, "seed": args.seed, "results-dir": str(out / "run")}
    settings = Settings.from_run_config(config)
    torch.set_num_threads(1)  # as Flower's simulation gives each client, and kind to a shared machine
    logger = logging.getLogger("flexmoe")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    started = time.perf_counter()
    with flower_identity():
        run, clients = federate(config, num_clients)
        dense: dict[str, float] = {}
        if not args.no_dense and settings.assignment != "dense":
            dense_run, dense_clients = federate(
                {**config, "assignment": "dense", "results-dir": str(out / "dense")}, num_clients
            )
            last = dense_run.rounds[-1]["round"]
            for node in dense_clients.values():
                if last in node.eval_accuracy:
                    ids = NodeSettings.from_node_config(node.context.node_config, settings, node.node_id)
                    dense[ids.client_id] = node.eval_accuracy[last]
    images, labels = probe_set(settings, args.probe_per_class, args.probe_seed)
    experts = expert_rows(settings, run, clients, images, labels, seen_share=args.seen_share)
    per_client = client_rows(settings, run, clients)
    for row in per_client:
        row["accuracy-dense-run"] = dense.get(row["client"])
    summary = summarise(experts, per_client, dense)
    summary["accuracy-last-round"] = run.rounds[-1].get("accuracy")
    report = {
        "command": "python -m flexmoe_bench.diagnosis " + " ".join(sys.argv[1:] if argv is None else argv),
        "num-clients": num_clients,
        "probe": {"per-class": args.probe_per_class, "seed": args.probe_seed, "size": int(len(labels))},
        "config": settings.to_run_config(),
        "seconds": time.perf_counter() - started,
        "summary": summary,
        "experts": experts,
        "clients": per_client,
        "rounds": [
            {k: r.get(k) for k in ("round", "accuracy", "accuracy-p10", "load-cv", "routed-load")} for r in run.rounds
        ],
    }
    atomic_write_json(out / "diagnosis.json", report)
    write_csv(out / "experts.csv", experts)
    write_csv(out / "clients.csv", per_client)
    title = (
        f"{settings.assignment}, {settings.dataset}, E={settings.num_experts}, k={settings.capacity}, seed {args.seed}"
    )
    plot(out, experts, per_client, dense, title)
    print(json.dumps(summary, indent=2))
    print(f"diagnosis -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
