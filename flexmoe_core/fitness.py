"""Client-expert fitness table Q for FLEX-MoE.

The server keeps one row of E fitness values per client, keyed by a stable client id
(a string, so that it survives JSON checkpoints unchanged). After every round the row
is moved towards the feedback the client measured, but only for the experts the client
actually held: an expert it did not hold gave no evidence, so its entry keeps its value.

Rows start at an optimistic constant (`initial`), so that the assignment keeps trying
experts a client has never held until real feedback says they are worse.

An expert that was held but received no samples (the gate never selected it) has no
accuracy or loss to measure; it scores UNUSED_SCORE = 0, the worst score of both modes
(accuracy 0, exp(-alpha * loss) -> 0 as the loss grows). Otherwise such an entry would
keep its optimistic start forever and the expert would be assigned round after round to
a client that never uses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from flexmoe_core import checks

MODES = ("accuracy", "loss")
UNUSED_SCORE = 0.0

# Identifies a checkpoint written by this class, so that loading some other JSON file
# fails with a clear message instead of a confusing KeyError.
_FORMAT = "flexmoe-fitness-table"
_FORMAT_VERSION = 1


def _check_positive_int(name: str, value: Any) -> int:
    return checks.integer(name, value, minimum=1)


def _check_finite_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _check_client_id(client_id: Any) -> str:
    # Only strings: an int 3 and a str "3" would silently become two different rows
    # in memory but the same key after a JSON round trip.
    if not isinstance(client_id, str):
        raise ValueError(f"client_id must be a str, got {type(client_id).__name__} {client_id!r}")
    return client_id


class FitnessTable:
    """Fitness Q[c, e] of expert e for client c, updated by an exponential moving average.

    Args:
        num_experts: E, the number of experts (columns).
        mode: "accuracy" scores an expert by the client's accuracy on the samples routed
            to it; "loss" scores it by exp(-loss_alpha * mean loss) on those samples.
        ema_beta: weight of the new score, in (0, 1]; 1 means "keep only the last round".
        loss_alpha: sharpness of the loss-to-score map (> 0), used in mode "loss".
        initial: value of every entry of a client seen for the first time.
    """

    def __init__(
        self,
        num_experts: int,
        *,
        mode: str = "accuracy",
        ema_beta: float = 0.5,
        loss_alpha: float = 1.0,
        initial: float = 1.0,
    ) -> None:
        self._num_experts = _check_positive_int("num_experts", num_experts)
        checks.choice("mode", mode, MODES)
        self._mode = mode
        beta = _check_finite_float("ema_beta", ema_beta)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"ema_beta must lie in (0, 1], got {ema_beta!r}")
        self._ema_beta = beta
        alpha = _check_finite_float("loss_alpha", loss_alpha)
        if alpha <= 0.0:
            raise ValueError(f"loss_alpha must be > 0, got {loss_alpha!r}")
        self._loss_alpha = alpha
        self._initial = _check_finite_float("initial", initial)
        # Insertion-ordered, so to_dict() and client_ids list clients in first-seen order.
        self._rows: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- read access
    @property
    def num_experts(self) -> int:
        return self._num_experts

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def ema_beta(self) -> float:
        return self._ema_beta

    @property
    def loss_alpha(self) -> float:
        return self._loss_alpha

    @property
    def initial(self) -> float:
        return self._initial

    @property
    def client_ids(self) -> list[str]:
        """Known client ids, in the order they were first seen."""
        return list(self._rows)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rows))

    def __repr__(self) -> str:
        return (
            f"FitnessTable(num_experts={self._num_experts}, mode={self._mode!r}, "
            f"ema_beta={self._ema_beta}, loss_alpha={self._loss_alpha}, "
            f"initial={self._initial}, clients={len(self._rows)})"
        )

    def row(self, client_id: str) -> np.ndarray:
        """A copy of the client's (E,) fitness row; KeyError for an unknown client."""
        _check_client_id(client_id)
        if client_id not in self._rows:
            raise KeyError(f"unknown client_id {client_id!r}")
        return self._rows[client_id].copy()

    def scores(self, client_ids: Sequence[str]) -> np.ndarray:
        """(N, E) float64 fitness rows for `client_ids`, in that order.

        Unknown clients are added with the optimistic initial value: a client taking
        part for the first time must be assignable like any other.
        """
        if isinstance(client_ids, str):
            # A lone str is a Sequence of characters; that is never what a caller means.
            raise ValueError("client_ids must be a sequence of str ids, not a single str")
        ids = [_check_client_id(cid) for cid in client_ids]
        result = np.empty((len(ids), self._num_experts), dtype=np.float64)
        for i, cid in enumerate(ids):
            result[i] = self._row_or_new(cid)
        return result

    # ----------------------------------------------------------------- updates
    def score(self, accuracy: np.ndarray, loss: np.ndarray) -> np.ndarray:
        """The per-expert score s of the table's mode (elementwise, no validation)."""
        if self._mode == "accuracy":
            return np.asarray(accuracy, dtype=np.float64)
        return np.exp(-self._loss_alpha * np.asarray(loss, dtype=np.float64))

    def update(
        self,
        client_id: str,
        held: Sequence[int],
        accuracy: Sequence[float] | np.ndarray,
        loss: Sequence[float] | np.ndarray,
        usage: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """EMA-update the client's row on the experts it held this round.

        Q[c, e] <- (1 - beta) * Q[c, e] + beta * s[c, e] for e in `held`; every other
        entry keeps its value. Only the held entries of `accuracy` and `loss` are read
        (the trainer reports zeros for unheld experts), but both must have length E.
        With `usage` (length E), a held expert whose usage is 0 scores UNUSED_SCORE.
        """
        _check_client_id(client_id)
        held_ids = self._check_held(held)
        acc = self._check_feedback("accuracy", accuracy, held_ids)
        lss = self._check_feedback("loss", loss, held_ids)
        if np.any((acc[held_ids] < 0.0) | (acc[held_ids] > 1.0)):
            raise ValueError(f"accuracy of held experts must lie in [0, 1], got {acc[held_ids].tolist()}")
        used = (
            self._check_feedback("usage", usage, held_ids)[held_ids] > 0
            if usage is not None
            else np.ones(held_ids.size, dtype=bool)
        )
        row = self._row_or_new(client_id)
        if held_ids.size == 0:
            return
        new_score = np.where(used, self.score(acc[held_ids], lss[held_ids]), UNUSED_SCORE)
        beta = self._ema_beta
        row[held_ids] = (1.0 - beta) * row[held_ids] + beta * new_score

    def _row_or_new(self, client_id: str) -> np.ndarray:
        row = self._rows.get(client_id)
        if row is None:
            row = np.full(self._num_experts, self._initial, dtype=np.float64)
            self._rows[client_id] = row
        return row

    def _check_held(self, held: Sequence[int]) -> np.ndarray:
        ids = np.asarray(checks.integers("held expert ids", held), dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= self._num_experts)]
        if bad.size:
            raise ValueError(
                f"held expert ids must lie in [0, {self._num_experts - 1}], got {bad.tolist()} in {ids.tolist()}"
            )
        if np.unique(ids).size != ids.size:
            raise ValueError(f"held expert ids must not repeat, got {ids.tolist()}")
        return ids

    def _check_feedback(self, name: str, values: Any, held_ids: np.ndarray) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (self._num_experts,):
            raise ValueError(
                f"{name} must have shape ({self._num_experts},) (one value per expert), got shape {array.shape}"
            )
        if not np.all(np.isfinite(array[held_ids])):
            raise ValueError(f"{name} of held experts must be finite, got {array[held_ids].tolist()}")
        return array

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, lossless snapshot (Python floats round-trip exactly through json)."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "num_experts": self._num_experts,
            "mode": self._mode,
            "ema_beta": self._ema_beta,
            "loss_alpha": self._loss_alpha,
            "initial": self._initial,
            # A list of pairs rather than a mapping keeps the first-seen order explicit.
            "rows": [[cid, [float(v) for v in row]] for cid, row in self._rows.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitnessTable:
        """Rebuild a table from `to_dict()` output, validating every field."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a fitness table snapshot (expected format {_FORMAT!r})")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"fitness table snapshot version must be {_FORMAT_VERSION}, got {data.get('version')!r}")
        try:
            table = cls(
                data["num_experts"],
                mode=data["mode"],
                ema_beta=data["ema_beta"],
                loss_alpha=data["loss_alpha"],
                initial=data["initial"],
            )
            rows = data["rows"]
        except KeyError as missing:
            raise ValueError(f"fitness table snapshot lacks field {missing}") from None
        for entry in rows:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ValueError(f"fitness table row must be [client_id, values], got {entry!r}")
            cid, values = entry
            _check_client_id(cid)
            if cid in table._rows:
                raise ValueError(f"fitness table snapshot repeats client_id {cid!r}")
            row = np.asarray(values, dtype=np.float64)
            if row.shape != (table.num_experts,) or not np.all(np.isfinite(row)):
                raise ValueError(f"fitness row of client {cid!r} must be {table.num_experts} finite numbers")
            table._rows[cid] = row
        return table
