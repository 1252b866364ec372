from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from jointsparse.transforms import (
    cook_toom,
    extract_tiles,
    filter_to_winograd,
    has_winograd_form,
    interpolation_points,
    winograd_conv2d_reference,
    winograd_matrices,
)

F23 = (
    [[1, 1, 1, 0], [0, 1, -1, -1]],
    [[1, 0, 0], [Fraction(1, 2), Fraction(1, 2), Fraction(1, 2)], [Fraction(1, 2), Fraction(-1, 2), Fraction(1, 2)], [0, 0, 1]],
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
)
sixth, twelfth, q24 = Fraction(1, 6), Fraction(1, 12), Fraction(1, 24)
F43 = (
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    [[Fraction(1, 4), 0, 0], [-sixth, -sixth, -sixth], [-sixth, sixth, -sixth], [q24, twelfth, sixth], [q24, -twelfth, sixth], [0, 0, 1]],
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
)


@pytest.mark.parametrize("m, r, expected", [(2, 3, F23), (4, 3, F43)])
def test_cook_toom_reproduces_lavin_gray_exactly(m, r, expected):
    for got, want in zip(cook_toom(m, r), expected):
        assert got == [[Fraction(v) for v in row] for row in want]


@pytest.mark.parametrize("m, r", [(1, 3), (2, 3), (3, 3), (4, 3), (6, 3), (2, 5), (3, 2), (2, 7)])
def test_one_dimensional_identity_is_exact(m, r):
    at, g, bt = cook_toom(m, r)
    t = m + r - 1
    for j in range(m):
        for k in range(r):
            for l in range(t):
                total = sum(at[j][i] * g[i][k] * bt[i][l] for i in range(t))
                assert total == (1 if l == j + k else 0)


def test_shapes_and_points():
    at, g, bt = winograd_matrices(4, 3)
    assert at.shape == (4, 6) and g.shape == (6, 3) and bt.shape == (6, 6)
    assert at.dtype == torch.float64
    assert interpolation_points(7) == [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)]
    with pytest.raises(ValueError, match="m >= 1"):
        winograd_matrices(0, 3)


def test_filter_to_winograd_matches_g_w_gt_and_is_differentiable():
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    _, g, _ = winograd_matrices(2, 3)
    big = filter_to_winograd(w, 2)
    assert big.shape == (4, 2, 4, 4)
    assert torch.allclose(big[1, 1], g @ w[1, 1] @ g.T)
    big.square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="square"):
        filter_to_winograd(torch.zeros(1, 1, 3, 2), 2)


def test_extract_tiles_is_a_view_with_overlap():
    x = torch.arange(2 * 7 * 7, dtype=torch.float32).reshape(1, 2, 7, 7)
    tiles, out_size = extract_tiles(x, 2, 3, padding=0)
    assert out_size == (5, 5)
    assert tiles.shape == (1, 2, 3, 3, 4, 4)
    padded = F.pad(x, (0, 1, 0, 1))  # 3 tiles of 2 outputs need 8 inputs
    assert torch.equal(tiles[0, 1, 1, 2], padded[0, 1, 2:6, 4:8])
    with pytest.raises(ValueError, match="smaller than"):
        extract_tiles(torch.zeros(1, 1, 2, 2), 2, 3)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
    r=st.sampled_from([2, 3, 5]), m=st.sampled_from([1, 2, 3, 4, 6]), padding=st.integers(0, 2),
)
def test_reference_winograd_equals_conv2d(n, c, o, h, w, r, m, padding):
    if h + 2 * padding < r or w + 2 * padding < r:
        return
    gen = torch.Generator().manual_seed(n * 1000 + h * 37 + w)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen)
    k = torch.randn(o, c, r, r, dtype=torch.float64, generator=gen)
    got = winograd_conv2d_reference(x, k, m, padding)
    want = F.conv2d(x, k, padding=padding)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + want.abs().max().item()) * 10 ** max(0, m - 2))


def test_float32_tolerance_on_awkward_shape():
    x = torch.randn(1, 1, 13, 9)
    k = torch.randn(1, 1, 3, 3)
    got = winograd_conv2d_reference(x, k, 2, 1)
    want = F.conv2d(x, k, padding=1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "module, expected",
    [
        (nn.Conv2d(3, 4, 3, padding=1), True),
        (nn.Conv2d(3, 4, 5, padding=2, groups=1), True),
        (nn.Conv2d(3, 4, 3, stride=2), False),
        (nn.Conv2d(3, 4, 3, dilation=2), False),
        (nn.Conv2d(3, 4, 1), False),
        (nn.Conv2d(3, 4, (3, 1)), False),
        (nn.Conv2d(3, 4, 3, padding=(1, 0)), False),
        (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), False),
        (nn.Linear(3, 4), False),
    ],
)
def test_has_winograd_form(module, expected):
    assert has_winograd_form(module) is expected


def test_the_winograd_pruning_rule():
    from jointsparse.transforms import DEFAULT_M, pruned_count, winograd_mask, winograd_pruned, winograd_threshold

    torch.manual_seed(3)
    weight = torch.randn(5, 3, 3, 3)
    big = filter_to_winograd(weight.double(), DEFAULT_M)
    for sparsity in (0.0, 0.3, 0.75):
        threshold = winograd_threshold(weight, sparsity, DEFAULT_M)
        kept = winograd_mask(weight, DEFAULT_M, threshold)
        assert int((~kept).sum()) == pruned_count(sparsity, big.numel())
        values, mask = winograd_pruned(weight, DEFAULT_M, threshold)
        assert torch.equal(mask, kept) and torch.equal(values, big)
    assert winograd_threshold(weight, 0.0, 2) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        winograd_threshold(weight, 1.0, 2)


@pytest.mark.parametrize("shape", [(6, 5, 3, 3), (1, 1, 3, 3), (0, 4, 3, 3), (4, 0, 3, 3), (3, 3)])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_the_bounded_winograd_pruning_matches_the_full_computation(shape, m, monkeypatch):
    from jointsparse.transforms import pruning, winograd_kept_count, winograd_pruned_weight

    monkeypatch.setattr(pruning, "CHUNK_ENTRIES", 50)  # many chunks, uneven last ones
    torch.manual_seed(0)
    weight = torch.randn(shape) * (torch.rand(shape) > 0.4)
    full = filter_to_winograd(weight.double(), m)
    threshold = float(full.abs().flatten().median()) if full.numel() else 0.0
    expected = (full * (full.abs() > threshold)).float()
    assert torch.equal(winograd_pruned_weight(weight, m, threshold), expected)
    assert winograd_kept_count(weight, m, threshold) == int((full.abs() > threshold).sum())
