import pytest
import torch
from torch import nn

from jointsparse.cost import layer_costs, macs_reduction, total_macs
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


def test_transform_ops_follow_the_runtime_convention():
    from jointsparse.cost import transform_ops

    # F(2,3): B^T and A^T are 0/+-1 only, so no multiplications; B^T rows have 2 non-zeros
    # (1 addition each, 4 rows), applied 2t = 8 times; A^T rows have 3 (2 additions, 2 rows), t + m = 6 times.
    small = transform_ops(2, 3)
    assert (small.input_mults, small.input_adds, small.output_mults, small.output_adds) == (0, 32, 0, 24)
    # F(4,3): Lavin & Gray's B^T has 12 entries outside {0, +-1}, A^T has 6.
    wide = transform_ops(4, 3)
    assert wide.input_mults == 12 * 12 and wide.output_mults == 6 * 10
    conv = nn.Conv2d(2, 3, 3, padding=1)
    row = layer_costs(nn.Sequential(conv), (1, 2, 8, 8), m=4)[0]
    assert row.tiles == 4 and row.transform_mults == 4 * (2 * 144 + 3 * 60)
    assert total_macs([row], "winograd_with_transforms") == row.sparse_winograd_macs + row.transform_mults
