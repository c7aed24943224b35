"""Local training with per-expert feedback, and evaluation, for ``MoEClassifier``.

The feedback is what the server's fitness table and expert aggregation consume, one
entry per GLOBAL expert id (arrays of length E, zeros for experts the client does not
hold). Let D[c, e] be the samples of the LAST epoch on which expert e was among the r
experts the gate selected (with top-r routing a sample is in r of these sets):

* ``usage[e]``    |D[c, e]|, a count (so sum(usage) == r * num_examples). Counted rather
                  than gate-weighted: it is an integer the server can bound by the
                  example count, and it is the same number that weights expert e in the
                  aggregation, so an expert that is only ever the second choice still
                  has its trained weights averaged in;
* ``accuracy[e]`` accuracy of expert e's OWN logits on D[c, e];
* ``loss[e]``     mean cross-entropy of expert e's OWN logits on D[c, e];
* ``class_counts[e, y]`` how many samples of class y had e as their top-1 expert (the held expert
                  with the highest gate probability): the label mix each expert specialises on,
                  E x C counts whose total is num_examples (each sample has one top-1 expert);

A held expert with empty D[c, e] reports usage 0 and accuracy = loss = 0; the server
reads usage 0 as "held and never used" and scores it 0 (see ``FitnessTable.update``),
so the loss 0 is never taken for a perfect expert.

Why the expert's own output and not the mixture's: the mixture output blends r experts
with gate weights, so its accuracy credits (or blames) every expert in the mix for the
others' work and for the gate's choices, and would change with whichever experts the
client happened to hold alongside e. The fitness Q[c, e] must rank experts for this
client's data, which is exactly what e's own predictions on the samples routed to it
measure. The last epoch is used because it reflects the experts after adapting to the
local data, and each sample counts once per expert it was routed to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from flexmoe_core import checks, remedies
from flexmoe_core.model import MoEClassifier, Routing


@dataclass
class ExpertFeedback:
    """Per-expert feedback, arrays of length E indexed by global expert id."""

    usage: np.ndarray  # int64
    accuracy: np.ndarray  # float64, 0 where usage is 0
    loss: np.ndarray  # float64, 0 where usage is 0
    class_counts: np.ndarray | None = None  # (E, C) int64, top-1 routed samples per class


@dataclass
class TrainResult:
    num_examples: int  # samples in the local training set (= samples seen per epoch)
    mean_loss: float  # mean mixture cross-entropy over the last epoch's samples
    feedback: ExpertFeedback


@dataclass
class EvalResult:
    num_examples: int
    loss: float  # mean cross-entropy of the mixture
    accuracy: float


def train_local(
    model: MoEClassifier,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
    prox_mu: float = 0.0,
    logit_adjust: float = 0.0,
) -> TrainResult:
    """SGD (momentum 0.9) on the cross-entropy of the mixture output, in place on ``model``.

    ``prox_mu`` > 0 adds the proximal term (mu / 2) ||theta_e - theta_e^0||^2 on the held experts
    (setting `prox-mu`, flexmoe_core.remedies) to the loss that is minimised; the reported losses
    and the feedback stay the task's cross-entropy. At 0 the term is not computed at all.
    ``logit_adjust`` tau > 0 trains on the logit-adjusted cross-entropy CE(logits + tau log pi) with pi
    the client's (add-one smoothed) label prior (setting `logit-adjust`, flexmoe_core.remedies); the
    feedback and the reported loss stay the plain cross-entropy. At 0 it is not computed at all.

    Deterministic given ``seed``: the shuffling uses its own torch.Generator (the model
    has no other randomness), so the global RNG is neither used nor disturbed.
    Feedback is gathered from the training forward passes of the last epoch (the
    outputs that produced each step's loss), which costs no extra forward pass.
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    if not float(lr) >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    num_examples = len(dataset)  # type: ignore[arg-type]
    if num_examples == 0:
        raise ValueError("cannot train on an empty dataset (the client's partition has no training samples)")

    device = torch.device(device)
    model.to(device)
    model.train()
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(dataset, batch_size=int(batch_size), shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(lr), momentum=0.9)
    if not float(prox_mu) >= 0.0:
        raise ValueError(f"prox_mu must be >= 0, got {prox_mu!r}")
    anchor = remedies.expert_anchor(model) if prox_mu > 0.0 else None
    if not float(logit_adjust) >= 0.0:
        raise ValueError(f"logit_adjust must be >= 0, got {logit_adjust!r}")
    shift = (
        float(logit_adjust) * torch.log(remedies.label_prior(dataset, model.num_classes)).to(device)
        if logit_adjust > 0.0
        else None
    )

    num_experts = model.num_experts
    for epoch in range(int(epochs)):
        last_epoch = epoch == int(epochs) - 1
        totals = _FeedbackTotals(num_experts, device)
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits, routing = model.forward_with_routing(images)
            loss = F.cross_entropy(logits, labels) if shift is None else F.cross_entropy(logits + shift, labels)
            if anchor is not None:
                loss = loss + remedies.proximal_term(model, anchor, prox_mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if last_epoch:
                totals.add(logits.detach(), routing, labels)
    return TrainResult(num_examples=num_examples, mean_loss=totals.mean_loss(), feedback=totals.feedback())


@torch.no_grad()
def evaluate(
    model: MoEClassifier,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    logit_offset: torch.Tensor | None = None,
) -> EvalResult:
    """Mean cross-entropy and accuracy of the mixture output on ``dataset``.

    ``logit_offset`` (C,), when given, is added to the logits before the loss and the prediction (remedy
    `logit-adjust-predict`: the client's prior put back into a model trained on prior-adjusted logits).
    An empty dataset gives (0, 0.0, 0.0): with weight num_examples = 0 it cannot move an
    example-weighted average.
    """
    _check_positive_int("batch_size", batch_size)
    device = torch.device(device)
    model.to(device)
    model.eval()
    offset = None if logit_offset is None else logit_offset.to(device)
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in DataLoader(dataset, batch_size=int(batch_size), shuffle=False):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        if offset is not None:
            logits = logits + offset
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += int(labels.shape[0])
    if count == 0:
        return EvalResult(num_examples=0, loss=0.0, accuracy=0.0)
    return EvalResult(num_examples=count, loss=total_loss / count, accuracy=correct / count)


class _FeedbackTotals:
    """Running sums of one epoch's per-expert statistics, kept on the device."""

    def __init__(self, num_experts: int, device: torch.device) -> None:
        zeros = lambda dtype: torch.zeros(num_experts, dtype=dtype, device=device)  # noqa: E731
        self.usage = zeros(torch.int64)
        self.correct = zeros(torch.float64)
        self.loss_sum = zeros(torch.float64)
        self.mixture_loss_sum = 0.0
        self.samples = 0
        self.num_experts = num_experts
        self.class_counts: torch.Tensor | None = None  # (E * C,), sized on the first batch

    @torch.no_grad()
    def add(self, mixture_logits: torch.Tensor, routing: Routing, labels: torch.Tensor) -> None:
        own = routing.expert_logits.detach()  # (B, k, C): each held expert alone
        batch, held, classes = own.shape
        own_loss = (
            F.cross_entropy(own.reshape(-1, classes), labels.repeat_interleave(held), reduction="none")
            .view(batch, held)
            .double()
        )
        own_correct = (own.argmax(dim=2) == labels[:, None]).double()
        selected = routing.selected_mask().double()  # (B, k): sample in D[c, e]
        held_ids = torch.tensor(routing.held_experts, dtype=torch.long, device=self.usage.device)
        self.usage.index_add_(0, held_ids, selected.sum(dim=0).long())
        self.correct.index_add_(0, held_ids, (selected * own_correct).sum(dim=0))
        self.loss_sum.index_add_(0, held_ids, (selected * own_loss).sum(dim=0))
        self.mixture_loss_sum += float(F.cross_entropy(mixture_logits, labels, reduction="sum"))
        if self.class_counts is None:
            self.class_counts = torch.zeros(self.num_experts * classes, dtype=torch.int64, device=labels.device)
        cell = routing.top1.to(labels.device).long() * classes + labels.long()
        self.class_counts += torch.bincount(cell, minlength=self.num_experts * classes)
        self.samples += int(labels.shape[0])

    def mean_loss(self) -> float:
        return self.mixture_loss_sum / self.samples if self.samples else 0.0

    def feedback(self) -> ExpertFeedback:
        usage = self.usage.cpu().numpy().astype(np.int64)
        denominator = np.maximum(usage, 1).astype(np.float64)  # 0/1 = 0 where unused
        return ExpertFeedback(
            usage=usage,
            accuracy=self.correct.cpu().numpy() / denominator,
            loss=self.loss_sum.cpu().numpy() / denominator,
            class_counts=(
                None
                if self.class_counts is None
                else self.class_counts.cpu().numpy().astype(np.int64).reshape(self.num_experts, -1)
            ),
        )


def _check_positive_int(name: str, value: object) -> None:
    checks.integer(name, value, minimum=1)
