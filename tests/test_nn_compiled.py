"""The compiled C kernels (``jointsparse.nn._csparse``) against the pure-PyTorch path and
F.conv2d, on awkward shapes: odd sizes, padding modes, groups, stride, dilation, batch 1, one channel.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jointsparse.nn import SparseConv2d, SparseLinear, WinogradConv2d, _compiled

pytestmark = pytest.mark.skipif(not _compiled.available(), reason=f"compiled kernels off: {_compiled.UNAVAILABLE_REASON}")


def pruned(tensor: torch.Tensor, keep: float, seed: int) -> torch.Tensor:
    mask = torch.rand(tensor.shape, generator=torch.Generator().manual_seed(seed)) < keep
    return tensor * mask


def both_paths(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layer.compiled = True
    assert layer.compiled, "the compiled kernel should be in use"
    with torch.no_grad():
        fast = layer(x)
        layer.compiled = False
        assert not layer.compiled
        slow = layer(x)
        layer.compiled = True
    return fast, slow


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    got, want = got.detach(), want.detach()
    scale = max(float(want.abs().max()), 1e-3)
    assert float((got - want).abs().max()) <= rtol * scale


WINOGRAD_CASES = [
    # cin, cout, r, m, padding, groups, batch, (h, w)
    (1, 1, 3, 2, 0, 1, 1, (5, 5)),
    (3, 5, 3, 2, 1, 1, 2, (7, 9)),
    (4, 6, 3, 2, 1, 2, 1, (13, 13)),
    (6, 6, 3, 4, 2, 3, 3, (11, 10)),
    (2, 4, 5, 2, 2, 2, 1, (9, 8)),
    (8, 3, 3, 2, 1, 1, 1, (3, 4)),
    # F(2,3)'s vectorised transforms: 8-tile chunks, a partial last chunk per row, odd output
    # width, several tile-row blocks, more than one 32-channel chunk of output channels
    (16, 70, 3, 2, 1, 1, 2, (37, 41)),
    (3, 33, 3, 2, 0, 1, 1, (19, 36)),
    (2, 3, 9, 4, 4, 1, 1, (14, 13)),
]


@pytest.mark.parametrize("cin, cout, r, m, padding, groups, batch, size", WINOGRAD_CASES)
def test_winograd_compiled_matches_pytorch_path_and_conv2d(cin, cout, r, m, padding, groups, batch, size):
    torch.manual_seed(cin * 100 + cout)
    conv = nn.Conv2d(cin, cout, r, padding=padding, groups=groups)
    x = torch.randn(batch, cin, *size)
    layer = WinogradConv2d.from_conv(conv, m=m, sparse=True)
    fast, slow = both_paths(layer, x)
    # F(4, 9)'s points reach +-3 and +-1/3: its float32 transforms lose about 3 digits whichever
    # order of operations computes them, so both paths are held to a looser tolerance there.
    rtol = 1e-4 if m + r - 1 <= 6 else 2e-3
    assert_close(fast, slow, rtol)
    assert_close(fast, F.conv2d(x, conv.weight, conv.bias, padding=padding, groups=groups), rtol)


def test_winograd_compiled_with_pruned_weights_and_no_bias():
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=False)
    t = 4
    mask = torch.rand(7, 5, t, t, generator=torch.Generator().manual_seed(1)) < 0.2
    layer = WinogradConv2d.from_conv(conv, m=2, winograd_mask=mask, sparse=True)
    fast, slow = both_paths(layer, torch.randn(1, 5, 15, 6))
    assert_close(fast, slow)


def test_winograd_compiled_all_pruned_gives_bias():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = WinogradConv2d.from_conv(conv, winograd_mask=torch.zeros(4, 3, 4, 4, dtype=torch.bool), sparse=True)
    with torch.no_grad():
        out = layer(torch.randn(2, 3, 5, 5))
    assert torch.equal(out, conv.bias.detach().view(1, -1, 1, 1).expand_as(out))


SPATIAL_CASES = [
    # cin, cout, kernel, stride, padding, dilation, groups, batch, (h, w), padding_mode
    (1, 1, 3, 1, 0, 1, 1, 1, (5, 5), "zeros"),
    (3, 4, 3, 2, 1, 1, 1, 2, (9, 8), "zeros"),
    (4, 6, (3, 5), (1, 2), (2, 1), 1, 2, 1, (11, 13), "zeros"),
    (4, 4, 3, 1, 2, 2, 4, 1, (7, 7), "zeros"),
    (3, 2, 1, 1, 0, 1, 1, 3, (4, 6), "zeros"),
    (2, 3, 3, 1, 1, 1, 1, 1, (6, 6), "reflect"),
    (96, 8, 11, 4, 0, 1, 1, 1, (35, 35), "zeros"),
]


@pytest.mark.parametrize("im2col_max_columns", [0, 10**9], ids=["direct", "im2col"])
@pytest.mark.parametrize("cin, cout, kernel, stride, padding, dilation, groups, batch, size, mode", SPATIAL_CASES)
def test_spatial_compiled_matches_pytorch_path_and_conv2d(cin, cout, kernel, stride, padding, dilation, groups, batch, size, mode, im2col_max_columns, monkeypatch):
    monkeypatch.setattr(_compiled, "IM2COL_MAX_COLUMNS", im2col_max_columns)
    torch.manual_seed(cin + cout)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, padding_mode=mode)
    with torch.no_grad():
        conv.weight.copy_(pruned(conv.weight, 0.3, 2))
    x = torch.randn(batch, cin, *size)
    layer = SparseConv2d.from_conv(conv, sparse=True)
    fast, slow = both_paths(layer, x)
    assert_close(fast, slow)
    with torch.no_grad():
        assert_close(fast, conv(x))


def test_spatial_same_padding_and_no_bias():
    conv = nn.Conv2d(3, 5, 4, padding="same", bias=False)
    layer = SparseConv2d.from_conv(conv, sparse=True)
    x = torch.randn(1, 3, 7, 6)
    fast, slow = both_paths(layer, x)
    assert_close(fast, slow)
    with torch.no_grad():
        assert_close(fast, conv(x))


@pytest.mark.parametrize("shared_values", [False, True], ids=["float-values", "codebook"])
@pytest.mark.parametrize("batch_shape", [(1,), (5,), (2, 3)])
def test_linear_compiled_matches_pytorch_path(batch_shape, shared_values):
    linear = nn.Linear(300, 40)  # 1,200 non-zeros: more distinct float values than 8 bits index
    with torch.no_grad():
        weight = pruned(linear.weight, 0.1, 3)
        if shared_values:  # a quantized layer: 5 distinct values, as a decoded file has
            weight = torch.round(weight * 20).clamp(-2, 2) / 20
        linear.weight.copy_(weight)
    layer = SparseLinear.from_linear(linear, sparse=True)
    # batch 1 of a layer with at most 256 distinct values runs on 8-bit value indices
    assert (layer._compiled_kernel.shared is not None) == shared_values
    x = torch.randn(*batch_shape, 300)
    fast, slow = both_paths(layer, x)
    assert_close(fast, slow)
    with torch.no_grad():
        assert_close(fast, linear(x))


def test_dense_choice_and_autograd_use_pytorch_path():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    dense = SparseConv2d.from_conv(conv, sparse=False)
    dense.compiled = True
    assert not dense.compiled  # a dense layer has no sparse product to compile
    layer = SparseConv2d.from_conv(conv, sparse=True)
    assert layer.compiled  # on by default where the extension is built
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    layer(x).sum().backward()  # the compiled kernel has no gradient; the PyTorch path runs instead
    assert x.grad is not None


def test_kernels_honour_torch_threads_and_state_dict_round_trip():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    layer = WinogradConv2d.from_conv(conv, sparse=True)
    layer.compiled = True
    x = torch.randn(2, 4, 6, 6)
    previous = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(layer(x))
    finally:
        torch.set_num_threads(previous)
    assert_close(outs[0], outs[1], 1e-6)
    copy = WinogradConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1), sparse=True)
    copy.compiled = True
    copy.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert_close(copy(x), outs[0], 1e-6)


@pytest.mark.parametrize("switch, expected", [("0", "False False False"), ("1", "True True True"), ("", "True True True")])
def test_environment_switch(switch, expected):
    code = (
        "from torch import nn; from jointsparse.nn import SparseConv2d, _compiled;"
        "l = SparseConv2d.from_conv(nn.Conv2d(2, 2, 3), sparse=True);"
        "print(_compiled.available(), _compiled.on_by_default(), l.compiled)"
    )
    env = {**os.environ, "JOINTSPARSE_COMPILED": switch}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected


def test_forcing_compiled_without_kernels_is_a_clear_error(monkeypatch):
    layer = SparseConv2d.from_conv(nn.Conv2d(2, 2, 3), sparse=True)
    monkeypatch.setattr(_compiled, "UNAVAILABLE_REASON", "the C extension is not built")
    with pytest.raises(RuntimeError, match="the C extension is not built"):
        layer.compiled = True


def test_layers_the_kernels_do_not_take_run_the_pytorch_path(monkeypatch):
    """A stride over the kernel's phase table, or an input past its 32-bit offsets, is not an
    error: the layer runs its PyTorch product instead."""
    conv = nn.Conv2d(2, 3, 1, stride=65)
    layer = SparseConv2d.from_conv(conv, sparse=True)
    assert not layer.compiled
    x = torch.randn(1, 2, 130, 130)
    with torch.no_grad():
        assert_close(layer(x), conv(x))
    conv = nn.Conv2d(2, 3, 3, padding=1)
    layer = SparseConv2d.from_conv(conv, sparse=True)
    assert layer.compiled

    def too_large(self, *args, **kwargs):
        raise _compiled.Unsupported("input too large")

    monkeypatch.setattr(_compiled.DirectConvKernel, "__call__", too_large)
    x = torch.randn(1, 2, 9, 9)
    with torch.no_grad():
        assert_close(layer(x), conv(x))
