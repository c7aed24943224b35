"""Remedies for few holders per expert (issue #25): ablations beside the faithful method.

With E experts, capacity k and N participants a round, an expert has about N k / E holders a
round (1.25 in a 10-of-50, E = 16, k = 2 cell). Its usage-weighted average is then essentially its
last holder's local model. Each remedy below is one setting, off by default; with every default the
method's arithmetic is untouched (the code paths are skipped, not run with neutral values).

* ``expert-kind = "hidden"``   experts are hidden residual blocks in front of one shared
                               classifier (``classifier.*``, FedAvg'd like the extractor), so no
                               expert has to be a whole classifier (flexmoe_core.model).
* ``expert-server-lr``,        a per-expert server step on the averaged delta (FedAvgM, Hsu et al.
  ``expert-server-momentum``,  2019, applied to each expert): ``v_e <- beta v_e + delta_e``,
  ``expert-step-scale``        ``theta_e <- theta_e + eta_e v_e`` with ``eta_e = lr`` or, with
                               scale "holders", ``lr x holders_e / participants`` (an expert held
                               by one of ten participants moves a tenth of the way). Only experts
                               held this round move; the others keep weights and velocity. The
                               velocity is server state (checkpointed in ServerState).
* ``prox-mu``                  a proximal term ``(mu / 2) ||theta_e - theta_e^0||^2`` on each held
                               expert during local training (FedProx, Li et al. 2020, on the
                               experts only): its gradient is ``mu (theta_e - theta_e^0)``.
* ``logit-adjust``             local training minimises the logit-adjusted cross-entropy
                               ``CE(logits + tau log pi_c)`` with pi_c the client's label prior
                               (add-one smoothed), so a client with one or two classes does not
                               push the experts it holds to rule the other classes out (Menon et
                               al. 2021; FedLC, Zhang et al. 2022). Prediction stays on the logits,
                               or, with ``logit-adjust-predict = "prior"``, adds ``tau log pi_c`` back
                               (the client's own label mix is what it is tested on).
* ``adapt-steps``, ``adapt-lr``, local adaptation at evaluation: a copy of the client's model takes
  ``adapt-rounds``             a few SGD steps on its training split, on the held experts and the
                               gate only, and is tested beside the un-adapted one, every round or
                               (``adapt-rounds = "last"``) in the last round only
                               (``accuracy-adapted``; ``accuracy`` is unchanged). Nothing of the copy
                               is sent or stored: the evaluation reply carries metrics only, and the
                               gate kept on the client is the one training produced.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flexmoe_core import checks
from flexmoe_core.model import MoEClassifier
from flexmoe_core.protocol import ACCURACY_ADAPTED, EXPERTS_PREFIX, GATE_PREFIX, LOSS_ADAPTED, expert_of
from flexmoe_core.replies import ReplyError

STEP_SCALES = ("none", "holders")
ADAPT_ROUNDS = ("every", "last")
PREDICTIONS = ("plain", "prior")

State = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------- proximal term


def prediction_offset(dataset: Dataset, num_classes: int, tau: float, rule: str) -> torch.Tensor | None:
    """What evaluation adds to the logits: nothing ("plain"), or ``tau log pi_c`` ("prior"), the
    client's own smoothed label prior put back into a model trained on CE(logits + tau log pi_c), so it
    predicts for the client's label mix instead of a balanced one (Menon et al. 2021, §3-4)."""
    if rule not in PREDICTIONS:
        raise ValueError(f"logit-adjust-predict must be one of {', '.join(PREDICTIONS)}, got {rule!r}")
    if rule == "plain":
        return None
    return float(tau) * torch.log(label_prior(dataset, num_classes))


def expert_anchor(model: MoEClassifier) -> dict[str, torch.Tensor]:
    """Detached copies of the held experts' parameters as the round starts (theta^0 of the prox term)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith(EXPERTS_PREFIX)}


def proximal_term(model: MoEClassifier, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """``(mu / 2) sum_e ||theta_e - theta_e^0||^2`` over the held experts: its gradient is mu (theta - theta^0)."""
    total = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        if name in anchor:
            total = total + (param - anchor[name]).pow(2).sum()
    return 0.5 * float(mu) * total


def label_prior(dataset: Dataset, num_classes: int) -> torch.Tensor:
    """The add-one smoothed label frequencies (count_y + 1) / (n + C) of a dataset of (x, y) pairs."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        labels = torch.as_tensor(tensors[1]).long().cpu()
    else:
        labels = torch.tensor([int(y) for _, y in dataset], dtype=torch.long)  # type: ignore[attr-defined]
    counts = torch.bincount(labels, minlength=int(num_classes)).double()
    return ((counts + 1.0) / (counts.sum() + num_classes)).float()


# --------------------------------------------------------------------------- server step


def step_is_default(lr: float, momentum: float, scale: str) -> bool:
    """True when the server step is the plain average (the method): then it is not applied at all."""
    return float(lr) == 1.0 and float(momentum) == 0.0 and scale == "none"


