"""Model zoo: the architectures the paper and its baselines use, in their reference layouts.

Every model built by :func:`get_model` carries ``model.jointsparse_arch = {"name", "kwargs"}`` so
that a compressed file can name the architecture it decodes into and rebuild it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn


class ModelError(ValueError):
    """An unknown architecture name or a factory that cannot be imported."""


class LeNet5(nn.Module):
    """Caffe's LeNet-5 (20-50-500-10), 28x28 input (at least 16 px).

    An adaptive pool before ``fc1`` keeps the 800-input FC layer for larger inputs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fit = nn.AdaptiveMaxPool2d((4, 4))
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fit(self.pool(self.conv2(self.pool(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _channel_window_sum(values: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Per channel c, the sum of ``values`` over channels c - before .. c + after (zeros beyond)."""
    channels = values.shape[1]
    padded = F.pad(values, (0, 0, 0, 0, before, after))
    out = padded[:, 0:channels].clone()
    for shift in range(1, before + after + 1):
        out += padded[:, shift : shift + channels]
    return out


class _LocalResponseNormFunction(torch.autograd.Function):
    """y = x d^-beta with d = k + alpha / size * (window sum of x^2), and its gradient written out:
    dx = g d^-beta - (2 alpha beta / size) x W^T(g y / d), W^T the mirrored window. One power in
    all (rsqrt for beta = 0.75) instead of autograd's chain of pow, pad and avg_pool3d."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        d = _channel_window_sum(x * x, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)
        if beta == 0.75:  # AlexNet's: d^-3/4 = rsqrt(d) * sqrt(rsqrt(d)), cheaper than pow
            p = torch.rsqrt(d)
            p.mul_(p.sqrt())
        else:
            p = d.pow(-beta)
        ctx.save_for_backward(x, d, p)
        ctx.size, ctx.scale = size, 2.0 * alpha * beta / size
        return x * p

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        x, d, p = ctx.saved_tensors
        t = (grad * x).mul_(p).div_(d)
        back = _channel_window_sum(t, (ctx.size - 1) // 2, ctx.size // 2)
        return grad * p - back.mul_(x).mul_(ctx.scale), None, None, None, None


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` with the same result, trained 4-5x faster on CPU (AlexNet's two
    LRNs took about 30% of a training step at 211 px). Tracing, scripting, export and inputs that
    are not 4-D floats take PyTorch's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 4 or not x.is_floating_point() or torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            return super().forward(x)
        return _LocalResponseNormFunction.apply(x, self.size, float(self.alpha), float(self.beta), float(self.k))


class AlexNet(nn.Module):
    """Caffe/BVLC AlexNet: 96-256-384-384-256 with groups=2 in conv2, conv4 and conv5.

    At 227x227 the layers have exactly the Caffe shapes (conv1 out 55x55, pool5 out 6x6, fc6 with
    9,216 inputs). Caffe's pools round up (``ceil_mode=True``). An adaptive average pool before
    fc6 lets smaller inputs run; below 211 px it copies values (SPEC section 10), which
    :func:`alexnet_pool_copy_factor` reports.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.norm = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if lrn else nn.Identity()
        self.fit = nn.AdaptiveAvgPool2d((6, 6))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu
        x = self.pool(self.norm(relu(self.conv1(x))))
        x = self.pool(self.norm(relu(self.conv2(x))))
        x = relu(self.conv4(relu(self.conv3(x))))
        x = self.fit(self.pool(relu(self.conv5(x))))
        x = self.dropout(relu(self.fc6(torch.flatten(x, 1))))
        x = self.dropout(relu(self.fc7(x)))
        return self.fc8(x)


def alexnet_pool_copy_factor(input_size: int) -> float:
    """How many times, on average, the adaptive pool before fc6 copies each pool5 value.

    1.0 means fc6 sees 36 distinct values per channel, as on ImageNet at 227 px.
    """
    side = input_size
    side = (side - 11) // 4 + 1  # conv1
    for _ in range(3):  # pool1, pool2 (conv2-5 keep the size), pool5; Caffe rounds up
        if side < 3:
            raise ValueError(f"AlexNet needs at least 63 px of input, got {input_size}")
        side = -(-(side - 3) // 2) + 1
    return 36 / min(side, 6) ** 2


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet(nn.Module):
    """ResNet with basic blocks: the ImageNet stem (7x7/2 conv and a max pool) or the CIFAR stem (one 3x3 conv)."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], num_classes: int, in_channels: int, imagenet_stem: bool) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.stem_pool: nn.Module = nn.MaxPool2d(3, 2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
            self.stem_pool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for index, (count, planes) in enumerate(zip(blocks, widths)):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(count)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages[:3]
        self.layer4 = stages[3] if len(stages) > 3 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGGSmall(nn.Module):
    """A small VGG-style net of 3x3 convs (with BatchNorm) for 8-32 px inputs.

    ``width`` scales every layer's channels; the default suits 28-32 px data.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0, hidden: int = 256) -> None:
        super().__init__()
        plan: list[int | str] = [32, 32, "M", 64, 64, "M", 128, 128]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, conv_index, pool_index = in_channels, 0, 0
        for item in plan:
            if item == "M":
                pool_index += 1
                layers[f"pool{pool_index}"] = nn.MaxPool2d(2)
                continue
            conv_index += 1
            out = max(1, round(int(item) * width))
            layers[f"conv{conv_index}"] = nn.Conv2d(channels, out, 3, padding=1, bias=False)
            layers[f"bn{conv_index}"] = nn.BatchNorm2d(out)
            layers[f"relu{conv_index}"] = nn.ReLU(inplace=True)
            channels = out
        layers["fit"] = nn.AdaptiveAvgPool2d((2, 2))
        self.features = nn.Sequential(layers)
        self.fc1 = nn.Linear(channels * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


class CTSRCNN(nn.Module):
    """CT-SRCNN (Ren, El-Khamy & Lee, arXiv 1711.04048): a plain SRCNN-style stack of 'same'
    convolutions with ReLUs, applied to the bicubically upscaled luminance (Y) channel, that
    outputs the super-resolved Y image (x3 in this project's set-up; the net itself is
    scale-agnostic, the scale lives in the data).

    Layers (``depth`` of them, named ``conv1`` .. ``conv{depth}``):

    - ``conv1``: 9x9, ``in_channels`` -> 64 (SRCNN's feature extraction);
    - ``conv2``: 5x5, 64 -> 32;
    - ``conv3`` .. ``conv{depth-1}``: 3x3, 32 -> 32, the layers cascade training inserts;
    - ``conv{depth}``: 5x5, 32 -> ``in_channels`` (reconstruction, no ReLU).

    ``residual=True`` adds the input to the output (a global skip: the layers predict the
    detail bicubic interpolation misses). It adds no weights and one addition per pixel, and it
    lets a plain stack this deep train in a CPU budget; ``residual=False`` is the SRCNN form.

    ``depth=3`` is SRCNN 9-5-5; ``depth=5`` is 9-5-3-3-5. *Reconstruction*: the paper's text
    could not be read here. The 9-5-5 base, 3x3 32-channel inserted layers, two layers per
    cascade stage and a final depth of 9 (:data:`CTSRCNN_DEPTH`) are this project's reading of
    the abstract and of SRCNN; :func:`ctsrcnn_insert_layers` initialises inserted layers near the
    identity (the paper draws them at random with a small variance).
    """

    def __init__(self, depth: int = 9, in_channels: int = 1, features: int = 64, width: int = 32, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        if depth < 3:
            raise ModelError(f"CT-SRCNN needs depth >= 3 (9-5-5 is SRCNN), got {depth}")
        self.depth = depth
        plan = [(in_channels, features, 9), (features, width, 5)] + [(width, width, 3)] * (depth - 3) + [(width, in_channels, 5)]
        for index, (cin, cout, r) in enumerate(plan, start=1):
            setattr(self, f"conv{index}", nn.Conv2d(cin, cout, r, padding=r // 2))

    def convs(self) -> list[nn.Conv2d]:
        return [getattr(self, f"conv{index}") for index in range(1, self.depth + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.convs()
        out = x
        for conv in hidden:
            out = torch.relu(conv(out))
        out = last(out)
        return out + x if self.residual else out


#: The depth cascade training grows CT-SRCNN to (*reconstruction*, see :class:`CTSRCNN`).
CTSRCNN_DEPTH = 9


def ctsrcnn_insert_layers(model: CTSRCNN, count: int = 2, noise: float = 1e-3, generator: torch.Generator | None = None) -> CTSRCNN:
    """One cascade-training step: a copy of ``model`` with ``count`` more 3x3 layers inserted
    before the reconstruction layer, every trained layer's weights carried over.

    The inserted layers start as the identity plus Gaussian noise of std ``noise``: each follows
    a ReLU and is followed by one, so on the non-negative features it sees the identity leaves
    the network's output unchanged and training continues from where the shallower net stopped.
    The result is registered like :func:`get_model` output (``jointsparse_arch``).
    """
    if count < 1:
        raise ValueError(f"insert at least one layer, got {count}")
    old = model.convs()
    width = old[-1].in_channels
    deeper = CTSRCNN(model.depth + count, old[0].in_channels, old[0].out_channels, width, model.residual)
    new = deeper.convs()
    with torch.no_grad():
        for source, target in zip(old[:-1], new[: len(old) - 1]):
            target.load_state_dict(source.state_dict())
        new[-1].load_state_dict(old[-1].state_dict())
        for layer in new[len(old) - 1 : -1]:
            eye = torch.zeros_like(layer.weight)
            eye[torch.arange(width), torch.arange(width), 1, 1] = 1.0
            layer.weight.copy_(eye + noise * torch.randn(eye.shape, generator=generator))
            layer.bias.zero_()
    arch = dict(getattr(model, "jointsparse_arch", {"name": "ctsrcnn", "kwargs": {}}))
    deeper.jointsparse_arch = {"name": arch.get("name", "ctsrcnn"), "kwargs": {**arch.get("kwargs", {}), "depth": deeper.depth}}
    return deeper


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels)


def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = True) -> nn.Module:
    return AlexNet(num_classes, in_channels, dropout, lrn)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, imagenet_stem=True)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet((3, 3, 3), (16, 32, 64), num_classes, in_channels, imagenet_stem=False)


def ctsrcnn(depth: int = CTSRCNN_DEPTH, in_channels: int = 1, residual: bool = True) -> nn.Module:
    return CTSRCNN(depth, in_channels, residual=residual)


def vgg_small(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, hidden: int = 256) -> nn.Module:
    return VGGSmall(num_classes, in_channels, width, hidden)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "vgg_small": vgg_small,
    "ctsrcnn": ctsrcnn,
}


class UntrustedModelError(ModelError):
    """A file names code to import and run, and the user has not said ``--trust``."""


def is_user_factory(name: str) -> bool:
    """True for a ``package.module:factory`` reference: building it imports and runs that code."""
    return ":" in name


def check_trusted(name: str, trust: bool, where: str) -> None:
    """Refuse to import a factory named by a file unless the user said ``--trust``.

    Registry names (``lenet5``, ...) are always allowed: they run only this package's code.
    """
    if is_user_factory(name) and not trust:
        raise UntrustedModelError(f"{where} names the factory {name!r}; building it runs that code: pass --trust if you trust the file")


def _import_factory(reference: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = reference.partition(":")
    # As with ``python -m``: modules in the current directory import without PYTHONPATH=.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import module {module_name!r} for model {reference!r} (searched the current directory and sys.path): {error}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"module {module_name!r} has no callable {attribute!r}")
    return factory


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C types have none
        return None


def accepted_kwargs(factory: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``offered`` that ``factory`` takes by keyword (all of it if it has ``**kwargs``)."""
    signature = _signature(factory)
    if signature is None:
        return dict(offered)
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(offered)
    names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in names}


def get_model(name_or_path: str, *, optional: Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by registry name (``alexnet``, ...) or a user factory ``package.module:factory``.

    ``kwargs`` are passed as given (a factory that does not take one is an error); of
    ``optional`` (what the data implies, e.g. ``num_classes``, ``in_channels``) the factory
    receives only the keywords it accepts. ``model.jointsparse_arch`` records what was passed.
    """
    if is_user_factory(name_or_path):
        factory = _import_factory(name_or_path)
    elif name_or_path in MODELS:
        factory = MODELS[name_or_path]
    else:
        raise ModelError(f"unknown model {name_or_path!r}; known: {', '.join(sorted(MODELS))}, or package.module:factory")
    signature = _signature(factory)
    shown = f"{name_or_path}{signature}" if signature is not None else name_or_path
    given = {**accepted_kwargs(factory, {k: v for k, v in (optional or {}).items() if k not in kwargs}), **kwargs}
    if signature is not None:
        try:
            signature.bind(**given)
        except TypeError as error:
            raise ModelError(f"model {shown} does not accept {sorted(given)}: {error}") from None
    try:
        model = factory(**given)
    except TypeError as error:
        raise ModelError(f"model {shown} failed with {sorted(given)}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory {name_or_path!r} returned {type(model).__name__}, not an nn.Module")
    model.jointsparse_arch = {"name": name_or_path, "kwargs": dict(given)}
    return model


def _runs(model: nn.Module, size: tuple[int, ...]) -> str | None:
    """None if ``model`` runs on one zero image of ``size``, else the error's first line."""
    parameter = next(model.parameters(), None)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *size), device=parameter.device if parameter is not None else "cpu"))
        return None
    except (RuntimeError, ValueError, IndexError) as error:  # what a shape mismatch raises inside forward
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    finally:
        model.train(was_training)


def check_input(model: nn.Module, size: tuple[int, int, int], label: str) -> None:
    """Raise :class:`ModelError` with a hint (``--resize``/``--channels``) if ``model`` cannot take
    ``size`` = (C, H, W) images."""
    problem = _runs(model, size)
    if problem is None:
        return
    channels, height, width = size
    shown = f"{channels}x{height}x{width}"
    for other in (1, 3):
        if other != channels and _runs(model, (other, height, width)) is None:
            raise ModelError(f"{label} does not run on {shown} inputs, it takes {other} channel(s): try --channels {other} ({problem})")
    for side in (16, 28, 32, 56, 64, 96, 128, 224, 227):
        if side > min(height, width) and _runs(model, (channels, side, side)) is None:
            raise ModelError(f"{label} needs at least {side} px inputs, the data has {height}x{width}: try --resize {side} ({problem})")
    raise ModelError(f"{label} does not run on {shown} inputs: {problem}")
