"""Attack simulation for robustness research (off by default: `attack = "none"`).

An attacking client trains normally, then poisons what it sends. Every attacked reply is
finite, float32 and has exactly the keys and shapes it was sent, so it passes reply
validation and reaches aggregation by the normal path: what a defence must stop.

``scale``      sends global + s * (trained - global): a boosted update (model replacement);
``sign-flip``  sends global - s * (trained - global): the update reversed;
``noise``      sends trained + N(0, (s * std of the update)^2), seeded per client and round;
``label-flip`` trains on labels y -> C - 1 - y (a data-poisoning attack), sends honestly.

`s` is `attack-scale`.

It lives in the ClientApp because the client is what applies an attack: the core only knows the
attack *names* (`flexmoe_core.config.ATTACKS`, so settings are checked before round 1) and never
imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flexmoe_core import checks
from flexmoe_core.config import ATTACKS

MODEL_ATTACKS = ("scale", "sign-flip", "noise")


def poison_update(
    sent: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], attack: str, scale: float, seed: int
) -> dict[str, np.ndarray]:
    """What an attacking client sends instead of `trained` (unchanged for none / label-flip)."""
    checks.choice("attack", attack, ATTACKS)
    if attack not in MODEL_ATTACKS:
        return {k: np.array(v, copy=True) for k, v in trained.items()}
    rng = np.random.default_rng(seed)
    poisoned = {}
    for key, value in trained.items():
        base = np.asarray(sent[key], dtype=np.float64)
        update = np.asarray(value, dtype=np.float64) - base
        if attack == "scale":
            out = base + scale * update
        elif attack == "sign-flip":
            out = base - scale * update
        else:
            out = np.asarray(value, dtype=np.float64) + rng.normal(0.0, scale * float(update.std()), update.shape)
        poisoned[key] = _finite(out).astype(np.asarray(value).dtype)
    return poisoned


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """y -> C - 1 - y: every label moves to another class when C is even (C = 10 here)."""
    labels = np.asarray(labels)
    return (num_classes - 1 - labels).astype(labels.dtype)


def _finite(values: np.ndarray) -> np.ndarray:
    # A huge scale could overflow float32; the attack must stay well-formed to test the defence.
    limit = float(np.finfo(np.float32).max) / 2
    return np.clip(values, -limit, limit)
