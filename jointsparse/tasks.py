"""What a model is trained and scored for: the loss, the metric and how each is summed.

One :class:`Task` object travels from the data (``DataInfo.task``, see :func:`task_for`) through
the trainer, ``evaluate``, ``compress`` and the command line, so no stage branches on the kind of
problem:

- :data:`CLASSIFICATION`: cross-entropy, top-1 accuracy (a fraction in [0, 1]);
- :data:`SUPER_RESOLUTION`: mean squared error, PSNR in dB per image
  (:func:`jointsparse.superres.psnr_y`: Y channel, border shaved, 8-bit levels), averaged over images.

Both metrics are "higher is better"; :meth:`Task.drop` is how much a result fell short of a
reference, in the metric's unit (points of accuracy, dB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .superres import psnr_y
import torch.nn.functional as F

__all__ = ["Task", "Classification", "SuperResolution", "CLASSIFICATION", "SUPER_RESOLUTION", "task_for", "get_task"]


@dataclass(frozen=True)
class Task:
    """The interface; subclasses fill in the loss and the metric."""

    name: str = "task"
    metric: str = "metric"  # the key ``evaluate`` returns it under
    short: str = "metric"  # suffix of the trainer's record keys (train_<short>, test_<short>)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch (what the trainer back-propagates)."""
        raise NotImplementedError

    def distill_loss(self, output: torch.Tensor, teacher_output: torch.Tensor, temperature: float) -> torch.Tensor:
        """Mean loss of matching a teacher's outputs (knowledge distillation): by default the
        task's own loss with the teacher's outputs as targets; ``temperature`` is classification's."""
        return self.loss(output, teacher_output)

    def loss_sum(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """Sum of the per-sample losses of a batch (``evaluate`` divides by the sample count)."""
        return float(self.loss(output, target)) * self.count(target)

    def metric_sum(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """Sum of the per-sample metric over a batch."""
        raise NotImplementedError

    def count(self, target: torch.Tensor) -> int:
        """Samples in a batch."""
        return int(target.shape[0])

    def format(self, value: float) -> str:
        """The metric as printed text."""
        raise NotImplementedError

    def drop(self, reference: float, value: float) -> float:
        """How far ``value`` falls below ``reference``, in the metric's printed unit."""
        raise NotImplementedError

    def model_kwargs(self, info: Any) -> dict[str, Any]:
        """Model-factory arguments a dataset of this task implies (``DataInfo`` in)."""
        return {"in_channels": info.in_channels}


@dataclass(frozen=True)
class Classification(Task):
    name: str = "classification"
    metric: str = "accuracy"
    short: str = "acc"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def loss_sum(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return float(F.cross_entropy(output, target, reduction="sum"))

    def distill_loss(self, output: torch.Tensor, teacher_output: torch.Tensor, temperature: float) -> torch.Tensor:
        # Hinton et al.'s soft targets: KL(teacher || student) at temperature T, times T^2 so that
        # its gradients keep their scale as T changes.
        log_student = F.log_softmax(output / temperature, dim=1)
        log_teacher = F.log_softmax(teacher_output / temperature, dim=1)
        return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2

    def metric_sum(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return float((output.argmax(dim=1) == target).sum())

    def count(self, target: torch.Tensor) -> int:
        return int(target.numel())

    def format(self, value: float) -> str:
        return f"{100 * value:.2f}%"

    def drop(self, reference: float, value: float) -> float:
        return 100 * (reference - value)

    def model_kwargs(self, info: Any) -> dict[str, Any]:
        return {"num_classes": info.num_classes, "in_channels": info.in_channels}


@dataclass(frozen=True)
class SuperResolution(Task):
    """Image-to-image regression scored by PSNR; ``border`` pixels are shaved before scoring."""

    name: str = "super-resolution"
    metric: str = "psnr"
    short: str = "psnr"
    border: int = 3

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def loss_sum(self, output: torch.Tensor, target: torch.Tensor) -> float:
        per_image = (output - target).pow(2).flatten(1).mean(dim=1)
        return float(per_image.sum())

    def metric_sum(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return float(psnr_y(output, target, self.border).sum())

    def format(self, value: float) -> str:
        return f"{value:.2f} dB"

    def drop(self, reference: float, value: float) -> float:
        return reference - value


CLASSIFICATION = Classification()
SUPER_RESOLUTION = SuperResolution()
_BY_NAME = {task.name: task for task in (CLASSIFICATION, SUPER_RESOLUTION)}


def get_task(name: str) -> Task:
    """The task registered under ``name`` (``classification``, ``super-resolution``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(_BY_NAME)}") from None


def task_for(info: Any) -> Task:
    """The task a dataset's :class:`~jointsparse.data.DataInfo` declares."""
    return get_task(getattr(info, "task", "classification"))
