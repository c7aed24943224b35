"""flwr-datasets partitions (client_app.partitions): coverage, determinism, schemes,
the fast row read against the public API, and validation."""

from __future__ import annotations

import numpy as np
import pytest

from client_app import partitions
from client_app.partitions import FlowerPartitioning, partition_indices
from flexmoe_core.config import PARTITIONS, Settings

LABELS = np.repeat(np.arange(10), 60)[np.random.default_rng(5).permutation(600)]


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_partitions_are_disjoint_cover_everything_and_repeat_by_seed(scheme):
    parts = partition_indices(LABELS, 12, scheme, alpha=0.8, classes_per_client=4, seed=3)
    assert len(parts) == 12
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == len(LABELS)  # disjoint and complete
    assert all(p.dtype == np.int64 for p in parts)
    again = partition_indices(LABELS, 12, scheme, alpha=0.8, classes_per_client=4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(LABELS, 12, scheme, alpha=0.8, classes_per_client=4, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_partitions_have_equal_sizes_and_mixed_labels():
    sorted_labels = np.sort(LABELS)  # worst case: data sorted by class
    parts = partition_indices(sorted_labels, 6, "iid", seed=0)
    assert [len(p) for p in parts] == [100] * 6
    assert all(len(np.unique(sorted_labels[p])) == 10 for p in parts)


def test_classes_scheme_gives_exactly_c_classes_per_client():
    for c in (1, 2, 4):
        parts = partition_indices(LABELS, 10, "classes", classes_per_client=c, seed=1)
        assert [len(np.unique(LABELS[p])) for p in parts] == [c] * 10
        # first-deterministic: client i always holds class i mod 10
        assert all(i in set(LABELS[p]) for i, p in enumerate(parts))


def test_dirichlet_alpha_controls_heterogeneity():
    def mean_top_class_share(alpha: float) -> float:
        parts = partition_indices(LABELS, 10, "dirichlet", alpha=alpha, seed=2)
        return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))

    assert mean_top_class_share(0.1) > 0.5 > mean_top_class_share(100.0)


@pytest.mark.parametrize("scheme", ["dirichlet", "classes", "iid"])
def test_direct_row_read_equals_public_load_partition(scheme, monkeypatch):
    fast = partition_indices(LABELS, 7, scheme, alpha=0.5, classes_per_client=3, seed=9)
    monkeypatch.setattr(partitions, "READ_PARTITION_ROWS_DIRECTLY", False)
    slow = partition_indices(LABELS, 7, scheme, alpha=0.5, classes_per_client=3, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_partitions=3, scheme="shards"), "scheme"),
        (dict(num_partitions=0, scheme="iid"), "num_partitions"),
        (dict(num_partitions=601, scheme="iid"), "num_partitions"),
        (dict(num_partitions=3, scheme="dirichlet", alpha=0.0), "alpha"),
        (dict(num_partitions=3, scheme="classes", classes_per_client=11), "classes_per_client"),
        (dict(num_partitions=3, scheme="classes", classes_per_client=0), "classes_per_client"),
    ],
)
def test_partition_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        partition_indices(LABELS, **kwargs)


def test_flower_partitioning_from_settings_normalises_unused_settings():
    """Settings a scheme ignores do not change the partitioner (one cache entry per real split)."""
    base = {"partition": "iid", "seed": 4}
    a = FlowerPartitioning.of(Settings.from_run_config({**base, "dirichlet-alpha": 0.3}))
    b = FlowerPartitioning.of(Settings.from_run_config({**base, "dirichlet-alpha": 5.0, "classes-per-client": 3}))
    assert a == b and hash(a) == hash(b)
    dirichlet = FlowerPartitioning.of(
        Settings.from_run_config({"partition": "dirichlet", "dirichlet-alpha": 0.3, "seed": 4})
    )
    assert dirichlet == FlowerPartitioning("dirichlet", alpha=0.3, seed=4)
    parts = dirichlet(LABELS, 5)
    expected = partition_indices(LABELS, 5, "dirichlet", alpha=0.3, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(parts, expected))
