"""Compression recipes: one TOML file holds every choice of a ``jointsparse compress`` run.

A recipe is read with the standard library's ``tomllib``, checked against the dataclasses below
(unknown keys, wrong types and out-of-range values are rejected with the key's dotted name), and
stored verbatim in the compressed file's provenance. Every field has a default, so an empty
recipe is valid: the defaults are the paper's setting scaled to short CPU runs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .train import TrainConfig
from .transforms import DEFAULT_M

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class RecipeError(ValueError):
    """A recipe that cannot be read or holds an unknown key or an out-of-range value."""


def _fraction(value: float) -> bool:
    return 0.0 <= value < 1.0


@dataclass
class StageConfig:
    """One training stage (regularized retraining, masked fine-tuning or codebook fine-tuning)."""

    epochs: int = 1
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    max_steps_per_epoch: int = 0  # 0: the whole training set each epoch
    # Knowledge distillation from the dense model the run started from: the weight of the
    # teacher-matching term beside the task loss (0: off) and, for classification, the softmax
    # temperature (jointsparse.train.Distillation).
    distill: float = 0.0
    distill_temperature: float = 4.0


    _checks = {
        "distill": (lambda v: v >= 0 and math.isfinite(v), "must be a finite number >= 0"),
        "distill_temperature": (lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0"),
        "epochs": (lambda v: v >= 0, "must be >= 0"),
        "lr": (lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0"),
        "optimizer": (lambda v: v in ("sgd", "adam"), "must be 'sgd' or 'adam'"),
        "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "weight_decay": (lambda v: v >= 0, "must be >= 0"),
        "schedule": (lambda v: v in ("cosine", "step", "constant"), "must be 'cosine', 'step' or 'constant'"),
        "max_steps_per_epoch": (lambda v: v >= 0, "must be >= 0"),
    }

    @property
    def distilling(self) -> bool:
        """Whether this stage trains against the teacher (a stage of 0 epochs trains not at all)."""
        return self.distill > 0 and self.epochs > 0

    def omitted_from_fingerprint(self) -> tuple[str, ...]:
        """Keys added after recipes were first fingerprinted, left out of ``to_dict`` while
        distillation is off, so work directories, stage records and tuning digests of runs that do
        not distil stay valid. While it is on, both are in: a run's fingerprint then names its
        temperature, even at the default."""
        return ("distill", "distill_temperature") if self.distill == 0 else ()

    def train_config(self, *, seed: int, device: str, progress: bool) -> TrainConfig:
        """The trainer's settings for this stage (step lines off: the stage logs per epoch)."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            max_steps_per_epoch=self.max_steps_per_epoch or None,
            seed=seed,
            device=device,
            progress=progress,
            log_every=0,
        )


@dataclass
class RegularizerConfig:
    """The sparsity method. ``method = "joint_sparsity"`` is the paper's; ``mode`` picks the
    domains it regularizes. Other methods (baselines) take their options from ``options``."""

    method: str = "joint_sparsity"
    mode: str = "joint"
    learnable: bool = True
    # "auto": a = exp(rho_0) R_0 per domain (= N R_0 / e), the dense model at equilibrium (docs/method.md)
    a_spatial: float | str = "auto"
    a_winograd: float | str = "auto"
    lambda_spatial: float = 1.0
    lambda_winograd: float = 1.0
    init_log_coefficient: float | None = None
    update_every: int = 50
    options: dict[str, Any] = field(default_factory=dict)

    _checks = {
        "mode": (lambda v: v in ("joint", "spatial", "winograd"), "must be 'joint', 'spatial' or 'winograd'"),
        "a_spatial": (lambda v: v == "auto" or (not isinstance(v, str) and v >= 0), "must be \"auto\" or a number >= 0"),
        "a_winograd": (lambda v: v == "auto" or (not isinstance(v, str) and v >= 0), "must be \"auto\" or a number >= 0"),
        "lambda_spatial": (lambda v: v >= 0, "must be >= 0"),
        "lambda_winograd": (lambda v: v >= 0, "must be >= 0"),
        "update_every": (lambda v: v >= 1, "must be >= 1"),
    }


@dataclass
class SparsityConfig:
    """Target sparsity per domain: ``{"*": 0.7, "fc*": 0.9, "conv1": 0.6}`` (exact names win over
    globs; among globs the first match wins; a layer nothing matches is not pruned)."""

    spatial: dict[str, float] = field(default_factory=lambda: {"*": 0.7})
    winograd: dict[str, float] = field(default_factory=lambda: {"*": 0.7})

    _checks = {
        "spatial": (lambda v: all(_fraction(x) for x in v.values()), "values must be in [0, 1)"),
        "winograd": (lambda v: all(_fraction(x) for x in v.values()), "values must be in [0, 1)"),
    }


