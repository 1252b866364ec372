"""The compiled max pool and local response norm against PyTorch's modules."""

import pytest
import torch
from torch import nn

from jointsparse.models import get_model
from jointsparse.nn import _compiled
from jointsparse.nn.fast import FastLocalResponseNorm, FastMaxPool2d, swap_fast_layers

pytestmark = pytest.mark.skipif(not _compiled.available(), reason=f"compiled kernels off: {_compiled.UNAVAILABLE_REASON}")

POOLS = [
    # kernel, stride, padding, ceil_mode, (n, c, h, w)
    (3, 2, 0, False, (1, 4, 13, 13)),
    (3, 2, 1, False, (2, 3, 112, 111)),
    (3, 2, 0, True, (1, 2, 14, 15)),
    (2, 2, 0, False, (1, 1, 7, 7)),
    ((2, 3), (1, 2), (1, 1), True, (3, 2, 5, 9)),
    (1, 1, 0, False, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, shape", POOLS)
def test_max_pool_matches_pytorch(kernel, stride, padding, ceil_mode, shape):
    pool = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(FastMaxPool2d(pool)(x), pool(x))


@pytest.mark.parametrize("size, alpha, beta, k, shape", [(5, 1e-4, 0.75, 2.0, (1, 96, 9, 7)), (3, 0.1, 0.6, 1.0, (2, 4, 5, 5)), (4, 1e-3, 0.75, 1.0, (1, 1, 3, 3)), (7, 0.5, 0.75, 1.0, (1, 300, 2, 3))])
def test_local_response_norm_matches_pytorch(size, alpha, beta, k, shape):
    norm = nn.LocalResponseNorm(size, alpha, beta, k)
    x = torch.randn(*shape) * 3
    with torch.no_grad():
        torch.testing.assert_close(FastLocalResponseNorm(norm)(x), norm(x), rtol=1e-5, atol=1e-6)


def test_fallback_to_pytorch_for_autograd_dilation_and_indices():
    pool = FastMaxPool2d(nn.MaxPool2d(2))
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    pool(x).sum().backward()  # the compiled kernel has no gradient: the wrapped module runs
    assert x.grad is not None
    with pytest.raises(ValueError, match="dilation"):
        FastMaxPool2d(nn.MaxPool2d(2, dilation=2))
    model = nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(2), nn.LocalResponseNorm(3))
    assert swap_fast_layers(model) == ["2", "3"]
    assert isinstance(model[0], nn.MaxPool2d) and isinstance(model[2], FastMaxPool2d)


@pytest.mark.parametrize("arch, size", [("alexnet", 67), ("resnet18", 32)])
def test_swapped_model_gives_the_same_outputs(arch, size):
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = model(x)
        names = swap_fast_layers(model)
        got = model(x)
    assert names  # both have a max pool; AlexNet has LRNs too
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
