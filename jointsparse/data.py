"""Datasets and loaders: the offline datasets of SPEC section 9, plus ImageNet-layout folders.

Names understood by :func:`get_dataset` / :func:`make_loaders`:

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), the embedded
  default. A fixed stratified 80/20 train/test split (``random_state=0``).
- ``fashion-mnist`` (aliases ``fashion_mnist``, ``fmnist``): gzipped IDX files, looked up in
  ``root=`` or in the Debian ``dataset-fashion-mnist`` location.
- ``mnist``: the same IDX format; not packaged here, so ``root=`` (or ``$JOINTSPARSE_DATA/mnist``).
- ``sr-natural``: x3 super-resolution of the luminance channel on the photographs that
  scikit-image and scikit-learn ship (:mod:`jointsparse.superres`): ``train`` and ``val`` are
  32 px patches of 15 training images, ``test`` is 5 held-out whole images (batch 1). Its
  ``DataInfo.task`` is ``"super-resolution"`` (targets are images, not labels).
- ``npz:PATH``: a NumPy ``.npz`` archive with ``x_train``, ``y_train`` and optionally ``x_test``,
  ``y_test``; images NHW, NCHW or NHWC, uint8 (scaled by 1/255) or float (used as is); labels
  integers ``0..K-1`` (K classes, from the largest label).
- ``imagefolder:PATH``: an ImageNet-style tree ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``
  (``PATH/test`` is accepted too), read lazily with Pillow.

A dataset without a test split (an npz without ``x_test``, a folder without ``val``/``test``)
gives ``make_loaders(..., require_test=False)`` a ``None`` test loader.

Tensor datasets (all but ``imagefolder``) keep every image in memory, resized once up front and
stored as uint8 where the source is 8-bit. Scaling to [0, 1], grey-to-RGB replication and
normalization happen per batch on the fly, so a 3-channel 67 px Fashion-MNIST costs one byte per
pixel of memory, not twelve. :func:`make_loaders` fetches whole batches with one indexing
operation instead of one ``__getitem__`` per image.

Normalization uses, by default, the *training* split's pixel mean and standard deviation at
native resolution (the same numbers for both splits, so the test set is never looked at;
ImageNet's for image folders); ``mean=``/``std=`` (one value per channel) replace them, and
``normalize=False`` turns it off. :class:`DataInfo` records the values used.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from . import superres

__all__ = [
    "DataError",
    "DatasetNotFoundError",
    "NoTestSplitError",
    "IdxFormatError",
    "DataInfo",
    "TensorImageDataset",
    "ShardSampler",
    "KNOWN_DATASETS",
    "read_idx",
    "get_dataset",
    "make_loaders",
    "data_loader",
    "set_sampler_epoch",
]

Split = Literal["train", "val", "test"]

KNOWN_DATASETS = ("digits", "fashion-mnist", "mnist", "sr-natural", "npz:PATH", "imagefolder:PATH")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV = "JOINTSPARSE_DATA"

# Training-split pixel statistics on the [0, 1] scale at native resolution.
_IDX_STATS = {"fashion-mnist": (0.2860406, 0.3530242), "mnist": (0.1306605, 0.3081078)}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_INSTALL_HINT = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` (files go to "
    f"{DEBIAN_FASHION_MNIST}) or put the four *-idx?-ubyte.gz files in a directory and pass root=DIR",
    "mnist": "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
    "and t10k-labels-idx1-ubyte.gz (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) into a "
    f"directory and pass root=DIR (or put them in ${DATA_ENV}/mnist)",
}


class DataError(ValueError):
    """Bad dataset name, option or file."""


class DatasetNotFoundError(DataError):
    """The dataset's files are not on this machine; the message says how to get them."""


class NoTestSplitError(DatasetNotFoundError):
    """The dataset has a training split only."""