@dataclass
class QuantizeConfig:
    """Quantizer and bits per layer kind, with per-layer overrides by name or glob."""

    method: str = "kmeans"
    conv_bits: int = 6
    linear_bits: int = 5
    bits: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    centroid_lr: float = 0.05  # codebook fine-tuning: c_k -= centroid_lr * mean gradient of its members
    # "last": the file keeps what codebook fine-tuning ends with. "best": it keeps the fine-tuned
    # codebooks only if they score at least as well as the k-means ones on the evaluation data, which
    # must then be a validation split (compress's test_loader is what it compares on).
    codebook_selection: str = "last"

    _checks = {
        "centroid_lr": (lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0"),
        "codebook_selection": (lambda v: v in ("last", "best"), "must be 'last' or 'best'"),
        "method": (lambda v: v in ("kmeans", "universal"), "must be 'kmeans' or 'universal'"),
        "conv_bits": (lambda v: 1 <= v <= 16, "must be in 1..16"),
        "linear_bits": (lambda v: 1 <= v <= 16, "must be in 1..16"),
        "bits": (lambda v: all(1 <= x <= 16 for x in v.values()), "values must be in 1..16"),
    }


@dataclass
class WinogradConfig:
    """Winograd F(m x m, r x r): the output tile ``m`` for every layer, with per-layer overrides."""

    m: int = DEFAULT_M
    layers: dict[str, int] = field(default_factory=dict)

    _checks = {
        "m": (lambda v: 1 <= v <= 8, "must be in 1..8"),
        "layers": (lambda v: all(1 <= x <= 8 for x in v.values()), "values must be in 1..8"),
    }


@dataclass
class CodingConfig:
    coder: str = "auto"
    # The file's precision for the tensors stored as they are (biases, BatchNorm): "float32"
    # (lossless), or "float16" / "bfloat16" (half their bytes; on small nets a few % of the file).
    # A coding setting: changing it re-encodes without training again.
    raw_float_dtype: str = "float32"
    # The codebooks' precision: "float32", or "float16" (half the codebook bytes, format version 4;
    # with 7-8 bit codebooks on a small net, a tenth of the file).
    codebook_dtype: str = "float32"

    _checks = {
        "codebook_dtype": (lambda v: v in ("float32", "float16"), "must be 'float32' or 'float16'"),
        "coder": (lambda v: v in ("auto", "ans", "zstd"), "must be 'auto', 'ans' or 'zstd'"),
        "raw_float_dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "must be 'float32', 'float16' or 'bfloat16'"),
    }


@dataclass
class DataConfig:
    """Data options; the command line's flags override them. ``name`` None: give ``--data``."""

    name: str | None = None
    resize: int | None = None
    channels: int | None = None
    subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 256
    mean: list[float] | None = None  # normalisation per channel; None: the dataset's training statistics
    std: list[float] | None = None
    normalize: bool | None = None  # false: images scaled to [0, 1] only

    _checks = {
        "mean": (lambda v: v is None or (len(v) > 0 and all(math.isfinite(x) for x in v)), "must be a non-empty list of finite numbers"),
        "std": (lambda v: v is None or (len(v) > 0 and all(math.isfinite(x) and x > 0 for x in v)), "must be a non-empty list of positive numbers"),
        "resize": (lambda v: v is None or v >= 1, "must be >= 1"),
        "channels": (lambda v: v is None or v in (1, 3), "must be 1 or 3"),
        "subset": (lambda v: v is None or v >= 1, "must be >= 1"),
        "batch_size": (lambda v: v >= 1, "must be >= 1"),
        "eval_batch_size": (lambda v: v >= 1, "must be >= 1"),
    }


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    retrain: StageConfig = field(default_factory=lambda: StageConfig(epochs=4, lr=0.01))
    finetune: StageConfig = field(default_factory=lambda: StageConfig(epochs=1, lr=0.002))
    codebook: StageConfig = field(default_factory=lambda: StageConfig(epochs=1, lr=0.0005, momentum=0.0, schedule="constant"))
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    winograd: WinogradConfig = field(default_factory=WinogradConfig)
    coding: CodingConfig = field(default_factory=CodingConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for section in dataclasses.fields(self):
            for key in getattr(getattr(self, section.name), "omitted_from_fingerprint", tuple)():
                del data[section.name][key]
        return data

    def distills(self) -> bool:
        """Whether any training stage distils from the dense model (a teacher is kept)."""
        return any(stage.distilling for stage in (self.retrain, self.finetune, self.codebook))


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item_type) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return isinstance(value, dict) and all(isinstance(k, str) and _type_ok(v, value_type) for k, v in value.items())
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix or 'recipe'} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    default = cls()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise RecipeError(f"unknown key {name!r}; known keys here: {', '.join(fields)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            # A stage table starts from that stage's own defaults, not the class defaults.
            values[key] = _merge(getattr(default, key), value, f"{name}.")
            continue
        if not _type_ok(value, annotation):
            raise RecipeError(f"{name} = {value!r} has the wrong type (expected {getattr(annotation, '__name__', annotation)})")
        check = getattr(cls, "_checks", {}).get(key)
        if check and not check[0](value):
            raise RecipeError(f"{name} = {value!r} {check[1]}")
        values[key] = float(value) if annotation is float else value
    return dataclasses.replace(default, **values)


def _merge(base: Any, data: Any, prefix: str) -> Any:
    built = _build(type(base), data, prefix)
    explicit = {key: getattr(built, key) for key in data}
    return dataclasses.replace(base, **explicit)


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """A :class:`Recipe` from a TOML-shaped dict, validated."""
    return _build(Recipe, data, "")


def load_recipe(path: str | Path | None) -> Recipe:
    """Read and validate a TOML recipe; ``None`` gives the defaults."""
    if path is None:
        return Recipe()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise RecipeError(f"recipe {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"recipe {str(path)!r} is not valid TOML: {error}") from None
    return parse_recipe(data)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as TOML text (every value explicit), for ``demo`` to leave beside its outputs."""
    lines: list[str] = []
    for section, config in recipe.to_dict().items():
        scalars = {k: v for k, v in config.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in config.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in scalars.items() if value is not None]
        lines.append("")
        for key, table in tables.items():
            lines.append(f"[{section}.{key}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else '"' + key.replace('"', '\\"') + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise RecipeError(f"cannot write {value!r} as TOML")
