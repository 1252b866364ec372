"""jointsparse.encode / decode / decode_state and the report (issue #4)."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import jointsparse
from jointsparse.codecs import (
    CodebookFinetuner,
    FormatError,
    decode,
    decode_state,
    encode,
    format_report,
    load,
    quantize_model,
    report,
    winograd_weights,
)
from jointsparse.models import get_model
from jointsparse.transforms import extract_tiles, filter_to_winograd, input_to_winograd, output_from_winograd, untile


class TinyNet(nn.Module):
    """A conv with a Winograd form (padding 1), BatchNorm, a strided conv without one, a linear."""

    def __init__(self, conv_out: int = 4, conv_in: int = 3, k: int = 3, fc_out: int = 5, hidden: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv_in, conv_out, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(conv_out)
        self.down = nn.Conv2d(conv_out, hidden, 3, stride=2, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(hidden * 4, fc_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.pool(self.down(x)).flatten(1))


def tiny_net(**kwargs) -> nn.Module:
    return TinyNet(**kwargs)


TINY = f"{__name__}:tiny_net"


def _pruned(model: nn.Module, density: float, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(torch.rand(module.weight.shape, generator=generator) < density)
            if isinstance(module, nn.BatchNorm2d):  # non-trivial BN state, stored losslessly
                module.running_mean.uniform_(-1, 1, generator=generator)
                module.running_var.uniform_(0.5, 2, generator=generator)
                module.num_batches_tracked.fill_(17)
    return model


def _tiny(density: float = 0.4, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return _pruned(get_model(TINY, **kwargs), density, seed)


def test_package_reexports_encode_and_decode():
    assert jointsparse.encode is encode and jointsparse.decode is decode


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@settings(max_examples=30, deadline=None)
@given(
    quantizer=st.sampled_from(["kmeans", "universal"]),
    bits=st.integers(1, 16),
    density=st.sampled_from([0.0, 0.01, 0.3, 0.9, 1.0]),
    shapes=st.sampled_from(
        [
            {},
            {"conv_out": 1, "conv_in": 1, "k": 1, "fc_out": 1, "hidden": 1},  # 1-element conv
            {"conv_out": 2, "conv_in": 0, "k": 3, "fc_out": 3, "hidden": 2},  # empty conv weight
            {"conv_out": 3, "conv_in": 2, "k": 5, "fc_out": 0, "hidden": 2},  # empty linear weight
        ]
    ),
    coder=st.sampled_from(["ans", "zstd"]),
    seed=st.integers(0, 1000),
)
def test_encode_decode_round_trip_is_exact(tmp_path_factory, quantizer, bits, density, shapes, coder, seed):
    if quantizer == "universal" and bits == 1:
        bits = 2  # universal quantization needs two levels (see quantize_weight)
    model = _tiny(density, seed, **shapes)
    path = tmp_path_factory.mktemp("rt") / "m.jsz"
    encode(model, path, quantizer=quantizer, bits=bits, coder=coder, seed=seed)
    expected = quantize_model(model, quantizer, bits, seed)
    arch, state, manifest = decode_state(path)
    assert arch == {"name": TINY, "kwargs": shapes}
    assert set(state) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        want = expected[name].dequantize() if name in expected else tensor
        assert state[name].dtype == want.dtype and torch.equal(state[name], want), name
    again = decode_state(path)[1]
    assert all(torch.equal(again[name], state[name]) for name in state)  # decoding is repeatable


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _quantized_reference(model: nn.Module, path) -> nn.Module:
    """A plain (dense, nn.Conv2d) model carrying the decoded weights."""
    arch, state, _ = decode_state(path)
    reference = get_model(arch["name"], **arch["kwargs"])
    reference.load_state_dict(state)
    return reference.eval()


def _masked_winograd_conv(x, conv: nn.Conv2d, m: int, threshold: float) -> torch.Tensor:
    """Independent reference: Winograd correlation with |G w G^T| <= threshold set to zero."""
    weight = conv.weight.detach().double()
    big = filter_to_winograd(weight, m)
    big = big * (big.abs() > threshold)
    r = weight.shape[-1]
    tiles, size = extract_tiles(x.double(), m, r, conv.padding[0])
    products = torch.einsum("nchwij,ocij->nohwij", input_to_winograd(tiles, m, r), big)
    out = untile(output_from_winograd(products, m, r), size)
    return (out + conv.bias.detach().double().view(1, -1, 1, 1)).float()


def test_decode_spatial_and_winograd_match_references(tmp_path):
    from jointsparse.nn import SparseConv2d, SparseLinear, WinogradConv2d

    model = _tiny(0.5, conv_out=6, conv_in=3, k=3)
    path = tmp_path / "tiny.jsz"
    encode(model, path, winograd_sparsity=0.4)
    reference = _quantized_reference(model, path)
    x = torch.randn(3, 3, 9, 7)

    spatial = decode(path, "spatial", allow_imports=True)
    assert isinstance(spatial.conv, SparseConv2d) and isinstance(spatial.down, SparseConv2d) and isinstance(spatial.fc, SparseLinear)
    torch.testing.assert_close(_forward(spatial, x), _forward(reference, x), rtol=1e-5, atol=1e-5)

    winograd = decode(path, "winograd", allow_imports=True)
    assert isinstance(winograd.conv, WinogradConv2d)
    assert isinstance(winograd.down, SparseConv2d)  # strided: spatial in every domain
    threshold = load(path).layers["conv.weight"].winograd["threshold"]
    assert threshold > 0
    expected_conv = _masked_winograd_conv(x, reference.conv, 2, threshold)
    with torch.no_grad():
        torch.testing.assert_close(winograd.conv(x), expected_conv, rtol=1e-4, atol=1e-5)
        got = winograd.fc(winograd.pool(winograd.down(torch.relu(winograd.bn(expected_conv)))).flatten(1))
    torch.testing.assert_close(_forward(winograd, x), got, rtol=1e-4, atol=1e-5)
    kept = int(torch.count_nonzero(winograd.conv.winograd_weight))
    assert kept == report(path)["layers"][0]["winograd_nnz"]


def test_winograd_weights_and_plain_decode_for_checkpoints(tmp_path):
    from jointsparse.nn import WinogradConv2d

    model = _tiny(0.5, conv_out=6, conv_in=3, k=3)
    path = tmp_path / "w.jsz"
    encode(model, path, winograd_sparsity=0.5, provenance={"command": "test"})
    weights = winograd_weights(path)
    assert list(weights) == ["conv"] and weights["conv"]["m"] == 2
    big = weights["conv"]["weight"]
    assert big.shape == (6, 3, 4, 4) and big.dtype == torch.float32
    runtime = decode(path, "winograd", allow_imports=True).conv
    expected = WinogradConv2d.from_conv(_quantized_reference(model, path).conv, m=2, winograd_mask=big != 0)
    torch.testing.assert_close(runtime.winograd_weight, expected.winograd_weight, rtol=0, atol=0)
    # The runtime layer keeps [t*t, Cout, Cin]: the same numbers as the checkpoint weights.
    assert torch.equal(runtime.winograd_weight, big.permute(2, 3, 0, 1).reshape(16, 6, 3))
    plain = decode(path, allow_imports=True, runtime=False)
    assert type(plain.conv) is nn.Conv2d and type(plain.fc) is nn.Linear
    assert torch.equal(plain.conv.weight, decode_state(path)[1]["conv.weight"])
    assert decode_state(path)[2]["provenance"] == {"command": "test"}


def test_lenet5_winograd_without_threshold_equals_conv2d(tmp_path):
    torch.manual_seed(0)
    model = _pruned(get_model("lenet5"), 0.2)
    path = tmp_path / "lenet.jsz"
    rep = encode(model, path, quantizer="universal", coder="ans")
    assert [row["winograd_threshold"] for row in rep["layers"]] == [0.0, 0.0, None, None]
    reference = _quantized_reference(model, path)
    x = torch.randn(4, 1, 28, 28)
    for domain in ("spatial", "winograd"):
        decoded = decode(path, domain)  # a registry name needs no allow_imports
        torch.testing.assert_close(_forward(decoded, x), _forward(reference, x), rtol=1e-4, atol=1e-4)


def test_winograd_threshold_is_the_quantile_of_the_quantized_weights(tmp_path):
    model = _tiny(0.6, conv_out=8, conv_in=4, k=3)
    path = tmp_path / "q.jsz"
    original = model.conv.weight.detach().clone()
    encode(model, path, winograd_sparsity={"conv": 0.7}, bits=3)
    assert torch.equal(model.conv.weight, original)  # the quantized weights were swapped in and back out
    stored = load(path).layers["conv.weight"]
    assert stored.winograd == {"m": 2, "r": 3, "threshold": stored.winograd["threshold"], "sparsity": 0.7}
    big = filter_to_winograd(stored.quantized.dequantize().double(), 2).abs().flatten()
    k = math.ceil(0.7 * big.numel())
    assert stored.winograd["threshold"] == float(big.kthvalue(k).values)
    unquantized = filter_to_winograd(model.conv.weight.detach().double(), 2).abs().flatten()
    assert stored.winograd["threshold"] != float(unquantized.kthvalue(k).values)
    assert load(path).layers["down.weight"].winograd is None


def test_encode_takes_fine_tuned_codebooks(tmp_path):
    model = _tiny(0.5)
    layers = quantize_model(model, bits=4)
    tuner = CodebookFinetuner(model, layers, lr=1.0)
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 5)
    for step in range(3):
        loss = F.mse_loss(model(x), y)
        model.zero_grad()
        loss.backward()
        tuner.after_backward(step)
        tuner.after_step(step)
    path = tmp_path / "ft.jsz"
    encode(model, path, quantized=tuner.quantized_layers)
    state = decode_state(path)[1]
    for name, parameter in model.state_dict().items():
        assert torch.equal(state[name], parameter), name  # weights are exactly the tuned codebook values
    with pytest.raises(ValueError, match="do not match"):
        encode(model, path, quantized={"conv.weight": layers["conv.weight"]})


def test_report_counts_and_ratios(tmp_path):
    model = _tiny(0.3, conv_out=8, conv_in=4)
    path = tmp_path / "r.jsz"
    rep = encode(model, path, winograd_sparsity=0.5, recipe={"note": "test"})
    assert rep == report(path)
    size = os.path.getsize(path)
    total = rep["total"]
    original = sum(p.numel() for p in model.parameters())
    assert total["original_parameter_count"] == original and total["file_bytes"] == size
    assert total["compression_ratio"] == pytest.approx(32 * original / (8 * size))
    streams = total["position_bytes"] + total["index_bytes"]
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert total["weights_only_ratio"] == pytest.approx(32 * weights / (8 * (streams + total["codebook_bytes"])))
    assert streams + total["raw_bytes"] < size
    for row, (name, module) in zip(rep["layers"], [("conv.weight", model.conv), ("down.weight", model.down), ("fc.weight", model.fc)]):
        assert row["name"] == name and row["params"] == module.weight.numel()
        assert row["nnz"] == int(torch.count_nonzero(module.weight))
        assert row["bits_per_nonzero"] == pytest.approx(8 * (row["position_bytes"] + row["index_bytes"]) / row["nnz"])
        # No coder beats the order-0 bound by more than the ANS final state.
        assert row["index_bytes"] >= row["index_entropy_bytes"] - 8
    conv = rep["layers"][0]
    assert conv["winograd_params"] == 8 * 4 * 16 and abs(conv["winograd_density"] - 0.5) < 0.05
    assert rep["layers"][1]["winograd_nnz"] is None
    text = format_report(rep)
    assert "conv.weight" in text and "compression" in text and f"{total['compression_ratio']:.1f}x" in text
    # float16 codebooks count at their stored width: half the bytes, a better weights-only ratio
    half = encode(model, tmp_path / "h.jsz", winograd_sparsity=0.5, codebook_dtype="float16")
    assert [row["codebook_bytes"] for row in half["layers"]] == [row["codebook_bytes"] // 2 for row in rep["layers"]]
    assert half["total"]["weights_only_ratio"] > total["weights_only_ratio"]


def test_decode_refuses_what_it_should(tmp_path):
    model = _tiny(0.5)
    path = tmp_path / "t.jsz"
    encode(model, path)
    with pytest.raises(FormatError, match="allow_imports=True"):
        decode(path)
    with pytest.raises(ValueError, match="domain"):
        decode(path, "frequency", allow_imports=True)
    no_arch = tmp_path / "no_arch.jsz"
    plain = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"Sequential\(\) does not rebuild.*arch=\{'name'"):
        encode(plain, no_arch)
    encode(plain, no_arch, allow_no_arch=True)
    with pytest.raises(FormatError, match="no architecture"):
        decode(no_arch)
    assert decode_state(no_arch)[0] is None
    wrong = tmp_path / "wrong.jsz"
    encode(model, wrong, arch={"name": TINY, "kwargs": {"fc_out": 7}})
    with pytest.raises(FormatError, match="does not fit architecture"):
        decode(wrong, allow_imports=True)
    unknown = tmp_path / "unknown.jsz"
    encode(model, unknown, arch={"name": "no_such_model", "kwargs": {}})
    with pytest.raises(FormatError, match="cannot build architecture"):
        decode(unknown)


def test_encode_rejects_bad_arguments(tmp_path):
    model = _tiny()
    with pytest.raises(ValueError):
        encode(model, tmp_path / "a.jsz", winograd_sparsity=1.5)
    with pytest.raises(ValueError, match="coder"):
        encode(model, tmp_path / "a.jsz", coder="lz4")
    with pytest.raises(ValueError, match="seed"):
        encode(model, tmp_path / "a.jsz", seed=-1)
    with pytest.raises(ValueError, match="not plain JSON"):
        encode(model, tmp_path / "a.jsz", recipe={"f": object()})
    assert not (tmp_path / "a.jsz").exists()


def test_default_coder_is_smaller_than_zstd_on_a_sparse_model(tmp_path):
    torch.manual_seed(0)
    model = _pruned(get_model("lenet5"), 0.1)
    sizes = {coder: encode(model, tmp_path / f"{coder}.jsz", coder=coder)["total"]["file_bytes"] for coder in ("ans", "zstd")}
    assert sizes["ans"] < sizes["zstd"]
    ans = report(tmp_path / "ans.jsz")["total"]
    assert ans["index_bytes"] <= 1.05 * ans["index_entropy_bytes"]
    assert np.isclose(ans["position_vs_entropy"], 1.0, atol=0.01)


class NoArgNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 5 * 5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_encode_stores_an_importable_class_and_layer_maps(tmp_path):
    model = NoArgNet()
    path = tmp_path / "n.jsz"
    encode(model, path, input_size=(1, 5, 5))
    contents = load(path)
    assert contents.arch == {"name": f"{__name__}:NoArgNet", "kwargs": {}}
    assert contents.manifest["input_size"] == [1, 5, 5]
    entries = {entry["module"]: entry for entry in contents.manifest["layers"]}
    assert entries["conv"]["output_size"] == [5, 5] and entries["conv"]["groups"] == 1
    assert entries["fc"]["output_size"] == [1, 1]
    decoded = decode(path, allow_imports=True)
    x = torch.randn(2, 1, 5, 5)
    assert decoded(x).shape == (2, 3)

    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="not importable.*arch="):
        encode(Local(), tmp_path / "l.jsz")


def test_auto_refuses_a_recorded_input_size_it_cannot_allocate(tmp_path):
    """decode(domain='auto') times layers on a random input of the file's recorded size: a hostile
    size is a FormatError before any allocation, a user's too-large size a ValueError."""
    model = _pruned(get_model("lenet5"), 0.2)
    path = tmp_path / "huge.jsz"
    encode(model, path, provenance={"data": {"input_size": [1, 10**6, 10**6]}})
    with pytest.raises(FormatError, match="input size"):
        decode(path, "auto")
    with pytest.raises(ValueError, match="over the"):
        decode(path, "auto", batch=10**5, input_size=(1, 28, 28))


