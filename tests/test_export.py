"""Export: ONNX of the spatial deployment (onnxruntime equals decode) and safetensors with CSR Winograd weights."""

from __future__ import annotations

import json

import pytest
import torch

from jointsparse.codecs import decode, decode_state, encode, winograd_weights
from jointsparse.export import ExportError, dense_from_csr, export_onnx, export_safetensors
from jointsparse.models import get_model


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    torch.manual_seed(0)
    model = get_model("vgg_small", width=0.25, num_classes=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(torch.rand(module.weight.shape) < 0.4)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
    path = tmp_path_factory.mktemp("export") / "m.jsz"
    encode(model, path, winograd_sparsity=0.5, input_size=(1, 9, 9), provenance={"data": {"mean": [0.5], "std": [0.25]}})
    return path


def test_onnxruntime_runs_the_export_with_decode_outputs(packed, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    result = export_onnx(packed, out)
    assert result["input_size"] == [1, 9, 9] and out.stat().st_size == result["bytes"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 9, 9, generator=torch.Generator().manual_seed(1))
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = decode(packed, domain="spatial")(x)
    assert onnx_out.shape == (3, 4)
    assert torch.allclose(torch.from_numpy(onnx_out), expected, rtol=1e-4, atol=1e-5)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["jointsparse_normalization"]) == {"mean": [0.5], "std": [0.25]}


def test_onnx_needs_an_input_size(tmp_path):
    pytest.importorskip("onnx")
    model = get_model("lenet5")
    path = tmp_path / "l.jsz"
    encode(model, path)
    with pytest.raises(ExportError, match="--input-size"):
        export_onnx(path, tmp_path / "l.onnx")
    assert not (tmp_path / "l.onnx").exists()


def test_safetensors_holds_the_state_dict_and_csr_winograd_weights(packed, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    out = tmp_path / "m.safetensors"
    export_safetensors(packed, out)
    _, state, _ = decode_state(packed)
    winograd = winograd_weights(packed)
    assert winograd, "the test model must have Winograd layers"
    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
        keys = set(handle.keys())
        for name, tensor in state.items():
            assert torch.equal(handle.get_tensor(name), tensor)
        layout = json.loads(meta["winograd"])
        assert set(layout) == set(winograd)
        for module, entry in winograd.items():
            parts = [handle.get_tensor(f"{module}.winograd.{k}") for k in ("crow_indices", "col_indices", "values")]
            assert parts[1].numel() == int(torch.count_nonzero(entry["weight"]))
            rebuilt = dense_from_csr(*parts, layout[module]["shape"])
            assert torch.equal(rebuilt, entry["weight"]) and layout[module]["m"] == entry["m"]
    assert keys == set(state) | {f"{m}.winograd.{k}" for m in winograd for k in ("crow_indices", "col_indices", "values")}


def test_static_adaptive_pools_replace_only_pools_that_tile_evenly():
    """AlexNet's adaptive pool sees 6x6 at 227 px (an identity: replaced, so the TorchScript
    exporter can write the model) and 1x1 at 67 px (copies values: left alone)."""
    from jointsparse.export import static_adaptive_pools
    from jointsparse.models import get_model

    torch.manual_seed(0)
    model = get_model("alexnet", num_classes=10).eval()
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        want = model(x)
        assert static_adaptive_pools(model, x) == ["fit"]
        assert isinstance(model.fit, torch.nn.Identity)
        assert torch.equal(model(x), want)
    small = get_model("alexnet", num_classes=10).eval()
    assert static_adaptive_pools(small, torch.randn(1, 3, 67, 67)) == []
