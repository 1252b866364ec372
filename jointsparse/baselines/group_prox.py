"""Less is More (Zhou, Alvarez & Porikli, ECCV 2016): group sparsity over conv filters and FC
neurons by forward-backward splitting, and the export that drops the removed groups.

After each optimizer step, every group ``g`` (one output filter of a conv, one output neuron,
i.e. row, of a Linear) takes the proximal step of ``lam * sqrt(|g|) * ||w_g||``:
``w_g <- max(0, 1 - lr * lam * sqrt(|g|) / ||w_g||) w_g``. A group that reaches zero has its
optimizer state (momentum) reset to 0, so momentum does not carry it back.

Group membership (``include_bias=True``, the default): the filter's weights, its bias, and, when
a BatchNorm directly follows the layer, that channel's BatchNorm weight and bias. A zeroed group
then outputs exactly 0 after the BatchNorm, in training and in eval mode, which is what makes
the channel removable by :func:`thin_model`. With ``include_bias=False`` a group is the weights
alone.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..models import LeNet5, VGGSmall
from ..layers import prunable_layers
from ..layers import resolve_per_layer
from ._common import BaselineConfigError, BaselineHook, LayerSpec, check_nonnegative, following_batchnorm


class ThinningError(ValueError):
    """A model :func:`thin_model` cannot thin exactly."""


class GroupProx(BaselineHook):
    """Group-sparsity proximal steps over filters and neurons.

    ``lam``: the group-lasso strength, one value or per layer (names / globs; unmatched layers
    get 0). ``exclude_output``: leave the model's last conv/linear layer (registration order)
    alone, since its neurons are the classes. ``finalize()`` stops the prox steps and holds the
    removed groups at zero (weights through a :class:`PruningMasks`, biases and BatchNorm
    parameters by masking their gradients here).
    """

    name = "group_prox"

    def __init__(self, model: nn.Module, lam: LayerSpec = 1e-4, include_bias: bool = True, exclude_output: bool = True) -> None:
        super().__init__(model)
        for flag, label in ((include_bias, "include_bias"), (exclude_output, "exclude_output")):
            if not isinstance(flag, bool):
                raise BaselineConfigError(f"{label} must be a bool, got {flag!r}")
        strengths = resolve_per_layer(lam, self.layers, "lam", check=check_nonnegative, default=0.0)
        if exclude_output:
            strengths[list(self.layers)[-1]] = 0.0
        self.strengths = {name: value for name, value in strengths.items() if value > 0}
        if not self.strengths:
            raise BaselineConfigError("group_prox: lam is 0 for every regularized layer, so it would do nothing")
        batchnorms = following_batchnorm(model) if include_bias else {}
        # Every tensor of a group has the group index as its first dimension.
        self.members: dict[str, list[torch.Tensor]] = {}
        for name in self.strengths:
            layer = self.layers[name]
            members = [layer.weight]
            if include_bias and layer.bias is not None:
                members.append(layer.bias)
            if name in batchnorms and batchnorms[name][1].affine:
                members += [batchnorms[name][1].weight, batchnorms[name][1].bias]
            self.members[name] = members

    def group_norms(self, name: str) -> torch.Tensor:
        """The L2 norm of each of layer ``name``'s groups."""
        return sum(member.detach().reshape(member.shape[0], -1).square().sum(1) for member in self.members[name]).sqrt()

    def group_size(self, name: str) -> int:
        return sum(member[0].numel() for member in self.members[name])

    def update(self, step: int) -> None:
        with torch.no_grad():
            for name, lam in self.strengths.items():
                members = self.members[name]
                shrink = self.learning_rate(members[0]) * lam * math.sqrt(self.group_size(name))
                norms = self.group_norms(name)
                # A zero-norm group gives 1 - inf here, i.e. it stays at zero.
                scale = (1 - shrink / norms).clamp_min_(0)
                removed = scale == 0
                for member in members:
                    member.mul_(scale.view(-1, *([1] * (member.dim() - 1))).to(member.dtype))
                    if removed.any():
                        self.reset_optimizer_state(member, removed)

    def removed_groups(self) -> dict[str, torch.Tensor]:
        """Per regularized layer, a bool vector of its groups that are entirely zero."""
        return {name: self.group_norms(name) == 0 for name in self.strengths}

    def final_masks(self) -> dict[str, torch.Tensor]:
        masks = {}
        for name, removed in self.removed_groups().items():
            weight = self.layers[name].weight
            masks[name] = (~removed).view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).contiguous()
        return masks

    def _held_rows(self) -> dict[str, torch.Tensor]:
        return {name: ~mask.flatten(1).any(1) for name, mask in self.pruning.masks.items()} if self.pruning else {}

    def after_backward(self, step: int) -> None:
        super().after_backward(step)
        if self.finalized:
            for name, removed in self._held_rows().items():
                for member in self.members[name][1:]:  # the weights are PruningMasks' job
                    if member.grad is not None:
                        member.grad[removed] = 0

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach_optimizer(optimizer)
        for name, removed in self._held_rows().items():
            for member in self.members[name][1:]:
                self.reset_optimizer_state(member, removed)


# -- thinning ------------------------------------------------------------------------------------

