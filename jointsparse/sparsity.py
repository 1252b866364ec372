"""Joint spatial/Winograd sparsity regularization, pruning masks and Winograd thresholds.

SPEC section 3 (a *reconstruction* of Choi et al.; every choice below is a constructor argument):

- per layer, thresholds ``theta_S`` and ``theta_W`` are the target-sparsity quantiles of ``|w|`` and
  ``|G w G^T|``, recomputed every ``update_every`` steps;
- the masks ``1{|w| <= theta}`` pick the weights to push to zero; they are constants in the
  gradient and are re-derived from the current weights at every step with the stored thresholds
  (so a resumed run needs only the thresholds, not the masks);
- partial L2 penalties ``R = (1/N) sum_l ||M_l * w_l||^2`` per domain, N the weight count of the
  regularized layers in that domain;
- cost term ``exp(rho_S) R_S + exp(rho_W) R_W - a_S rho_S - a_W rho_W`` with learnable ``rho``, or
  ``lambda_S R_S + lambda_W R_W`` with fixed coefficients.

The objects here follow the trainer's hook protocol (``parameters``, ``penalty``, ``after_step``,
``attach_optimizer``, ``state_dict``/``load_state_dict``); :class:`Sparsifier` is the contract
that :class:`JointSparsity` and every baseline method implement.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

from .layers import prunable_layers, resolve_per_layer, winograd_layers
from .transforms import DEFAULT_M, filter_to_winograd, has_winograd_form, pruned_count, winograd_mask, winograd_threshold

MODES = ("joint", "spatial", "winograd")

#: Tensors larger than this get their quantile from a uniform random sample of this many values.
#: By the Dvoretzky-Kiefer-Wolfowitz inequality, the fraction of the full tensor under the sampled
#: quantile differs from the target by more than 0.002 with probability below 2 exp(-2 n 0.002^2),
#: i.e. below 7e-4 for n = 2^20.
QUANTILE_SAMPLE = 1 << 20

SparsitySpec = float | Mapping[str, float]


class SparsityConfigError(ValueError):
    """A target sparsity outside [0, 1), an unknown mode, or a pattern that names no layer."""


def _check_fraction(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise SparsityConfigError(f"{what} must be in [0, 1), got {value}")
    return value


def magnitude_quantile(values: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> float:
    """The ``fraction``-quantile of ``|values|`` (the largest of the smallest ``fraction`` share).

    Exact (``kthvalue``) up to :data:`QUANTILE_SAMPLE` elements; above it, the same on a uniform
    random sample of that size (see the module constant for the error bound).
    """
    flat = values.detach().abs().flatten()
    if flat.numel() == 0 or fraction <= 0.0:
        return -math.inf  # nothing is under the threshold
    if flat.numel() > QUANTILE_SAMPLE:
        index = torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator, device="cpu").to(flat.device)
        flat = flat[index]
    k = max(1, pruned_count(fraction, flat.numel()))
    return float(flat.float().kthvalue(k).values)


class _SmallSquareSum(torch.autograd.Function):
    """``sum(v^2 for |v| <= threshold)`` and its gradient ``2 v [|v| <= threshold]``, fused.

    Autograd's version (square, multiply by the mask, sum, and the backward of each) made the
    regularized step 2.2x a plain one on AlexNet's 58M weights, where the FC layers' passes over
    memory outweigh the forward. This keeps one masked copy of ``v``, made in one buffer, and
    one pass makes the gradient. The sum is a float32 dot per 64K block, added in float64 (a dot over the whole
    tensor loses ~5e-4 relative in float32)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, threshold: float) -> torch.Tensor:
        large = torch.nn.functional.hardshrink(values, threshold)  # v where |v| > threshold, else 0
        small = torch.sub(values, large, out=large)  # reuses the buffer: a fresh 150 MB one costs its page faults
        ctx.save_for_backward(small)
        # half-precision inputs are summed in float32, as the docstring says
        wide = small if small.dtype in (torch.float32, torch.float64) else small.float()
        dots = [torch.dot(block, block) for block in wide.reshape(-1).split(1 << 16)]
        return torch.stack(dots).double().sum().to(values.dtype) if dots else values.new_zeros(())

    @staticmethod
    @once_differentiable  # the saved masked copy is no graph: a second derivative must fail, not read 0
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (small,) = ctx.saved_tensors
        return small * (2 * grad), None


