"""The settings of one training stage (:class:`TrainConfig`) and its outcome (:class:`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainConfig:
    """Hyper-parameters of one training stage. Validated on construction.

    ``schedule``: ``"cosine"`` (to ``min_lr``), ``"step"`` (times ``gamma`` every ``step_size``
    epochs, or at each epoch in ``milestones`` when given) or ``"constant"``; the LR is updated
    every step. ``warmup_epochs`` (may be fractional) ramps the LR linearly from lr/steps up to lr.
    ``max_steps_per_epoch`` caps an epoch (quick runs, tests).
    """

    epochs: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "cosine"
    step_size: int = 30
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "cpu"
    grad_clip: float | None = None
    log_every: int = 50
    progress: bool = True
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {what}, got {getattr(self, name)!r}")

        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        need(is_int(self.epochs) and self.epochs >= 0, "epochs", "must be an int >= 0")
        need(is_num(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        need(self.optimizer in ("sgd", "adam"), "optimizer", "must be 'sgd' or 'adam'")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(isinstance(self.nesterov, bool), "nesterov", "must be a bool")
        need(not (self.nesterov and self.optimizer == "sgd" and self.momentum == 0), "nesterov", "needs momentum > 0")
        need(self.schedule in ("cosine", "step", "constant"), "schedule", "must be 'cosine', 'step' or 'constant'")
        need(is_int(self.step_size) and self.step_size >= 1, "step_size", "must be an int >= 1")
        need(all(is_int(m) and m >= 1 for m in self.milestones), "milestones", "must be ints >= 1")
        need(list(self.milestones) == sorted(set(self.milestones)), "milestones", "must be strictly increasing")
        need(is_num(self.gamma) and 0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        need(is_num(self.min_lr) and 0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        need(is_num(self.warmup_epochs) and self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(is_int(self.seed), "seed", "must be an int")
        need(isinstance(self.device, str) and self.device.split(":")[0] in ("cpu", "cuda"), "device", "must be 'cpu' or 'cuda[:N]'")
        need(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "grad_clip", "must be None or > 0")
        need(is_int(self.log_every) and self.log_every >= 0, "log_every", "must be an int >= 0 (0: no step lines)")
        need(isinstance(self.progress, bool), "progress", "must be a bool")
        need(
            self.max_steps_per_epoch is None or (is_int(self.max_steps_per_epoch) and self.max_steps_per_epoch >= 1),
            "max_steps_per_epoch",
            "must be None or an int >= 1",
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the task's metric (accuracy as a fraction in [0, 1], PSNR in dB)."""

    test_metric: float
    test_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0
    resumed_from_epoch: int | None = None
    seconds: float = 0.0

    @property
    def test_accuracy(self) -> float:
        """``test_metric`` under its classification name."""
        return self.test_metric
