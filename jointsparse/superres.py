"""``sr-natural``: x3 super-resolution of the luminance channel on the natural photographs that
installed packages ship, offline (SPEC section 10).

Images: the photographs in the scikit-image wheel's ``skimage/data`` directory and
scikit-learn's two sample images (china, flower), read from the installed files with Pillow.
Synthetic and binary pictures (chessboards, logos, phantoms, the horse silhouette), tiny ones and
the motion-blurred clock are left out.

The split is fixed (:data:`TEST_IMAGES`, :data:`TRAIN_IMAGES`, :func:`split_record`):

- ``test``: :data:`TEST_IMAGES`, whole images, held out; nothing is tuned on them;
- ``train`` / ``val``: non-overlapping ``PATCH`` x ``PATCH`` patches on a grid over the training
  images; a seeded draw puts :data:`VAL_FRACTION` of them in ``val`` (so validation patches come
  from the training images but never overlap a training patch); flat patches (HR standard
  deviation under :data:`FLAT_STD`) are dropped. ``train`` is augmented with the
  8 rotations/flips of each patch, deterministically (index ``8 k + j`` is patch ``k`` under
  transform ``j``), so data order stays a function of the sampler's seed alone.

Degradation, as SRCNN: RGB -> Y (ITU-R BT.601, MATLAB ``rgb2ycbcr``'s studio range
16..235, scaled to [0, 1] by 1/255), the HR image cropped to a multiple of :data:`SCALE`, bicubic
down by ``SCALE`` (antialiased, like MATLAB ``imresize``) and bicubic back up to the HR size.
The network maps that upscaled image to the HR one. Degradation is done on the whole image
before patches are cut, so a patch's input carries no patch-border effects.

PSNR (:func:`psnr_y`): on Y, ``SCALE`` pixels shaved off every border as SRCNN's evaluation does,
the output clamped to [0, 1] and both images rounded to 8-bit levels, peak 255.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SCALE = 3
BORDER = SCALE  # SRCNN shaves `scale` pixels off each side before PSNR
PATCH = 32
VAL_FRACTION = 0.05
SPLIT_SEED = 0
#: Patches whose HR standard deviation is below this are flat (black sky, retina background)
#: and dropped: they teach nothing and would dominate the validation PSNR.
FLAT_STD = 2 / 255

#: Held-out whole test images (scikit-image names, plus scikit-learn's flower).
TEST_IMAGES = ("camera", "chelsea", "coins", "rocket", "flower")
#: Training images (their patches also give the validation set).
TRAIN_IMAGES = (
    "astronaut", "brick", "cell", "coffee", "grass", "gravel", "hubble_deep_field", "ihc", "moon",
    "motorcycle_left", "motorcycle_right", "page", "retina", "text", "china",
)
_SKIMAGE_FILES = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png", "cell": "cell.png",
    "chelsea": "chelsea.png", "coffee": "coffee.png", "coins": "coins.png", "grass": "grass.png",
    "gravel": "gravel.png", "hubble_deep_field": "hubble_deep_field.jpg", "ihc": "ihc.png", "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png", "page": "page.png",
    "retina": "retina.jpg", "rocket": "rocket.jpg", "text": "text.png",
}
_SKLEARN_FILES = {"china": "china.jpg", "flower": "flower.jpg"}


class ImagesNotFoundError(FileNotFoundError):
    """scikit-image (or one of its bundled photographs) is not installed."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def image_path(name: str) -> Path:
    """Where an installed package keeps photograph ``name``."""
    if name in _SKIMAGE_FILES:
        package, sub, file = "skimage", "data", _SKIMAGE_FILES[name]
        hint = "pip install scikit-image (or: pip install 'jointsparse[sr]')"
    elif name in _SKLEARN_FILES:
        package, sub, file = "sklearn", "datasets/images", _SKLEARN_FILES[name]
        hint = "pip install scikit-learn"
    else:
        raise KeyError(f"unknown sr-natural image {name!r}")
    base = _package_dir(package)
    path = None if base is None else base / sub / file
    if path is None or not path.is_file():
        raise ImagesNotFoundError(f"sr-natural needs {package}'s bundled image {file}, not found; {hint}")
    return path


