"""Which connected nodes the server can use: each new node describes itself once (stable client
id, expert capacity, data size); a client id keys a fitness row, so two live nodes never share one."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flexmoe_core import protocol as P
from flexmoe_core.config import Settings
from flexmoe_core.replies import ClientInfo, ReplyError, validate_description
from server_app.records import message_bytes

log = logging.getLogger("flexmoe.server")

DESCRIBE = f"{MessageType.QUERY}.{P.DESCRIBE}"


@dataclass(frozen=True)
class Discovery:
    """The round loop's first step: the usable connected nodes, and the bytes describing new ones took."""

    ready: list[int]
    bytes: int


def setup_failure(broken: dict[int, str], usable: int, needed: int) -> str:
    """One message for the clients that could not start: each distinct error once, with who reported it."""
    by_error: dict[str, list[int]] = {}
    for node, error in sorted(broken.items()):
        by_error.setdefault(error, []).append(node)
    parts = [
        f"{len(nodes)} client(s) (node {', '.join(map(str, nodes))}) could not start:\n{error}"
        for error, nodes in sorted(by_error.items(), key=lambda item: -len(item[1]))
    ]
    return (
        f"stopping the run: {len(broken)} client(s) reported a set-up error, leaving {usable} usable "
        f"client(s) of min-train-nodes={needed}. Fix the clients' settings or data; waiting will not help.\n"
        + "\n".join(parts)
    )


class NodeRegistry:
    """The described nodes, by node id, and the ones left out because their client id is taken."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes: dict[int, ClientInfo] = {}
        self.refused: dict[int, ClientInfo] = {}  # nodes whose client id another connected node holds
        self.broken: dict[int, str] = {}  # nodes that answered with a set-up error, and the error
        self._warned: set[int] = set()

    def discover(self, grid: Grid) -> Discovery:
        """Describe newly connected nodes; wait (bounded) until `min-train-nodes` are known."""
        s = self.settings
        deadline = time.monotonic() + s.node_wait_timeout
        discovery_bytes = 0
        while True:
            connected = sorted(grid.get_node_ids())
            discovery_bytes += self._describe_new(grid, connected)
            self._admit(connected)
            ready = [n for n in connected if n in self.nodes]
            if len(ready) >= s.min_train_nodes:
                return Discovery(ready, discovery_bytes)
            broken = {n: self.broken[n] for n in connected if n in self.broken}
            if broken:  # some clients cannot start and will not by waiting: stop now, saying why
                raise RuntimeError(setup_failure(broken, len(ready), s.min_train_nodes))
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"only {len(ready)} usable client(s) connected after node-wait-timeout="
                    f"{s.node_wait_timeout:.0f}s, min-train-nodes={s.min_train_nodes}: "
                    "start more SuperNodes or lower min-train-nodes"
                )
            log.info(
                "waiting for clients: %d connected and described, need min-train-nodes=%d",
                len(ready),
                s.min_train_nodes,
            )
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _describe_new(self, grid: Grid, connected: list[int]) -> int:
        new = [n for n in connected if n not in self.nodes and n not in self.refused and n not in self.broken]
        if not new:
            return 0
        messages = [
            Message(
                RecordDict({P.CONFIG: ConfigRecord({P.NUM_EXPERTS: self.settings.num_experts})}),
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
                error = reply.content.config_records[P.CONFIG].get(P.SETUP_ERROR)
                if error is not None:
                    self.broken[node] = str(error)
                    log.warning("node %d could not start: %s", node, str(error).splitlines()[0])
                    continue
                self.refused[node] = validate_description(  # admitted by _admit
                    reply.content.config_records[P.CONFIG],
                    self.settings.num_experts,
                    self.settings.max_declared_examples,
                )
            except (ReplyError, KeyError) as err:
                log.warning("node %d could not describe itself and is left out: %s", node, err)
        return traffic

    def _admit(self, connected: list[int]) -> None:
        """Admit described nodes whose client id no *connected* node holds.

        A node that has gone is forgotten, so the same client reconnecting under a new node id
        (a restarted device without SuperNode authentication gets one) is admitted again, with
        its fitness row.
        """
        live = set(connected)
        for node in [n for n in self.nodes if n not in live]:
            log.info("client %s left (node %d)", self.nodes.pop(node).client_id, node)
        for node in [n for n in self.refused if n not in live]:
            del self.refused[node]
        for node in [n for n in self.broken if n not in live]:
            del self.broken[node]  # a restarted node is asked again
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
