"""Tests for freezelab.data: loading, seed-exact recipes, clear errors and deterministic batching.

Real MNIST / Fashion-MNIST tests read ``$FREEZELAB_DATA`` (``make test`` sets it to shared/data) and
skip without it; everything else runs on tiny fake files written to ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freezelab import data as D

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------------------------
# helpers and fixtures


def write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    """Write ``arr`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    payload = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)


def fake_mnist(raw: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict[str, np.ndarray]:
    """A tiny MNIST-layout folder; returns the arrays written."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(raw / (f"{name}.gz" if gz else name), arr, 2051 if arr.ndim == 3 else 2049)
    return arrays


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = os.environ.get("FREEZELAB_DATA")
    if not root:
        pytest.skip("FREEZELAB_DATA is not set; `make test` points it at shared/data")
    if not (Path(root) / "MNIST" / "raw").is_dir() or not (Path(root) / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"FREEZELAB_DATA={root} has no MNIST/raw and FashionMNIST/raw")
    return Path(root)


@pytest.fixture(scope="module")
def mnist(real_root: Path) -> D.DatasetSplits:
    return D.load_dataset("mnist", root=real_root, seed=0)


@pytest.fixture(scope="module")
def fmnist_004(real_root: Path) -> D.DatasetSplits:
    return D.load_dataset("fashion_mnist", root=real_root, recipe="fmnist_90_10", seed=42)


def raw_arrays(root: Path, folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    raw = root / folder / "raw"
    return (
        D.read_idx(raw / f"{split}-images-idx3-ubyte.gz", 2051),
        D.read_idx(raw / f"{split}-labels-idx1-ubyte.gz", 2049),
    )


# ----------------------------------------------------------------------------------------------
# registry, names, root


def test_list_datasets_names_and_one_line_descriptions() -> None:
    listed = D.list_datasets()
    assert list(listed) == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"]
    assert all(desc and "\n" not in desc for desc in listed.values())
    assert list(D.list_recipes("mnist")) == ["standard", "mnist10k_80_20"]
    assert list(D.list_recipes("fashion_mnist")) == ["standard", "fmnist_90_10"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "imagenet"}, ["'imagenet'", "digits", "fashion_mnist", "cifar100"]),
        ({"name": "digits", "recipe": "fmnist_90_10"}, ["'fmnist_90_10'", "'digits'", "standard"]),
        ({"name": "digits", "subset": 0}, ["subset", "0"]),
    ],
)
def test_bad_names_raise_value_error_listing_valid_ones(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        D.load_dataset(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_resolve_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FREEZELAB_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert D.resolve_data_root() == tmp_path / "home" / ".cache" / "freezelab" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.resolve_data_root() == tmp_path / "xdg" / "freezelab" / "data"
    monkeypatch.setenv("FREEZELAB_DATA", str(tmp_path / "env"))
    assert D.resolve_data_root() == tmp_path / "env"
    assert D.resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert not (tmp_path / "env").exists()  # resolving creates nothing


# ----------------------------------------------------------------------------------------------
# embedded digits


def test_digits_loads_without_network_or_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_network(*_args: object) -> None:
        raise AssertionError("digits must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("FREEZELAB_DATA", str(tmp_path / "does-not-exist"))
    ds = D.load_dataset("digits", seed=0)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [1077, 360, 360]
    assert ds.input_shape == (64,) and ds.num_classes == 10 and ds.recipe == "standard"
    assert ds.source == "scikit-learn's bundled digits"
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.x.min() == 0.0 and ds.train.x.max() == 1.0
    assert (torch.bincount(ds.test.y, minlength=10) - 36).abs().max() <= 1  # stratified: 179-183 per class / 5


def test_digits_split_is_seeded_and_disjoint() -> None:
    a, b, c = (D.load_dataset("digits", seed=s, flatten=False) for s in (0, 0, 1))
    assert a.input_shape == (1, 8, 8) and a.train.x.shape == (1077, 1, 8, 8)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)
    rows = {tuple(r.tolist()) for s in (a.train, a.val, a.test) for r in s.x.flatten(1)}
    assert len(rows) >= 1790  # 1797 images, a handful of exact duplicates in the source


def test_subset_keeps_first_training_examples_only() -> None:
    full = D.load_dataset("digits", seed=3)
    small = D.load_dataset("digits", seed=3, subset=100)
    assert len(small.train) == 100 and torch.equal(small.train.x, full.train.x[:100])
    assert torch.equal(small.val.x, full.val.x) and torch.equal(small.test.x, full.test.x)


def test_dataset_splits_to_keeps_val_shared_with_test() -> None:
    held = D.Split(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    ds = D.DatasetSplits("x", held, held, held, 10, (3,), "r")
    moved = ds.to("cpu")
    assert moved.val is moved.test and moved.source == "unspecified"  # the default keeps old constructors working
    assert D.DatasetSplits("x", held, held, held, 10, (3,), "r", "official pickles").to("cpu").source == "official pickles"


# ----------------------------------------------------------------------------------------------
# IDX parsing, missing data, download glue (fake files)


def test_fake_mnist_folder_gz_and_uncompressed(tmp_path: Path) -> None:
    written = fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").rename(tmp_path / "x")
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", written["t10k-labels-idx1-ubyte"], 2049)
    ds = D.load_dataset("mnist", root=tmp_path, flatten=False)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [27, 3, 10]
    expected = torch.from_numpy(written["t10k-images-idx3-ubyte"]).float().div(255)[:, None]
    assert torch.equal(ds.test.x, expected)
    assert ds.test.y.tolist() == written["t10k-labels-idx1-ubyte"].tolist()


def test_read_idx_checks_magic_and_size(tmp_path: Path) -> None:
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "labels.gz", labels, 2049)
    with pytest.raises(D.DataCorruptError, match="magic 2049, expected 2051"):
        D.read_idx(tmp_path / "labels.gz", 2051)
    (tmp_path / "short").write_bytes((2049).to_bytes(4, "big") + (9).to_bytes(4, "big") + bytes(5))
    with pytest.raises(ValueError, match=r"5 data bytes, but the header says shape \(9,\)"):  # still a ValueError
        D.read_idx(tmp_path / "short", 2049)


def _garble_middle(blob: bytes) -> bytes:
    middle = len(blob) // 2
    return blob[:middle] + bytes(b ^ 0x5A for b in blob[middle : middle + 64]) + blob[middle + 64 :]


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: b[: len(b) // 2], "is not a readable gzip file"),  # the "Aborted." of issue 16
        (lambda b: b[:5], "is not a readable gzip file"),
        (lambda b: b"PK" + b[2:], "is not a readable gzip file"),  # the BadGzipFile traceback of issue 16
        (_garble_middle, "is not a readable gzip file"),
        (lambda b: gzip.compress(b""), "too short for an IDX header"),
        (lambda b: b"", "too short for an IDX header"),
    ],
    ids=["truncated", "header only", "bad magic", "garbled", "empty payload", "empty file"],
)
def test_damaged_mnist_gz_gives_one_line_naming_the_file(tmp_path: Path, damage, words: str) -> None:
    fake_mnist(tmp_path / "MNIST" / "raw", n_train=200)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(D.DataCorruptError) as err:
        D.load_dataset("mnist", root=tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and words in message, message
    assert "download=True" in message and isinstance(err.value, D.DatasetNotFoundError)


def test_read_idx_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.arange(5, dtype=np.uint8), 2049)
    first = D.read_idx(path, 2049)
    assert D.read_idx(path, 2049) is first and not first.flags.writeable
    write_idx(path, np.arange(7, dtype=np.uint8), 2049)
    os.utime(path, ns=(0, 10**9))
    assert D.read_idx(path, 2049).tolist() == list(range(7))


@pytest.mark.parametrize(
    ("name", "folder", "files"),
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
        ("fashion_mnist", "FashionMNIST/raw", ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch"]),
        ("cifar100", "cifar-100-python", ["train", "test", "meta"]),
    ],
)
def test_missing_data_raises_one_clear_error(tmp_path: Path, name: str, folder: str, files: list[str]) -> None:
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset(name, root=tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in message
    assert f"'{name}'" in message and str(tmp_path / folder) in message
    assert all(f in message for f in files)
    assert all(fix in message for fix in ("FREEZELAB_DATA", "--data-root", "download=True"))


def test_partly_missing_mnist_names_the_missing_file(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(D.DatasetNotFoundError, match=r"\(missing t10k-labels-idx1-ubyte.gz\)"):
        D.load_dataset("mnist", root=tmp_path)


def test_download_goes_through_torchvision_then_parses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            fake_mnist(Path(root) / "FashionMNIST" / "raw", n_train=20)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = D.load_dataset("fashion_mnist", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert [len(ds.train), len(ds.val), len(ds.test)] == [18, 2, 10]


# ----------------------------------------------------------------------------------------------
# seed-exact recipes


def test_random_split_indices_equal_torch_random_split() -> None:
    fake = torch.utils.data.TensorDataset(torch.arange(100))
    subsets = torch.utils.data.random_split(fake, [90, 10], generator=torch.Generator().manual_seed(42))
    ours = D.random_split_indices(100, [90, 10], seed=42)
    assert [s.indices for s in subsets] == [i.tolist() for i in ours]


def test_real_mnist_standard_shapes_counts_and_range(mnist: D.DatasetSplits, real_root: Path) -> None:
    assert [len(mnist.train), len(mnist.val), len(mnist.test)] == [54000, 6000, 10000]
    assert mnist.source == "official IDX files"
    assert mnist.train.x.shape == (54000, 784) and mnist.train.x.dtype == torch.float32
    assert mnist.train.y.dtype == torch.int64 and mnist.input_shape == (784,)
    train_counts = torch.bincount(torch.cat([mnist.train.y, mnist.val.y]), minlength=10)
    assert train_counts.tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test.y, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert mnist.train.x.min() == 0.0 and mnist.train.x.max() == 1.0
    images, labels = raw_arrays(real_root, "MNIST", "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8 and labels.shape == (60000,)


def test_real_fashion_mnist_90_10_equals_seed_004(fmnist_004: D.DatasetSplits, real_root: Path) -> None:
    import torchvision.transforms as T
    from PIL import Image

    assert [len(fmnist_004.train), len(fmnist_004.val), len(fmnist_004.test)] == [54000, 6000, 10000]
    assert torch.bincount(torch.cat([fmnist_004.train.y, fmnist_004.val.y])).tolist() == [6000] * 10
    assert torch.bincount(fmnist_004.test.y).tolist() == [1000] * 10
    assert fmnist_004.train.x.min() == -1.0 and fmnist_004.train.x.max() == 1.0

    images, labels = raw_arrays(real_root, "FashionMNIST", "train")
    train, val = torch.utils.data.random_split(range(60000), [54000, 6000], generator=torch.Generator().manual_seed(42))
    assert fmnist_004.train.y.tolist() == labels[train.indices].tolist()
    assert fmnist_004.val.y.tolist() == labels[val.indices].tolist()
    notebook = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])  # seed 004's transform
    for k in range(0, 54000, 5400):
        expected = notebook(Image.fromarray(images[train.indices[k]])).flatten()
        assert torch.equal(fmnist_004.train.x[k], expected)


def test_real_mnist10k_80_20_equals_seed_001(real_root: Path) -> None:
    from sklearn.model_selection import train_test_split

    ds = D.load_dataset("mnist", root=real_root, recipe="mnist10k_80_20", seed=42)
    assert [len(ds.train), len(ds.test)] == [8000, 2000] and ds.val is ds.test
    images, labels = raw_arrays(real_root, "MNIST", "train")
    x = images[:10000].reshape(10000, -1) / 255.0  # seed 001's float64 pipeline
    x_train, x_test, y_train, y_test = train_test_split(x, labels[:10000], test_size=0.2, random_state=42)
    assert torch.equal(ds.train.x, torch.FloatTensor(x_train)) and ds.train.y.tolist() == y_train.tolist()
    assert torch.equal(ds.test.x, torch.FloatTensor(x_test)) and ds.test.y.tolist() == y_test.tolist()


def test_real_fashion_mnist_nchw(real_root: Path) -> None:
    ds = D.load_dataset("fashion_mnist", root=real_root, flatten=False, subset=256)
    assert ds.recipe == "standard" and ds.input_shape == (1, 28, 28)
    assert ds.train.x.shape == (256, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.test.x.min() == 0.0 and ds.test.x.max() == 1.0


# ----------------------------------------------------------------------------------------------
# batching


def test_index_batches_are_seeded_per_epoch_and_ignore_the_global_rng() -> None:
    torch.manual_seed(0)
    first = D.IndexBatches(1000, 64, seed=7).epoch(3)
    torch.manual_seed(123)
    torch.rand(1000)  # other code consuming random numbers must not change the order
    again = D.IndexBatches(1000, 64, seed=7)
    assert torch.equal(again.epoch(3), first) and first.dtype == torch.int64
    assert not torch.equal(again.epoch(4), first)
    assert not torch.equal(D.IndexBatches(1000, 64, seed=8).epoch(3), first)
    # (seed, epoch) is mixed, not summed: (0, 1) and (1, 0) differ
    assert not torch.equal(D.IndexBatches(1000, 64, seed=0).epoch(1), D.IndexBatches(1000, 64, seed=1).epoch(0))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), batch_size=st.integers(1, 64), drop_last=st.booleans(), epoch=st.integers(0, 5))
def test_index_batches_cover_every_index_once(n: int, batch_size: int, drop_last: bool, epoch: int) -> None:
    if drop_last and n < batch_size:
        with pytest.raises(ValueError, match="leaves no batch"):
            D.IndexBatches(n, batch_size, seed=1, drop_last=drop_last)
        return
    ib = D.IndexBatches(n, batch_size, seed=1, drop_last=drop_last)
    got = list(ib.epoch_batches(epoch))
    assert len(got) == ib.steps_per_epoch == D.steps_per_epoch(n, batch_size, drop_last)
    assert all(len(b) == batch_size for b in got[:-1])
    seen = torch.cat(got)
    assert len(set(seen.tolist())) == len(seen)
    if drop_last:
        assert len(seen) == n - n % batch_size
    else:
        assert sorted(seen.tolist()) == list(range(n))


def test_batches_slices_in_order() -> None:
    assert [b.tolist() for b in D.batches(torch.arange(5), 2)] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in D.batches(torch.arange(5), 2, drop_last=True)] == [[0, 1], [2, 3]]
    assert D.steps_per_epoch(54000, 128) == 422 and D.steps_per_epoch(54000, 128, drop_last=True) == 421


@pytest.mark.gpu
def test_index_batches_identical_on_cuda_and_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = D.IndexBatches(5000, 128, seed=3).epoch(2)
    cuda = D.IndexBatches(5000, 128, seed=3, device="cuda").epoch(2)
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)


def test_as_dataloader_is_seeded_and_applies_the_transform() -> None:
    split = D.Split(torch.rand(20, 3, 8, 8), torch.arange(20))

    def order(seed: int) -> list[int]:
        return torch.cat([y for _, y in D.as_dataloader(split, 6, seed=seed)]).tolist()

    assert order(0) == order(0) != order(1) and sorted(order(0)) == list(range(20))
    loader = D.as_dataloader(split, 6, D.random_crop_flip(8, padding=2), shuffle=False, drop_last=True)
    shapes = [(tuple(x.shape), y.tolist()) for x, y in loader]
    assert shapes == [((6, 3, 8, 8), list(range(k, k + 6))) for k in (0, 6, 12)]
    torch.manual_seed(0)
    augmented = next(iter(loader))[0]
    assert not torch.equal(augmented, split.x[:6])  # 6 random crops/flips all being identity is ~impossible