def images_available() -> bool:
    if importlib.util.find_spec("PIL") is None:
        return False
    try:
        for name in TEST_IMAGES + TRAIN_IMAGES:
            image_path(name)
    except ImagesNotFoundError:
        return False
    return True


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1] (BT.601 studio range 16..235, divided by 255); grey images count as R = G = B."""
    rgb = image.astype(np.float64) / 255.0
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    y = 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]
    return (y / 255.0).astype(np.float32)


@lru_cache(maxsize=None)
def load_y(name: str) -> torch.Tensor:
    """Photograph ``name`` as its Y channel, [1, 1, H, W] float32, cropped to a multiple of SCALE."""
    try:
        from PIL import Image
    except ImportError:
        raise ImagesNotFoundError("sr-natural reads its photographs with Pillow: pip install pillow (or 'jointsparse[sr]')") from None
    with Image.open(image_path(name)) as handle:
        array = np.asarray(handle.convert("RGB") if handle.mode not in ("L", "RGB") else handle)
    y = rgb_to_y(array)
    h, w = (y.shape[0] // SCALE) * SCALE, (y.shape[1] // SCALE) * SCALE
    return torch.from_numpy(np.ascontiguousarray(y[:h, :w])).view(1, 1, h, w)


def bicubic_degrade(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic down by ``scale`` (antialiased) and back up to the HR size: the network's input."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {scale}")
    low = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)


def psnr_y(output: torch.Tensor, target: torch.Tensor, border: int = BORDER) -> torch.Tensor:
    """Per-image PSNR in dB of [N, 1, H, W] Y images in [0, 1], SRCNN-style (see the module doc)."""
    if output.shape != target.shape or output.ndim != 4:
        raise ValueError(f"PSNR needs two [N, C, H, W] tensors of one shape, got {tuple(output.shape)} and {tuple(target.shape)}")
    if border:
        if min(output.shape[-2:]) <= 2 * border:
            raise ValueError(f"images of {tuple(output.shape[-2:])} px are too small to shave {border} px per border")
        output, target = output[..., border:-border, border:-border], target[..., border:-border, border:-border]
    out = torch.round(output.detach().clamp(0, 1).double() * 255)
    ref = torch.round(target.detach().clamp(0, 1).double() * 255)
    mse = (out - ref).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


class SRPairs(Dataset):
    """(upscaled input, HR target) pairs. Patches are stacked tensors and batch-indexable;
    whole images (different sizes) are a list, one per item. ``augment``: the 8 dihedral
    transforms of every pair, as indices ``8 k + j``."""

    batch_indexing = False

    def __init__(self, inputs: torch.Tensor | list[torch.Tensor], targets: torch.Tensor | list[torch.Tensor], *, augment: bool = False) -> None:
        self.inputs, self.targets, self.augment = inputs, targets, augment
        self.batch_indexing = isinstance(inputs, torch.Tensor)
        self.copies = 8 if augment else 1

    def __len__(self) -> int:
        return len(self.inputs) * self.copies

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.inputs[0].shape[-2:])  # type: ignore[return-value]

    @staticmethod
    def _dihedral(x: torch.Tensor, j: int) -> torch.Tensor:
        x = torch.rot90(x, j % 4, dims=(-2, -1))
        return x.flip(-1) if j >= 4 else x

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} pairs")
            k, j = divmod(int(index) % n, self.copies)
            x, y = self.inputs[k], self.targets[k]
            if not self.batch_indexing:
                x, y = x[0], y[0]
            return self._dihedral(x, j), self._dihedral(y, j)
        index = torch.as_tensor(index, dtype=torch.long)
        k, j = index // self.copies, index % self.copies
        x, y = self.inputs[k], self.targets[k]
        if self.copies == 1:
            return x, y
        xs, ys = [], []
        for xi, yi, ji in zip(x, y, j.tolist()):  # batches are small; 8 transforms of a 32 px patch are cheap
            xs.append(self._dihedral(xi, ji))
            ys.append(self._dihedral(yi, ji))
        return torch.stack(xs), torch.stack(ys)


@lru_cache(maxsize=1)
def _patches() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every training image's grid patches, split into train and val by the fixed seed."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    split: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"train": ([], []), "val": ([], [])}
    for name in TRAIN_IMAGES:
        hr = load_y(name)
        lr_up = bicubic_degrade(hr)
        h, w = hr.shape[-2:]
        for top in range(0, h - PATCH + 1, PATCH):
            for left in range(0, w - PATCH + 1, PATCH):
                part = "val" if float(torch.rand((), generator=generator)) < VAL_FRACTION else "train"
                target = hr[0, :, top : top + PATCH, left : left + PATCH]
                if float(target.std()) < FLAT_STD:
                    continue
                split[part][0].append(lr_up[0, :, top : top + PATCH, left : left + PATCH])
                split[part][1].append(target)
    return {part: (torch.stack(x), torch.stack(y)) for part, (x, y) in split.items()}


@lru_cache(maxsize=1)
def _test_pairs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    hrs = [load_y(name) for name in TEST_IMAGES]
    return [bicubic_degrade(hr) for hr in hrs], hrs


def sr_dataset(split: str, subset: int | None = None, subset_seed: int | None = None) -> SRPairs:
    """One split of ``sr-natural``: ``train`` (augmented patches), ``val`` (patches) or ``test``
    (whole images). ``subset`` keeps N patches (train/val, seeded like the other datasets) or the
    first N test images."""
    if split == "test":
        inputs, targets = _test_pairs()
        n = len(inputs) if subset is None else min(subset, len(inputs))
        return SRPairs(inputs[:n], targets[:n])
    if split not in ("train", "val"):
        raise ValueError(f"sr-natural splits are train, val and test, got {split!r}")
    inputs, targets = _patches()[split]
    if subset is not None and subset < len(inputs):
        if subset_seed is None:
            keep = torch.arange(subset)
        else:
            keep = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(subset_seed))[:subset].sort().values
        inputs, targets = inputs[keep], targets[keep]
    return SRPairs(inputs, targets, augment=split == "train")


def bicubic_psnr(dataset: SRPairs) -> float:
    """Mean PSNR of the bicubic input itself over ``dataset`` (the baseline every table shows)."""
    values = [float(psnr_y(x.unsqueeze(0) if x.ndim == 3 else x, y.unsqueeze(0) if y.ndim == 3 else y).mean())
              for x, y in (dataset[i] for i in range(0, len(dataset), dataset.copies))]
    return float(np.mean(values))


def split_record() -> dict[str, Any]:
    """The fixed split as results files record it."""
    patches = _patches()
    return {
        "scale": SCALE, "border": BORDER, "patch": PATCH, "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED, "flat_std": FLAT_STD,
        "train_images": list(TRAIN_IMAGES), "test_images": list(TEST_IMAGES),
        "train_patches": int(patches["train"][0].shape[0]), "val_patches": int(patches["val"][0].shape[0]),
        "test_sizes": {name: list(load_y(name).shape[-2:]) for name in TEST_IMAGES},
        "colour": "Y of ITU-R BT.601 (16..235)/255", "degradation": "bicubic x1/3 (antialiased) then x3, torch.nn.functional.interpolate",
    }
