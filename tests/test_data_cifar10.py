"""CIFAR-10: the JPEG archive (format, training order, cache, damage), the pickles' precedence, the recipes.

Format and error cases run on tiny archives in the real layout, written to ``tmp_path`` (the
expected image counts are patched down to theirs); one test reads the real archive through
``$FREEZELAB_DATA`` and skips without it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from freezelab import data as D
from freezelab.data import cache, cifar_jpeg

CLASSES = cifar_jpeg.CLASSES
ORDER = "cifar10-jpeg/train_original_order.txt"


def jpeg(rng: np.random.Generator, size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pil_decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def fake_members(per_class_train: int = 3, per_class_test: int = 1, seed: int = 0) -> dict[str, bytes]:
    """A tiny copy of the archive's layout; the training order is a seeded shuffle of the files."""
    rng = np.random.default_rng(seed)
    members = {}
    for split, k in (("test", per_class_test), ("train", per_class_train)):
        for cls in CLASSES:
            for i in range(k):
                members[f"cifar10-jpeg/{split}/{cls}/{i:04d}.jpg"] = jpeg(rng)
    train = [n.split("/", 2)[2] for n in members if n.startswith("cifar10-jpeg/train/")]
    order = [train[i] for i in rng.permutation(len(train))]
    members[ORDER] = ("# line i+1 names the file that holds image i\n" + "\n".join(order) + "\n").encode()
    return members


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root, a private cache, and image counts patched to the fake archives' (30 / 10)."""
    monkeypatch.setenv("FREEZELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar_jpeg, "COUNTS", {"train": 30, "test": 10})
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def archive_path(root: Path) -> Path:
    return root / "CIFAR10-JPEG" / "cifar10-jpeg.tar.gz"


def train_order(members: dict[str, bytes]) -> list[str]:
    return [line for line in members[ORDER].decode().splitlines()[1:] if line]


def test_jpeg_archive_reads_in_the_original_training_order(root: Path) -> None:
    members = fake_members()
    write_tar(archive_path(root), members)
    raw = cifar_jpeg.read_cifar10_jpeg(archive_path(root))
    order = train_order(members)
    assert raw.source == "JPEG copy (lossy, PSNR 30.5 dB)" and raw.classes == CLASSES
    assert raw.train.x.shape == (30, 3, 32, 32) and raw.train.x.dtype == torch.uint8
    assert raw.train.y.tolist() == [CLASSES.index(key.split("/")[0]) for key in order]
    for i, key in enumerate(order):
        assert np.array_equal(raw.train.x[i].numpy(), pil_decode(members[f"cifar10-jpeg/train/{key}"]))
    assert raw.test.y.tolist() == list(range(10))  # test: by class, then file number
    assert np.array_equal(raw.test.x[3].numpy(), pil_decode(members["cifar10-jpeg/test/cat/0000.jpg"]))

    ds = D.load_dataset("cifar10", root=root, recipe="train_test", flatten=False)
    assert ds.source == raw.source and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [30, 10, 10] and ds.val is ds.test
    assert ds.train.y.tolist() == raw.train.y.tolist()


def test_decoded_arrays_are_cached_by_archive_hash(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tar(archive_path(root), fake_members())
    first = cifar_jpeg.read_cifar10_jpeg(path)
    sha = cache.file_sha256(path)
    cached = list((cache.cache_root() / "decoded").glob("*.npz"))
    assert [f.name for f in cached] == [f"cifar10-jpeg-v1-{sha}.npz"]

    def no_decoding(_archive: Path) -> None:
        raise AssertionError("the cache should have been used")

    decode = cifar_jpeg.decode_archive
    monkeypatch.setattr(cifar_jpeg, "decode_archive", no_decoding)
    cifar_jpeg._arrays.cache_clear()  # as a new process would: only the file on disk is left
    again = cifar_jpeg.read_cifar10_jpeg(path)
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.test.y, first.test.y)

    monkeypatch.setattr(cifar_jpeg, "decode_archive", decode)
    write_tar(path, fake_members(seed=1))  # another archive: another hash, so decoded afresh
    assert not torch.equal(cifar_jpeg.read_cifar10_jpeg(path).train.x, first.train.x)
    assert len(list((cache.cache_root() / "decoded").glob("*.npz"))) == 2


def test_archive_hash_is_remembered_by_size_and_mtime(root: Path) -> None:
    path = write_tar(archive_path(root), fake_members())
    real = cache.file_sha256(path)
    index = cache.cache_root() / "hashes.json"
    known = json.loads(index.read_text())
    known[str(path)]["sha256"] = "remembered"
    index.write_text(json.dumps(known))
    assert cache.file_sha256(path) == "remembered"  # not hashed again
    os.utime(path, ns=(0, 10**9))
    assert cache.file_sha256(path) == real  # touched: hashed again
    index.write_text("{ not json")
    assert cache.file_sha256(path) == real  # a damaged index is only a cache: rebuilt


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_file_is_deleted_and_rebuilt(
    root: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_tar(archive_path(root), fake_members())
    first = cifar_jpeg.read_cifar10_jpeg(path)
    (npz,) = (cache.cache_root() / "decoded").glob("*.npz")
    blob = bytearray(npz.read_bytes())
    if damage == "garbage":
        blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)  # zeros inside the pixel array
    else:
        del blob[len(blob) // 2 :]
    npz.write_bytes(bytes(blob))
    cifar_jpeg._arrays.cache_clear()
    with caplog.at_level(logging.WARNING, logger="freezelab.data"):
        again = cifar_jpeg.read_cifar10_jpeg(path)
    assert torch.equal(again.train.x, first.train.x)
    assert f"cache file {npz} is corrupt" in caplog.text and "decoding again" in caplog.text
    assert np.load(npz)["x_train"].shape == (30, 3, 32, 32)  # rewritten whole
    assert sorted(p.name for p in npz.parent.iterdir()) == [f".{npz.name}.lock", npz.name]  # no temporary files left


def test_concurrent_builders_decode_once(tmp_path: Path) -> None:
    """Workers of one sweep that all find no cache: the first builds, the others load its file."""
    import threading
    import time

    calls = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        time.sleep(0.2)
        return {"x": np.arange(10)}

    results = []
    def load() -> None:
        results.append(cache.cached_arrays(tmp_path / "a.npz", build))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and [r["x"].tolist() for r in results] == [list(range(10))] * 3


def test_unwritable_cache_still_loads(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_tar(archive_path(root), fake_members())
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FREEZELAB_CACHE", str(tmp_path / "file"))  # a file: nothing can be created below it
    assert len(cifar_jpeg.read_cifar10_jpeg(path).train) == 30


def _truncate(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _garble(blob: bytes) -> bytes:
    middle = len(blob) // 2
    return blob[:middle] + bytes(b ^ 0x5A for b in blob[middle : middle + 200]) + blob[middle + 200 :]


def _members_with(change: str) -> dict[str, bytes]:
    members = fake_members()
    if change == "bad jpeg":
        members["cifar10-jpeg/train/dog/0001.jpg"] = b"\xff\xd8 this is not a JPEG"
    elif change == "small jpeg":
        members["cifar10-jpeg/train/dog/0001.jpg"] = jpeg(np.random.default_rng(0), (16, 16))
    elif change == "missing image":
        del members["cifar10-jpeg/test/ship/0000.jpg"]
    elif change == "no order file":
        del members[ORDER]
    elif change == "order duplicates a line":
        lines = members[ORDER].decode().splitlines()
        members[ORDER] = "\n".join([*lines[:-1], lines[1]]).encode()
    elif change == "unknown class":
        members["cifar10-jpeg/train/unicorn/0000.jpg"] = members.pop("cifar10-jpeg/train/dog/0002.jpg")
    return members


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("truncated", ["is damaged"]),
        ("garbled", ["is damaged"]),
        ("not gzip", ["is damaged"]),
        ("bad jpeg", ["member cifar10-jpeg/train/dog/0001.jpg is not a readable image"]),
        ("small jpeg", ["member cifar10-jpeg/train/dog/0001.jpg is 16x16 pixels, not CIFAR-10's 32x32"]),
        ("missing image", ["holds 9 test images, expected 10"]),
        ("no order file", ["has no train_original_order.txt"]),
        ("order duplicates a line", ["train_original_order.txt lists 30 lines (29 distinct", "exactly once"]),
        ("unknown class", ["unknown class folder 'unicorn'"]),
    ],
)
def test_damaged_archive_gives_one_line_naming_file_and_fix(root: Path, change: str, words: list[str]) -> None:
    path = archive_path(root)
    if change in ("truncated", "garbled", "not gzip"):
        write_tar(path, fake_members())
        blob = path.read_bytes()
        damaged = {"truncated": _truncate, "garbled": _garble, "not gzip": lambda b: os.urandom(len(b))}[change](blob)
        path.write_bytes(damaged)
    else:
        write_tar(path, _members_with(change))
    with pytest.raises(D.DataCorruptError) as err:
        D.load_dataset("cifar10", root=root)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    assert all(w in message for w in words), message
    assert "stage-data CIFAR10-JPEG" in message and "download=True" in message
    assert isinstance(err.value, D.DatasetNotFoundError)  # what the CLI reports as one line
    assert not list((cache.cache_root() / "decoded").glob("*.npz"))  # nothing half-built was cached


def test_cli_reports_a_damaged_archive_as_one_line(root: Path, tmp_path: Path) -> None:
    from freezelab.cli import app

    path = write_tar(archive_path(root), fake_members())
    path.write_bytes(_truncate(path.read_bytes()))
    args = ["train", "--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr


def test_missing_cifar10_names_both_copies_and_the_stage_tool(root: Path) -> None:
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset("cifar10", root=root)
    message = str(err.value)
    assert not isinstance(err.value, D.DataCorruptError) and "\n" not in message
    assert str(root / "cifar-10-batches-py") in message and str(archive_path(root)) in message
    assert "stage-data CIFAR10-JPEG" in message and "download=True" in message and "FREEZELAB_DATA" in message


def fake_pickles(monkeypatch: pytest.MonkeyPatch, root: Path, fail: bool = False) -> dict[bool, np.ndarray]:
    """Empty files in torchvision's layout, and a torchvision CIFAR10 that returns 20/4 random images."""
    import torchvision.datasets

    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / f).touch()
    rng = np.random.default_rng(1)
    fake = {train: rng.integers(0, 256, (20 if train else 4, 32, 32, 3), dtype=np.uint8) for train in (True, False)}

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            if fail:
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            self.data, self.targets = fake[train], list(range(len(fake[train])))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    return fake


def test_pickles_are_converted_to_nchw_and_normalised_per_channel(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pickles(monkeypatch, root)
    ds = D.load_dataset("cifar10", root=root, flatten=False)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [18, 2, 4] and ds.input_shape == (3, 32, 32)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1), torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)

    def expected(train: bool) -> torch.Tensor:
        return (torch.from_numpy(fake[train]).permute(0, 3, 1, 2).float() / 255 - mean) / std

    torch.testing.assert_close(ds.test.x, expected(False))
    seed000 = D.load_dataset("cifar10", root=root, recipe="train_test", flatten=False)  # all 50k in order, val = test
    assert [len(seed000.train), len(seed000.val), len(seed000.test)] == [20, 4, 4] and seed000.val is seed000.test
    torch.testing.assert_close(seed000.train.x, expected(True))


def test_official_pickles_are_preferred_to_the_jpeg_copy(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tar(archive_path(root), fake_members())
    fake_pickles(monkeypatch, root)
    ds = D.load_dataset("cifar10", root=root, recipe="train_test")
    assert ds.source == "official pickles" and len(ds.train) == 20
    (root / "cifar-10-batches-py" / "test_batch").unlink()  # incomplete pickles: the JPEG copy is used
    assert D.load_dataset("cifar10", root=root, recipe="train_test").source.startswith("JPEG copy")


def test_pickles_failing_torchvision_md5_check_are_named(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freezelab.data import sources

    sources._cifar_arrays.cache_clear()
    fake_pickles(monkeypatch, root, fail=True)
    with pytest.raises(D.DataCorruptError, match=r"cifar-10-batches-py: a pickle file fails torchvision's MD5 check"):
        D.load_dataset("cifar10", root=root)


def test_holdout_45k_5k_is_stratified_seeded_and_disjoint(root: Path) -> None:
    write_tar(archive_path(root), fake_members(per_class_train=10))
    cifar_jpeg.COUNTS["train"] = 100
    a, b, c = (D.load_dataset("cifar10", root=root, recipe="holdout_45k_5k", seed=s, flatten=False) for s in (0, 0, 1))
    assert [len(a.train), len(a.val), len(a.test)] == [90, 10, 10]
    assert torch.bincount(a.val.y, minlength=10).tolist() == [1] * 10  # 10% of each class
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    rows = {tuple(r.tolist()) for s in (a.train, a.val) for r in s.x.flatten(1)}
    assert len(rows) == 100
    assert list(D.list_recipes("cifar10")) == ["standard", "train_test", "holdout_45k_5k", "classes_0_4", "classes_5_9"]
    assert "45,000 train / 5,000 val" in D.list_recipes("cifar10")["holdout_45k_5k"]


# ----------------------------------------------------------------------------------------------
# the real archive


def _reference(archive: Path) -> tuple[list[str], dict[str, bytes]]:
    """The order file's lines and each training JPEG's bytes by ``class/NNNN.jpg``, straight from the tar."""
    blobs, order = {}, []
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.name == ORDER:
                order = [line for line in tar.extractfile(member).read().decode().splitlines()[1:] if line]
            elif member.isfile() and member.name.startswith("cifar10-jpeg/train/"):
                blobs[member.name.split("/", 2)[2]] = tar.extractfile(member).read()
    return order, blobs


@pytest.mark.slow
def test_real_jpeg_copy_counts_labels_and_training_order() -> None:
    root = os.environ.get("FREEZELAB_DATA")
    if not root or not archive_path(Path(root)).is_file():
        pytest.skip("needs FREEZELAB_DATA with CIFAR10-JPEG/cifar10-jpeg.tar.gz")
    archive = archive_path(Path(root))
    raw = cifar_jpeg.read_cifar10_jpeg(archive)  # the first run decodes (~20-40 s), later runs hit the cache (~2 s)
    assert raw.train.x.shape == (50_000, 3, 32, 32) and raw.test.x.shape == (10_000, 3, 32, 32)
    assert torch.bincount(raw.train.y).tolist() == [5000] * 10 and torch.bincount(raw.test.y).tolist() == [1000] * 10
    assert [CLASSES[k] for k in raw.train.y[:5]] == ["frog", "truck", "truck", "deer", "automobile"]  # SOURCES.md

    order, blobs = _reference(archive)
    assert len(order) == 50_000
    assert raw.train.y.tolist() == [CLASSES.index(key.split("/")[0]) for key in order]
    for i in (0, 1, 29_999, 49_999):
        assert np.array_equal(raw.train.x[i].numpy(), pil_decode(blobs[order[i]]))

    ds = D.load_dataset("cifar10", root=root, recipe="holdout_45k_5k", seed=0, flatten=False)
    assert ds.source.startswith("JPEG copy") and [len(ds.train), len(ds.val), len(ds.test)] == [45_000, 5_000, 10_000]
    assert torch.bincount(ds.val.y).tolist() == [500] * 10


@pytest.mark.parametrize("recipe, kept", [("classes_0_4", range(5)), ("classes_5_9", range(5, 10))])
def test_class_half_recipes_keep_their_classes_relabelled_and_holdout_per_class(
    root: Path, recipe: str, kept: range
) -> None:
    members = fake_members(per_class_train=10, per_class_test=2)
    write_tar(archive_path(root), members)
    cifar_jpeg.COUNTS.update(train=100, test=20)
    full = D.load_dataset("cifar10", root=root, recipe="train_test", flatten=False)
    a, b, c = (D.load_dataset("cifar10", root=root, recipe=recipe, seed=s, flatten=False) for s in (0, 0, 1))
    assert a.num_classes == 5 and [len(a.train), len(a.val), len(a.test)] == [45, 5, 10]
    assert torch.bincount(a.val.y, minlength=5).tolist() == [1] * 5  # 10% of each kept class
    assert torch.bincount(a.train.y, minlength=5).tolist() == [9] * 5
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)  # seed-exact
    # Every kept image, and only those, with label = its class's position among the kept ones.
    want = {tuple(x.flatten().tolist()): int(y) - kept.start for x, y in zip(full.train.x, full.train.y) if int(y) in kept}
    got = {tuple(x.flatten().tolist()): int(y) for s in (a.train, a.val) for x, y in zip(s.x, s.y)}
    assert got == want
    test_want = [int(y) - kept.start for y in full.test.y if int(y) in kept]
    assert a.test.y.tolist() == test_want  # the test images of those classes, in their order
    assert torch.equal(a.test.x, full.test.x[torch.isin(full.test.y, torch.tensor(list(kept)))])
    names = D.list_recipes("cifar10")[recipe]
    assert "22,500 train / 2,500 val" in names and cifar_jpeg.CLASSES[kept.start] in names


def test_keep_classes_relabels_in_the_order_given() -> None:
    s = D.Split(torch.arange(8.0), torch.tensor([3, 1, 2, 3, 0, 1, 2, 0]))
    kept = D.keep_classes(s, (3, 1))
    assert kept.x.tolist() == [0.0, 1.0, 3.0, 5.0] and kept.y.tolist() == [0, 1, 0, 1]
