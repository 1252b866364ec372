"""Codebook fine-tuning (SPEC section 4): train the shared values, not the individual weights.

Design: the fine-tuner updates the centroids itself, with its own learning rate, and keeps the
weights tied to them.

- ``after_backward``: for every layer, each centroid gets the mean gradient of its members,
  ``c_k <- c_k - lr * mean_{i in k} dC/dw_i`` (plus optional momentum). ``C`` is the full loss the
  trainer back-propagated, so the regularizers' penalties (added by the trainer from their own
  hooks) steer the centroids too. The weights' ``.grad`` is then zeroed so that the main
  optimizer's gradient step leaves them alone.
- ``after_step``: the weights are rewritten from the codebooks. This also undoes anything the main
  optimizer did regardless of the zeroed gradient (weight decay, old momentum), so after every
  step the model's weights equal ``QuantizedLayer.dequantize()`` bit for bit.

Pruned weights are not in any codebook (the exact zero is implicit), so they stay zero. For
universal quantization the shared value of a weight is ``c[q] - u``: the centroid moves, the
weight's own dither ``u`` stays.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from .quantize import QuantizedLayer, compressible_layers

__all__ = ["CodebookFinetuner"]


class _TiedLayer:
    def __init__(self, weight: torch.Tensor, layer: QuantizedLayer) -> None:
        if tuple(weight.shape) != tuple(layer.shape):
            raise ValueError(f"quantized layer has shape {tuple(layer.shape)}, weight has {tuple(weight.shape)}")
        self.weight = weight
        self.layer = layer
        device = weight.device
        self.positions = torch.from_numpy(layer.positions.astype(np.int64)).to(device)
        self.indices = torch.from_numpy(layer.indices.astype(np.int64)).to(device)
        self.dither = torch.from_numpy(layer.dither()).to(device)
        self.codebook = torch.from_numpy(layer.codebook.astype(np.float32).copy()).to(device)
        self.members = torch.bincount(self.indices, minlength=self.codebook.numel()).to(torch.float32)
        self.velocity = torch.zeros_like(self.codebook)

    def write_weights(self) -> None:
        values = self.codebook[self.indices] - self.dither  # float32, as QuantizedLayer.values()
        with torch.no_grad():
            flat = torch.zeros(self.weight.numel(), dtype=torch.float32, device=self.weight.device)
            flat[self.positions] = values
            self.weight.copy_(flat.view_as(self.weight))
        self.layer.codebook = self.codebook.detach().cpu().numpy().copy()

    def centroid_gradient(self) -> torch.Tensor | None:
        grad = self.weight.grad
        if grad is None:
            return None
        member_grads = grad.detach().reshape(-1)[self.positions].to(torch.float32)
        sums = torch.zeros_like(self.codebook).index_add_(0, self.indices, member_grads)
        return sums / self.members.clamp(min=1)


class CodebookFinetuner:
    """Trainer hook that fine-tunes the codebooks of ``quantized_layers`` tied into ``model``.

    ``quantized_layers`` maps ``"<module>.weight"`` names (as :func:`quantize_model` returns) to
    :class:`QuantizedLayer`; it is updated in place, so after fine-tuning it holds the new
    codebooks. Construction writes the quantized weights into the model.
    """

    def __init__(self, model: nn.Module, quantized_layers: Mapping[str, QuantizedLayer], lr: float = 1e-3, momentum: float = 0.0) -> None:
        if lr <= 0 or not np.isfinite(lr):
            raise ValueError(f"codebook learning rate must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        available = compressible_layers(model)
        unknown = sorted(set(quantized_layers) - set(available))
        if unknown:
            raise ValueError(f"quantized layers {unknown} are not conv/linear weights of the model")
        self.lr, self.momentum = float(lr), float(momentum)
        self.tied = {name: _TiedLayer(available[name][0].weight, layer) for name, layer in quantized_layers.items()}
        for tied in self.tied.values():
            tied.write_weights()

    # -- trainer hook protocol -------------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        return []  # the centroids are updated here, not by the main optimizer

    def penalty(self) -> float:
        return 0.0

    def on_batch_start(self, step: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        with torch.no_grad():
            for tied in self.tied.values():
                gradient = tied.centroid_gradient()
                if gradient is None:
                    continue
                tied.velocity.mul_(self.momentum).add_(gradient)
                tied.codebook.sub_(self.lr * tied.velocity)
                tied.weight.grad.zero_()

    def after_step(self, step: int) -> None:
        for name, tied in self.tied.items():
            if not bool(torch.isfinite(tied.codebook).all()):
                raise FloatingPointError(f"codebook of {name} diverged at step {step}; lower the codebook lr ({self.lr})")
            tied.write_weights()

    def state_dict(self) -> dict:
        return {
            "codebooks": {name: tied.codebook.detach().cpu().clone() for name, tied in self.tied.items()},
            "velocity": {name: tied.velocity.detach().cpu().clone() for name, tied in self.tied.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for name, codebook in state["codebooks"].items():
            if name not in self.tied or codebook.shape != self.tied[name].codebook.shape:
                raise ValueError(f"saved codebook {name!r} does not fit the quantized layers")
        for name, codebook in state["codebooks"].items():
            tied = self.tied[name]
            tied.codebook.copy_(codebook)
            tied.velocity.copy_(state.get("velocity", {}).get(name, torch.zeros_like(codebook)))
            tied.write_weights()

    @property
    def quantized_layers(self) -> dict[str, QuantizedLayer]:
        return {name: tied.layer for name, tied in self.tied.items()}
