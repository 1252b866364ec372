"""Datasets and loaders: digits, the IDX reader, Fashion-MNIST/MNIST lookup, options, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from jointsparse.data import (
    DEBIAN_FASHION_MNIST,
    DataError,
    DatasetNotFoundError,
    IdxFormatError,
    ShardSampler,
    TensorImageDataset,
    get_dataset,
    make_loaders,
    read_idx,
    set_sampler_epoch,
)


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist_like(directory: Path, n_train: int = 12, n_test: int = 6, side: int = 28, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, n, (img_name, lbl_name) in (
        ("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, array in ((img_name, images), (lbl_name, labels)):
            data = idx_bytes(array, 0x08)
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
        out[split] = (images, labels)
    return out


# -------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip_uint8_and_int16(tmp_path, gz):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    shorts = np.array([[-300, 2], [7, 32000]], dtype=np.int16)
    for name, array, code in (("u8", images, 0x08), ("i16", shorts, 0x0B)):
        data = idx_bytes(array, code)
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if gz else data)
        back = read_idx(path)
        assert back.shape == array.shape and np.array_equal(back, array)
        assert back.dtype.isnative


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "bad IDX magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type code 0x07"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:-1], "need 60 data bytes, file has 59"),
        (lambda b: b + b"\x00", "file has 61"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, mutate, message):
    data = idx_bytes(np.zeros((5, 4, 3), dtype=np.uint8), 0x08)
    path = tmp_path / "bad"
    path.write_bytes(mutate(data))
    with pytest.raises(IdxFormatError, match=message):
        read_idx(path)


def test_read_idx_rejects_broken_gzip_and_missing_file(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 50), dtype=np.uint8), 0x08))[:40])
    with pytest.raises(IdxFormatError, match="cannot read"):
        read_idx(path)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        read_idx(tmp_path / "absent.gz")


# ---------------------------------------------------------------------------- IDX datasets


def test_mnist_from_root_with_synthetic_files(tmp_path):
    written = write_mnist_like(tmp_path)
    train = get_dataset("mnist", "train", root=tmp_path, normalize=False)
    test = get_dataset("MNIST", "test", root=tmp_path, normalize=False)
    assert len(train) == 12 and len(test) == 6
    x, y = train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(written["train"][0][3]).float() / 255)
    assert y.item() == written["train"][1][3]
    assert train.info.num_classes == 10 and train.info.input_size == (28, 28)


def test_plain_idx_files_and_resize_channels_on_uint8(tmp_path):
    written = write_mnist_like(tmp_path, gz=False)
    ds = get_dataset("mnist", "train", root=tmp_path, resize=14, channels=3, normalize=False)
    assert ds.images.dtype == torch.uint8  # stored compactly after the one-off resize
    x, _ = ds[0]
    assert x.shape == (3, 14, 14) and torch.equal(x[0], x[2])
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(written["train"][0][:1]).float()[None], size=(14, 14), mode="bilinear",
        align_corners=False, antialias=True)
    assert torch.allclose(x[0], reference[0, 0] / 255, atol=0.5 / 255 + 1e-6)


def test_labels_not_matching_images_is_an_error(tmp_path):
    write_mnist_like(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(11, np.uint8), 0x08)))
    with pytest.raises(IdxFormatError, match="do not match 12 images"):
        get_dataset("mnist", "train", root=tmp_path)


def test_missing_datasets_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("JOINTSPARSE_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        get_dataset("fashion-mnist", "train", root=tmp_path)
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)
    with pytest.raises(DatasetNotFoundError, match=r"mnist train split not found.*pass root=DIR"):
        get_dataset("mnist", "train")


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    test = get_dataset("fashion-mnist", "test", normalize=False)
    assert len(test) == 10_000 and test.images.shape == (10_000, 1, 28, 28)
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    train = get_dataset("fmnist", "train")
    assert len(train) == 60_000 and train.info.name == "fashion-mnist"
    # The stored normalization constants are the training split's real statistics.
    raw = train.images.float() / 255
    assert raw.mean().item() == pytest.approx(0.2860406, abs=1e-5)
    assert raw.std().item() == pytest.approx(0.3530242, abs=1e-4)


# ----------------------------------------------------------------------------------- digits


def test_digits_split_shapes_classes_and_normalization():
    train = get_dataset("digits", "train")
    test = get_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360
    assert train.info.num_classes == 10 and train.info.in_channels == 1 and train.info.input_size == (8, 8)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    x, y = train[torch.arange(len(train))]
    assert x.shape == (1437, 1, 8, 8) and y.shape == (1437,)
    assert abs(x.mean().item()) < 1e-4 and x.std().item() == pytest.approx(1.0, abs=1e-3)
    # Fixed split: the same every call, and train/test are disjoint images from the 1,797.
    again = get_dataset("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_resize_channels_subset():
    ds = get_dataset("digits", "train", resize=16, channels=3, subset=100, normalize=False)
    assert len(ds) == 100 and ds.info.in_channels == 3 and ds.info.input_size == (16, 16)
    x, _ = ds[5]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and 0 <= x.min() and x.max() <= 1
    first = get_dataset("digits", "train", subset=50)
    full = get_dataset("digits", "train")
    assert torch.equal(first.labels, full.labels[:50])
    random_a = get_dataset("digits", "train", subset=50, subset_seed=1)
    random_b = get_dataset("digits", "train", subset=50, subset_seed=1)
    assert torch.equal(random_a.images, random_b.images) and not torch.equal(random_a.images, first.images)


def test_batch_indexing_equals_item_indexing():
    ds = get_dataset("digits", "test", channels=3)
    batch_x, batch_y = ds[[4, 0, 9]]
    for row, i in enumerate([4, 0, 9]):
        x, y = ds[i]
        assert torch.equal(batch_x[row], x) and batch_y[row] == y


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("imagenet", {}, "unknown dataset 'imagenet'; known: digits, fashion-mnist, mnist, sr-natural, imagefolder:PATH"),
        ("digits", {"resize": 0}, "resize must be a positive int"),
        ("digits", {"channels": 2}, "channels must be 1 or 3"),
        ("digits", {"subset": -5}, "subset must be a positive int"),
        ("imagefolder:", {}, "imagefolder needs a path"),
    ],
)
def test_bad_names_and_options(name, kwargs, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        get_dataset(name, "train", **kwargs)


def test_bad_split_and_rgb_to_grey():
    with pytest.raises(DataError, match="split must be"):
        get_dataset("digits", "validation")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no 'val' split"):
        get_dataset("digits", "val")
    with pytest.raises(DataError, match="only grey"):
        TensorImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), channels=1, num_classes=10)


def test_imagefolder_needs_torchvision(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"jointsparse\[vision\]"):
            get_dataset(f"imagefolder:{tmp_path}", "train")
    else:
        with pytest.raises(DatasetNotFoundError, match="ImageNet layout"):
            get_dataset(f"imagefolder:{tmp_path}", "train")


# ---------------------------------------------------------------------------------- loaders


def _epoch_labels(loader, epoch):
    set_sampler_epoch(loader, epoch)
    return torch.cat([y for _, y in loader])


def test_make_loaders_cover_data_and_order_depends_on_seed_and_epoch_only():
    train, test, info = make_loaders("digits", batch_size=100, eval_batch_size=128, seed=4)
    assert info.train_size == 1437 and info.test_size == 360 and len(train) == 15 and len(test) == 3
    x, y = next(iter(train))
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    order0 = [torch.cat([b[1] for b in train])]
    assert sorted(order0[0].tolist()) == sorted(get_dataset("digits", "train").labels.tolist())
    e0, e1 = _epoch_labels(train, 0), _epoch_labels(train, 1)
    assert not torch.equal(e0, e1)
    train_again, _, _ = make_loaders("digits", batch_size=100, seed=4)
    _epoch_labels(train_again, 7)  # consuming other epochs first must not change epoch 1's order
    assert torch.equal(_epoch_labels(train_again, 1), e1)
    assert torch.equal(torch.cat([b[1] for b in test]), get_dataset("digits", "test").labels)  # test: fixed order


def test_make_loaders_options_and_errors():
    train, test, info = make_loaders("digits", batch_size=10, resize=12, channels=3, subset=40, test_subset=30)
    assert (info.in_channels, info.input_size, info.train_size, info.test_size) == (3, (12, 12), 40, 30)
    assert next(iter(train))[0].shape == (10, 3, 12, 12)
    with pytest.raises(DataError, match="initialized process group"):
        make_loaders("digits", distributed=True)
    with pytest.raises(DataError, match="batch sizes must be positive"):
        make_loaders("digits", batch_size=0)


def test_shard_sampler_partitions_without_padding():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11)) and [len(s) for s in shards] == [4, 4, 3]
    with pytest.raises(ValueError, match="outside world size"):
        ShardSampler(5, 3, 3)


def test_integer_indexing_bounds():
    ds = get_dataset("digits", "test")
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
