"""Memory-bounded CNNs (Collins & Kohli, arXiv 1412.1442): an L1 soft threshold after every
optimizer step (``l1_prox``) and a per-layer L0 budget enforced every T steps (``l0_budget``).

Both act on the weights of every Conv2d and Linear layer (biases and BatchNorm are left alone),
with per-layer values given as a number or a mapping of layer names / globs.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from ..layers import resolve_per_layer
from ._common import (
    BaselineConfigError,
    BaselineHook,
    LayerSpec,
    check_fraction,
    check_nonnegative,
    check_positive_int,
    keep_count,
    keep_largest,
)


class L1Prox(BaselineHook):
    """After each optimizer step, ``w <- sign(w) max(|w| - lr * lam, 0)`` on every weighted layer.

    ``lam``: the L1 strength, one value or per layer (names / globs; unmatched layers get 0,
    i.e. are left alone). ``lr`` is the learning rate of the weight's param group for the step
    just taken (see :class:`BaselineHook`). ``finalize()`` stops the prox steps and holds the
    zeros reached so far through fine-tuning.
    """

    name = "l1_prox"

    def __init__(self, model: nn.Module, lam: LayerSpec = 1e-4) -> None:
        super().__init__(model)
        strengths = resolve_per_layer(lam, self.layers, "lam", check=check_nonnegative, default=0.0)
        self.strengths = {name: value for name, value in strengths.items() if value > 0}
        if not self.strengths:
            raise BaselineConfigError("l1_prox: lam is 0 for every layer, so it would do nothing")

    def update(self, step: int) -> None:
        with torch.no_grad():
            for name, lam in self.strengths.items():
                weight = self.layers[name].weight
                shrink = self.learning_rate(weight) * lam
                weight.copy_(weight.sign() * (weight.abs() - shrink).clamp_min_(0))

    def final_masks(self) -> dict[str, torch.Tensor]:
        return {name: self.layers[name].weight.detach() != 0 for name in self.strengths}


def _check_budget(value: Any, what: str) -> int | float:
    # An int is a count of weights, a float a fraction: 1 keeps one weight, 1.0 keeps all.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return check_positive_int(value, what)
    return check_fraction(value, what, low_open=True, high_open=False)


class L0Budget(BaselineHook):
    """Every ``every`` steps, keep the ``keep`` largest ``|w|`` of each layer and zero the rest.

    ``keep``: per layer, an int (a count of weights, the layer's memory budget) or a float in
    (0, 1] (the fraction kept, rounded, at least one); one value or per layer (names / globs;
    unmatched layers are not projected). The projection runs after the optimizer step of steps
    ``every - 1, 2 every - 1, ...``; between projections the weights train freely.
    ``finalize()`` projects once more and holds that mask (a :class:`PruningMasks`) so that
    fine-tuning keeps it.
    """

    name = "l0_budget"

    def __init__(self, model: nn.Module, keep: LayerSpec = 0.25, every: int = 100) -> None:
        super().__init__(model)
        self.every = check_positive_int(every, "every")
        budgets = resolve_per_layer(keep, self.layers, "keep", check=_check_budget, default=None)
        self.counts: dict[str, int] = {}
        for name, budget in budgets.items():
            if budget is None:
                continue
            size = self.layers[name].weight.numel()
            if isinstance(budget, int):
                if budget > size:
                    raise BaselineConfigError(f"keep for {name!r} is {budget} weights, but the layer has only {size}")
                self.counts[name] = budget
            else:
                self.counts[name] = keep_count(size, budget)
        if not self.counts:
            raise BaselineConfigError("l0_budget: keep names no layer")

    def project(self) -> dict[str, torch.Tensor]:
        """Zero all but each layer's ``k`` largest weights now; returns the masks (True = kept)."""
        masks = {}
        with torch.no_grad():
            for name, count in self.counts.items():
                weight = self.layers[name].weight
                masks[name] = keep_largest(weight.abs(), count)
                weight.mul_(masks[name])
        return masks

    def update(self, step: int) -> None:
        if (step + 1) % self.every == 0:
            self.project()

    def final_masks(self) -> dict[str, torch.Tensor]:
        return self.project()
