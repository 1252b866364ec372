"""The one per-layer resolver: module names or globs, exact name first, typos are errors."""

import pytest
from torch import nn

from jointsparse.layers import LayerKeyError, prunable_layers, resolve_per_layer, select_key, winograd_layers

NAMES = ["conv1", "conv2", "fc6", "fc7"]


def test_exact_name_beats_glob_whatever_the_order():
    for spec in ({"conv*": 4, "conv1": 8}, {"conv1": 8, "conv*": 4}):
        assert resolve_per_layer(spec, NAMES, "bits", default=None) == {"conv1": 8, "conv2": 4, "fc6": None, "fc7": None}


def test_first_glob_wins_and_default_fills_the_rest():
    got = resolve_per_layer({"fc6": 0.9, "fc*": 0.8, "*": 0.5}, NAMES, "s")
    assert got == {"conv1": 0.5, "conv2": 0.5, "fc6": 0.9, "fc7": 0.8}
    assert resolve_per_layer({"*": 1, "fc*": 2}, NAMES, "s") == dict.fromkeys(NAMES, 1)  # a shadowed glob is no typo
    assert resolve_per_layer({"fc7": 0.3}, NAMES, "s") == {"conv1": 0.0, "conv2": 0.0, "fc6": 0.0, "fc7": 0.3}
    assert resolve_per_layer(3, NAMES, "s") == dict.fromkeys(NAMES, 3)
    assert select_key("fc6", ["f*", "fc6"]) == "fc6" and select_key("conv9", ["fc*"]) is None


def test_a_key_matching_no_layer_is_an_error_listing_the_layers():
    with pytest.raises(LayerKeyError, match="'fc8' match no layer; layers are conv1, conv2, fc6, fc7"):
        resolve_per_layer({"fc8": 0.5, "fc6": 0.1}, NAMES, "s")
    with pytest.raises(LayerKeyError, match="'conv2.weight' match no layer"):  # module names, not parameter names
        resolve_per_layer({"conv2.weight": 0.3}, NAMES, "s")
    with pytest.raises(LayerKeyError, match=r"layers are \(none\)"):
        resolve_per_layer({"*": 0.3}, [], "s")


def test_values_go_through_the_check_with_their_key_named():
    def check(value, where):
        if value < 0:
            raise ValueError(f"{where} must be >= 0")
        return float(value)

    assert resolve_per_layer({"conv*": 2}, NAMES, "lam", check=check, default=-1.0) == {"conv1": 2.0, "conv2": 2.0, "fc6": -1.0, "fc7": -1.0}
    with pytest.raises(ValueError, match=r"lam\['fc6'\] must be >= 0"):
        resolve_per_layer({"fc6": -1}, NAMES, "lam", check=check)
    with pytest.raises(ValueError, match="^lam must be >= 0"):
        resolve_per_layer(-1, NAMES, "lam", check=check)


def test_layer_selection():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2), nn.Flatten(), nn.Linear(2, 2))
    assert list(prunable_layers(model)) == ["0", "2", "4"]
    assert list(winograd_layers(model)) == ["0"]