class IdxFormatError(DataError):
    """A file is not a valid (optionally gzipped) IDX file."""


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset (as the loaders deliver it)."""

    name: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    train_size: int
    test_size: int
    mean: tuple[float, ...] | None = None  # the normalization applied (None: none)
    std: tuple[float, ...] | None = None
    task: str = "classification"  # or "super-resolution": what jointsparse.tasks.task_for builds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = None if self.mean is None else list(self.mean)
        d["std"] = None if self.std is None else list(self.std)
        return d


# --------------------------------------------------------------------------------------- IDX

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from the content) into a native-endian array.

    Layout: two zero bytes, a type code, the number of dims, then each dim as a big-endian
    uint32, then the data in big-endian order. Raises :class:`IdxFormatError` on anything that
    does not add up (bad magic, unknown type, truncated or over-long data, broken gzip).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; zlib.error is not
        raise IdxFormatError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0:
        raise IdxFormatError(f"{path}: bad IDX magic {raw[:4].hex()} (must start with two zero bytes)")
    if type_code not in _IDX_DTYPES:
        raise IdxFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX header (needs {header} bytes, has {len(raw)})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: IDX dims {dims} need {expected} data bytes, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_search_dirs(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    dirs = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]) / name)
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


@lru_cache(maxsize=4)
def _load_idx_split(name: str, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, 28, 28] and int64 labels [N]; cached so train+test+reruns read once."""
    img_stem, lbl_stem = _IDX_FILES[split]
    dirs = _idx_search_dirs(name, root)
    for directory in dirs:
        img_path, lbl_path = _find_idx(directory, img_stem), _find_idx(directory, lbl_stem)
        if img_path is not None and lbl_path is not None:
            break
    else:
        where = ", ".join(str(d) for d in dirs) or "(no directory: pass root=DIR)"
        raise DatasetNotFoundError(
            f"{name} {split} split not found (looked for {img_stem}[.gz] and {lbl_stem}[.gz] in {where}); "
            + _INSTALL_HINT[name]
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise IdxFormatError(
            f"{lbl_path}: {labels.shape} labels do not match {images.shape[0]} images in {img_path}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise IdxFormatError(f"{lbl_path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ------------------------------------------------------------------------------------ digits


@lru_cache(maxsize=1)
def _load_digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0
    )
    as_tensors = lambda x, y: (torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))  # noqa: E731
    return {"train": as_tensors(x_tr, y_tr), "test": as_tensors(x_te, y_te)}


# ------------------------------------------------------------------------- tensor datasets


class TensorImageDataset(Dataset):
    """In-memory images with per-batch scaling, channel replication and normalization.

    ``images`` is [N, C, H, W], uint8 (scaled by 1/255) or float (used as is). Indexing with an
    int gives one ``(image, label)``; indexing with a sequence or tensor of indices gives a
    whole batch ``(images [B, C', H, W] float32, labels [B] int64)`` in one operation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_classes: int,
    ) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"images [N,C,H,W] and labels [N] needed, got {tuple(images.shape)} and {tuple(labels.shape)}")
        native = images.shape[1]
        channels = native if channels is None else channels
        if channels != native and native != 1:
            raise DataError(f"channels={channels}: only grey (1-channel) images can be replicated, these have {native}")
        self.images, self.labels = images, labels
        self.channels, self.num_classes = channels, num_classes
        self._scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # Statistics per output channel of replicated grey images: replicate first, then normalize.
        self._replicate_first = self._mean is not None and self._mean.shape[1] == channels != native

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def _prepare(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32) * self._scale
        if self._replicate_first:
            x = x.expand(-1, self.channels, -1, -1)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        if x.shape[1] != self.channels:
            # Replicate after normalizing: one channel's arithmetic instead of three.
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        return x

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} images")
            index = int(index) % n
            return self._prepare(self.images[index : index + 1])[0], self.labels[index]
        index = torch.as_tensor(index, dtype=torch.long)
        return self._prepare(self.images[index]), self.labels[index]


def _resize_images(images: torch.Tensor, side: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear resize to side x side, once, in chunks (bounded memory); keeps uint8 as uint8."""
    if images.shape[-2:] == (side, side):
        return images
    downscale = side < min(images.shape[-2:])
    out = []
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float32)
        part = F.interpolate(part, size=(side, side), mode="bilinear", align_corners=False, antialias=downscale)
        if images.dtype == torch.uint8:
            part = part.round_().clamp_(0, 255).to(torch.uint8)
        out.append(part)
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], side, side))


