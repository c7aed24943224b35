"""Federated partitions through flwr-datasets partitioners (the Flower side of the data).

``flexmoe_core.data.client_datasets`` takes any hashable ``Partitioner``; this module
provides the one the app uses, so the core library stays independent of Flower's
packages. Schemes: ``iid``, ``dirichlet`` (alpha) and ``classes`` (classes per client).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexmoe_core import checks
from flexmoe_core.config import PARTITIONS, Settings


@dataclass(frozen=True)
class FlowerPartitioning:
    """A hashable ``flexmoe_core.data.Partitioner``: ``partition_indices`` with fixed settings.

    Settings a scheme does not use are normalised away (see ``of``) so that they do not
    split the partition cache."""

    scheme: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    seed: int = 0

    @classmethod
    def of(cls, settings: Settings) -> FlowerPartitioning:
        scheme = settings.partition
        return cls(
            scheme=scheme,
            alpha=float(settings.dirichlet_alpha) if scheme == "dirichlet" else cls.alpha,
            classes_per_client=int(settings.classes_per_client) if scheme == "classes" else cls.classes_per_client,
            seed=int(settings.seed),
        )

    def __call__(self, labels: np.ndarray, num_partitions: int) -> list[np.ndarray]:
        return partition_indices(
            labels,
            num_partitions,
            self.scheme,
            alpha=self.alpha,
            classes_per_client=self.classes_per_client,
            seed=self.seed,
        )


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices 0..n-1 among ``num_partitions`` clients with flwr-datasets.

    scheme:
      * "iid": a seeded shuffle, then ``IidPartitioner`` (contiguous equal shards - on
        unshuffled data sorted by class that would not be IID, hence the shuffle);
      * "dirichlet": ``DirichletPartitioner`` (per-class Dirichlet(alpha) proportions,
        Hsu et al. 2019; no self-balancing, so alpha alone sets the heterogeneity);
      * "classes": ``PathologicalPartitioner`` with exactly ``classes_per_client``
        classes per client, mode "first-deterministic" (client i always gets class
        i mod C, so every class is used when there are at least C clients; the others
        are drawn at random from the seed). With fewer clients than classes, the
        classes nobody drew are left out of the federation (flwr-datasets warns).

    Only an (index, label) table goes into the ``datasets.Dataset``; images stay in
    numpy. Returns one int64 index array per partition (disjoint).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if (
        isinstance(num_partitions, bool)
        or not isinstance(num_partitions, (int, np.integer))
        or not 1 <= num_partitions <= len(labels)
    ):
        raise ValueError(
            f"num_partitions must be an integer in 1..{len(labels)} (the number of samples), got {num_partitions!r}"
        )
    checks.choice("partition scheme", scheme, PARTITIONS)

    # Imported here: `datasets` takes seconds to import and only partitioning needs it.
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    index = np.arange(len(labels), dtype=np.int64)
    if scheme == "iid":
        index = np.random.default_rng(seed).permutation(index)
        partitioner = IidPartitioner(num_partitions=int(num_partitions))
    elif scheme == "dirichlet":
        if not (isinstance(alpha, (int, float, np.floating)) and alpha > 0):
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha!r}")
        # flwr-datasets resamples until every client has min_partition_size samples;
        # keep that small relative to n/N so small test data sets are partitionable.
        min_size = max(1, min(10, len(labels) // (2 * int(num_partitions))))
        partitioner = DirichletPartitioner(
            num_partitions=int(num_partitions),
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_size,
            self_balancing=False,
            shuffle=True,
            seed=int(seed),
        )
    else:
        num_classes = len(np.unique(labels))
        if (
            isinstance(classes_per_client, bool)
            or not isinstance(classes_per_client, (int, np.integer))
            or not 1 <= classes_per_client <= num_classes
        ):
            raise ValueError(
                f"classes_per_client must be an integer in 1..{num_classes} "
                f"(classes in the data), got {classes_per_client!r}"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=int(num_partitions),
            partition_by="label",
            num_classes_per_partition=int(classes_per_client),
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=int(seed),
        )
    partitioner.dataset = Dataset.from_dict({"index": index, "label": labels[index].astype(np.int64)})
    try:
        return [_partition_samples(partitioner, pid, index) for pid in range(int(num_partitions))]
    except ValueError as error:
        raise ValueError(
            f"cannot build {scheme!r} partitions of {len(labels)} samples into "
            f"{num_partitions} clients (alpha={alpha}, classes_per_client="
            f"{classes_per_client}): {error}"
        ) from error


READ_PARTITION_ROWS_DIRECTLY = True
"""Fast path of ``_partition_samples``; the tests switch it off to compare with the public API."""


def _partition_samples(partitioner: object, partition_id: int, index: np.ndarray) -> np.ndarray:
    """Sample indices of one partition; ``index`` is the table's "index" column.

    ``load_partition`` returns ``dataset.select(rows)``, and ``datasets`` fingerprints
    every select by dill-hashing the row list element by element: about 1 s per 6,000
    rows, i.e. ~10 s to read back one 60k-sample partitioning. The Dirichlet and
    pathological partitioners keep exactly those row lists in
    ``_partition_id_to_indices`` once ``num_partitions`` has been read, so we read them
    there, and fall back to the public ``load_partition`` when a partitioner (IID, or a
    future flwr-datasets version) has no such attribute. tests/test_data.py checks that
    both paths give the same samples, so a change of meaning upstream is caught.
    """
    _ = partitioner.num_partitions  # type: ignore[attr-defined]  # triggers the split once
    rows = getattr(partitioner, "_partition_id_to_indices", None) if READ_PARTITION_ROWS_DIRECTLY else None
    if isinstance(rows, dict) and partition_id in rows:
        return index[np.asarray(rows[partition_id], dtype=np.int64)]
    table = partitioner.load_partition(partition_id)  # type: ignore[attr-defined]
    # table[:] converts whole columns at once; table["index"] is a lazy Column that
    # numpy would read row by row (slow in datasets 4.x).
    return np.asarray(table[:]["index"], dtype=np.int64)