def expert_server_step(
    previous: State,
    averaged: State,
    holders: Mapping[int, int],
    participants: int,
    velocity: dict[str, np.ndarray],
    *,
    lr: float,
    momentum: float,
    scale: str,
) -> dict[str, np.ndarray]:
    """The global model after a per-expert server step on this round's averaged expert deltas.

    Args:
        previous: the global model before the round.
        averaged: the round's aggregate (usage-weighted average of the holders, or a robust rule).
        holders: expert id -> how many of the round's completed participants held it.
        participants: the round's completed participants (the denominator of the holders' share).
        velocity: per expert key, the server's momentum buffer; updated in place for the experts
            held this round (created at 0), kept for the others.
        lr, momentum, scale: ``eta``, ``beta`` and "none" | "holders" (see the module docstring).

    Shared keys (extractor, classifier) keep the average; experts held by nobody keep `previous`.
    Arithmetic in float64, each output cast to its global array's dtype.
    """
    checks.choice("expert-step-scale", scale, STEP_SCALES)
    if not (math.isfinite(lr) and lr > 0.0):
        raise ValueError(f"expert-server-lr must be a finite number > 0, got {lr!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"expert-server-momentum must be in [0, 1), got {momentum!r}")
    result = {key: np.array(value, copy=True) for key, value in averaged.items()}
    if participants <= 0:
        return result
    for key, value in averaged.items():
        expert = expert_of(key)
        if expert is None or holders.get(expert, 0) <= 0:
            continue
        base = np.asarray(previous[key], dtype=np.float64)
        delta = np.asarray(value, dtype=np.float64) - base
        share = holders[expert] / participants if scale == "holders" else 1.0
        v = momentum * velocity.get(key, np.zeros_like(delta)) + delta
        velocity[key] = v
        dtype = np.asarray(previous[key]).dtype
        result[key] = (base + lr * share * v).astype(dtype)
    return result


def holder_counts(held: list[list[int]]) -> dict[int, int]:
    """expert id -> how many of the given expert lists (one per completed participant) contain it."""
    counts: dict[int, int] = {}
    for experts in held:
        for e in experts:
            counts[int(e)] = counts.get(int(e), 0) + 1
    return counts


# --------------------------------------------------------------------------- adaptation at evaluation


def adapts_in(server_round: int, num_server_rounds: int, when: str) -> bool:
    """Whether evaluation adapts a copy in this round: every round, or only the run's last one (a longer
    fine-tuning, as personalised-FL evaluations do once before deployment, then costs one round's time)."""
    if when not in ADAPT_ROUNDS:
        raise ValueError(f"adapt-rounds must be one of {', '.join(ADAPT_ROUNDS)}, got {when!r}")
    return when == "every" or server_round == num_server_rounds


def adaptable(name: str) -> bool:
    """The parameters local adaptation may change: the held experts and the gate."""
    return name.startswith(EXPERTS_PREFIX) or name.startswith(GATE_PREFIX)


def adapt(
    model: MoEClassifier,
    dataset: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> MoEClassifier:
    """A copy of `model` after `steps` plain-SGD steps on the mixture's cross-entropy over `dataset`,
    with only the held experts and the gate trainable; `model` itself is never changed.

    Batches cycle through a loader shuffled by its own generator (seeded), so the result is
    deterministic and the global RNG is untouched. An empty dataset or 0 steps returns an
    unchanged copy.
    """
    checks.integer("adapt-steps", steps, minimum=0)
    checks.integer("batch_size", batch_size, minimum=1)
    if not (math.isfinite(lr) and lr > 0.0):
        raise ValueError(f"adapt-lr must be a finite number > 0, got {lr!r}")
    adapted = copy.deepcopy(model).to(torch.device(device))
    if steps == 0 or len(dataset) == 0:  # type: ignore[arg-type]
        return adapted.eval()
    trainable = []
    for name, param in adapted.named_parameters():
        param.requires_grad_(adaptable(name))
        if adaptable(name):
            trainable.append(param)
    optimizer = torch.optim.SGD(trainable, lr=float(lr))
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(dataset, batch_size=int(batch_size), shuffle=True, generator=generator)
    adapted.train()
    batches = _cycle(loader)
    for _ in range(int(steps)):
        images, labels = next(batches)
        images, labels = images.to(adapted.gate.weight.device), labels.to(adapted.gate.weight.device)
        loss = torch.nn.functional.cross_entropy(adapted(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for param in adapted.parameters():
        param.requires_grad_(True)
    return adapted.eval()


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def adapted_outcome(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """(accuracy-adapted, loss-adapted) of an evaluation reply, None when it reports none.

    Raises ReplyError when they are there but out of range (accuracy in [0, 1]; loss >= 0, or NaN /
    +inf, as for the un-adapted loss).
    """
    if ACCURACY_ADAPTED not in metrics:
        return None
    accuracy, loss = metrics.get(ACCURACY_ADAPTED), metrics.get(LOSS_ADAPTED)
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
        raise ReplyError(ACCURACY_ADAPTED, f"must be a number in [0, 1], got {accuracy!r}")
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not (loss >= 0.0 or math.isnan(loss)):
        raise ReplyError(LOSS_ADAPTED, f"must be a number >= 0 (or NaN), got {loss!r}")
    return float(accuracy), float(loss)