_ZERO_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh, nn.Mish,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.Flatten, nn.Dropout, nn.Dropout2d, nn.Identity,
)
_CHAIN_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _check_thinnable(model: nn.Module) -> None:
    if not isinstance(model, (nn.Sequential, LeNet5, VGGSmall)):
        raise ThinningError(
            f"thin_model supports nn.Sequential chains, LeNet5 and VGGSmall, not {type(model).__name__} "
            "(residual or branching nets need a per-architecture rule)"
        )
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            if not isinstance(module, (nn.Sequential, LeNet5, VGGSmall)):
                raise ThinningError(f"thin_model: {name} is a {type(module).__name__}, not a plain chain")
            continue
        if not isinstance(module, _CHAIN_LAYERS + _ZERO_PRESERVING):
            raise ThinningError(f"thin_model: {name} is a {type(module).__name__}, which may not map a zero channel to zero")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ThinningError(f"thin_model: {name} is a grouped conv")


def _silent_channels(layer: nn.Module, batchnorm: nn.modules.batchnorm._BatchNorm | None) -> torch.Tensor:
    """Output channels that are exactly 0 for every input: zero weights, zero bias, and a
    BatchNorm (if any) that maps 0 to 0 in eval mode (beta - gamma * mean / std) and in training
    mode (beta)."""
    silent = layer.weight.detach().flatten(1).eq(0).all(1)
    if layer.bias is not None:
        silent &= layer.bias.detach() == 0
    if batchnorm is not None:
        if batchnorm.affine:
            silent &= batchnorm.bias.detach() == 0
        if batchnorm.track_running_stats:
            gamma = batchnorm.weight.detach() if batchnorm.affine else torch.ones_like(batchnorm.running_mean)
            silent &= gamma * batchnorm.running_mean == 0
    return silent


def _narrow(module: nn.Module, rows: torch.Tensor | None, columns: torch.Tensor | None) -> nn.Module:
    """A copy of conv/linear/BatchNorm ``module`` keeping output ``rows`` and input ``columns``."""
    rows_index = rows.nonzero().flatten() if rows is not None else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        new = type(module)(int(rows.sum()), module.eps, module.momentum, module.affine, module.track_running_stats)
        new = new.to(module.running_mean.device if module.track_running_stats else next(module.parameters()).device)
        with torch.no_grad():
            for key, value in module.state_dict().items():
                target = new.state_dict()[key]
                target.copy_(value if value.dim() == 0 else value[rows_index])
        return new.train(module.training)
    weight = module.weight.detach()
    if rows_index is not None:
        weight = weight[rows_index]
    if columns is not None:
        weight = weight[:, columns.nonzero().flatten()]
    if isinstance(module, nn.Conv2d):
        new = nn.Conv2d(weight.shape[1], weight.shape[0], module.kernel_size, module.stride, module.padding,
                        module.dilation, 1, module.bias is not None, module.padding_mode)
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], module.bias is not None)
    new = new.to(weight.device, weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if module.bias is not None:
            new.bias.copy_(module.bias.detach()[rows_index] if rows_index is not None else module.bias.detach())
    new.train(module.training)
    return new


def thin_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its silent filters/neurons and the inputs they fed.

    A conv filter or Linear neuron is removed when its output is exactly zero for every input
    (see the group membership in :class:`GroupProx`); so are its BatchNorm channel and the
    matching input channels of the next layer (for a Linear fed by a flattened conv, the whole
    block of inputs from that channel). The model's last layer keeps all its outputs; a layer
    whose channels are all silent keeps one. The thinned model computes the same outputs
    (up to float summation order) and has fewer parameters.

    Supported: ``nn.Sequential`` chains (nested Sequentials allowed) of Conv2d (groups=1),
    Linear, BatchNorm and zero-preserving modules (ReLU-like activations, pools, Flatten,
    Dropout, Identity), and :class:`jointsparse.models.LeNet5` / ``VGGSmall``. Anything else
    raises :class:`ThinningError`. The copy drops ``jointsparse_arch``: it no longer matches the
    architecture's constructor.
    """
    _check_thinnable(model)
    thin = copy.deepcopy(model)
    thin.__dict__.pop("jointsparse_arch", None)
    layers = list(prunable_layers(thin).items())
    batchnorms = following_batchnorm(thin)
    out_keep: dict[str, torch.Tensor | None] = {}
    in_keep: dict[str, torch.Tensor | None] = {name: None for name, _ in layers}
    for (name, layer), (next_name, next_layer) in zip(layers, layers[1:]):
        keep = ~_silent_channels(layer, batchnorms[name][1] if name in batchnorms else None)
        if not keep.any():
            keep[0] = True  # a zero-width layer is not a valid module
        out_keep[name] = keep
        if isinstance(layer, nn.Conv2d) and isinstance(next_layer, nn.Linear):
            if next_layer.in_features % keep.numel():
                raise ThinningError(f"thin_model: {next_name} has {next_layer.in_features} inputs, not a multiple of {name}'s {keep.numel()} channels")
            in_keep[next_name] = keep.repeat_interleave(next_layer.in_features // keep.numel())
        else:
            in_keep[next_name] = keep
    out_keep[layers[-1][0]] = None
    for name, layer in layers:
        replacements = {name: _narrow(layer, out_keep[name], in_keep[name])}
        if name in batchnorms and out_keep[name] is not None:
            replacements[batchnorms[name][0]] = _narrow(batchnorms[name][1], out_keep[name], None)
        for path, module in replacements.items():
            parent, _, child = path.rpartition(".")
            setattr(thin.get_submodule(parent) if parent else thin, child, module)
    return thin
