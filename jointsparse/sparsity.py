"""Joint spatial/Winograd sparsity regularization, pruning masks and decode-time Winograd pruning.

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

The objects here follow the trainer's hook protocol (``parameters``, ``penalty``,
``after_backward``, ``after_step``, ``attach_optimizer``, ``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from .transforms import filter_to_winograd, has_winograd_form

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


def resolve_per_layer(spec: SparsitySpec, names: Iterable[str], what: str) -> dict[str, float]:
    """Per-layer values from a default plus overrides.

    ``spec`` is a float (every layer) or a mapping from exact layer names or globs
    (``fnmatch``, e.g. ``"fc*"``) to values. An exact name wins over globs; among globs the first
    match in the mapping's order wins; ``"*"`` serves as the default. A layer no key matches
    gets 0 (not regularized). A key that matches no layer is an error, so typos do not pass
    silently.
    """
    names = list(names)
    if not isinstance(spec, Mapping):
        value = _check_fraction(spec, what)
        return {name: value for name in names}
    resolved: dict[str, float] = {}
    used: set[str] = set()
    for name in names:
        candidates = [name, f"{name}.weight"]
        exact = next((key for key in candidates if key in spec), None)
        key = exact or next((k for k in spec if any(fnmatch.fnmatchcase(c, k) for c in candidates)), None)
        if key is not None:
            used.add(key)
        resolved[name] = _check_fraction(spec[key], f"{what}[{key!r}]") if key is not None else 0.0
    unused = [key for key in spec if key not in used]
    if unused:
        raise SparsityConfigError(f"{what}: {', '.join(map(repr, unused))} match no layer; layers are {', '.join(names)}")
    return resolved


def pruned_count(fraction: float, numel: int) -> int:
    """How many of ``numel`` weights a target sparsity removes, rounded to the nearest count
    (``ceil`` would turn 0.07 * 100 = 7.000000000000001 into 8)."""
    return min(numel, max(0, round(fraction * numel)))


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


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear, by module name: the layers whose weights the toolkit compresses."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}


class PruningMasks:
    """Keeps pruned weights at exactly zero through further training.

    The gradients of pruned weights are zeroed after every backward pass, and the optimizer's
    per-weight state (momentum, Adam moments) at those positions is zeroed once when attached, so
    neither momentum nor weight decay can move a pruned weight: masks that are real, not
    re-applied after the fact.
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

    def apply(self) -> None:
        with torch.no_grad():
            for name, weight in self.params.items():
                weight.mul_(self.masks[name])

    def after_backward(self, step: int) -> None:
        for name, weight in self.params.items():
            if weight.grad is not None:
                weight.grad.mul_(self.masks[name])

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


class JointSparsity:
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
        m: int = 2,
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
        spatial = resolve_per_layer(spatial_sparsity, layers, "spatial_sparsity")
        winograd = resolve_per_layer(winograd_sparsity, layers, "winograd_sparsity")
        self.layers: list[RegularizedLayer] = []
        for name, module in layers.items():
            s_spatial = spatial[name] if mode in ("joint", "spatial") or not has_winograd_form(module) else 0.0
            s_winograd = winograd[name] if mode in ("joint", "winograd") and has_winograd_form(module) else 0.0
            self.layers.append(RegularizedLayer(name, module, s_spatial, s_winograd))
        # Targets are kept even in modes that do not regularize a domain: pruning and densities use them.
        self.spatial_targets, self.winograd_targets = spatial, {
            name: winograd[name] for name, module in layers.items() if has_winograd_form(module)
        }
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
                layer.spatial_threshold = magnitude_quantile(layer.weight, layer.spatial_sparsity, generator)
                if layer.winograd_sparsity > 0:
                    layer.winograd_threshold = magnitude_quantile(self._winograd(layer), layer.winograd_sparsity, generator)
        self.updates += 1

    def penalties(self) -> dict[str, torch.Tensor]:
        """The partial L2 terms ``R_S`` and ``R_W`` (differentiable in the weights)."""
        device = self.log_coefficients["spatial"].device
        spatial = torch.zeros((), device=device)
        winograd = torch.zeros((), device=device)
        for layer in self.layers:
            if layer.spatial_sparsity > 0:
                weight = layer.weight
                spatial = spatial + weight.square().mul(weight.detach().abs() <= layer.spatial_threshold).sum()
            if layer.winograd_sparsity > 0:
                big = self._winograd(layer)
                winograd = winograd + big.square().mul(big.detach().abs() <= layer.winograd_threshold).sum()
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

    def after_backward(self, step: int) -> None:
        if self.pruning is not None:
            self.pruning.after_backward(step)

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
            self.pruning = PruningMasks(self.model, state["pruning"]["masks"])

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
        self.pruning = PruningMasks(self.model, masks)
        return self.pruning

    def densities(self) -> dict[str, dict[str, float | None]]:
        """Per layer: the fraction of non-zero spatial weights, and of non-zero Winograd weights
        (``|G w G^T| > 0``; None without a Winograd form)."""
        return layer_densities(self.model, self.m)


