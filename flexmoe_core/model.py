"""Mixture-of-Experts classifier whose client copy holds only a subset of the experts.

Three parameter groups, visible as state-dict key prefixes (the convention every
FLEX-MoE module agrees on):

* ``extractor.``   shared feature extractor psi: every client holds it, FedAvg'd.
* ``experts.{e}.`` expert e (a small MLP head). A client model holds ONLY its assigned
                   experts A_c: the others are not in the module at all, so memory,
                   state-dict size and bytes on the wire scale with k = |A_c|, not E.
* ``gate.``        personal router phi_c: scores all E experts (so its shape never
                   changes when the assignment changes between rounds), but the
                   logits of experts not held are masked to -inf before the softmax.
* ``classifier.`` only with ``expert_kind="hidden"`` (a remedy, flexmoe_core.remedies): the
                   experts are hidden residual blocks (feature -> hidden -> feature) and this
                   one linear classifier after the mixture is shared like the extractor, so
                   no expert has to be a whole classifier (Switch / GShard MoE layers).

Routing is top-r over the held experts (r = min(top_r, k)); see ``MoEClassifier.forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flexmoe_core import checks
from flexmoe_core.protocol import GATE_PREFIX

ARCHS = ("cnn", "resnet")
EXPERT_KINDS = ("head", "hidden")
"""What an expert is: a whole classifier head (the method) or a hidden block before a shared classifier."""
FEATURE_DIM = 128
"""Width of the extractor's output, the input of every expert and of the gate."""


def pick_device() -> torch.device:
    """The accelerator when one is usable, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- parts


class CnnExtractor(nn.Module):
    """conv32-pool-conv64-pool-adaptive-pool-linear, sized for 28x28 grayscale.

    The adaptive average pool to 4x4 makes the net accept any image size >= 4 and any
    channel count, and keeps the final linear layer small (1024 -> 128): a big
    extractor would dwarf the experts and hide the bytes that partial expert
    assignment saves.
    """

    def __init__(self, in_channels: int, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((4, 4)),
            nn.Flatten(),
        )
        self.project = nn.Sequential(nn.Linear(64 * 4 * 4, feature_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))


class ResidualBlock(nn.Module):
    """Basic ResNet block (two 3x3 convs + identity or 1x1 projection shortcut).

    GroupNorm instead of BatchNorm on purpose: BatchNorm's running statistics are
    buffers (one of them int64) that FedAvg would have to average although they
    describe each client's own, non-IID data; GroupNorm has no buffers and is the usual
    choice for federated training on non-IID partitions (Hsieh et al., 2020).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.GroupNorm(_groups(out_channels), out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _groups(channels: int) -> int:
    """8 groups where the width allows it (GroupNorm needs channels % groups == 0)."""
    return 8 if channels % 8 == 0 else 1


class ResNetExtractor(nn.Module):
    """Small ResNet for 32x32 colour images: stem + 3 residual blocks (32, 64, 128
    channels, the last two downsampling) + global average pool -> 128 features.
    The global pool makes it accept any image size and channel count."""

    def __init__(self, in_channels: int, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(32), 32),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            ResidualBlock(32, 32, stride=1),
            ResidualBlock(32, 64, stride=2),
            ResidualBlock(64, feature_dim, stride=2),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x)))


