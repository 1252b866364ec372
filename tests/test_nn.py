import importlib.util
import io
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from jointsparse.nn import (
    SparseConv2d,
    SparseLinear,
    WinogradConv2d,
    EMBEDDING_BAG_MIN_COLUMNS,
    LINEAR_SPARSE_THRESHOLD,
    block_diagonal_csr,
    csr_matmul,
    im2col,
    winograd_form_problem,
)
from jointsparse.transforms import (
    extract_tiles,
    filter_to_winograd,
    has_winograd_form,
    input_to_winograd,
    output_from_winograd,
    untile,
)

REPO = Path(__file__).resolve().parents[1]


def assert_rel_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    """Max abs error within rtol of the reference's largest magnitude (float32 vs float64 ref)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    got, want = got.detach().double(), want.detach().double()
    error = float((got - want).abs().max()) if got.numel() else 0.0
    scale = max(float(want.abs().max()) if want.numel() else 0.0, 1e-3)
    assert error <= rtol * scale, f"max error {error:.3e} > {rtol} * {scale:.3e}"


def winograd_reference(x, winograd_weight, bias, m, r, padding, groups):
    """Dense Winograd correlation in float64 with given (possibly pruned) Winograd weights."""
    per_group_in = x.shape[1] // groups
    per_group_out = winograd_weight.shape[0] // groups
    outputs = []
    for g in range(groups):
        xs = x[:, g * per_group_in : (g + 1) * per_group_in].double()
        ws = winograd_weight[g * per_group_out : (g + 1) * per_group_out].double()
        tiles, out_size = extract_tiles(xs, m, r, padding)
        products = torch.einsum("nchwij,ocij->nohwij", input_to_winograd(tiles, m, r), ws)
        outputs.append(untile(output_from_winograd(products, m, r), out_size))
    out = torch.cat(outputs, 1)
    return out if bias is None else out + bias.double().view(1, -1, 1, 1)


def random_mask(shape, keep: float, seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < keep


@st.composite
def winograd_case(draw):
    r = draw(st.sampled_from([3, 5]))
    padding = draw(st.integers(0, 2))
    return dict(
        batch=draw(st.integers(1, 3)),
        groups=draw(st.sampled_from([1, 2])),
        cin_per_group=draw(st.integers(1, 3)),
        cout_per_group=draw(st.integers(1, 3)),
        height=draw(st.integers(max(1, r - 2 * padding), 15)),
        width=draw(st.integers(max(1, r - 2 * padding), 15)),
        r=r,
        m=draw(st.sampled_from([2, 4])),
        padding=padding,
        bias=draw(st.booleans()),
        sparse=draw(st.sampled_from([None, True, False])),
        keep=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        seed=draw(st.integers(0, 2**16)),
    )


def make_conv(case) -> nn.Conv2d:
    torch.manual_seed(case["seed"])
    g = case["groups"]
    return nn.Conv2d(
        case["cin_per_group"] * g, case["cout_per_group"] * g, case["r"], padding=case["padding"], groups=g, bias=case["bias"]
    )


def case_input(case, channels: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    return torch.randn(case["batch"], channels, case["height"], case["width"], generator=gen)


@settings(max_examples=60, deadline=None)
@given(winograd_case())
def test_winograd_without_mask_matches_conv2d(case):
    conv = make_conv(case)
    layer = WinogradConv2d.from_conv(conv, m=case["m"], sparse=case["sparse"]).eval()
    x = case_input(case, conv.in_channels)
    want = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=case["padding"], groups=conv.groups)
    with torch.no_grad():
        assert_rel_close(layer(x), want)


@settings(max_examples=60, deadline=None)
@given(winograd_case())
def test_winograd_with_mask_matches_masked_dense_winograd(case):
    conv = make_conv(case)
    t = case["m"] + case["r"] - 1
    mask = random_mask((conv.out_channels, case["cin_per_group"], t, t), case["keep"], case["seed"])
    layer = WinogradConv2d.from_conv(conv, m=case["m"], winograd_mask=mask, sparse=case["sparse"])
    masked = filter_to_winograd(conv.weight.detach().double(), case["m"]) * mask
    x = case_input(case, conv.in_channels)
    want = winograd_reference(x, masked, conv.bias, case["m"], case["r"], case["padding"], conv.groups)
    with torch.no_grad():
        assert_rel_close(layer(x), want)
    # Masked-out weights are exactly zero, and the density counts what is left.
    assert torch.all(layer.winograd_filters[~mask] == 0)
    assert layer.winograd_density == pytest.approx(float(torch.count_nonzero(masked.float())) / mask.numel())


@pytest.mark.parametrize(
    "cin, cout, r, m, padding, groups, size",
    [
        (1, 1, 3, 2, 0, 1, (3, 3)),  # a single tile, single channel
        (1, 1, 5, 4, 2, 1, (1, 1)),  # 1x1 input, all padding
        (4, 6, 3, 2, 1, 2, (13, 13)),  # odd size, groups
        (6, 4, 5, 2, 2, 2, (27, 9)),  # AlexNet conv2 geometry, non-square input
        (3, 5, 3, 4, 2, 1, (7, 11)),  # padding larger than (r-1)/2
        (2, 2, 3, 4, 0, 1, (15, 4)),
    ],
)
@pytest.mark.parametrize("sparse", [True, False])
def test_winograd_awkward_shapes(cin, cout, r, m, padding, groups, size, sparse):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, r, padding=padding, groups=groups)
    x = torch.randn(1, cin, *size)
    layer = WinogradConv2d.from_conv(conv, m=m, sparse=sparse)
    assert layer.uses_sparse is sparse
    with torch.no_grad():
        assert_rel_close(layer(x), F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=padding, groups=groups))


def test_winograd_layout_and_decoder_constructor():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    layer = WinogradConv2d.from_conv(conv, m=2)
    w = filter_to_winograd(conv.weight.detach().double(), 2).float()
    assert layer.winograd_weight.shape == (16, 6, 2)
    assert torch.allclose(layer.winograd_filters, w, atol=1e-6)
    assert [name for name, _ in layer.named_parameters()] == []  # inference module: buffers only
    decoded = WinogradConv2d.from_winograd_weights(w, conv.bias, m=2, r=3, padding=1, groups=2)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert torch.allclose(decoded(x), layer(x), atol=1e-6)
    text = repr(layer)
    assert "F(2x2, 3x3)" in text and "groups=2" in text and "winograd_density=1.0000" in text


def test_all_weights_pruned_gives_bias():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = WinogradConv2d.from_conv(conv, winograd_mask=torch.zeros(4, 3, 4, 4, dtype=torch.bool))
    assert layer.winograd_density == 0.0 and layer.uses_sparse
    out = layer(torch.randn(2, 3, 6, 5))
    assert torch.equal(out, conv.bias.detach().view(1, -1, 1, 1).expand(2, 4, 6, 5))


def test_sparse_choice_follows_density_and_override():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    t = 4
    dense = WinogradConv2d.from_conv(conv)
    sparse = WinogradConv2d.from_conv(conv, winograd_mask=random_mask((8, 8, t, t), 0.05, 0))
    assert not dense.uses_sparse and dense._csr is None
    assert sparse.uses_sparse and sparse._csr is not None
    assert sparse._csr._nnz() == torch.count_nonzero(sparse.winograd_weight)
    forced = WinogradConv2d.from_conv(conv, sparse=True)
    assert forced.uses_sparse and forced.winograd_density == 1.0
    with pytest.raises(TypeError, match="sparse must be"):
        WinogradConv2d.from_conv(conv, sparse="yes")


@pytest.mark.parametrize(
    "conv, reason",
    [
        (nn.Conv2d(2, 2, 3, stride=2), "stride"),
        (nn.Conv2d(2, 2, 3, dilation=2), "dilation"),
        (nn.Conv2d(2, 2, 1), "1x1"),
        (nn.Conv2d(2, 2, (3, 5)), "not square"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding mode"),
        (nn.Conv2d(2, 2, 3, padding=(1, 2)), "symmetric"),
        (nn.Linear(3, 3), "not an nn.Conv2d"),
    ],
)
def test_no_winograd_form_raises_value_error_with_reason(conv, reason):
    assert not has_winograd_form(conv)
    assert reason in winograd_form_problem(conv)
    with pytest.raises(ValueError, match=f"no Winograd form.*{reason}"):
        WinogradConv2d.from_conv(conv)


def test_winograd_bad_inputs():
    conv = nn.Conv2d(2, 4, 3)
    with pytest.raises(ValueError, match="winograd_mask must have shape"):
        WinogradConv2d.from_conv(conv, winograd_mask=torch.ones(4, 2, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        WinogradConv2d.from_conv(conv, winograd_mask=torch.ones(4, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\[Cout, Cin/groups, 6, 6\]"):
        WinogradConv2d.from_winograd_weights(torch.zeros(4, 2, 4, 4), None, m=4, r=3)
    with pytest.raises(ValueError, match="bias must have shape"):
        WinogradConv2d.from_winograd_weights(torch.zeros(4, 2, 4, 4), torch.zeros(3), m=2, r=3)
    with pytest.raises(ValueError, match="not divisible by groups"):
        WinogradConv2d.from_winograd_weights(torch.zeros(3, 2, 4, 4), None, m=2, r=3, groups=2)
    with pytest.raises(ValueError, match="m >= 1"):
        WinogradConv2d.from_conv(conv, m=0)
    layer = WinogradConv2d.from_conv(conv)
    with pytest.raises(ValueError, match=r"expected input \[N, 2, H, W\]"):
        layer(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="smaller than"):
        layer(torch.randn(1, 2, 2, 8))
    with pytest.raises(TypeError, match="float64 input"):
        layer(torch.randn(1, 2, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("sparse", [True, False])
def test_state_dict_round_trip_rebuilds_the_sparse_matrix(sparse):
    torch.manual_seed(2)
    source = WinogradConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1), winograd_mask=random_mask((4, 3, 4, 4), 0.3, 1), sparse=sparse)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    assert set(source.state_dict()) == {"winograd_weight", "bias"}
    target = WinogradConv2d.from_winograd_weights(torch.zeros(4, 3, 4, 4), torch.zeros(4), m=2, r=3, padding=1, sparse=sparse)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 3, 7, 7)
    assert target.winograd_density == pytest.approx(source.winograd_density)
    assert torch.equal(target(x), source(x))


def test_dtype_conversion_moves_the_sparse_matrix():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = WinogradConv2d.from_conv(conv, sparse=True).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    out = layer(x)
    assert out.dtype == torch.float64 and layer._csr.dtype == torch.float64
    # Exact to float64 rounding against the layer's own (float32-born) Winograd weights.
    want = winograd_reference(x, layer.winograd_filters, layer.bias, 2, 3, 1, 1)
    assert_rel_close(out, want, rtol=1e-12)


def test_runs_with_autograd_enabled_and_in_inference_mode():
    layer = WinogradConv2d.from_conv(nn.Conv2d(2, 3, 3), sparse=True)
    x = torch.randn(1, 2, 5, 5)
    with torch.inference_mode():
        a = layer(x)
    b = layer(x)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- spatial layers


@st.composite
def spatial_case(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    need_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    need_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    return dict(
        kernel=(kh, kw),
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=draw(st.sampled_from([1, 2])),
        cin_per_group=draw(st.integers(1, 3)),
        cout_per_group=draw(st.integers(1, 3)),
        batch=draw(st.integers(1, 3)),
        height=draw(st.integers(need_h, 15)),
        width=draw(st.integers(need_w, 15)),
        bias=draw(st.booleans()),
        keep=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        sparse=draw(st.sampled_from([None, True, False])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=80, deadline=None)
@given(spatial_case())
def test_sparse_conv_matches_conv2d(case):
    torch.manual_seed(case["seed"])
    g = case["groups"]
    conv = nn.Conv2d(
        case["cin_per_group"] * g,
        case["cout_per_group"] * g,
        case["kernel"],
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=g,
        bias=case["bias"],
    )
    with torch.no_grad():
        conv.weight.mul_(random_mask(conv.weight.shape, case["keep"], case["seed"]))
    layer = SparseConv2d.from_conv(conv, sparse=case["sparse"])
    x = case_input(case, conv.in_channels)
    want = F.conv2d(
        x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), case["stride"], case["padding"], case["dilation"], g
    )
    with torch.no_grad():
        assert_rel_close(layer(x), want)
    assert layer.density == pytest.approx(float(torch.count_nonzero(conv.weight)) / conv.weight.numel())


@pytest.mark.parametrize(
    "conv, size",
    [
        (nn.Conv2d(3, 8, 11, stride=4), (35, 39)),  # AlexNet conv1 geometry
        (nn.Conv2d(6, 4, 1), (5, 3)),  # 1x1
        (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=2, groups=2, padding_mode="reflect"), (10, 9)),
        (nn.Conv2d(2, 3, 3, padding=2, padding_mode="circular"), (6, 7)),
        (nn.Conv2d(2, 3, (4, 3), padding="same", dilation=(1, 2)), (7, 8)),
        (nn.Conv2d(2, 3, 3, padding="valid", bias=False), (4, 4)),
    ],
)
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own reference conv
def test_sparse_conv_awkward_layers(conv, size, sparse):
    torch.manual_seed(4)
    x = torch.randn(2, conv.in_channels, *size)
    layer = SparseConv2d.from_conv(conv, sparse=sparse)
    with torch.no_grad():
        assert_rel_close(layer(x), conv(x))
    assert "density=" in repr(layer)


def test_sparse_conv_bad_inputs():
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_conv(nn.Linear(2, 2))
    layer = SparseConv2d.from_conv(nn.Conv2d(2, 3, 5), sparse=True)
    with pytest.raises(ValueError, match="smaller than"):
        layer(torch.randn(1, 2, 4, 9))
    with pytest.raises(ValueError, match=r"expected input \[N, 2, H, W\]"):
        layer(torch.randn(2, 5, 5))


def test_im2col_matches_unfold():
    x = torch.randn(2, 3, 9, 8)
    cols = im2col(x, (3, 2), (2, 1), (1, 2))
    unfolded = F.unfold(x, (3, 2), dilation=(1, 2), stride=(2, 1))  # [N, C*k*k, L]
    assert torch.equal(cols, unfolded.transpose(0, 1).reshape(cols.shape))


@pytest.mark.parametrize("columns", [1, 5, EMBEDDING_BAG_MIN_COLUMNS, 40])  # both kernels
@pytest.mark.parametrize("keep", [0.0, 0.3])  # 0.3 leaves some rows empty
def test_csr_matmul_both_kernels(columns, keep):
    blocks = torch.randn(2, 6, 4) * random_mask((2, 6, 4), keep, 3)
    x = torch.randn(8, columns)
    got = csr_matmul(block_diagonal_csr(blocks), x)
    assert_rel_close(got, torch.block_diag(*blocks).double() @ x.double(), rtol=1e-6)


def test_block_diagonal_csr_matches_dense_block_diag():
    blocks = torch.randn(3, 4, 5) * random_mask((3, 4, 5), 0.4, 0)
    csr = block_diagonal_csr(blocks)
    assert csr.layout == torch.sparse_csr and csr.crow_indices().dtype == torch.int32
    assert torch.equal(csr.to_dense(), torch.block_diag(*blocks))


@pytest.mark.parametrize("sparse", [True, False, None])
@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 4, 7)])
def test_sparse_linear_matches_linear(sparse, shape):
    torch.manual_seed(5)
    linear = nn.Linear(7, 5)
    with torch.no_grad():
        linear.weight.mul_(random_mask(linear.weight.shape, 0.2, 1))
    layer = SparseLinear.from_linear(linear, sparse=sparse)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert_rel_close(layer(x), F.linear(x.double(), linear.weight.double(), linear.bias.double()))
    assert layer.uses_sparse is (sparse if sparse is not None else layer.density <= LINEAR_SPARSE_THRESHOLD)


def test_sparse_linear_bad_inputs_and_no_bias():
    linear = nn.Linear(4, 3, bias=False)
    layer = SparseLinear.from_linear(linear, sparse=True)
    x = torch.randn(2, 4)
    assert_rel_close(layer(x), linear(x))
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 4\]"):
        layer(torch.randn(2, 5))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv2d(1, 1, 1))


# ----------------------------------------------------------------------------- benchmark smoke


def test_bench_conv_quick_smoke(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_conv", REPO / "experiments" / "bench_conv.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_conv", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.md"
    try:
        table = bench.main(["--quick", "--shapes", "tiny", "--repeats", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert out.read_text() == table
    assert "| tiny 8->8 3x3 g1 8px | 1 |" in table and "winograd 0.1" in table and "torch " + torch.__version__ in table
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "nope"])


def test_compiled_kernels_built_where_required():
    """CI sets JOINTSPARSE_REQUIRE_COMPILED=1: there, a failed build of the C extension is an
    error instead of silently skipping every compiled-kernel test."""
    from jointsparse.nn import _compiled

    if os.environ.get("JOINTSPARSE_REQUIRE_COMPILED") != "1":
        pytest.skip("JOINTSPARSE_REQUIRE_COMPILED is not set")
    assert _compiled.available(), _compiled.UNAVAILABLE_REASON
    assert _compiled.features()["simd"] in ("avx+fma", "portable")
