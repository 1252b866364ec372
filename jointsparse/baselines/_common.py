"""Plumbing shared by the baseline methods: option checks, exact top-k masks,
conv/BatchNorm pairing, and a hook base class that owns the optimizer and the pruning masks.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..layers import prunable_layers
from ..sparsity import PruningMasks, Sparsifier, SparsityConfigError

LayerSpec = Any  # a value for every layer, or a mapping of layer names / globs to values


class BaselineConfigError(SparsityConfigError):
    """A baseline method's option is missing, unknown or out of range."""


class BaselineStateError(RuntimeError):
    """A hook is used out of order (e.g. a prox step before ``attach_optimizer``)."""


# -- option checks ------------------------------------------------------------------------------


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise BaselineConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_nonnegative(value: Any, what: str) -> float:
    value = _number(value, what)
    if value < 0:
        raise BaselineConfigError(f"{what} must be >= 0, got {value}")
    return value


def check_fraction(value: Any, what: str, *, low_open: bool = False, high_open: bool = True) -> float:
    """A number in [0, 1) by default; ``low_open`` excludes 0, ``high_open=False`` includes 1."""
    value = _number(value, what)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise BaselineConfigError(f"{what} must be in {interval}, got {value}")
    return value


def check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise BaselineConfigError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def check_choice(value: Any, what: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise BaselineConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


# -- masks ---------------------------------------------------------------------------------------


def keep_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of ``scores``' shape with exactly ``k`` True entries at the largest scores.

    Ties are broken by position (stable sort), so the count is exact even on all-equal scores.
    """
    flat = scores.detach().flatten()
    k = max(0, min(int(k), flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        order = torch.argsort(flat, descending=True, stable=True)
        keep[order[:k]] = True
    return keep.view_as(scores)


def keep_count(size: int, fraction_kept: float) -> int:
    """How many of ``size`` weights a kept fraction means: rounded, at least one."""
    return max(1, min(size, math.floor(fraction_kept * size + 0.5)))


def following_batchnorm(model: nn.Module) -> dict[str, tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """For each conv/linear layer directly followed by a BatchNorm of matching width, that BatchNorm.

    "Directly followed" is read from registration order (the order of ``named_modules``,
    containers skipped), which is the data-flow order in every model of
    :mod:`jointsparse.models` and in ``nn.Sequential`` chains.
    """
    leaves = [(name, module) for name, module in model.named_modules() if not any(True for _ in module.children())]
    pairs: dict[str, tuple[str, nn.modules.batchnorm._BatchNorm]] = {}
    for (name, module), (next_name, next_module) in zip(leaves, leaves[1:]):
        if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(next_module, nn.modules.batchnorm._BatchNorm):
            width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            if next_module.num_features == width:
                pairs[name] = (next_name, next_module)
    return pairs


# -- the hook base class -------------------------------------------------------------------------


class BaselineHook(Sparsifier):
    """Trainer-hook plumbing shared by the methods.

    - ``attach_optimizer`` keeps the optimizer: prox steps read their learning rate from the
      weight's param group, and removed weights get their optimizer state reset.
    - ``after_backward`` records each param group's learning rate. The trainer steps its LR
      scheduler between ``optimizer.step()`` and ``after_step``, so the rate read in
      ``after_step`` would already be the next step's; the recorded one is the rate the SGD step
      just used. Without ``after_backward`` (a manual loop), the current rate is used.
    - Once a method has decided its zeros, a :class:`PruningMasks` keeps them zero
      (``self.pruning``), through ``after_backward`` / ``attach_optimizer``.
    - ``finalize()`` ends the method's own updates (prox steps, projections, noise) and leaves
      only the masks, so the same hook can drive a fine-tuning run.
    """

    name = "baseline"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = prunable_layers(model)
        self.optimizer: torch.optim.Optimizer | None = None
        self.pruning: PruningMasks | None = None
        self.finalized = False
        self._group_of: dict[int, int] = {}
        self._step_lrs: list[float] | None = None

    # -- optimizer and learning rate
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._group_of = {id(p): index for index, group in enumerate(optimizer.param_groups) for p in group["params"]}
        if self.pruning is not None:
            self.pruning.attach_optimizer(optimizer)

    def learning_rate(self, param: torch.Tensor) -> float:
        """The learning rate of ``param``'s group for the step being taken."""
        if self.optimizer is None:
            raise BaselineStateError(f"{self.name} needs attach_optimizer(optimizer) before its first step")
        index = self._group_of.get(id(param))
        if index is None:
            raise BaselineStateError(f"{self.name}: a regularized weight is not in the attached optimizer")
        return float(self._step_lrs[index] if self._step_lrs is not None else self.optimizer.param_groups[index]["lr"])

    def reset_optimizer_state(self, param: torch.Tensor, rows: torch.Tensor) -> None:
        """Zero the per-weight optimizer state (momentum, Adam moments) of ``param[rows]``."""
        if self.optimizer is None:
            return
        for value in self.optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value[rows] = 0

    # -- the protocol
    def after_backward(self, step: int) -> None:
        if self.optimizer is not None:
            self._step_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]

    def after_step(self, step: int) -> None:
        try:
            if not self.finalized:
                self.update(step)
        finally:
            self._step_lrs = None

    def update(self, step: int) -> None:
        """The method's own work after an optimizer step (override)."""

    def finalize(self) -> PruningMasks | None:
        """End-of-training step; returns (and keeps enforcing) the final masks. Idempotent."""
        if not self.finalized:
            masks = self.final_masks()
            if masks is not None:
                self.set_masks(masks)
            self.finalized = True
            self.on_finalized()
        return self.pruning

    def prune(self) -> PruningMasks:
        """Finish the method (:meth:`finalize`) and hold its zeros: its own final masks, or, for a
        method that holds none, every weight that ended at zero."""
        self.finalize()
        if self.pruning is None:
            self.set_masks({name: module.weight.detach() != 0 for name, module in self.layers.items()})
        return self.pruning

    def final_masks(self) -> dict[str, torch.Tensor] | None:
        """The masks to hold after training (override); None keeps the current ones, if any."""
        return None

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> PruningMasks:
        """Hold ``masks`` (True = keep) from now on: zero the pruned weights and their optimizer state."""
        if self.pruning is not None:
            self.pruning.remove()
        self.pruning = PruningMasks(self.model, masks)
        if self.optimizer is not None:
            self.pruning.attach_optimizer(self.optimizer)
        return self.pruning

    def state_dict(self) -> dict:
        state: dict = {"finalized": self.finalized}
        if self.pruning is not None:
            state["pruning"] = self.pruning.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if "pruning" in state:
            self.set_masks(state["pruning"]["masks"])
        if state.get("finalized", False) and not self.finalized:
            self.finalized = True
            self.on_finalized()

    def on_finalized(self) -> None:
        """Remove training-time machinery once finalized (override)."""