def layer_densities(model: nn.Module, m: int = 2, winograd_thresholds: Mapping[str, float] | None = None) -> dict[str, dict[str, float | None]]:
    """Per conv/linear layer: spatial non-zero fraction and Winograd fraction above threshold."""
    thresholds = winograd_thresholds or {}
    out: dict[str, dict[str, float | None]] = {}
    with torch.no_grad():
        for name, module in prunable_layers(model).items():
            weight = module.weight
            spatial = float((weight != 0).float().mean()) if weight.numel() else 0.0
            winograd = None
            if has_winograd_form(module):
                big = filter_to_winograd(weight.double(), m)
                winograd = float((big.abs() > thresholds.get(name, 0.0)).float().mean())
            out[name] = {"spatial": spatial, "winograd": winograd}
    return out


def spatial_prune(model: nn.Module, sparsity: SparsitySpec) -> nn.Module:
    """A copy of ``model`` with each layer's smallest weights zeroed to its target sparsity."""
    pruned = copy.deepcopy(model)
    JointSparsity(pruned, spatial_sparsity=sparsity, winograd_sparsity=0.0, mode="spatial", learnable=False).prune()
    return pruned


def winograd_thresholds(model: nn.Module, sparsity: SparsitySpec, m: int = 2) -> dict[str, float]:
    """Per Winograd-form layer, the threshold under which ``|G w G^T|`` is pruned: the exact
    ``sparsity``-quantile of the layer's Winograd magnitudes (0 for a target of 0)."""
    layers = {name: module for name, module in prunable_layers(model).items() if has_winograd_form(module)}
    targets = resolve_per_layer(sparsity, layers, "winograd_sparsity")
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, module in layers.items():
            big = filter_to_winograd(module.weight.double(), m).abs().flatten()
            k = pruned_count(targets[name], big.numel())
            out[name] = float(big.kthvalue(k).values) if k > 0 else 0.0
    return out


def winograd_prune(model: nn.Module, sparsity: SparsitySpec | None = None, *, thresholds: Mapping[str, float] | None = None, m: int = 2) -> tuple[nn.Module, dict[str, float]]:
    """Decode-time Winograd pruning without a file.

    Returns a copy of ``model`` in which each Winograd-form conv is a sparse
    :class:`jointsparse.nn.WinogradConv2d` keeping ``|G w G^T| > threshold``, and the thresholds
    used. Give either target ``sparsity`` (per-layer quantiles) or explicit ``thresholds``.
    """
    from .nn import WinogradConv2d  # the runtime stage; imported here so training never needs it

    if (sparsity is None) == (thresholds is None):
        raise SparsityConfigError("winograd_prune needs exactly one of sparsity or thresholds")
    used = dict(thresholds) if thresholds is not None else winograd_thresholds(model, sparsity, m)
    pruned = copy.deepcopy(model)
    for name, module in list(pruned.named_modules()):
        if name in used and has_winograd_form(module):
            keep = filter_to_winograd(module.weight.detach().double(), m).abs() > used[name]
            pruned.set_submodule(name, WinogradConv2d.from_conv(module, m=m, winograd_mask=keep))
    return pruned, used
