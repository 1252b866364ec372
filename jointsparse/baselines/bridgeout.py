"""Batch Bridgeout (Khan & Stavness, arXiv 2009.10893): multiplicative weight noise whose
expectation is an L_q penalty, followed by pruning without fine-tuning.

In training, each weighted layer computes with
``w~ = w + |w|^(q/2) * (m / (1 - p) - 1)``, ``m ~ Bernoulli(1 - p)`` per weight, one draw per
mini-batch (``on_batch_start``). Per output filter (Linear: per output neuron), the noise is
applied only to the ``tau`` fraction of its input-channel kernels (Linear: input weights) with
the smallest L2 norms, chosen afresh at each draw from the current weights. So
``E[w~] = w`` and ``Var[w~] = p / (1 - p) |w|^q`` on those weights.

The noisy weight is used by the layer's own forward (the hook installs a per-instance
``forward`` on each layer), so the gradient reaches ``w`` through ``w~``, including the path
through ``|w|^(q/2)``; the model's ``state_dict`` is untouched and ``model.eval()`` computes
with the plain ``w``. The gradient of ``|w|^(q/2)`` is infinite at ``w = 0`` for ``q < 2``, so
exact zeros get neither noise nor that term.

Defaults: ``p = 0.3``, ``tau = 0.75``, and ``q = 1.6``, the middle of the paper's 1.5-1.8 range.
``finalize()`` removes the noise and prunes each layer, by filter (or neuron) L2 norm or by
weight magnitude, to its target ``sparsity``; no fine-tuning is implied.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import resolve_per_layer
from ._common import (
    BaselineConfigError,
    BaselineHook,
    LayerSpec,
    check_choice,
    check_fraction,
    check_nonnegative,
    keep_count,
    keep_largest,
)

PRUNE_MODES = ("filter_norm", "magnitude", "none")


def _bridged_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    noise = module._bridgeout_noise
    if not module.training or noise is None:
        return type(module).forward(module, x)
    weight = bridgeout_weight(module.weight, noise, module._bridgeout_q)
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, module.bias)
    return F.linear(x, weight, module.bias)


def bridgeout_weight(weight: torch.Tensor, noise: torch.Tensor, q: float) -> torch.Tensor:
    """``w + |w|^(q/2) * noise`` (differentiable in ``w``; exact zeros stay zero)."""
    magnitude = weight.abs()
    nonzero = magnitude > 0
    # where() keeps the infinite slope of |w|^(q/2) at 0 out of the backward pass.
    scale = torch.where(nonzero, magnitude.clamp_min(torch.finfo(weight.dtype).tiny).pow(q / 2), torch.zeros_like(weight))
    return weight + scale * noise


class Bridgeout(BaselineHook):
    """Batch Bridgeout on every Conv2d and Linear layer with ``p > 0``.

    Options: ``p`` (drop probability in [0, 1); one value or per layer, names / globs, unmatched
    layers get no noise), ``q`` (> 0, at most 2), ``tau`` (fraction of each filter's input
    kernels that get noise, in (0, 1]; rounded, at least one), ``seed`` (the noise of step s is
    drawn from a generator seeded by ``(seed, s)``, so a resumed run redraws it exactly),
    ``prune`` (``filter_norm``: zero each layer's output filters/neurons with the smallest L2
    norms, except in the model's last layer, whose neurons are the classes; ``magnitude``: zero
    each layer's smallest weights; ``none``), ``sparsity`` (the pruned
    fraction per layer, in [0, 1); one value or per layer; unmatched layers are not pruned).
    """

    name = "bridgeout"

    def __init__(
        self,
        model: nn.Module,
        p: LayerSpec = 0.3,
        q: float = 1.6,
        tau: float = 0.75,
        seed: int = 0,
        prune: str = "filter_norm",
        sparsity: LayerSpec = 0.5,
    ) -> None:
        super().__init__(model)
        self.p = {name: value for name, value in resolve_per_layer(p, self.layers, "p", check=check_fraction, default=0.0).items() if value > 0}
        if not self.p:
            raise BaselineConfigError("bridgeout: p is 0 for every layer, so it would do nothing")
        self.q = check_nonnegative(q, "q")
        if not 0 < self.q <= 2:
            raise BaselineConfigError(f"q must be in (0, 2], got {self.q}")
        self.tau = check_fraction(tau, "tau", low_open=True, high_open=False)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BaselineConfigError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.prune_mode = check_choice(prune, "prune", PRUNE_MODES)
        self.sparsity = resolve_per_layer(sparsity, self.layers, "sparsity", check=check_fraction, default=0.0)
        self.output_layer = list(self.layers)[-1]
        for name in self.p:
            layer = self.layers[name]
            layer._bridgeout_noise = None
            layer._bridgeout_q = self.q
            layer.forward = types.MethodType(_bridged_forward, layer)

    # -- noise
    def selection(self, name: str) -> torch.Tensor:
        """Bool mask of ``name``'s weight shape: the ``tau`` share of each filter's input kernels
        with the smallest L2 norms (the weights that get noise)."""
        weight = self.layers[name].weight.detach()
        norms = weight.flatten(2).norm(dim=2) if weight.dim() > 2 else weight.abs()
        count = keep_count(norms.shape[1], self.tau)
        chosen = torch.zeros_like(norms, dtype=torch.bool)
        chosen.scatter_(1, norms.topk(count, dim=1, largest=False).indices, True)
        return chosen.view(*chosen.shape, *([1] * (weight.dim() - 2))).expand_as(weight)

    def draw(self, step: int) -> None:
        """Draw every layer's noise ``(m / (1 - p) - 1)`` on its selected weights for ``step``."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) & ((1 << 63) - 1))
        with torch.no_grad():
            for name, p in self.p.items():
                layer = self.layers[name]
                weight = layer.weight
                kept = torch.rand(weight.shape, generator=generator) >= p  # m ~ Bernoulli(1 - p), to 2^-24
                noise = (kept.to(weight.dtype) / (1 - p) - 1).to(weight.device)
                layer._bridgeout_noise = noise * self.selection(name)

    def on_batch_start(self, step: int) -> None:
        if not self.finalized:
            self.draw(step)

    def perturbed_weight(self, name: str) -> torch.Tensor:
        """The weight layer ``name`` computes with in training mode for the current draw."""
        layer = self.layers[name]
        if getattr(layer, "_bridgeout_noise", None) is None:
            return layer.weight
        return bridgeout_weight(layer.weight, layer._bridgeout_noise, self.q)

    # -- the end
    def final_masks(self) -> dict[str, torch.Tensor] | None:
        if self.prune_mode == "none":
            return None
        masks = {}
        with torch.no_grad():
            for name, sparsity in self.sparsity.items():
                if sparsity <= 0:
                    continue
                weight = self.layers[name].weight
                if self.prune_mode == "magnitude":
                    masks[name] = keep_largest(weight.abs(), weight.numel() - round(sparsity * weight.numel()))
                elif name != self.output_layer:  # the output layer's neurons are the classes
                    norms = weight.flatten(1).norm(dim=1)
                    kept = keep_largest(norms, norms.numel() - round(sparsity * norms.numel()))
                    masks[name] = kept.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).contiguous()
        return masks or None

    def on_finalized(self) -> None:
        for name in self.p:
            layer = self.layers[name]
            for attribute in ("forward", "_bridgeout_noise", "_bridgeout_q"):
                layer.__dict__.pop(attribute, None)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise BaselineConfigError(f"bridgeout: saved state has seed {state['seed']}, this hook {self.seed}")
        super().load_state_dict(state)
