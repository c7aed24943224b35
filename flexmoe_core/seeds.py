"""Seeds derived from names, so that each random stream depends only on what it is for.

A comparison of assignment rules must change nothing but the rule: the clients sampled
in a round, a client's initial gate and its data order must not depend on how many
random numbers the rule itself drew, nor on how many experts the client holds. Each of
those streams is therefore seeded from (run seed, purpose, identity) alone.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed that depends only on `seed` and `parts` (stable across processes and runs).

    SHA-256 rather than `hash()`: Python salts string hashes per process.
    """
    text = "/".join([str(int(seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFF_FFFF


def round_rng(seed: int, purpose: str, server_round: int) -> np.random.Generator:
    """A fresh generator for one purpose in one round: nothing a previous round drew can shift it."""
    return np.random.default_rng(derive_seed(seed, purpose, server_round))


def fixed_cohort(seed: int, client_ids: list[str], size: int) -> list[str]:
    """`size` of `client_ids` drawn once from `seed` (setting `eval-cohort`), sorted.

    One rule for the server's evaluation cohort and for baselines run outside Flower (the bench's
    `local`), so both evaluate exactly the same clients."""
    known = sorted(client_ids)
    rng = round_rng(seed, "eval-cohort", 0)
    chosen = rng.choice(len(known), size=min(int(size), len(known)), replace=False)
    return sorted(known[i] for i in chosen)
