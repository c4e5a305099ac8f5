"""``dataset: imagefolder``: any ImageFolder tree, read as torchvision's ImageFolder reads it; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freezelab import data as D


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    """A lossless PNG (``size`` = width, height), so pixels can be compared exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": (3,), "L": ()}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)


def tree(root: Path, test_name: str = "test") -> Path:
    """Three classes (names chosen so sorted order differs from creation order), a nested folder,
    a grey image and a non-image file that ImageFolder ignores."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), (test_name, 2)):
        for cls in ("zebra", "Ant", "cat"):
            for i in range(per_class):
                write_image(root / split / cls / f"{i}.png", rng)
    write_image(root / "train" / "cat" / "more" / "x.png", rng)
    write_image(root / "train" / "Ant" / "grey.png", rng, mode="L")
    (root / "train" / "zebra" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_matches_torchvision_imagefolder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = tree(tmp_path / "pets")
    ds = D.load_dataset("imagefolder", root=root, recipe="train_test", flatten=False)
    assert ds.source == f"imagefolder {root}" and ds.num_classes == 3 and ds.input_shape == (3, 10, 12)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [14, 6, 6] and ds.val is ds.test
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in D.registry.channel_stats(_pixels(ImageFolder(str(root / "train")))))
    for split, ours in (("train", ds.train), ("test", ds.test)):
        reference = ImageFolder(str(root / split))
        assert reference.classes == ["Ant", "cat", "zebra"]
        assert ours.y.tolist() == reference.targets
        torch.testing.assert_close(ours.x, (_pixels(reference).float() / 255 - mean) / std)
    mean = ds.train.x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)  # normalised by the training images' own stats


def _pixels(folder) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img, _ in folder])


def test_imagefolder_uses_val_when_there_is_no_test_and_holds_out_by_default(tmp_path: Path) -> None:
    root = tree(tmp_path / "pets", test_name="val")
    ds = D.load_dataset("imagefolder", root=root, seed=0)
    assert ds.recipe == "standard" and [len(ds.train), len(ds.val), len(ds.test)] == [12, 2, 6]
    assert ds.input_shape == (3 * 10 * 12,)
    assert list(D.list_recipes("imagefolder")) == ["standard", "train_test"]


def test_channel_stats_are_exact() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 51]], [[0, 0]]]], dtype=torch.uint8)
    assert D.registry.channel_stats(x) == ((0.5, 0.2, 0.0), (0.5, 0.0, 0.0))


def _one_line(err: pytest.ExceptionInfo, *words: str) -> str:
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert isinstance(err.value, D.DatasetNotFoundError)  # the CLI reports it as one line
    return message


def test_images_of_different_sizes_are_refused_naming_both(tmp_path: Path) -> None:
    root = tree(tmp_path / "pets")
    write_image(root / "train" / "cat" / "big.png", np.random.default_rng(1), size=(20, 16))
    with pytest.raises(D.DataCorruptError) as err:
        D.load_dataset("imagefolder", root=root)
    _one_line(err, "train/cat/big.png is 20x16 pixels but train/Ant/0.png is 12x10", "one size", "resize")


def test_test_images_of_another_size_are_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "pets")
    for path in (root / "test").rglob("*.png"):
        write_image(path, np.random.default_rng(2), size=(8, 8))
    with pytest.raises(D.DataCorruptError) as err:
        D.load_dataset("imagefolder", root=root)
    _one_line(err, "train/ images are 12x10 pixels but test/ images are 8x8", "one size")


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    root = tree(tmp_path / "pets")
    (root / "test" / "cat" / "1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(D.DataCorruptError) as err:
        D.load_dataset("imagefolder", root=root)
    _one_line(err, f"imagefolder {root}: test/cat/1.png is not a readable image", "replace or remove")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda r: None, ["has no train/ and no test/ or val/", "data_root"]),
        (lambda r: (r / "train" / "a").mkdir(parents=True), ["has no test/ or val/"]),
        (lambda r: [(r / d).mkdir(parents=True) for d in ("train", "test")], ["train has no class folders"]),
        (lambda r: [(r / d / "a").mkdir(parents=True) for d in ("train", "test")], ["holds no images"]),
    ],
    ids=["no folder", "no test", "no classes", "no images"],
)
def test_a_tree_of_the_wrong_shape_says_what_is_missing(tmp_path: Path, make, words: list[str]) -> None:
    root = tmp_path / "pets"
    make(root)
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset("imagefolder", root=root)
    _one_line(err, str(root), *words)


def test_test_class_missing_from_train_is_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "pets")
    write_image(root / "test" / "dog" / "0.png", np.random.default_rng(3))
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset("imagefolder", root=root)
    _one_line(err, "class folders dog", "train/ must hold every class")