def make_expert(feature_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """One expert: feature -> hidden -> class logits. Keys: ``0.weight``, ``2.bias``..."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


def make_hidden_expert(feature_dim: int, hidden: int) -> nn.Sequential:
    """One hidden expert (``expert_kind="hidden"``): feature -> hidden -> feature, a residual block's branch."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, feature_dim))


# --------------------------------------------------------------------------- routing


@dataclass
class Routing:
    """What one forward pass decided, for the feedback the server needs.

    held_experts: global ids of the held experts, ascending; axis 1 of ``expert_logits``
        follows this order.
    top1: (B,) int64 global expert id of each sample's highest-probability held expert.
    selected: (B, r) int64 positions (into ``held_experts``) of the r experts mixed for
        each sample: the set D[c, e] of the feedback is the samples whose row names e.
    expert_logits: (B, k, C) each held expert's OWN class logits for each sample.
    gate_probs: (B, E) softmax over the held experts; exactly 0 on unheld experts.
    """

    held_experts: tuple[int, ...]
    top1: torch.Tensor
    selected: torch.Tensor
    expert_logits: torch.Tensor
    gate_probs: torch.Tensor

    def selected_mask(self) -> torch.Tensor:
        """(B, k) bool: True where the held expert at that position was among the r mixed."""
        mask = torch.zeros(self.expert_logits.shape[:2], dtype=torch.bool, device=self.selected.device)
        return mask.scatter_(1, self.selected, True)

    def top1_expert_logits(self) -> torch.Tensor:
        """(B, C) logits of each sample's top-1 expert alone."""
        position = self.gate_probs[:, list(self.held_experts)].argmax(dim=1)
        index = position.view(-1, 1, 1).expand(-1, 1, self.expert_logits.shape[2])
        return self.expert_logits.gather(1, index).squeeze(1)


# --------------------------------------------------------------------------- model


class MoEClassifier(nn.Module):
    """Extractor + the held experts + a masked top-r gate.

    Args:
        num_experts: E, the number of experts in the federation (ids 0..E-1).
        held_experts: the ids this model holds (A_c); stored ascending.
        num_classes, in_channels, image_size: the data's shape.
        arch: "cnn" (28x28 grayscale) or "resnet" (32x32 colour); both adapt to any size.
        top_r: experts mixed per sample; the effective r is min(top_r, k).
        expert_hidden: hidden width of each expert MLP.
        gate_seed: if given, the gate is initialised from this seed alone. The modules are
            built from the global torch RNG in order (extractor, k experts, gate), so
            without it a client's initial gate would depend on how many experts it holds:
            two methods that assign different k would start the same client from
            different gates, and the comparison would change more than the rule.
        expert_kind: "head" (the method: each expert maps features to class logits) or
            "hidden" (each expert is a residual block feature -> feature; the mixture
            ``h = f + sum_j w_j expert_j(f)`` goes through one shared linear ``classifier``,
            built after the gate so a "head" model's RNG stream is unchanged).
    """

    _held_index: torch.Tensor  # buffers (register_buffer), typed for the checker
    _held_mask: torch.Tensor

    def __init__(
        self,
        num_experts: int,
        held_experts: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        arch: str = "cnn",
        top_r: int = 2,
        expert_hidden: int = 64,
        gate_seed: int | None = None,
        expert_kind: str = "head",
    ) -> None:
        super().__init__()
        held = _validated_held(num_experts, held_experts)
        _validate_sizes(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            top_r=top_r,
            expert_hidden=expert_hidden,
        )
        checks.choice("arch", arch, ARCHS)
        checks.choice("expert_kind", expert_kind, EXPERT_KINDS)
        self.expert_kind = expert_kind
        self.num_experts = int(num_experts)
        self.num_classes = int(num_classes)
        self.arch = arch
        self.top_r = int(top_r)
        self._held = held
        extractor_class = CnnExtractor if arch == "cnn" else ResNetExtractor
        self.extractor = extractor_class(in_channels, FEATURE_DIM)
        if expert_kind == "head":
            build = lambda: make_expert(FEATURE_DIM, expert_hidden, num_classes)  # noqa: E731
        else:
            build = lambda: make_hidden_expert(FEATURE_DIM, expert_hidden)  # noqa: E731
        self.experts = nn.ModuleDict({str(e): build() for e in held})
        self.gate = nn.Linear(FEATURE_DIM, num_experts)
        if gate_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(gate_seed))
                self.gate.reset_parameters()
        self.classifier: nn.Linear | None = nn.Linear(FEATURE_DIM, num_classes) if expert_kind == "hidden" else None
        # Buffers, not parameters, and non-persistent: they are derived from `held`
        # and must not leak into the state dict the federation exchanges.
        self.register_buffer("_held_index", torch.tensor(held, dtype=torch.long), persistent=False)
        mask = torch.zeros(num_experts, dtype=torch.bool)
        mask[list(held)] = True
        self.register_buffer("_held_mask", mask, persistent=False)

    # ---------------------------------------------------------------- properties

    @property
    def held_experts(self) -> tuple[int, ...]:
        """Global ids of the experts this model holds, ascending."""
        return self._held

    @property
    def effective_top_r(self) -> int:
        """r = min(top_r, k): one cannot mix more experts than one holds."""
        return min(self.top_r, len(self._held))

    # ---------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the top-r mixture."""
        return self.forward_with_routing(x)[0]

    def forward_with_routing(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """Class logits plus the routing decisions (see ``Routing``).

        Mixing: p = softmax of the gate logits over the held experts (unheld logits are
        -inf, hence probability exactly 0 and gradient exactly 0); take the r largest
        p; output = sum_j w_j * expert_j(x) with w = p_top / sum(p_top).

        For r == 1 the weight is p_top itself, NOT renormalised (the Switch Transformer
        convention, Fedus et al. 2021): renormalising a single probability gives w = 1,
        the output would no longer depend on the gate and the gate would receive no
        gradient from the task loss, so it could never learn to route. With r >= 2 the
        renormalised weights still depend on the gate logits, so they train it.
        (With k == 1 the only held expert has p = 1 whatever the gate says: there is
        nothing to route, and the gate rightly gets no gradient.)

        All k held experts are evaluated densely: k is small on an edge client, and the
        feedback needs every held expert's own logits anyway.

        With ``expert_kind="hidden"`` the experts' outputs o_j are mixed in feature space,
        ``logits = classifier(f + sum_j w_j o_j)``, and an expert's own logits are
        ``classifier(f + o_j)`` (what the model would say with that expert alone).
        """
        features = self.extractor(x)
        gate_logits = self.gate(features)
        masked = gate_logits.masked_fill(~self._held_mask, float("-inf"))
        gate_probs = torch.softmax(masked, dim=1)  # (B, E), exact zeros on unheld
        held_probs = gate_probs.index_select(1, self._held_index)  # (B, k)
        outputs = torch.stack([self.experts[str(e)](features) for e in self._held], dim=1)

        r = self.effective_top_r
        top_probs, top_pos = held_probs.topk(r, dim=1)  # (B, r)
        weights = top_probs if r == 1 else top_probs / top_probs.sum(dim=1, keepdim=True)
        index = top_pos.unsqueeze(2).expand(-1, -1, outputs.shape[2])
        chosen = outputs.gather(1, index)  # (B, r, C), or (B, r, FEATURE_DIM) for hidden experts
        mixed = (weights.unsqueeze(2) * chosen).sum(dim=1)
        if self.classifier is None:
            expert_logits, logits = outputs, mixed
        else:
            expert_logits = self.classifier(features.unsqueeze(1) + outputs)
            logits = self.classifier(features + mixed)

        top1 = self._held_index[held_probs.argmax(dim=1)]
        routing = Routing(
            held_experts=self._held, top1=top1, selected=top_pos, expert_logits=expert_logits, gate_probs=gate_probs
        )
        return logits, routing

    # ---------------------------------------------------------------- state exchange

    def shared_state_dict(self) -> dict[str, np.ndarray]:
        """Extractor + held experts as float32 numpy copies (what goes to the server).

        Copies, because ``Tensor.numpy()`` shares memory: later local training would
        otherwise silently change arrays the caller already holds.
        """
        return {key: _to_numpy(value) for key, value in self.state_dict().items() if not key.startswith(GATE_PREFIX)}

    def load_shared_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Load extractor + held experts; every expected key must be present and no other.

        Strict on purpose: a missing key means the server sent the wrong expert set,
        an unexpected one (e.g. an unheld expert or the gate) means bytes sent for
        nothing or a personal gate leaking through the shared channel.
        """
        expected = [k for k in self.state_dict() if not k.startswith(GATE_PREFIX)]
        self._load_group(state, expected, "shared state")

    def gate_state(self) -> dict[str, np.ndarray]:
        """The personal gate as float32 numpy copies (kept on the client)."""
        return {k: _to_numpy(v) for k, v in self.state_dict().items() if k.startswith(GATE_PREFIX)}

    def load_gate_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Load the personal gate (strict, like ``load_shared_state``)."""
        expected = [k for k in self.state_dict() if k.startswith(GATE_PREFIX)]
        self._load_group(state, expected, "gate state")

    def _load_group(self, state: Mapping[str, np.ndarray], expected: list[str], what: str) -> None:
        own = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{what} does not match the model holding experts {list(self._held)}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        tensors = {}
        for key in expected:
            value = torch.as_tensor(np.asarray(state[key]))
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"{what}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
                )
            tensors[key] = value.to(dtype=own[key].dtype)
        # strict=False only because the other group is deliberately not in `tensors`;
        # the key check above is the strict one.
        self.load_state_dict(tensors, strict=False)