@lru_cache(maxsize=2)  # one train + one test split; a 227 px Fashion-MNIST train split is 3 GB
def _prepared(
    name: str, split: str, root: str | None, resize: int | None, subset: int | None, subset_seed: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images and labels, cut to the subset first, then resized once."""
    images, labels = _load_digits_splits()[split] if name == "digits" else _load_idx_split(name, split, root)
    keep = select_subset(len(labels), subset, subset_seed)
    if keep is not None:
        images, labels = images[keep], labels[keep]
    if resize is not None:
        images = _resize_images(images, resize)
    return images, labels


def select_subset(n: int, subset: int | None, subset_seed: int | None) -> torch.Tensor | None:
    """The indices (sorted) of the ``subset`` images a split of ``n`` keeps: the first ones, or a
    random draw seeded by ``subset_seed``; None when it keeps them all."""
    if subset is None or subset >= n:
        return None
    if subset_seed is None:
        return torch.arange(subset)
    gen = torch.Generator().manual_seed(subset_seed)
    return torch.randperm(n, generator=gen)[:subset].sort().values


# -------------------------------------------------------------------------------------- npz


def _npz_images(array: np.ndarray, where: str) -> torch.Tensor:
    """NHW, NCHW or NHWC (channels 1 or 3; NCHW when both readings fit) to a [N, C, H, W] tensor."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[1] not in (1, 3) and array.shape[3] in (1, 3):
            array = array.transpose(0, 3, 1, 2)
        elif array.shape[1] not in (1, 3):
            raise DataError(f"{where}: images of shape {array.shape} have neither 1 nor 3 channels (NCHW or NHWC)")
    else:
        raise DataError(f"{where}: images must be NHW, NCHW or NHWC, got shape {array.shape}")
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{where}: images must be uint8 (0..255) or float, got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _npz_labels(array: np.ndarray, count: int, where: str) -> torch.Tensor:
    if array.ndim != 1 or array.shape[0] != count or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{where}: labels must be {count} integers in a 1-D array, got {array.dtype} {array.shape}")
    if count and array.min() < 0:
        raise DataError(f"{where}: negative label {int(array.min())}")
    return torch.from_numpy(array.astype(np.int64))


@lru_cache(maxsize=2)
def _load_npz(path: str, mtime_ns: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Both splits of an npz archive (cached per path and modification time)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"npz file {path!r} does not exist") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path!r} is not a readable .npz archive: {error}") from None
    with archive:
        missing = [key for key in ("x_train", "y_train") if key not in archive.files]
        if missing:
            raise DataError(f"{path!r} lacks {', '.join(missing)} (has {', '.join(archive.files) or 'nothing'})")
        splits = {}
        for split in ("train", "test"):
            if f"x_{split}" not in archive.files:
                continue
            try:
                images = _npz_images(archive[f"x_{split}"], f"{path}:x_{split}")
                labels = _npz_labels(archive[f"y_{split}"], images.shape[0], f"{path}:y_{split}")
            except KeyError:
                raise DataError(f"{path!r} has x_{split} but no y_{split}") from None
            except ValueError as error:  # object arrays need pickle: refused
                raise DataError(f"{path!r}: {error}") from None
            splits[split] = (images, labels)
    if "test" in splits and splits["test"][0].shape[1:] != splits["train"][0].shape[1:]:
        raise DataError(f"{path!r}: x_test images {tuple(splits['test'][0].shape[1:])} differ from x_train's {tuple(splits['train'][0].shape[1:])}")
    return splits


