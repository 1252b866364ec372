"""sr-natural: the fixed split, Y conversion, bicubic degradation, PSNR, and its loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointsparse import superres
from jointsparse.data import DataError, get_dataset, make_loaders

needs_images = pytest.mark.skipif(not superres.images_available(), reason="scikit-image's bundled photographs are not installed")


def test_rgb_to_y_is_bt601_studio_range():
    white, black = np.full((1, 1, 3), 255, np.uint8), np.zeros((1, 1), np.uint8)
    assert superres.rgb_to_y(white)[0, 0] == pytest.approx(235 / 255, abs=1e-6)
    assert superres.rgb_to_y(black)[0, 0] == pytest.approx(16 / 255, abs=1e-6)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert superres.rgb_to_y(red)[0, 0] == pytest.approx((16 + 65.481) / 255, abs=1e-6)


def test_psnr_shaves_the_border_and_rounds_to_8_bits():
    target = torch.full((2, 1, 12, 12), 100 / 255)
    output = target.clone()
    output[:, :, :3, :] = 0.0  # only inside the shaved border
    assert torch.isinf(superres.psnr_y(output, target)).sum() == 0  # clamped mse, finite
    assert float(superres.psnr_y(output, target).min()) > 99
    output[0, 0, 5, 5] += 1 / 255  # one 8-bit level on one of 36 kept pixels
    expected = 10 * np.log10(255**2 / (1 / 36))
    assert float(superres.psnr_y(output, target)[0]) == pytest.approx(expected, abs=1e-6)
    assert float(superres.psnr_y(output + 0.4 / 255, target)[1]) > 99  # under half a level rounds away
    with pytest.raises(ValueError):
        superres.psnr_y(output[:, :, :6, :6], target[:, :, :6, :6])
    with pytest.raises(ValueError):
        superres.psnr_y(output, target[:1])


def test_bicubic_degradation_keeps_the_size_and_loses_detail():
    torch.manual_seed(0)
    smooth = torch.linspace(0, 1, 30).view(1, 1, 1, 30).expand(1, 1, 30, 30).contiguous()
    noisy = torch.rand(1, 1, 30, 30)
    assert superres.bicubic_degrade(smooth).shape == smooth.shape
    assert superres.psnr_y(superres.bicubic_degrade(smooth), smooth) > superres.psnr_y(superres.bicubic_degrade(noisy), noisy) + 10
    with pytest.raises(ValueError):
        superres.bicubic_degrade(torch.rand(1, 1, 31, 30))


@needs_images
def test_split_is_fixed_disjoint_and_recorded():
    record = superres.split_record()
    assert set(record["test_images"]).isdisjoint(record["train_images"]) and len(record["test_images"]) >= 5
    assert record["train_patches"] > 10 * record["val_patches"] > 0
    train, val, test = (get_dataset("sr-natural", split) for split in ("train", "val", "test"))
    assert train.info.task == "super-resolution" and train.info.in_channels == 1
    assert len(train) == 8 * record["train_patches"] and len(val) == record["val_patches"] and len(test) == len(record["test_images"])
    x, y = train[torch.arange(16)]
    assert x.shape == y.shape == (16, 1, superres.PATCH, superres.PATCH)
    assert torch.equal(train[9][1], torch.rot90(train[8][1], 1, dims=(-2, -1)))  # patch 1, transform 1
    first = test[0][1]
    assert tuple(first.shape[-2:]) == tuple(record["test_sizes"][record["test_images"][0]])
    # no validation patch is a training patch
    train_patches = {tuple(p.flatten()[:64].tolist()) for p in train.targets}
    assert not any(tuple(p.flatten()[:64].tolist()) in train_patches for p in val.targets)


@needs_images
def test_loaders_serve_val_patches_or_whole_test_images():
    train_loader, val_loader, info = make_loaders("sr-natural", batch_size=8, eval_split="val", subset=40, subset_seed=0)
    x, y = next(iter(train_loader))
    assert x.shape == (8, 1, 32, 32) and info.num_classes == 0 and info.task == "super-resolution"
    assert next(iter(val_loader))[0].shape[1:] == (1, 32, 32)
    _, test_loader, _ = make_loaders("sr-natural", batch_size=8, test_subset=2)
    shapes = [tuple(x.shape) for x, _ in test_loader]
    assert len(shapes) == 2 and all(s[0] == 1 for s in shapes) and shapes[0] != shapes[1]
    bicubic = superres.bicubic_psnr(superres.sr_dataset("test"))
    assert 25 < bicubic < 40


def test_sr_natural_option_errors():
    with pytest.raises(DataError, match="resize and channels"):
        get_dataset("sr-natural", "train", resize=64)
    with pytest.raises(DataError, match="no 'val' split"):
        get_dataset("digits", "val")
    with pytest.raises(DataError, match="split must be"):
        get_dataset("sr-natural", "holdout")
