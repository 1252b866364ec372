"""Per-layer choice of deployment (decode --domain auto): forcing, the timing cache, decode."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from jointsparse.codecs import decode, encode
from jointsparse.nn import SparseConv2d, SparseLinear, WinogradConv2d
from jointsparse.nn.choice import TimingCache, choose, forced_choices, format_choices, timing_key

from test_model_codec import _forward, _tiny


def test_forced_choices_exact_beats_glob_and_first_glob_wins():
    names = ["features.0", "features.3", "classifier.1"]
    got = forced_choices({"features.*": "winograd", "*": "dense", "features.3": "spatial"}, names)
    assert got == {"features.0": "winograd", "features.3": "spatial", "classifier.1": "dense"}
    assert forced_choices(None, names) == {}


@pytest.mark.parametrize("force, message", [({"conv": "fast"}, "cannot force"), ({"nope*": "dense"}, "match no layer")])
def test_forced_choices_refuse_typos(force, message):
    with pytest.raises(ValueError, match=message):
        forced_choices(force, ["conv", "fc"])


def test_timing_cache_round_trip_atomic_and_tolerates_garbage(tmp_path):
    path = tmp_path / "sub" / "timings.json"
    cache = TimingCache(path)
    assert cache.get("k") is None
    cache.put("k", {"dense": 1.0, "spatial": 0.5})
    cache.save()
    assert TimingCache(path).get("k") == {"dense": 1.0, "spatial": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["timings.json"]  # no temp debris
    path.write_text("{not json")
    assert TimingCache(path).entries == {}
    path.write_text(json.dumps({"version": -1, "entries": {"k": {}}}))
    assert TimingCache(path).entries == {}


def _forms():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    return {"dense": conv, "spatial": SparseConv2d.from_conv(conv, sparse=True), "winograd": WinogradConv2d.from_conv(conv, sparse=True)}


def test_choose_keeps_the_fastest_cached_timing_and_honours_force(tmp_path):
    forms = _forms()
    x = torch.randn(1, 3, 6, 6)
    cache = TimingCache(tmp_path / "t.json")
    # Planted timings: the choice must follow them, and nothing is re-timed.
    cache.put(timing_key(forms, x, 1), {"dense": 3.0, "spatial": 2.0, "winograd": 1.0})
    got = choose({"conv": forms}, {"conv": x}, threads=1, cache=cache)
    assert got["conv"] == {"choice": "winograd", "forced": False, "cached": True, "ms": {"dense": 3.0, "spatial": 2.0, "winograd": 1.0}}
    forced = choose({"conv": forms}, {"conv": x}, threads=1, force={"c*": "dense"}, cache=cache)
    assert forced["conv"]["choice"] == "dense" and forced["conv"]["forced"]
    assert "forced" in format_choices(forced)[0]
    with pytest.raises(ValueError, match="has no winograd form"):
        choose({"fc": {"dense": nn.Linear(2, 2)}}, {"fc": torch.randn(1, 2)}, threads=1, force={"fc": "winograd"})


def test_choose_times_uncached_layers_and_key_depends_on_batch_and_threads(tmp_path):
    forms = _forms()
    x1, x2 = torch.randn(1, 3, 6, 6), torch.randn(2, 3, 6, 6)
    assert len({timing_key(forms, x1, 1), timing_key(forms, x2, 1), timing_key(forms, x1, 2)}) == 3
    cache = TimingCache(tmp_path / "t.json")
    got = choose({"conv": forms}, {"conv": x1}, threads=1, cache=cache)["conv"]
    assert not got["cached"] and set(got["ms"]) == {"dense", "spatial", "winograd"}
    assert got["choice"] == min(got["ms"], key=got["ms"].get)
    assert TimingCache(tmp_path / "t.json").get(timing_key(forms, x1, 1)) == got["ms"]


def test_decode_auto_matches_spatial_decode_and_records_choices(tmp_path):
    model = _tiny(0.5, conv_out=6, conv_in=3, k=3)
    path = tmp_path / "tiny.jsz"
    encode(model, path, winograd_sparsity=0.4, provenance={"data": {"input_size": [3, 9, 7]}})
    x = torch.randn(2, 3, 9, 7)
    spatial = decode(path, "spatial", allow_imports=True)
    cache = TimingCache(tmp_path / "t.json")
    auto = decode(path, "auto", allow_imports=True, batch=2, threads=1, timing_cache=cache, force={"fc": "spatial"})
    assert set(auto.deployment_choices) == {"conv", "down", "fc"}
    assert "winograd" not in auto.deployment_choices["down"]["ms"]  # strided: no Winograd form
    assert isinstance(auto.fc, SparseLinear) and auto.deployment_choices["fc"]["forced"]
    kinds = {"dense": nn.Conv2d, "spatial": SparseConv2d, "winograd": WinogradConv2d}
    for name in ("conv", "down"):
        assert isinstance(getattr(auto, name), kinds[auto.deployment_choices[name]["choice"]])
    # The Winograd form prunes in the Winograd domain, so it matches the spatial decode only
    # where conv did not choose it; compare layer by layer where the forms agree.
    if auto.deployment_choices["conv"]["choice"] != "winograd":
        torch.testing.assert_close(_forward(auto, x), _forward(spatial, x), rtol=1e-4, atol=1e-5)
    encode(model, tmp_path / "bare.jsz")
    with pytest.raises(ValueError, match="input size"):
        decode(tmp_path / "bare.jsz", "auto", allow_imports=True, timing_cache=False)
    with pytest.raises(ValueError, match="batch"):
        decode(path, "auto", allow_imports=True, batch=0)
