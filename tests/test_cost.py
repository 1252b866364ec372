import pytest
import torch
from torch import nn

from jointsparse.cost import layer_costs, macs_reduction, total_macs, transform_macs
from jointsparse.models import get_model
from jointsparse.transforms import filter_to_winograd

SPEC_ALEXNET_MACS = {  # SPEC section 7, in millions, at 227x227
    "conv1": 105.4, "conv2": 223.9, "conv3": 149.5, "conv4": 112.1, "conv5": 74.8,
    "fc6": 37.7, "fc7": 16.8, "fc8": 4.1,
}


def test_alexnet_reproduces_spec_figures():
    rows = {row.name: row for row in layer_costs(get_model("alexnet"), (1, 3, 227, 227))}
    assert rows["conv1"].dense_macs == 105_415_200
    assert sum(row.params for row in rows.values()) == 60_954_656
    for name, millions in SPEC_ALEXNET_MACS.items():
        assert round(rows[name].dense_macs / 1e6, 1) == millions
    for name in ("conv3", "conv4", "conv5"):
        conv = rows[name]
        assert conv.tiles == 49 and conv.winograd_tile == 4
        assert conv.dense_winograd_macs == conv.params // 9 * 16 * 49
    assert rows["conv2"].winograd_tile == 6 and rows["conv2"].tiles == 14 * 14
    assert rows["conv1"].dense_winograd_macs is None and rows["fc6"].sparse_winograd_macs is None
    assert round(total_macs(rows.values(), "dense") / 1e6) == 724


def test_sparse_counts_follow_the_weights():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # a lone centre tap: G w G^T has 4 non-zeros (rows 1,2 of G)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
    rows = layer_costs(model, (1, 2, 5, 5))
    assert rows[0].sparse_spatial_macs == 25
    winograd = filter_to_winograd(conv.weight.detach().double(), 2)
    assert rows[0].winograd_nonzero == int((winograd != 0).sum()) == 4
    assert rows[0].sparse_winograd_macs == 4 * 9  # 3x3 tiles of 2x2 cover 5x5
    assert rows[1].dense_macs == 150 and rows[1].sparse_spatial_macs == int(torch.count_nonzero(model[2].weight))
    high = layer_costs(model, (1, 2, 5, 5), winograd_thresholds={"0": 0.3})
    assert high[0].winograd_nonzero == int((winograd.abs() > 0.3).sum())
    assert macs_reduction(rows, "spatial") == pytest.approx(total_macs(rows, "dense") / total_macs(rows, "spatial"))
    with pytest.raises(ValueError, match="unknown deployment"):
        total_macs(rows, "quantum")


def test_transform_counts_follow_the_nonzero_matrix_entries():
    # F(2,3): B^T has 8 non-zeros (all +-1), A^T has 6; separable over a 4x4 tile.
    assert transform_macs(2, 3) == (2 * 4 * 8, (4 + 2) * 6)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    rows = layer_costs(nn.Sequential(conv), (1, 2, 5, 5))
    row = rows[0]
    assert row.tiles == 9
    assert row.input_transform_macs == 2 * 9 * 64 and row.output_transform_macs == 3 * 9 * 36
    assert total_macs(rows, "winograd_with_transforms") == row.sparse_winograd_macs + row.input_transform_macs + row.output_transform_macs
    assert macs_reduction(rows, "winograd_with_transforms") < macs_reduction(rows, "winograd")


def test_conventions_say_what_the_counts_hold():
    from jointsparse.cost import WINOGRAD_PRODUCTS_CONVENTION, WINOGRAD_TRANSFORMS_CONVENTION

    conv = nn.Conv2d(2, 3, 3, padding=1)
    row = layer_costs(nn.Sequential(conv), (1, 2, 7, 7))[0]
    assert "products" in WINOGRAD_PRODUCTS_CONVENTION and "only" in WINOGRAD_PRODUCTS_CONVENTION
    assert row.sparse_winograd_macs == row.winograd_nonzero * row.tiles  # products only, no transform term
    assert "transforms" in WINOGRAD_TRANSFORMS_CONVENTION and "non-zero entry" in WINOGRAD_TRANSFORMS_CONVENTION
