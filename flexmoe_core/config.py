"""Run settings: one typed, validated object built from Flower's run config.

Every setting is checked before round 1 and *all* problems are reported in one
error, so a user fixing a config file does not discover them one run at a time.
The names are the kebab-case keys of ``[tool.flwr.app.config]``; the attributes
are their snake_case twins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Each choice tuple is declared once, by the module that implements the choices.
from flexmoe_core.assignment import METHODS as ASSIGNMENT_METHODS
from flexmoe_core.assignment import SOLVERS
from flexmoe_core.centered_clip import DIRECTION_ACTIONS, DIRECTION_REFERENCES

# The one source of dataset shapes (constants only: importing it loads no data).
from flexmoe_core.data import SPECS
from flexmoe_core.data import spec_of as dataset_shape  # noqa: F401 - re-exported for the apps
from flexmoe_core.fitness import MODES as FITNESS_MODES
from flexmoe_core.model import ARCHS as MODELS
from flexmoe_core.model import EXPERT_KINDS
from flexmoe_core.remedies import ADAPT_ROUNDS, PREDICTIONS, STEP_SCALES
from flexmoe_core.robust_aggregation import ROBUST_METHODS
from flexmoe_core.tracking import TRACKERS

PARTITIONS = ("iid", "dirichlet", "classes")  # implemented in client_app.partitions (flwr-datasets)
# Implemented by the ClientApp (client_app.poisoning), which is what applies an attack. The names
# are a plain constant here, not imported from there, so the server rejects a bad `attack` before
# round 1 while the core knows nothing of how attacks work (and imports no app).
ATTACKS = ("none", "scale", "sign-flip", "noise", "label-flip")


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists every one of them."""

    def __init__(self, problems: list[str], source: str = "run config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class Settings:
    """All run-config settings of a FLEX-MoE run (defaults mirror pyproject.toml)."""

    num_server_rounds: int = 5
    num_experts: int = 8
    capacity: int = 2
    capacity_profile: str = ""
    top_r: int = 2
    model: str = "cnn"
    expert_hidden: int = 256
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    allow_download: bool = False
    max_samples_per_client: int = 600
    test_fraction: float = 0.2
    partition: str = "dirichlet"
    dirichlet_alpha: float = 0.8
    classes_per_client: int = 4
    assignment: str = "flexmoe"
    solver: str = "auto"
    fitness: str = "accuracy"
    ema_beta: float = 0.5
    loss_alpha: float = 1.0
    initial_fitness: float = 1.0
    load_slack: float = 0.0
    deficit_weight: float = 0.1
    # bias-greedy's step u (flexmoe_core.balancing). Q lies in [0, 1] and a client's Q entries for
    # different experts typically differ by 0.01-0.1 after a few rounds; at 0.01 a bias can overturn
    # such a gap within ~1-10 rounds of persistent imbalance, i.e. inside a 20-30-round run, while one
    # step never outweighs a clear fitness difference. (DeepSeek-V3's 0.001 is for ~10^5 steps.)
    bias_update_rate: float = 0.01
    # sinkhorn's temperature on Q (exp(Q / tau)) and its fixed number of row/column normalisations:
    # tau = 0.1 turns a 0.1 fitness gap into a factor e; 50 iterations bring the column sums to the
    # equal-load target well within 1e-3 on the study's sizes (tests/test_balancing.py).
    sinkhorn_tau: float = 0.1
    sinkhorn_iterations: int = 50
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    node_wait_timeout: float = 120.0
    round_timeout: float = 600.0
    seed: int = 42
    results_dir: str = "results/latest"
    client_state_dir: str = ""
    resume: bool = False
    # Fault injection for resilience tests and demos: these client ids raise during training.
    crash_clients: str = ""
    # A fixed cohort of this many clients evaluated every round (0 = the round's participants).
    eval_cohort: int = 0
    # Defences and claims (flexmoe_core.robust_aggregation, flexmoe_core.replies).
    robust_aggregation: str = "none"
    trim_fraction: float = 0.2
    clip_factor: float = 2.0
    # centered-clip (flexmoe_core.centered_clip): tau (0 = clip-factor x the pooled median distance),
    # the reference's momentum, and the direction check on each update (-1 = off).
    clip_tau: float = 0.0
    clip_momentum: float = 0.0
    direction_threshold: float = 0.0
    direction_action: str = "drop"
    direction_reference: str = "round"
    # Norm screen before the robust rule: drop a client whose update of some group is longer than
    # this factor x its pool's median norm (0 = off; flexmoe_core.robust_aggregation.screen_updates).
    norm_screen: float = 0.0
    # Redundancy (flexmoe_core.redundancy): every expert trained in a round has >= min-holders holders.
    min_holders: int = 1
    max_declared_examples: int = 1_000_000
    # Attack simulation for research (client_app.poisoning), off by default.
    attack: str = "none"
    attack_scale: float = 10.0
    attack_clients: str = ""
    # Experiment tracking (flexmoe_core.tracking): "tensorboard" writes <results-dir>/tensorboard/.
    tracking: str = "none"
    # Remedies for few holders per expert (flexmoe_core.remedies), each off by default: hidden experts
    # before a shared classifier, a per-expert server step (FedAvgM), a proximal term on the held
    # experts, and local adaptation at evaluation (reported as accuracy-adapted beside accuracy).
    expert_kind: str = "head"
    expert_server_lr: float = 1.0
    expert_server_momentum: float = 0.0
    expert_step_scale: str = "none"
    prox_mu: float = 0.0
    logit_adjust: float = 0.0
    logit_adjust_predict: str = "plain"
    adapt_steps: int = 0
    adapt_lr: float = 0.01
    adapt_rounds: str = "every"

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Settings:
        """Build settings from a Flower run config, raising `SettingsError` listing every bad key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                problems.append(f"unknown setting '{key}' (allowed: {', '.join(sorted(_kebab(n) for n in known))})")
                continue
            coerced = _coerce(key, raw, known[name].type, problems)
            if coerced is not None:
                values[name] = coerced
        settings = cls(**values)
        problems.extend(settings.problems())
        if problems:
            raise SettingsError(problems)
        return settings

    def problems(self) -> list[str]:
        """Range, choice and feasibility checks; an empty list means the settings are usable."""
        out: list[str] = []
        check = _Checker(out)
        check.at_least("num-server-rounds", self.num_server_rounds, 1)
        check.at_least("num-experts", self.num_experts, 1)
        check.between("capacity", self.capacity, 1, self.num_experts, "1 <= capacity <= num-experts")
        for k in _parse_profile(self.capacity_profile, out):
            check.between("capacity-profile", k, 1, self.num_experts, "every entry in 1..num-experts")
        check.between("top-r", self.top_r, 1, self.num_experts, "1 <= top-r <= num-experts")
        check.choice("model", self.model, MODELS)
        check.at_least("expert-hidden", self.expert_hidden, 1)
        check.at_least("local-epochs", self.local_epochs, 1)
        check.at_least("batch-size", self.batch_size, 1)
        check.positive("lr", self.lr)
        check.choice("dataset", self.dataset, tuple(SPECS))
        check.at_least("max-samples-per-client", self.max_samples_per_client, 0)
        check.open_unit("test-fraction", self.test_fraction)
        check.choice("partition", self.partition, PARTITIONS)
        check.positive("dirichlet-alpha", self.dirichlet_alpha)
        num_classes = SPECS[self.dataset].num_classes if self.dataset in SPECS else 10
        check.between(
            "classes-per-client",
            self.classes_per_client,
            1,
            num_classes,
            f"1..{num_classes} (classes of {self.dataset})",
        )
        check.choice("assignment", self.assignment, ASSIGNMENT_METHODS)
        check.choice("solver", self.solver, SOLVERS)
        check.choice("fitness", self.fitness, FITNESS_MODES)
        check.between("ema-beta", self.ema_beta, 1e-12, 1.0, "0 < ema-beta <= 1")
        check.positive("loss-alpha", self.loss_alpha)
        check.finite("initial-fitness", self.initial_fitness)
        check.at_least("load-slack", self.load_slack, 0.0)
        check.at_least("deficit-weight", self.deficit_weight, 0.0)
        check.at_least("bias-update-rate", self.bias_update_rate, 0.0)
        check.positive("sinkhorn-tau", self.sinkhorn_tau)
        check.at_least("sinkhorn-iterations", self.sinkhorn_iterations, 1)
        check.between("fraction-train", self.fraction_train, 1e-12, 1.0, "0 < fraction-train <= 1")
        check.at_least("min-train-nodes", self.min_train_nodes, 1)
        check.positive("node-wait-timeout", self.node_wait_timeout)
        check.positive("round-timeout", self.round_timeout)
        check.at_least("seed", self.seed, 0)
        check.at_least("eval-cohort", self.eval_cohort, 0)
        check.choice("robust-aggregation", self.robust_aggregation, ROBUST_METHODS)
        check.between("trim-fraction", self.trim_fraction, 0.0, 0.4999, "0 <= trim-fraction < 0.5")
        check.positive("clip-factor", self.clip_factor)
        check.at_least("clip-tau", self.clip_tau, 0.0)
        check.between("clip-momentum", self.clip_momentum, 0.0, 0.999999, "0 <= clip-momentum < 1")
        check.between("direction-threshold", self.direction_threshold, -1.0, 1.0, "a cosine in [-1, 1] (-1 = off)")
        check.choice("direction-action", self.direction_action, DIRECTION_ACTIONS)
        check.choice("direction-reference", self.direction_reference, DIRECTION_REFERENCES)
        if not (self.norm_screen == 0.0 or self.norm_screen > 1.0):
            out.append(f"norm-screen must be 0 (off) or > 1 (a multiple of the median norm), got {self.norm_screen!r}")
        check.at_least("min-holders", self.min_holders, 1)
        if self.min_holders > 1 and self.assignment != "flexmoe":
            out.append(f"min-holders > 1 needs assignment = 'flexmoe', got {self.assignment!r} (use min-holders = 1)")
        check.at_least("max-declared-examples", self.max_declared_examples, 1)
        check.choice("attack", self.attack, ATTACKS)
        check.at_least("attack-scale", self.attack_scale, 0.0)
        if self.attack != "none" and not self.attacking_clients:
            out.append(f"attack = {self.attack!r} needs attack-clients (comma-separated client ids)")
        check.choice("tracking", self.tracking, TRACKERS)
        check.choice("expert-kind", self.expert_kind, EXPERT_KINDS)
        if self.expert_kind == "hidden" and self.robust_aggregation != "none":
            out.append(
                f"expert-kind = 'hidden' is implemented with robust-aggregation = 'none' only (its shared "
                f"classifier is not a group of the robust rules), got {self.robust_aggregation!r}"
            )
        check.positive("expert-server-lr", self.expert_server_lr)
        check.between(
            "expert-server-momentum", self.expert_server_momentum, 0.0, 0.999999, "0 <= expert-server-momentum < 1"
        )
        check.choice("expert-step-scale", self.expert_step_scale, STEP_SCALES)
        check.at_least("prox-mu", self.prox_mu, 0.0)
        check.at_least("logit-adjust", self.logit_adjust, 0.0)
        check.choice("logit-adjust-predict", self.logit_adjust_predict, PREDICTIONS)
        if self.logit_adjust_predict == "prior" and not self.logit_adjust > 0.0:
            out.append("logit-adjust-predict = 'prior' needs logit-adjust > 0 (the prior it puts back), got 0")
        check.at_least("adapt-steps", self.adapt_steps, 0)
        check.positive("adapt-lr", self.adapt_lr)
        check.choice("adapt-rounds", self.adapt_rounds, ADAPT_ROUNDS)
        if not self.results_dir.strip():
            out.append("results-dir must be a non-empty path")
        return out

    @property
    def crashing_clients(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.crash_clients.split(",") if c.strip())

    @property
    def attacking_clients(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.attack_clients.split(",") if c.strip())

    @property
    def capacities(self) -> tuple[int, ...]:
        """The heterogeneous capacity profile (empty when every client uses `capacity`)."""
        return tuple(_parse_profile(self.capacity_profile, []))

    def model_kwargs(self) -> dict[str, Any]:
        """The architecture these settings describe, as `MoEClassifier` / `build_global_state` take it:
        the one place where server and client derive the model from the settings."""
        shape = dataset_shape(self.dataset)
        return {
            "num_classes": shape.num_classes,
            "in_channels": shape.in_channels,
            "image_size": shape.image_size,
            "arch": self.model,
            "top_r": self.top_r,
            "expert_hidden": self.expert_hidden,
            "expert_kind": self.expert_kind,
        }

    def capacity_for(self, partition_id: int | None) -> int:
        """Simulation capacity of a partition: the profile cycled over partitions, else `capacity`."""
        profile = self.capacities
        if profile and partition_id is not None:
            return profile[partition_id % len(profile)]
        return self.capacity

    def to_run_config(self) -> dict[str, Any]:
        """The settings as kebab-case run-config keys (what gets written to results/config.json)."""
        return {_kebab(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class NodeSettings:
    """Per-node settings from Flower's node config (`--node-config` or the simulation)."""

    partition_id: int | None
    num_partitions: int | None
    capacity: int
    client_id: str
    state_dir: str

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], settings: Settings, node_id: int) -> NodeSettings:
        """Validate the node config; a stable `client-id` (else `partition-<id>`) keys the fitness row."""
        problems: list[str] = []
        pid = _optional_int(node_config, "partition-id", problems)
        nparts = _optional_int(node_config, "num-partitions", problems)
        if nparts is not None and nparts < 1:
            problems.append(f"num-partitions must be >= 1, got {nparts}")
        if pid is not None and (pid < 0 or (nparts is not None and pid >= nparts)):
            problems.append(f"partition-id must be in 0..num-partitions-1, got {pid} (num-partitions={nparts})")
        capacity = _optional_int(node_config, "capacity", problems)
        if capacity is None:
            capacity = settings.capacity_for(pid)
        elif not 1 <= capacity <= settings.num_experts:
            problems.append(f"capacity must be in 1..num-experts ({settings.num_experts}), got {capacity}")
        client_id = str(node_config.get("client-id", "") or "")
        if not client_id:
            # Simulated node ids are random per run; the partition id is what stays stable.
            client_id = f"partition-{pid}" if pid is not None else f"node-{node_id}"
        state_dir = str(node_config.get("state-dir", "") or settings.client_state_dir)
        if problems:
            raise SettingsError(problems, source="node config")
        return cls(pid, nparts, capacity, client_id, state_dir)


