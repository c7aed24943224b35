"""The wire protocol between the FLEX-MoE server and its clients (Flower-free names and parsers).

Every message is a Flower `RecordDict`; the server, the client and reply validation take
the record names, config and metric keys and the state-key layout from here only.

Server -> client
  describe (query):  config {NUM_EXPERTS}
  train / evaluate:  arrays (the extractor + the client's experts), config {SERVER_ROUND, RUN_TOKEN}
Client -> server
  describe reply:    config {CLIENT_ID, CAPACITY, NUM_EXAMPLES (training-set size)}
  train reply:       arrays (same keys as sent), metrics {NUM_EXAMPLES, TRAIN_LOSS, EXPERT_USAGE,
                     EXPERT_ACCURACY, EXPERT_LOSS} (per-expert lists have E entries), and optionally
                     EXPERT_CLASS_COUNTS (E x C floats, row-major: per held expert, the label
                     histogram of the samples routed to it top-1; the server's specialisation metric)
  evaluate reply:    metrics {NUM_EXAMPLES, ACCURACY, LOSS}, and with `adapt-steps` > 0 also
                     ACCURACY_ADAPTED, LOSS_ADAPTED (after a few local steps on the held experts
                     and the gate; flexmoe_core.remedies)

State keys: `extractor.*` (shared feature extractor), `experts.{e}.*` (expert e), `gate.*`
(the client's own router, never sent), and with `expert-kind = "hidden"` `classifier.*` (the
classifier shared by all experts, after the mixture): shared like the extractor (`is_shared`).

Gate snapshots on disk (when a client has a state dir): `gate_folder(...) / gate_file(round)`,
written by the ClientApp, read by it on resume and by the per-device export (flexmoe_core.export).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# Record names inside a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# The describe query's message subtype (sent as "query.describe").
DESCRIBE = "describe"

# Config keys.
SERVER_ROUND = "server-round"
RUN_TOKEN = "run-token"  # the run's token: clients keep gates under it, so no other run finds them
NUM_EXPERTS = "num-experts"
CLIENT_ID = "client-id"
CAPACITY = "capacity"
SETUP_ERROR = "setup-error"  # a describe reply's only key when the client could not start

# Metric keys (kebab-case, Flower's convention); NUM_EXAMPLES is also a describe config key.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EXPERT_USAGE = "expert-usage"
EXPERT_ACCURACY = "expert-accuracy"
EXPERT_LOSS = "expert-loss"
EXPERT_CLASS_COUNTS = "expert-class-counts"
ACCURACY = "accuracy"
LOSS = "loss"
ACCURACY_ADAPTED = "accuracy-adapted"
LOSS_ADAPTED = "loss-adapted"

# State-key prefixes.
EXTRACTOR_PREFIX = "extractor."
EXPERTS_PREFIX = "experts."
GATE_PREFIX = "gate."
CLASSIFIER_PREFIX = "classifier."
_EXPERT_KEY = re.compile(r"^experts\.(\d+)\.")


def expert_of(key: str) -> int | None:
    """The expert id of an `experts.{e}.` key, or None for any other key."""
    match = _EXPERT_KEY.match(key)
    return int(match.group(1)) if match else None


def is_extractor(key: str) -> bool:
    return key.startswith(EXTRACTOR_PREFIX)


def is_shared(key: str) -> bool:
    """A key every client holds and the server FedAvgs by example counts: the extractor, and the
    shared classifier of `expert-kind = "hidden"` models."""
    return key.startswith(EXTRACTOR_PREFIX) or key.startswith(CLASSIFIER_PREFIX)


def is_gate(key: str) -> bool:
    return key.startswith(GATE_PREFIX)


def held_experts(keys: Iterable[str]) -> list[int]:
    """Expert ids present among state keys, ascending."""
    return sorted({e for key in keys if (e := expert_of(key)) is not None})


def gate_folder(state_dir: str | Path, run_token: str, client_id: str) -> Path:
    """Where a client keeps its gate snapshots for one run: another run (another token) never looks here."""
    return Path(state_dir) / f"run-{run_token}" / client_id


def gate_file(server_round: int) -> str:
    """The name of the gate snapshot a client stores after training in `server_round`."""
    return f"gate-round{int(server_round)}.npz"


def gate_round_of(path: str | Path) -> int:
    """Inverse of `gate_file`: the round of a snapshot file's name."""
    return int(Path(path).stem.removeprefix("gate-round"))
