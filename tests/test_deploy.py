"""Deployment from plain per-layer (m, threshold) values: jointsparse.nn.deploy / winograd_prune."""

import pytest
import torch
from torch import nn

from jointsparse.nn import SparseConv2d, SparseLinear, WinogradConv2d, deploy, winograd_prune
from jointsparse.transforms import filter_to_winograd, winograd_threshold


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(36, 5))


def test_winograd_prune_keeps_magnitudes_above_the_threshold_and_matches_conv():
    model = small_net()
    threshold = winograd_threshold(model[0].weight, 0.5, 2)
    pruned = winograd_prune(model, {"0": (2, threshold)})
    layer = pruned[0]
    assert isinstance(layer, WinogradConv2d) and isinstance(model[0], nn.Conv2d)  # a copy; the original is untouched
    big = filter_to_winograd(model[0].weight.detach().double(), 2)
    assert int(torch.count_nonzero(layer.winograd_weight)) == int((big.abs() > threshold).sum())
    x = torch.randn(1, 2, 7, 7)
    zero = winograd_prune(model, {"0": (2, 0.0)})
    torch.testing.assert_close(zero(x), model(x), rtol=1e-4, atol=1e-5)


def test_deploy_swaps_in_place_by_domain():
    spatial = deploy(small_net(), {"0": (2, 0.0), "2": None, "4": None}, "spatial")
    assert [type(spatial[i]) for i in (0, 2, 4)] == [SparseConv2d, SparseConv2d, SparseLinear]
    winograd = deploy(small_net(), {"0": (4, 0.0), "2": None, "4": None}, "winograd")
    assert isinstance(winograd[0], WinogradConv2d) and winograd[0].m == 4 and isinstance(winograd[2], SparseConv2d)


def test_deploy_errors():
    with pytest.raises(ValueError, match="unknown domain"):
        deploy(small_net(), {}, "auto-magic")
    with pytest.raises(ValueError, match="has no Winograd form"):
        deploy(small_net(), {"2": (2, 0.0)}, "winograd")
    with pytest.raises(ValueError, match="not a Conv2d or Linear"):
        deploy(small_net(), {"1": None}, "spatial")