def _npz_splits(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        raise DatasetNotFoundError(f"npz file {path!r} does not exist") from None
    return _load_npz(path, mtime)


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale (uint8) or as stored (float)."""
    x = images.to(torch.float64) / (255.0 if images.dtype == torch.uint8 else 1.0)
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(1).tolist(), flat.std(1).clamp_min(1e-12).tolist()


# ----------------------------------------------------------------------------- imagefolder

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageFolderDataset(Dataset):
    """An ImageNet-layout folder read lazily with Pillow: ``root/<class>/<image>``.

    Training: a random resized crop (scale 0.08-1, aspect 3/4-4/3) and a horizontal flip, from
    torch's global generator; evaluation: the shorter side resized to ``side * 256 / 224``, then
    the centre ``side`` x ``side``. Classes are the sorted sub-directory names.
    """

    def __init__(self, root: Path, side: int, channels: int, train: bool, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file()
        ]
        if not self.samples:
            raise DatasetNotFoundError(f"imagefolder: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) under {root}/<class>/")
        self.side, self.channels, self.train = side, channels, train
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(0.08, 1.0))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3))))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, (1,)))
                top = int(torch.randint(0, height - h + 1, (1,)))
                return left, top, left + w, top + h
        side = min(width, height)  # fall back to the centre square
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def _load(self, path: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                return image.convert("RGB" if self.channels == 3 else "L")
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"imagefolder: cannot read {path}: {error}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        path, label = self.samples[index]
        image = self._load(path)
        if self.train:
            image = image.resize((self.side, self.side), Image.BILINEAR, box=self._crop_box(*image.size))
            if float(torch.rand(1)) < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            short = round(self.side * 256 / 224)
            width, height = image.size
            scale = short / min(width, height)
            image = image.resize((max(self.side, round(width * scale)), max(self.side, round(height * scale))), Image.BILINEAR)
            left, top = (image.size[0] - self.side) // 2, (image.size[1] - self.side) // 2
            image = image.crop((left, top, left + self.side, top + self.side))
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).to(torch.float32).div_(255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x.contiguous(), torch.tensor(label, dtype=torch.int64)


def _imagefolder_split(base: Path, split: str) -> Path:
    candidates = ["train"] if split == "train" else ["val", "test"]
    folder = next((base / c for c in candidates if (base / c).is_dir()), None)
    if folder is not None:
        return folder
    error = NoTestSplitError if split == "test" and (base / "train").is_dir() else DatasetNotFoundError
    raise error(
        f"imagefolder: no {' or '.join(candidates)} directory under {base}; expected the ImageNet layout "
        f"{base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG"
    )


# ----------------------------------------------------------------------------------- public


def _canonical(name: str) -> str:
    for prefix in ("imagefolder", "npz"):
        if name.lower().startswith(f"{prefix}:"):
            if not name[len(prefix) + 1 :]:
                raise DataError(f"{prefix} needs a path: {prefix}:/path/to/{'imagenet' if prefix == 'imagefolder' else 'data.npz'}")
            return prefix
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in ("digits", "fashion-mnist", "mnist", "sr-natural"):
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return key


def canonical_name(name: str) -> str:
    """The dataset a name means: aliases resolved (``fmnist`` -> ``fashion-mnist``), paths kept."""
    key = _canonical(name)
    return name if key in ("npz", "imagefolder") else key


def _check_options(split: str, resize: int | None, channels: int | None, subset: int | None) -> None:
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if resize is not None and (not isinstance(resize, int) or resize < 1):
        raise DataError(f"resize must be a positive int (side length), got {resize!r}")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise DataError(f"subset must be a positive int, got {subset!r}")


def _normalization(
    normalize: bool, mean: Sequence[float] | None, std: Sequence[float] | None, default: tuple[Sequence[float], Sequence[float]],
    native: int, channels: int,
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The (mean, std) to apply: the given ones (one value each, per native or output channel) or the default."""
    if not normalize:
        return None, None
    if (mean is None) != (std is None):
        raise DataError("give both mean and std, or neither")
    if mean is None:
        mean, std = default
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != len(std):
        raise DataError(f"mean has {len(mean)} values, std {len(std)}: give one per channel")
    if len(mean) == 1 and channels > 1:
        mean, std = mean * native, std * native
    if len(mean) not in (native, channels):
        raise DataError(f"mean/std have {len(mean)} values; the images have {channels} channel(s)")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise DataError(f"std must be positive and every value finite, got mean {list(mean)}, std {list(std)}")
    return mean, std


def get_dataset(
    name: str,
    split: Split,
    *,
    root: str | os.PathLike[str] | None = None,
    resize: int | None = None,
    channels: int | None = None,
    subset: int | None = None,
    subset_seed: int | None = None,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Dataset:
    """One split of a dataset. The returned dataset carries ``.info`` (a :class:`DataInfo`).

    ``resize``: square side in pixels (bilinear, done once). ``channels``: 1 or 3 (grey images
    are replicated). ``subset``: keep N images of this split: the first N, or a random N seeded
    by ``subset_seed``. ``normalize``: subtract a mean and divide by a std per channel, by default
    the training split's (``mean``/``std`` replace them). A missing test split raises
    :class:`NoTestSplitError`.
    """
    _check_options(split, resize, channels, subset)
    key = _canonical(name)
    if key == "sr-natural":
        return _sr_natural(split, resize, channels, subset, subset_seed)
    if split == "val":
        raise DataError(f"{name} has no 'val' split (only sr-natural has one); use 'train' or 'test'")
    if key == "imagefolder":
        folder = _imagefolder_split(Path(name.split(":", 1)[1]), split)
        out_channels = channels or 3
        grey_stats = (sum(_IMAGENET_STATS[0]) / 3,), (sum(_IMAGENET_STATS[1]) / 3,)
        norm = _normalization(normalize, mean, std, _IMAGENET_STATS if out_channels == 3 else grey_stats, out_channels, out_channels)
        side = resize or 224
        dataset: Dataset = ImageFolderDataset(folder, side, out_channels, split == "train", *norm)
        num_classes = len(dataset.classes)
        keep = select_subset(len(dataset), subset, subset_seed)
        if keep is not None:
            dataset = torch.utils.data.Subset(dataset, keep.tolist())
        dataset.info = DataInfo(name, num_classes, out_channels, (side, side), -1, -1, *norm)  # sizes unknown per split
        return dataset

    if key == "npz":
        path = name.split(":", 1)[1]
        splits = _npz_splits(path)
        if split not in splits:
            raise NoTestSplitError(f"{path!r} has no x_test/y_test: a training split only")
        images, labels = splits[split]
        num_classes = int(max(int(y.max()) if len(y) else 0 for _, y in splits.values())) + 1
        keep = select_subset(len(labels), subset, subset_seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        if resize is not None:
            images = _resize_images(images, resize)
        stats = _channel_stats(splits["train"][0])
    else:
        images, labels = _prepared(key, split, None if root is None else str(root), resize, subset, subset_seed)
        num_classes = 10
        if key == "digits":
            train_images = _load_digits_splits()["train"][0]
            stats = ([float(train_images.mean())], [float(train_images.std())])
        else:
            stats = ([_IDX_STATS[key][0]], [_IDX_STATS[key][1]])
    native = images.shape[1]
    in_ch = channels or native
    norm = _normalization(normalize, mean, std, stats, native, in_ch)
    dataset = TensorImageDataset(images, labels, channels=in_ch, mean=norm[0], std=norm[1], num_classes=num_classes)
    sizes = {"train": len(labels) if split == "train" else -1, "test": len(labels) if split == "test" else -1}
    dataset.info = DataInfo(name if key == "npz" else key, num_classes, in_ch, dataset.input_size, sizes["train"], sizes["test"], *norm)
    return dataset


def _sr_natural(split: str, resize: int | None, channels: int | None, subset: int | None, subset_seed: int | None) -> Dataset:
    if resize is not None or channels not in (None, 1):
        raise DataError("sr-natural is the Y channel at its native size: resize and channels do not apply")
    try:
        dataset = superres.sr_dataset(split, subset, subset_seed)
    except superres.ImagesNotFoundError as error:
        raise DatasetNotFoundError(str(error)) from None
    sizes = {"train": len(dataset) if split == "train" else -1, "test": len(dataset) if split != "train" else -1}
    dataset.info = DataInfo("sr-natural", 0, 1, dataset.input_size, sizes["train"], sizes["test"], task="super-resolution")
    return dataset


class ShardSampler(Sampler[int]):
    """Deterministic, unpadded shard ``rank::world_size`` of ``range(n)``, for evaluation.

    Unlike ``DistributedSampler`` it never repeats samples, so per-rank sums of correct
    predictions and losses all-reduce to exact totals.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    """Call ``set_epoch`` on whatever sampler inside ``loader`` has it (plain or batched)."""
    seen = set()
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        while sampler is not None and id(sampler) not in seen:
            seen.add(id(sampler))
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            sampler = getattr(sampler, "sampler", None)


def _passthrough(batch: Any) -> Any:
    return batch


def data_loader(dataset: Dataset, sampler: Sampler, batch_size: int, drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A loader over ``dataset`` in ``sampler``'s order, as :func:`make_loaders` builds them: for
    tensor datasets one indexing op per batch. For loaders over a split carved by the caller
    (e.g. a validation split taken out of the training images)."""
    if isinstance(dataset, TensorImageDataset) or getattr(dataset, "batch_indexing", False):
        # One fancy-indexing op per batch: the sampler yields index lists, the dataset slices.
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=BatchSampler(sampler, batch_size, drop_last),
            collate_fn=_passthrough,
            num_workers=num_workers,
        )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers)


def make_loaders(
    name: str,
    *,
    batch_size: int = 128,
    eval_batch_size: int = 256,
    seed: int = 0,
    resize: int | None = None,
    channels: int | None = None,
    subset: int | None = None,
    subset_seed: int | None = None,
    test_subset: int | None = None,
    root: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    distributed: bool = False,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    drop_last: bool = False,
    eval_split: Split = "test",
    require_test: bool = True,
) -> tuple[DataLoader, DataLoader | None, DataInfo]:
    """Train and test loaders plus a :class:`DataInfo`.

    The training order is a permutation seeded by ``(seed, epoch)`` only (a
    ``DistributedSampler``, with one replica when not distributed); the trainer calls
    ``set_epoch`` each epoch, so order never depends on how much randomness earlier epochs used.
    ``batch_size`` is per process: with ``distributed=True`` the global batch is
    ``batch_size * world_size`` and each rank sees the interleaved share of the same
    permutation, so a 1-process run with the global batch sees the same batches. The test
    loader is sharded without padding across ranks (:class:`ShardSampler`); ``evaluate`` sums
    the shards. ``subset`` / ``test_subset`` cut the training / evaluation split.
    ``eval_split``: the split the second loader serves (``"val"`` exists for ``sr-natural``
    only: validation patches, so that nothing during training looks at the test images).
    Whole images of different sizes (``sr-natural``'s test split) come one per batch. With
    ``require_test=False`` a dataset without a test split gives ``None`` as the test loader.
    """
    if batch_size < 1 or eval_batch_size < 1:
        raise DataError(f"batch sizes must be positive, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
    common = dict(root=root, resize=resize, channels=channels, normalize=normalize, mean=mean, std=std)
    train_set = get_dataset(name, "train", subset=subset, subset_seed=subset_seed, **common)
    try:
        test_set: Dataset | None = get_dataset(name, eval_split, subset=test_subset, **common)
    except NoTestSplitError:
        if require_test:
            raise
        test_set = None
    if test_set is not None and not getattr(test_set, "batch_indexing", True):
        eval_batch_size = 1
    if distributed:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise DataError("distributed=True needs an initialized process group (call train.init_distributed() first)")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
    train_loader = data_loader(train_set, train_sampler, batch_size, drop_last, num_workers)
    test_loader = None
    if test_set is not None:
        test_loader = data_loader(test_set, ShardSampler(len(test_set), rank, world), eval_batch_size, False, num_workers)
    info = dataclasses.replace(train_set.info, train_size=len(train_set), test_size=0 if test_set is None else len(test_set))
    return train_loader, test_loader, info