class _Checker:
    """Collects range/choice problems as readable sentences."""

    def __init__(self, out: list[str]) -> None:
        self.out = out

    def at_least(self, key: str, value: float, low: float) -> None:
        if not _is_finite(value) or value < low:
            self.out.append(f"{key} must be >= {low}, got {value!r}")

    def positive(self, key: str, value: float) -> None:
        if not _is_finite(value) or value <= 0:
            self.out.append(f"{key} must be a finite number > 0, got {value!r}")

    def finite(self, key: str, value: float) -> None:
        if not _is_finite(value):
            self.out.append(f"{key} must be a finite number, got {value!r}")

    def open_unit(self, key: str, value: float) -> None:
        if not _is_finite(value) or not 0 < value < 1:
            self.out.append(f"{key} must be in (0, 1), got {value!r}")

    def between(self, key: str, value: float, low: float, high: float, allowed: str) -> None:
        if not _is_finite(value) or not low <= value <= high:
            self.out.append(f"{key} must be {allowed}, got {value!r}")

    def choice(self, key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            self.out.append(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(key: str, raw: Any, annotation: Any, problems: list[str]) -> Any:
    """Accept exactly the TOML type of the field (ints for floats too); report anything else."""
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(str(annotation))
    converters: dict[type, Callable[[Any], Any]] = {
        int: lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None,
        float: lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None,
        bool: lambda v: v if isinstance(v, bool) else None,
        str: lambda v: v if isinstance(v, str) else None,
    }
    value = converters[kind](raw) if kind else raw
    if value is None:
        problems.append(f"{key} must be of type {kind.__name__ if kind else annotation}, got {raw!r}")
    return value


def _parse_profile(profile: str, problems: list[str]) -> list[int]:
    if not profile.strip():
        return []
    try:
        return [int(part) for part in profile.split(",")]
    except ValueError:
        problems.append(f"capacity-profile must be comma-separated integers like '1,2,4', got {profile!r}")
        return []


def _optional_int(config: Mapping[str, Any], key: str, problems: list[str]) -> int | None:
    if key not in config:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            problems.append(f"{key} must be an integer, got {value!r}")
            return None
    return value