def small_square_sum(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """The partial L2 term of one tensor: the squares of its entries at or below ``threshold`` in
    magnitude, summed (differentiable in ``values``; the mask is held fixed)."""
    return _SmallSquareSum.apply(values, float(threshold))


@dataclass
class RegularizedLayer:
    name: str
    module: nn.Module
    spatial_sparsity: float
    winograd_sparsity: float  # 0 where the layer has no Winograd form or the mode skips it
    spatial_threshold: float = -math.inf
    winograd_threshold: float = -math.inf

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight


class PruningMasks:
    """Holds pruned weights at exactly zero through any further training, with no call to make.

    Two hooks do it, registered at construction: a gradient hook on each masked weight zeroes the
    pruned entries of its gradient (so gradient clipping, Adam moments and momentum see none), and
    a global optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``,
    so it covers optimizers created later, by any training loop) re-zeroes the pruned weights after
    every step: SGD's weight decay and momentum move a weight even when its gradient is zero, so
    gradient masking alone would not hold. A parametrization would hold the mask too, but it
    renames the weight in ``state_dict`` (``parametrizations.weight.original``) and changes every
    checkpoint and the encoder's view; these hooks leave plain ``weight`` tensors. The cost is one
    elementwise multiply per masked weight per backward and per step.

    The hold lasts while this object is alive (its owner keeps it: the sparsifier that pruned,
    or the caller) and until :meth:`remove`. ``attach_optimizer`` zeroes an optimizer's existing
    per-weight state at pruned positions (a resumed optimizer's momentum).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        layers = prunable_layers(model)
        self.params: dict[str, nn.Parameter] = {}
        self.masks: dict[str, torch.Tensor] = {}
        for name, keep in masks.items():
            if name not in layers:
                raise SparsityConfigError(f"mask for {name!r} names no conv or linear layer")
            weight = layers[name].weight
            if keep.shape != weight.shape:
                raise SparsityConfigError(f"mask for {name!r} has shape {tuple(keep.shape)}, weight is {tuple(weight.shape)}")
            self.params[name] = weight
            self.masks[name] = keep.to(device=weight.device, dtype=torch.bool)
        self.apply()
        self._handles = _hold(self)

    def apply(self) -> None:
        with torch.no_grad():
            for name, weight in self.params.items():
                weight.mul_(self.masks[name])

    def remove(self) -> None:
        """Stop holding: the weights stay as they are, later training may move the pruned ones."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _HOLDING.discard(self)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for name, weight in self.params.items():
            for value in optimizer.state.get(weight, {}).values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    value.mul_(self.masks[name])

    def density(self) -> dict[str, float]:
        return {name: float(mask.float().mean()) if mask.numel() else 0.0 for name, mask in self.masks.items()}

    def state_dict(self) -> dict:
        return {"masks": {name: mask.clone() for name, mask in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, mask in state["masks"].items():
            if name not in self.masks or mask.shape != self.masks[name].shape:
                raise SparsityConfigError(f"saved mask {name!r} does not fit this model")
            self.masks[name] = mask.to(device=self.masks[name].device, dtype=torch.bool)
        self.apply()


#: Every PruningMasks that holds its masks; the one optimizer step post-hook below re-zeroes them.
_HOLDING: "weakref.WeakSet[PruningMasks]" = weakref.WeakSet()


def _after_any_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for masks in list(_HOLDING):
        masks.apply()


register_optimizer_step_post_hook(_after_any_optimizer_step)


def _hold(masks: PruningMasks) -> list:
    """Register ``masks``' gradient hooks and add it to the holding set. Both keep only a weak
    reference, so a PruningMasks nobody keeps stops holding."""
    ref = weakref.ref(masks)

    def mask_gradient(grad: torch.Tensor, name: str) -> torch.Tensor:
        live = ref()
        return grad if live is None else grad * live.masks[name]

    _HOLDING.add(masks)
    return [weight.register_hook(functools.partial(mask_gradient, name=name)) for name, weight in masks.params.items()]


class Sparsifier:
    """The contract every sparsity method implements, in the spirit of
    ``torch.ao.pruning.BaseSparsifier``:

    - *prepare*: the constructor takes the model and the per-layer configuration;
    - *step*: during retraining the object is a trainer hook (``penalty``, ``after_step``, ...);
    - :meth:`prune` ends the method's schedule and returns the :class:`PruningMasks` that hold the
      pruned weights at zero from then on, under any training loop;
    - :meth:`finetune_hooks`: the hooks the later training stages keep (the masks need none);
    - :meth:`squash_mask` stops holding the masks; the weights are plain tensors with their zeros.
    """

    model: nn.Module
    pruning: PruningMasks | None = None

    def prune(self) -> PruningMasks:
        raise NotImplementedError

    def finetune_hooks(self) -> list[Any]:
        return []

    def squash_mask(self) -> None:
        if self.pruning is not None:
            self.pruning.remove()
            self.pruning = None


class JointSparsity(Sparsifier):
    """Joint spatial/Winograd sparsity regularizer (SPEC section 3).

    ``spatial_sparsity`` / ``winograd_sparsity``: the target fraction of zeros per layer, as a
    float or a mapping of names/globs (see :func:`resolve_per_layer`). ``mode`` picks the domains:
    ``joint`` (both), ``spatial`` or ``winograd`` (the ablation modes). Layers without a Winograd
    form (strided, 1x1, linear) get the spatial term only, in every mode that has one.

    ``learnable=True`` trains ``rho`` per domain (``a_spatial``, ``a_winograd`` are the ``a``
    hyper-parameters; ``"auto"`` sets ``a = exp(rho_0) R_0``, which puts the model as it is now at
    equilibrium: ``N R_0 / e`` with the default ``rho_0``; :attr:`a` holds the values used); the coefficient ``exp(rho)`` is capped at the domain's weight count N,
    so that the penalty alone shrinks a targeted weight by at most ``1 - 2 lr`` per SGD step
    (stable for any lr < 1) instead of overshooting through zero. ``learnable=False`` uses
    ``lambda_spatial`` / ``lambda_winograd`` as fixed coefficients.
    """

    def __init__(
        self,
        model: nn.Module,
        spatial_sparsity: SparsitySpec = 0.7,
        winograd_sparsity: SparsitySpec = 0.7,
        mode: str = "joint",
        m: int = DEFAULT_M,
        learnable: bool = True,
        a_spatial: float | str = 1.0,
        a_winograd: float | str = 1.0,
        init_log_coefficient: float | None = None,
        lambda_spatial: float = 1.0,
        lambda_winograd: float = 1.0,
        update_every: int = 50,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise SparsityConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if update_every < 1:
            raise SparsityConfigError(f"update_every must be >= 1, got {update_every}")
        self.model, self.mode, self.m, self.learnable = model, mode, m, learnable
        self.update_every, self.seed = update_every, seed
        layers = prunable_layers(model)
        spatial = resolve_per_layer(spatial_sparsity, layers, "spatial_sparsity", check=_check_fraction)
        winograd = resolve_per_layer(winograd_sparsity, winograd_layers(model), "winograd_sparsity", check=_check_fraction)
        self.layers: list[RegularizedLayer] = []
        for name, module in layers.items():
            s_spatial = spatial[name] if mode in ("joint", "spatial") or not has_winograd_form(module) else 0.0
            s_winograd = winograd.get(name, 0.0) if mode in ("joint", "winograd") else 0.0
            self.layers.append(RegularizedLayer(name, module, s_spatial, s_winograd))
        # Targets are kept even in modes that do not regularize a domain: pruning and densities use them.
        self.spatial_targets, self.winograd_targets = spatial, winograd
        self.spatial_count = sum(layer.weight.numel() for layer in self.layers if layer.spatial_sparsity > 0)
        self.winograd_count = sum(
            layer.weight.numel() // layer.weight.shape[-1] ** 2 * (m + layer.weight.shape[-1] - 1) ** 2
            for layer in self.layers
            if layer.winograd_sparsity > 0
        )
        reference = next(model.parameters())
        self.log_coefficients = {
            domain: torch.tensor(
                init_log_coefficient if init_log_coefficient is not None else math.log(max(count, 1)) - 1.0,
                device=reference.device,
                dtype=reference.dtype,
                requires_grad=learnable,
            )
            for domain, count in (("spatial", self.spatial_count), ("winograd", self.winograd_count))
        }
        self.fixed = {"spatial": lambda_spatial, "winograd": lambda_winograd}
        self.updates = 0
        self.pruning: PruningMasks | None = None
        self.update_thresholds()
        self.a = self._resolve_a({"spatial": a_spatial, "winograd": a_winograd})

    def _resolve_a(self, given: dict[str, float | str]) -> dict[str, float]:
        """Numbers as given; ``"auto"`` as ``exp(rho_0) R_0`` of the current weights (docs/method.md)."""
        for domain, value in given.items():
            if not (value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)):
                raise SparsityConfigError(f"a_{domain} must be 'auto' or a number >= 0, got {value!r}")
        if "auto" not in given.values():
            return {domain: float(value) for domain, value in given.items()}
        with torch.no_grad():
            start = self.penalties()
        return {
            domain: float(self.log_coefficients[domain].detach().exp() * start[domain]) if value == "auto" else float(value)
            for domain, value in given.items()
        }

    # -- the regularizer -------------------------------------------------------------------
    def _winograd(self, layer: RegularizedLayer) -> torch.Tensor:
        return filter_to_winograd(layer.weight, self.m)

    def update_thresholds(self) -> None:
        """Recompute every layer's thresholds from the current weights."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.updates)
        with torch.no_grad():
            for layer in self.layers:
                if self._spatial_term_live(layer):
                    layer.spatial_threshold = magnitude_quantile(layer.weight, layer.spatial_sparsity, generator)
                if layer.winograd_sparsity > 0:
                    layer.winograd_threshold = magnitude_quantile(self._winograd(layer), layer.winograd_sparsity, generator)
        self.updates += 1

    def _spatial_term_live(self, layer: RegularizedLayer) -> bool:
        """Whether the layer's spatial term can still move a weight. Once :meth:`prune` holds the
        layer at its target, every weight the term would reach is held at zero, so the term is
        zero; computing it anyway cost masked fine-tuning more than half its speed on AlexNet's
        FC layers, and above QUANTILE_SAMPLE weights the sampled threshold could even land on a
        small live weight and pull it towards zero."""
        return layer.spatial_sparsity > 0 and (self.pruning is None or layer.name not in self.pruning.masks)

    def penalties(self) -> dict[str, torch.Tensor]:
        """The partial L2 terms ``R_S`` and ``R_W`` (differentiable in the weights)."""
        device = self.log_coefficients["spatial"].device
        spatial = torch.zeros((), device=device)
        winograd = torch.zeros((), device=device)
        for layer in self.layers:
            if self._spatial_term_live(layer):
                spatial = spatial + small_square_sum(layer.weight, layer.spatial_threshold)
            if layer.winograd_sparsity > 0:
                winograd = winograd + small_square_sum(self._winograd(layer), layer.winograd_threshold)
        return {"spatial": spatial / max(self.spatial_count, 1), "winograd": winograd / max(self.winograd_count, 1)}

    def coefficients(self) -> dict[str, float]:
        if not self.learnable:
            return dict(self.fixed)
        return {domain: math.exp(float(rho.detach())) for domain, rho in self.log_coefficients.items()}

    def penalty(self) -> torch.Tensor:
        """The cost term to add to the loss, ``-a rho`` terms included."""
        total = torch.zeros((), device=self.log_coefficients["spatial"].device)
        for domain, term in self.penalties().items():
            count = self.spatial_count if domain == "spatial" else self.winograd_count
            if count == 0:
                continue
            if self.learnable:
                rho = self.log_coefficients[domain]
                total = total + rho.exp() * term - self.a[domain] * rho
            else:
                total = total + self.fixed[domain] * term
        return total

    # -- the trainer hook protocol ---------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        return list(self.log_coefficients.values()) if self.learnable else []

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.pruning is not None:
            self.pruning.attach_optimizer(optimizer)

    def after_step(self, step: int) -> None:
        if self.learnable:
            with torch.no_grad():
                for domain, count in (("spatial", self.spatial_count), ("winograd", self.winograd_count)):
                    self.log_coefficients[domain].clamp_(max=math.log(max(count, 1)))
        if (step + 1) % self.update_every == 0:
            self.update_thresholds()

    def state_dict(self) -> dict:
        state = {
            "log_coefficients": {k: v.detach().clone() for k, v in self.log_coefficients.items()},
            "thresholds": {layer.name: [layer.spatial_threshold, layer.winograd_threshold] for layer in self.layers},
            "updates": self.updates,
        }
        if self.pruning is not None:
            state["pruning"] = self.pruning.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for domain, value in state["log_coefficients"].items():
                self.log_coefficients[domain].copy_(value)
        by_name = {layer.name: layer for layer in self.layers}
        for name, (spatial, winograd) in state["thresholds"].items():
            if name not in by_name:
                raise SparsityConfigError(f"saved regularizer state names layer {name!r}, which this model lacks")
            by_name[name].spatial_threshold, by_name[name].winograd_threshold = float(spatial), float(winograd)
        self.updates = int(state["updates"])
        if "pruning" in state:
            self._hold_masks(state["pruning"]["masks"])

    # -- pruning and reporting -------------------------------------------------------------
    def prune(self) -> PruningMasks:
        """Zero every weight at or under its layer's spatial target quantile; keep it zero.

        The quantile is taken fresh, exactly (no sampling), so each layer ends at its target
        spatial sparsity (ties aside). Layers with target 0 are left dense. In ``winograd`` mode
        the spatial targets still apply here, since pruning is what the spatial deployment needs.
        """
        masks: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for layer in self.layers:
                target = self.spatial_targets[layer.name]
                if target <= 0:
                    continue
                magnitude = layer.weight.abs()
                k = pruned_count(target, magnitude.numel())
                order = torch.argsort(magnitude.flatten(), stable=True)
                keep = torch.ones(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
                keep[order[:k]] = False
                masks[layer.name] = keep.view_as(magnitude)
        return self._hold_masks(masks)

    def _hold_masks(self, masks: Mapping[str, torch.Tensor]) -> PruningMasks:
        if self.pruning is not None:
            self.pruning.remove()
        self.pruning = PruningMasks(self.model, masks)
        return self.pruning

    def finetune_hooks(self) -> list[Any]:
        """The regularizer stays on while the pruned model is fine-tuned (SPEC section 3)."""
        return [self]

    def densities(self) -> dict[str, dict[str, float | None]]:
        """Per layer: the fraction of non-zero spatial weights, and of non-zero Winograd weights
        (``|G w G^T| > 0``; None without a Winograd form)."""
        return layer_densities(self.model, self.m)


def layer_densities(model: nn.Module, m: int = DEFAULT_M, winograd_thresholds: Mapping[str, float] | None = None) -> dict[str, dict[str, float | None]]:
    """Per conv/linear layer: spatial non-zero fraction and Winograd fraction above threshold."""
    thresholds = winograd_thresholds or {}
    out: dict[str, dict[str, float | None]] = {}
    with torch.no_grad():
        for name, module in prunable_layers(model).items():
            weight = module.weight
            spatial = float((weight != 0).float().mean()) if weight.numel() else 0.0
            winograd = None
            if has_winograd_form(module):
                winograd = float(winograd_mask(weight, m, thresholds.get(name, 0.0)).float().mean())
            out[name] = {"spatial": spatial, "winograd": winograd}
    return out


def spatial_prune(model: nn.Module, sparsity: SparsitySpec) -> nn.Module:
    """A copy of ``model`` with each layer's smallest weights zeroed to its target sparsity."""
    pruned = copy.deepcopy(model)
    JointSparsity(pruned, spatial_sparsity=sparsity, winograd_sparsity=0.0, mode="spatial", learnable=False).prune()
    return pruned


def winograd_thresholds(model: nn.Module, sparsity: SparsitySpec, m: int = DEFAULT_M) -> dict[str, float]:
    """Per Winograd-form layer, the threshold under which ``|G w G^T|`` is pruned: the exact
    ``sparsity``-quantile of the layer's Winograd magnitudes (0 for a target of 0)."""
    layers = winograd_layers(model)
    targets = resolve_per_layer(sparsity, layers, "winograd_sparsity", check=_check_fraction)
    return {name: winograd_threshold(module.weight, targets[name], m) for name, module in layers.items()}
