"""Knowledge distillation as a training hook: the model being compressed learns to match the
dense model it started from, besides its own task loss."""

from __future__ import annotations

import torch
from torch import nn

from ..tasks import CLASSIFICATION, Task


class Distillation:
    """Adds ``weight * task.distill_loss(outputs, teacher(inputs), temperature)`` to each step's loss.

    The teacher is put in eval mode and frozen (no gradients); pass a copy when the model it
    comes from will change (``compress`` copies the dense model before retraining). The term is
    the hook's ``output_penalty``, so the trainer logs it under ``penalty``. It holds no state of its own:
    a resumed stage rebuilds it from the same dense model.
    """

    def __init__(self, teacher: nn.Module, weight: float, temperature: float = 4.0, task: Task = CLASSIFICATION) -> None:
        if not weight > 0 or not temperature > 0:
            raise ValueError(f"distillation needs weight > 0 and temperature > 0, got {weight} and {temperature}")
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.weight, self.temperature, self.task = float(weight), float(temperature), task

    def output_penalty(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_outputs = self.teacher(inputs)
        return self.weight * self.task.distill_loss(outputs, teacher_outputs, self.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
