"""Channel-wise sparse connections (Changpinyo, Sandler & Zhmoginov, arXiv 1702.06257), and the
depth-multiplier baseline they compare against.

Before training, each output channel of a conv layer is connected to a random, fixed fraction
``alpha`` of its input channels. The mask is per (output, input) channel pair and shared by all
k x k taps; every output keeps at least one input (no dead filters); Linear layers stay dense.
A :class:`PruningMasks` holds the missing connections at zero through training.

The baseline with the same parameter budget is a dense model whose conv widths are scaled by
``sqrt(alpha)`` (:func:`depth_multiplier`), since a conv's weight count scales with the product
of its input and output widths.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..models import get_model
from ..layers import resolve_per_layer
from ._common import BaselineConfigError, BaselineHook, LayerSpec, check_fraction, keep_count

#: The input side used to check a generically narrowed model end to end (AlexNet needs >= 63 px).
DEFAULT_INPUT_SIZE = {"lenet5": 28, "alexnet": 67, "resnet18": 32, "resnet20": 32, "vgg_small": 28}


def _check_alpha(value: Any, what: str) -> float:
    return check_fraction(value, what, low_open=True, high_open=False)


def channel_connection_mask(out_channels: int, in_channels: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """A bool [out, in] mask: each row keeps ``round(alpha * in)`` (at least 1) random inputs."""
    kept = keep_count(in_channels, alpha)
    order = torch.rand(out_channels, in_channels, generator=generator).argsort(dim=1)
    mask = torch.zeros(out_channels, in_channels, dtype=torch.bool)
    mask.scatter_(1, order[:, :kept], True)
    return mask


class ChannelSparse(BaselineHook):
    """Random fixed channel-wise connections in every conv layer, held by a :class:`PruningMasks`.

    ``alpha``: the connected fraction of input channels, in (0, 1]; one value or per layer
    (names / globs; unmatched convs stay dense). For grouped convs it is a fraction of each
    group's inputs. ``seed``: each layer draws from its own generator, seeded by ``seed`` and
    the layer's position, so one layer's mask does not depend on the others' settings.
    """

    name = "channel_sparse"

    def __init__(self, model: nn.Module, alpha: LayerSpec = 0.5, seed: int = 0) -> None:
        super().__init__(model)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BaselineConfigError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        convs = {name: layer for name, layer in self.layers.items() if isinstance(layer, nn.Conv2d)}
        if not convs:
            raise BaselineConfigError("channel_sparse: the model has no Conv2d layer")
        self.alphas = resolve_per_layer(alpha, convs, "alpha", check=_check_alpha, default=1.0)
        masks = {}
        for index, (name, layer) in enumerate(self.layers.items()):
            if name not in convs or self.alphas[name] >= 1.0:
                continue
            weight = layer.weight
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            pairs = channel_connection_mask(weight.shape[0], weight.shape[1], self.alphas[name], generator)
            masks[name] = pairs[:, :, None, None].expand_as(weight).to(weight.device).contiguous()
        if not masks:
            raise BaselineConfigError("channel_sparse: alpha is 1 for every conv layer, so it would do nothing")
        self.set_masks(masks)

    def final_masks(self) -> None:
        return None  # the masks drawn at construction hold for good


def _lcm(values: list[int]) -> int:
    result = 1
    for value in values:
        result = result * value // math.gcd(result, value)
    return result


def scale_channels(model: nn.Module, factor: float, example_input: torch.Tensor | None = None) -> nn.Module:
    """A freshly initialised copy of ``model`` with every hidden conv width ``c`` set to
    ``round(c * factor)`` (a multiple of the convs' groups, at least one group).

    Scope: models whose Conv2d / Linear / BatchNorm layers are registered in data-flow order and
    whose widths follow from each other, i.e. ``nn.Sequential`` chains and every model in
    :mod:`jointsparse.models` (residual blocks included: a width maps to the same new width
    everywhere). The first conv keeps its input channels; Linear layers keep their widths, and
    a Linear fed by a flattened conv output gets ``new_channels * (in_features / channels)``
    inputs. Depthwise convs are not supported. With ``example_input``, the narrowed model is run
    once (in eval mode, no gradients) and a shape error is reported as a
    :class:`BaselineConfigError`.
    """
    factor = float(factor)
    if not factor > 0 or not math.isfinite(factor):
        raise BaselineConfigError(f"factor must be a finite number > 0, got {factor}")
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise BaselineConfigError(f"scale_channels: {type(model).__name__} has no Conv2d layer")
    if any(conv.groups > 1 and conv.groups == conv.in_channels for conv in convs):
        raise BaselineConfigError("scale_channels does not support depthwise convs")
    unit = _lcm([conv.groups for conv in convs])

    def width(channels: int) -> int:
        return max(unit, unit * round(channels * factor / unit))

    reference = next(model.parameters())
    narrow = copy.deepcopy(model)
    first_conv = True
    previous: tuple[str, int, int] | None = None  # kind, old width, new width of the last conv/linear
    for name, module in list(narrow.named_modules()):
        if isinstance(module, nn.Conv2d):
            in_channels = module.in_channels if first_conv else width(module.in_channels)
            first_conv = False
            replacement: nn.Module = nn.Conv2d(
                in_channels, width(module.out_channels), module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode,
            )
            previous = ("conv", module.out_channels, replacement.out_channels)
        elif isinstance(module, nn.Linear):
            in_features = module.in_features
            if previous is not None and previous[0] == "conv":
                _, old, new = previous
                if in_features % old:
                    raise BaselineConfigError(f"scale_channels: {name} has {in_features} inputs, not a multiple of the previous conv's {old} channels")
                in_features = in_features // old * new
            replacement = nn.Linear(in_features, module.out_features, module.bias is not None)
            previous = ("linear", module.out_features, module.out_features)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if previous is None or module.num_features != previous[1]:
                raise BaselineConfigError(f"scale_channels: cannot tell which layer feeds BatchNorm {name}")
            replacement = type(module)(previous[2], module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(narrow.get_submodule(parent_name) if parent_name else narrow, child, replacement.to(reference.device, reference.dtype))
    if example_input is not None:
        was_training = narrow.training
        narrow.eval()
        try:
            with torch.no_grad():
                narrow(example_input.to(reference.device, reference.dtype))
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BaselineConfigError(f"scale_channels: the narrowed {type(model).__name__} does not run: {first_line}") from None
        finally:
            narrow.train(was_training)
    return narrow


def depth_multiplier(model_name: str, alpha: float, input_size: int | None = None, **model_kwargs: Any) -> nn.Module:
    """The depth-multiplier baseline: model ``model_name`` with conv widths scaled by ``sqrt(alpha)``.

    ``vgg_small`` is built through its ``width`` argument; every other model goes through
    :func:`scale_channels` and is checked on a ``input_size`` (default per model) input.
    The result carries a ``jointsparse_arch`` naming this function, so
    ``get_model("jointsparse.baselines.channel_sparse:depth_multiplier", model_name=..., alpha=...)``
    rebuilds it.
    """
    alpha = _check_alpha(alpha, "alpha")
    factor = math.sqrt(alpha)
    if model_name == "vgg_small":
        kwargs = dict(model_kwargs)
        kwargs["width"] = float(kwargs.get("width", 1.0)) * factor
        model = get_model("vgg_small", **kwargs)
    else:
        base = get_model(model_name, **model_kwargs)
        first_conv = next((m for m in base.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None:
            raise BaselineConfigError(f"depth_multiplier: model {model_name!r} has no Conv2d layer")
        side = input_size if input_size is not None else DEFAULT_INPUT_SIZE.get(model_name, 32)
        model = scale_channels(base, factor, example_input=torch.zeros(2, first_conv.in_channels, side, side))
    kwargs = {"model_name": model_name, "alpha": alpha, **model_kwargs}
    if input_size is not None:
        kwargs["input_size"] = input_size
    model.jointsparse_arch = {"name": f"{__name__}:depth_multiplier", "kwargs": kwargs}
    return model
