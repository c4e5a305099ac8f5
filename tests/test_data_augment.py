"""Device augmentation: a pure function of (batch, seed, epoch, step), equal to a slow per-image reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from freezelab import data as D
from freezelab.data import augment, batching


def images(n: int = 16, dtype: torch.dtype = torch.uint8, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    x = torch.randint(0, 256, (n, 3, *size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return x if dtype == torch.uint8 else (x.to(dtype) / 255)


def reference(x: torch.Tensor, *, seed: int, epoch: int, step: int, padding: int, flip: bool) -> torch.Tensor:
    """The obvious loop: pad each image, crop at its offsets, flip it if drawn."""
    dy, dx, flipped = D.crop_flip_params(len(x), seed=seed, epoch=epoch, step=step, padding=padding, flip=flip)
    h, w = x.shape[2:]
    out = []
    for i, image in enumerate(x):
        padded = F.pad(image, (padding,) * 4)
        crop = padded[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(2) if flipped[i] else crop)
    return torch.stack(out)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 9),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    padding=st.integers(0, 5),
    flip=st.booleans(),
    seed=st.integers(0, 2**32),
    step=st.integers(0, 10_000),
)
def test_equals_the_per_image_reference(n: int, h: int, w: int, padding: int, flip: bool, seed: int, step: int) -> None:
    x = images(n, torch.float32, (h, w))
    got = D.augment_crop_flip(x, seed=seed, epoch=2, step=step, padding=padding, flip=flip)
    assert torch.equal(got, reference(x, seed=seed, epoch=2, step=step, padding=padding, flip=flip))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_dtype_and_shape_are_kept_and_input_untouched(dtype: torch.dtype) -> None:
    x = images(8, dtype)
    before = x.clone()
    out = D.augment_crop_flip(x, seed=0, epoch=0, step=0)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous() and torch.equal(x, before)
    assert torch.equal(out, reference(x, seed=0, epoch=0, step=0, padding=4, flip=True))


def test_same_seed_epoch_step_same_batch_and_any_change_differs() -> None:
    x = images(64)
    base = D.augment_crop_flip(x, seed=3, epoch=1, step=5)
    torch.manual_seed(99)
    torch.rand(100)  # the global RNG plays no part
    assert torch.equal(D.augment_crop_flip(x, seed=3, epoch=1, step=5), base)
    for seed, epoch, step in ((4, 1, 5), (3, 2, 5), (3, 1, 6)):
        assert not torch.equal(D.augment_crop_flip(x, seed=seed, epoch=epoch, step=step), base), (seed, epoch, step)
    # (seed, epoch, step) is mixed, not summed
    assert not torch.equal(D.augment_crop_flip(x, seed=0, epoch=1, step=0), D.augment_crop_flip(x, seed=0, epoch=0, step=1))


def test_draws_are_apart_from_the_batch_order_seed() -> None:
    """SeedSequence pads entropy with zeros: without a spawn key, step 0 would reuse the batch order's seed."""
    assert augment._seed(7, 3, 0) != batching._epoch_seed(7, 3)


def test_offsets_cover_the_padding_and_half_are_flipped() -> None:
    dy, dx, flipped = D.crop_flip_params(20_000, seed=0, epoch=0, step=0, padding=4)
    assert dy.dtype == torch.int64 and sorted(set(dy.tolist())) == sorted(set(dx.tolist())) == list(range(9))
    assert 0.48 < flipped.float().mean() < 0.52 and not torch.equal(dy, dx)
    assert not D.crop_flip_params(100, seed=0, epoch=0, step=0, flip=False)[2].any()


def test_no_padding_no_flip_is_the_identity() -> None:
    x = images(8)
    assert torch.equal(D.augment_crop_flip(x, seed=0, epoch=0, step=0, padding=0, flip=False), x)


def test_flip_alone_mirrors_the_drawn_images() -> None:
    x = images(32, torch.float32)
    out = D.augment_crop_flip(x, seed=1, epoch=0, step=0, padding=0)
    flipped = D.crop_flip_params(32, seed=1, epoch=0, step=0, padding=0)[2]
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_resize_for_vits(dtype: torch.dtype) -> None:
    x = images(4, dtype)
    out = D.augment_crop_flip(x, seed=0, epoch=0, step=0, out_size=224)
    assert out.shape == (4, 3, 224, 224) and out.dtype == dtype
    cropped = D.augment_crop_flip(x, seed=0, epoch=0, step=0)
    expected = F.interpolate(cropped.float(), size=(224, 224), mode="bilinear", align_corners=False)
    if dtype == torch.uint8:
        expected = expected.round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(out, expected)
    assert D.resize_batch(x, (40, 48)).shape == (4, 3, 40, 48)
    assert D.resize_batch(x, 32) is x  # already that size
    small = D.resize_batch(x.float(), 16)  # shrinking is antialiased, like torchvision's Resize
    torch.testing.assert_close(small, F.interpolate(x.float(), size=(16, 16), mode="bilinear", antialias=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.zeros(3, 32, 32)}, r"\(N, C, H, W\) batch"),
        ({"padding": -1}, "padding must be >= 0"),
        ({"step": -1}, "must be >= 0"),
        ({"out_size": 0}, "out_size must be a positive int"),
        ({"out_size": (1, 2, 3)}, "out_size must be a positive int"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    args = {"x": images(2), "seed": 0, "epoch": 0, "step": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        D.augment_crop_flip(**args)


@pytest.mark.gpu
def test_identical_on_cuda_and_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for dtype in (torch.uint8, torch.float32, torch.bfloat16):
        x = images(256, dtype)
        cpu = D.augment_crop_flip(x, seed=5, epoch=2, step=9)
        cuda = D.augment_crop_flip(x.cuda(), seed=5, epoch=2, step=9)
        assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
    resized = [D.augment_crop_flip(x, seed=0, epoch=0, step=0, out_size=224).int() for x in (images(8).cuda(), images(8))]
    assert (resized[0].cpu() - resized[1]).abs().max() <= 1  # bilinear kernels may round a .5 the other way
