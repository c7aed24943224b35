"""Benchmark of round-1 discovery in Flower's simulation engine, against Flower's own floor.

How to run (from the repository root)::

    .venv/bin/python bench/discovery.py                   # 1,000 simulated nodes
    .venv/bin/python bench/discovery.py --nodes 100,1000 --out results/bench/discovery.json

In round 1 the server asks every connected node to describe itself (client id, capacity, data
size: server_app.discovery). Three runs on one simulation SuperLink, same node count, each timing
the same N round trips:

- `floor`: a minimal Flower app generated here, whose ServerApp sends one describe query to every
  node and whose ClientApp answers a constant: what Flower's message path alone costs;
- `handler`: the same ServerApp, but the ClientApp answers with FLEX-MoE's own describe handler
  (`client_app.app.describe`: settings, node config, this client's data split): what the client
  side adds;
- `flexmoe`: the FLEX-MoE app itself, one round, its `discovery-seconds` of round 1: what the
  server's discovery (server_app.discovery) adds on top.

Reported: the three times and their ratios to the floor, as JSON (default results/bench/discovery.json).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from flexmoe_bench.launcher import SimulationSuperLink  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FLOOR_APP = '''
"""Flower's floor: one query to every node, a constant answer."""
import time
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()
HANDLER = "{handler}"


@client.query("describe")
def describe(msg: Message, context: Context) -> Message:
    if HANDLER == "flexmoe":
        from client_app.app import describe as flexmoe_describe

        return flexmoe_describe(msg, context)
    info = ConfigRecord({"client-id": f"partition-{context.node_config['partition-id']}", "capacity": 2})
    return Message(RecordDict({"config": info}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    wanted = int(context.run_config["bench-nodes"])
    while len(grid.get_node_ids()) < wanted:
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    start = time.perf_counter()
    messages = [
        Message(RecordDict({"config": ConfigRecord({"num-experts": 8})}), message_type="query.describe", dst_node_id=n)
        for n in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=600))
    print(f"FLOOR {len(replies)} replies in {time.perf_counter() - start:.3f} s", flush=True)
'''

FLOOR_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "floorapp"
version = "0.1.0"

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "floor_app:server"
clientapp = "floor_app:client"

[tool.flwr.app.config]
bench-nodes = 0
"""


def floor_seconds(link: SimulationSuperLink, nodes: int, folder: Path, handler: str, samples: int) -> float:
    """Seconds for N describe round trips answered by a constant or by FLEX-MoE's describe handler."""
    app = folder / f"floorapp-{handler}"
    app.mkdir()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config = {**config, "max-samples-per-client": samples}  # the handler reads the FLEX-MoE settings
    pyproject = textwrap.dedent(FLOOR_PYPROJECT) + "".join(f"{k} = {_toml(v)}\n" for k, v in config.items())
    (app / "pyproject.toml").write_text(pyproject)
    (app / "floor_app.py").write_text(textwrap.dedent(FLOOR_APP).replace("{handler}", handler))
    for package in ("flexmoe_core", "client_app"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    outcome = link.run(app, {"bench-nodes": nodes}, timeout=1200, echo=False)
    match = re.search(r"FLOOR (\d+) replies in ([0-9.]+) s", outcome.log)
    if not match or int(match.group(1)) != nodes:
        raise RuntimeError(f"floor run failed ({outcome.status}):\n{outcome.log[-2000:]}")
    return float(match.group(2))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def flexmoe_seconds(link: SimulationSuperLink, nodes: int, folder: Path, samples: int) -> float:
    results = folder / "flexmoe"
    run_config = {
        "num-server-rounds": 1,
        "max-samples-per-client": samples,
        "local-epochs": 1,
        "fraction-train": min(1.0, 20 / nodes),
        "min-train-nodes": min(20, nodes),
        "node-wait-timeout": 600.0,
        "results-dir": str(results),
    }
    outcome = link.run(ROOT, run_config, timeout=1200, echo=False)
    metrics = results / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(f"flexmoe run failed ({outcome.status}):\n{outcome.log[-2000:]}")
    return float(json.loads(metrics.read_text())[0]["discovery-seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="1000", help="comma-separated simulated node counts")
    parser.add_argument("--samples", type=int, default=60, help="max-samples-per-client of the flexmoe run")
    parser.add_argument("--out", default="results/bench/discovery.json")
    args = parser.parse_args(argv)
    rows = []
    for nodes in [int(n) for n in args.nodes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp, SimulationSuperLink(nodes) as link:
            floor = floor_seconds(link, nodes, Path(tmp), "constant", args.samples)
            handler = floor_seconds(link, nodes, Path(tmp), "flexmoe", args.samples)
            ours = flexmoe_seconds(link, nodes, Path(tmp), args.samples)
        rows.append(
            {
                "nodes": nodes,
                "floor-seconds": floor,
                "handler-seconds": handler,
                "flexmoe-seconds": ours,
                "handler-vs-floor": handler / floor,
                "flexmoe-vs-floor": ours / floor,
            }
        )
        print(
            f"{nodes:>6} nodes: Flower floor {floor:6.1f} s | with FLEX-MoE's describe handler {handler:6.1f} s"
            f" ({handler / floor:.2f}x) | FLEX-MoE round-1 discovery {ours:6.1f} s ({ours / floor:.2f}x)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