@pytest.mark.parametrize("dtype_name,dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_raw_float_dtype_halves_the_raw_bytes_and_decodes_to_the_rounded_values(tmp_path, dtype_name, dtype):
    model = _tiny(0.4, conv_out=8, conv_in=4).eval()
    exact, narrow = tmp_path / "exact.jsz", tmp_path / "narrow.jsz"
    full = encode(model, exact)["total"]
    half = encode(model, narrow, raw_float_dtype=dtype_name)["total"]
    compressed = {"conv.weight", "down.weight", "fc.weight"}
    floats = sum(t.numel() for n, t in model.state_dict().items() if n not in compressed and t.dtype == torch.float32)
    assert full["raw_bytes"] - half["raw_bytes"] == 2 * floats  # num_batches_tracked (int64) stays as it is
    assert os.path.getsize(exact) - os.path.getsize(narrow) >= 2 * floats - 16
    decoded = decode(narrow, allow_imports=True).eval()
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(decoded.state_dict()[name], tensor)
        elif name not in compressed:  # the raw floats: rounded, widened back to float32
            assert decoded.state_dict()[name].dtype == torch.float32
            assert torch.equal(decoded.state_dict()[name], tensor.to(dtype).float())
    x = torch.randn(2, 4, 9, 9)
    reference = decode(exact, allow_imports=True).eval()(x)
    assert torch.allclose(decoded(x), reference, rtol=0.02, atol=0.02)  # bfloat16 keeps 8 significant bits


def test_raw_float_dtype_refuses_what_it_cannot_hold(tmp_path):
    model = _tiny()
    with torch.no_grad():
        model.bn.running_var[0] = 1e6  # above float16's 65504
    with pytest.raises(ValueError, match=r"bn.running_var: a value outside float16's range.*float32"):
        encode(model, tmp_path / "a.jsz", raw_float_dtype="float16")
    encode(model, tmp_path / "a.jsz", raw_float_dtype="bfloat16")  # bfloat16 has float32's range
    with pytest.raises(ValueError, match="raw_float_dtype must be one of"):
        encode(model, tmp_path / "b.jsz", raw_float_dtype="int8")
    assert not (tmp_path / "b.jsz").exists()


def test_float16_codebooks_through_encode_decode_the_rounded_weights(tmp_path):
    model = _tiny(0.4, conv_out=8, conv_in=4).eval()
    quantized = quantize_model(model, bits=6)
    path = tmp_path / "half.jsz"
    encode(model, path, quantized=quantized, winograd_sparsity=0.3, codebook_dtype="float16")
    _, state, manifest = decode_state(path)
    assert manifest["version"] == 5 and manifest["codebook_dtype"] == "float16"
    for name, layer in quantized.items():
        rounded = dataclasses.replace(layer, codebook=layer.codebook.astype(np.float16).astype(np.float32))
        assert torch.equal(state[name], rounded.dequantize()), name
    assert np.array_equal(quantized["conv.weight"].codebook, quantize_model(model, bits=6)["conv.weight"].codebook)  # the caller's layers untouched