def build_global_state(num_experts: int, *, seed: int, **model_kwargs: object) -> dict[str, np.ndarray]:
    """The server's initial global model: extractor + ALL E experts, no gate.

    Deterministic given ``seed`` (and the model kwargs); the caller's global torch RNG
    is left untouched.
    """
    if "held_experts" in model_kwargs:
        raise ValueError("build_global_state holds all experts; do not pass held_experts")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = MoEClassifier(num_experts, list(range(int(num_experts))), **model_kwargs)  # type: ignore[arg-type]
    return model.shared_state_dict()


# --------------------------------------------------------------------------- helpers


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", dtype=torch.float32).numpy().copy()


def _validated_held(num_experts: int, held_experts: Sequence[int]) -> tuple[int, ...]:
    checks.integer("num_experts", num_experts, minimum=1)
    held = checks.integers("held_experts", held_experts)
    if not held:
        raise ValueError("held_experts must name at least one expert, got an empty list")
    out_of_range = [e for e in held if not 0 <= e < num_experts]
    if out_of_range:
        raise ValueError(f"held_experts {out_of_range} out of range: expert ids are 0..{num_experts - 1}")
    if len(set(held)) != len(held):
        raise ValueError(f"held_experts contains duplicates: {held}")
    return tuple(sorted(held))


def _validate_sizes(**sizes: int) -> None:
    minimum = {"num_classes": 2, "in_channels": 1, "image_size": 4, "top_r": 1, "expert_hidden": 1}
    for name, value in sizes.items():
        checks.integer(name, value, minimum=minimum[name])
