"""The context-modelled position coding ("ctx", format version 2): round trips over layer
geometries, gains on structured masks, the choice recorded in the file, the version rules
(version-1 files still read; unknown versions refused in one line) and hostile streams."""

from __future__ import annotations

import dataclasses
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from jointsparse.codecs import FormatError, load, loads, save
from jointsparse.codecs.context import ContextConfig, decode_context_positions, encode_context_positions, layer_geometry
from jointsparse.codecs.entropy import bitmap_entropy_bytes, decode_positions, encode_positions
from jointsparse.codecs.framing import VERSION, pack, pack_text, unpack
from jointsparse.codecs.quantize import QuantizedLayer

FIXTURE_V1 = Path(__file__).parent / "data" / "format_v1.jsz"
FIXTURE_V2 = Path(__file__).parent / "data" / "format_v2.jsz"
FIXTURE_V3 = Path(__file__).parent / "data" / "format_v3.jsz"


def _structured_conv(rng: np.random.Generator, shape=(32, 24, 3, 3), dead=0.4, keep=0.3) -> np.ndarray:
    """A pruned conv's mask as training leaves it: dead input channels, empty kernels, and a
    centre tap kept far more often than the corners."""
    cout, cin, kh, kw = shape
    alive = rng.random(cin) >= dead
    kernels = (rng.random((cout, cin)) < keep) & alive[None, :]
    tap_p = np.full((kh, kw), 0.3)
    tap_p[kh // 2, kw // 2] = 0.9
    taps = rng.random(shape) < tap_p
    mask = taps & kernels[:, :, None, None]
    return np.flatnonzero(mask.ravel())


def _structured_linear(rng: np.random.Generator, shape=(64, 200)) -> np.ndarray:
    """Dead input features and rows of different density."""
    col_p = np.where(rng.random(shape[1]) < 0.5, 0.0, 0.15)
    row_scale = rng.uniform(0.3, 1.7, shape[0])
    mask = rng.random(shape) < np.clip(row_scale[:, None] * col_p[None, :], 0, 1)
    return np.flatnonzero(mask.ravel())


@pytest.mark.parametrize(
    "shape, density",
    [((6, 5, 3, 3), 0.3), ((7, 4, 1, 1), 0.5), ((5, 3, 2, 4), 0.2), ((9, 13), 0.1), ((40,), 0.3), ((3, 4, 5), 0.4),
     ((1, 1, 3, 3), 1.0), ((4, 4, 3, 3), 0.0), ((2, 2), 1.0), ((1,), 1.0), ((64, 3, 11, 11), 0.05)],
)
def test_random_masks_round_trip(shape, density):
    rng = np.random.default_rng(sum(shape))
    numel = int(np.prod(shape))
    positions = np.flatnonzero(rng.random(numel) < density) if density < 1 else np.arange(numel)
    data, config, bound = encode_context_positions(positions, shape)
    decoded = decode_context_positions(data, shape, positions.size)
    assert decoded.dtype == np.int64 and np.array_equal(decoded, positions)
    assert 0 <= bound <= bitmap_entropy_bytes(numel, positions.size) + 1e-6
    if layer_geometry(shape)[2] == 1:
        assert config.state == 0 and not config.tap_columns


def test_structured_masks_code_well_below_the_order0_bound():
    rng = np.random.default_rng(0)
    for shape, positions in [((32, 24, 3, 3), _structured_conv(rng)), ((64, 200), _structured_linear(rng))]:
        data, config, _ = encode_context_positions(positions, shape)
        assert np.array_equal(decode_context_positions(data, shape, positions.size), positions)
        bound = bitmap_entropy_bytes(int(np.prod(shape)), positions.size)
        assert len(data) <= 0.85 * bound, (shape, len(data), bound, config)
        assert config.log2_cols > 0  # the dead columns got their own bucket


def test_encode_positions_keeps_the_smallest_coding():
    rng = np.random.default_rng(1)
    shape = (32, 24, 3, 3)
    positions = _structured_conv(rng)
    numel = int(np.prod(shape))
    coding, stream = encode_positions(positions, numel, "ans", shape=shape)
    assert coding == "ctx"
    for other in ("bitmap", "gaps"):
        assert stream.nbytes < encode_positions(positions, numel, "ans", other)[1].nbytes
    decoded, symbols, _ = decode_positions(stream.data, "ctx", stream.count, numel, positions.size, "ans", shape)
    assert symbols is None and np.array_equal(decoded, positions)
    # without the shape, or with zstd, the order-0 codings only
    assert encode_positions(positions, numel, "ans")[0] in ("bitmap", "gaps")
    assert encode_positions(positions, numel, "zstd", shape=shape)[0] in ("bitmap", "gaps")
    with pytest.raises(ValueError):
        encode_positions(positions, numel, "zstd", "ctx", shape)
    with pytest.raises(FormatError, match="needs the ans coder"):
        decode_positions(stream.data, "ctx", numel, numel, positions.size, "zstd", shape)


def _layer(shape, positions, rng, bits=4, kind="conv") -> QuantizedLayer:
    codebook = np.linspace(-1, 1, (1 << bits) - 1).astype(np.float32)
    indices = rng.integers(0, codebook.size, positions.size).astype(np.uint8)
    return QuantizedLayer(shape=tuple(shape), positions=positions.astype(np.int64), indices=indices, codebook=codebook,
                          quantizer="kmeans", bits=bits, kind=kind)


def test_the_file_records_the_choice_and_decodes(tmp_path):
    rng = np.random.default_rng(2)
    layers = {
        "conv.weight": _layer((32, 24, 3, 3), _structured_conv(rng), rng),
        "fc.weight": _layer((64, 200), _structured_linear(rng), rng, kind="linear"),
        "small.weight": _layer((2, 3), np.array([1, 4]), rng, kind="linear"),
    }
    path = save(tmp_path / "ctx.jsz", layers, raw={"fc.bias": torch.arange(4.0)})
    order0 = save(tmp_path / "order0.jsz", layers, raw={"fc.bias": torch.arange(4.0)}, contexts=False)
    assert path.stat().st_size < order0.stat().st_size
    contents = load(path)
    assert contents.manifest["version"] == VERSION == 5
    codings = {name: entry["positions"]["coding"] for name, entry in ((e["name"], e) for e in contents.manifest["layers"])}
    assert codings["conv.weight"] == "ctx" and codings["fc.weight"] == "ctx"
    assert all(contents.layers[n].positions.coding != "ctx" for n in ("small.weight",))
    for name, layer in layers.items():
        assert torch.equal(contents.layers[name].quantized.dequantize(), layer.dequantize())
    stats = contents.layers["conv.weight"].positions
    assert stats.nbytes < stats.entropy_bytes  # below the order-0 bound of the map
    assert torch.equal(contents.raw["fc.bias"], torch.arange(4.0))


def _fixture_layers() -> dict[str, QuantizedLayer]:
    """The layers tests/data/format_v1.jsz holds (written by the version-1 writer of main at 8724fef)."""
    rng = np.random.default_rng(15)
    conv_positions = np.flatnonzero(rng.random(4 * 3 * 3 * 3) < 0.3)
    fc_positions = np.flatnonzero(rng.random(5 * 6) < 0.5)
    return {
        "conv.weight": QuantizedLayer(shape=(4, 3, 3, 3), positions=conv_positions, indices=rng.integers(0, 7, conv_positions.size).astype(np.uint8),
                                      codebook=np.linspace(-0.5, 0.5, 7).astype(np.float32), quantizer="kmeans", bits=3, kind="conv"),
        "fc.weight": QuantizedLayer(shape=(5, 6), positions=fc_positions, indices=rng.integers(0, 15, fc_positions.size).astype(np.uint8),
                                    codebook=np.linspace(-1, 1, 15).astype(np.float32), quantizer="universal", bits=4, kind="linear",
                                    dither_seed=1234, dither_step=float(np.float32(2 / 14))),
    }


def test_a_version_1_file_still_decodes():
    data = FIXTURE_V1.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 1
    contents = loads(data)
    assert contents.manifest["version"] == 1
    for name, layer in _fixture_layers().items():
        assert torch.equal(contents.layers[name].quantized.dequantize(), layer.dequantize()), name
    assert torch.equal(contents.raw["fc.bias"], torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0]))


def _fixture_v2_layers() -> dict[str, QuantizedLayer]:
    """The layers tests/data/format_v2.jsz holds (written by the version-2 writer of main at a815005,
    with raw ``fc.bias`` as in the version-1 fixture and a Winograd entry for ``ctx.weight``):
    the version-1 fixture's layers plus a structured conv whose positions use the ctx coding."""
    layers = _fixture_layers()
    rng = np.random.default_rng(16)
    positions = _structured_conv(rng)
    layers["ctx.weight"] = QuantizedLayer(shape=(32, 24, 3, 3), positions=positions, indices=rng.integers(0, 31, positions.size).astype(np.uint8),
                                          codebook=np.linspace(-2, 2, 31).astype(np.float32), quantizer="kmeans", bits=5, kind="conv")
    return layers


def test_a_version_2_file_still_decodes():
    data = FIXTURE_V2.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 2
    contents = loads(data)
    assert contents.manifest["version"] == 2
    assert contents.layers["ctx.weight"].positions.coding == "ctx"  # the version-2 coding and
    assert all(isinstance(e["codebook"], str) for e in unpack(data)[0]["layers"])  # base64 codebooks
    for name, layer in _fixture_v2_layers().items():
        assert torch.equal(contents.layers[name].quantized.dequantize(), layer.dequantize()), name
    assert torch.equal(contents.raw["fc.bias"], torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0]))
    assert contents.layers["ctx.weight"].winograd == {"m": 2, "r": 3, "threshold": 0.25, "sparsity": 0.5}


def test_a_version_3_file_still_decodes():
    """tests/data/format_v3.jsz: the version-2 fixture's layers, written by the version-3 writer of
    main at b7d65c2 (float32 codebooks in section 0, no codebook_dtype in the manifest)."""
    data = FIXTURE_V3.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 3
    assert "codebook_dtype" not in unpack(data)[0]
    contents = loads(data)
    assert contents.manifest["version"] == 3
    for name, layer in _fixture_v2_layers().items():
        assert torch.equal(contents.layers[name].quantized.dequantize(), layer.dequantize()), name
    assert torch.equal(contents.raw["fc.bias"], torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0]))


def test_float16_codebooks_halve_the_section_and_decode_to_the_rounded_values(tmp_path):
    layers = _fixture_v2_layers()
    exact = save(tmp_path / "exact.jsz", layers)
    half = save(tmp_path / "half.jsz", layers, codebook_dtype="float16")
    values = sum(len(layer.codebook) for layer in layers.values())
    manifest, sections = unpack(half.read_bytes())
    assert manifest["version"] == VERSION and manifest["codebook_dtype"] == "float16"
    assert len(sections[0]) <= 2 * values < len(unpack(exact.read_bytes())[1][0]) + 2 * values
    assert half.stat().st_size < exact.stat().st_size
    contents = load(half)
    for name, layer in layers.items():
        rounded = layer.codebook.astype(np.float16).astype(np.float32)
        assert np.array_equal(contents.layers[name].quantized.codebook, rounded), name
    assert load(exact).manifest["codebook_dtype"] == "float32"


def test_codebook_dtype_rules(tmp_path):
    layers = _fixture_v2_layers()
    wide = dict(layers, **{"conv.weight": dataclasses.replace(layers["conv.weight"], codebook=np.linspace(-1e5, 0.5, 7, dtype=np.float32))})
    with pytest.raises(ValueError, match=r"conv.weight: a codebook value outside float16's range"):
        save(tmp_path / "a.jsz", wide, codebook_dtype="float16")
    close = dict(layers, **{"conv.weight": dataclasses.replace(layers["conv.weight"], codebook=np.array([1.0, 1.0001, 2, 3, 4, 5, 6], np.float32))})
    merged = load(save(tmp_path / "close.jsz", close, codebook_dtype="float16")).layers["conv.weight"].quantized.codebook
    assert merged[0] == merged[1] == 1.0  # closer than float16's step: one value, as close to both as the rounding allows
    with pytest.raises(ValueError, match="codebook_dtype must be one of float32, float16"):
        save(tmp_path / "a.jsz", layers, codebook_dtype="bfloat16")
    assert not (tmp_path / "a.jsz").exists()
    # a reader: version 4 states the dtype, and only a known one
    manifest, sections = unpack(save(tmp_path / "b.jsz", layers).read_bytes())
    for change, message in (({"codebook_dtype": "float8"}, "unknown codebook_dtype 'float8'"), ({"codebook_dtype": None}, "field 'codebook_dtype' has the wrong type")):
        with pytest.raises(FormatError, match=message):
            loads(pack({**manifest, **change}, [bytes(s) for s in sections]))
    del manifest["codebook_dtype"]
    with pytest.raises(FormatError, match="missing field 'codebook_dtype'"):
        loads(pack(manifest, [bytes(s) for s in sections]))


def test_version_rules():
    data = FIXTURE_V1.read_bytes()
    manifest, sections = unpack(data)
    for version in (0, 6, 7, 65535):
        with pytest.raises(FormatError, match=f"^unknown .jsz version {version} \\(this reader knows versions 1, 2, 3, 4 and 5\\)$"):
            loads(pack_text(b"{}", [], version=version))
    # the header and the manifest must agree
    import json

    text = json.dumps({**manifest, "version": 2}, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(FormatError, match="manifest: version 2 differs from the header's 1"):
        loads(pack_text(text, [bytes(s) for s in sections], version=1))
    # a version-1 file may not use the version-2 coding
    layer = manifest["layers"][0]
    layer["positions"]["coding"] = "ctx"
    layer["positions"]["symbols"] = layer["parameter_count"]
    with pytest.raises(FormatError, match="unknown position coding 'ctx' \\(in a version-1 file\\)"):
        loads(pack(manifest, [bytes(s) for s in sections]))


def test_ctx_needs_the_ans_coder_in_the_manifest(tmp_path):
    rng = np.random.default_rng(3)
    path = save(tmp_path / "a.jsz", {"conv.weight": _layer((32, 24, 3, 3), _structured_conv(rng), rng)})
    manifest, sections = unpack(path.read_bytes())
    assert manifest["layers"][0]["positions"]["coding"] == "ctx"
    manifest["layers"][0]["positions"]["coder"] = "zstd"
    with pytest.raises(FormatError, match="ctx position coding needs the ans coder"):
        loads(pack(manifest, [bytes(s) for s in sections]))
    manifest["layers"][0]["positions"]["coder"] = "ans"
    manifest["layers"][0]["positions"]["symbols"] = 32 * 24 * 9  # version 3: implied, so not stated
    with pytest.raises(FormatError, match="positions: field 'symbols' is not part of a version-3 record"):
        loads(pack(manifest, [bytes(s) for s in sections]))


def test_the_header_is_checked():
    with pytest.raises(FormatError, match="shorter than its 2-byte header"):
        decode_context_positions(b"\x00", (4, 4), 0)
    for header in (b"\x05\x00", b"\x50\x00", b"\x00\x03", b"\x00\x08"):
        with pytest.raises(FormatError, match="invalid header"):
            decode_context_positions(header, (4, 4, 3, 3), 1)
    with pytest.raises(FormatError, match="without kernel taps"):
        decode_context_positions(b"\x00\x01", (4, 4), 1)
    with pytest.raises(FormatError, match="empty layer"):
        decode_context_positions(b"\x00\x00", (0, 4), 0)
    with pytest.raises(FormatError, match="1025 taps"):  # the tap loop is bounded
        decode_context_positions(b"\x00\x00", (1, 1, 1025), 0)
    assert encode_positions(np.array([3]), 1025, "ans", shape=(1, 1, 1025))[0] != "ctx"
    assert ContextConfig.parse(ContextConfig(2, 3, 2, True).header(), 9) == ContextConfig(2, 3, 2, True)


def test_wrong_counts_and_hostile_streams_raise_format_error_only():
    rng = np.random.default_rng(4)
    cases = [((32, 24, 3, 3), _structured_conv(rng)), ((64, 200), _structured_linear(rng)), ((6, 5, 3, 3), np.array([0, 7, 100, 269]))]
    mutator = random.Random(15)
    for shape, positions in cases:
        data, _, _ = encode_context_positions(positions, shape)
        for nnz in (positions.size - 1, positions.size + 1, 0):
            with pytest.raises(FormatError):
                decode_context_positions(data, shape, nnz)
        with pytest.raises(FormatError):  # truncated to a word boundary: the coder runs dry or counts break
            decode_context_positions(data[: 2 + (len(data) - 2) // 8 * 4], shape, positions.size)
        with pytest.raises(FormatError, match="multiple of 4"):
            decode_context_positions(data[:-1], shape, positions.size)
        with pytest.raises(FormatError):
            decode_context_positions(data[:2] + b"\x01\x00\x00\x00" + data[2:], shape, positions.size)
        with pytest.raises(FormatError):  # an extra word changes what the stack coder decodes first
            decode_context_positions(data + b"\x01\x00\x00\x00", shape, positions.size)
        outcomes = set()
        for _ in range(150):
            mutated = bytearray(data)
            how = mutator.choice(["flip", "truncate", "random", "header"])
            if how == "flip":
                for _ in range(mutator.randint(1, 3)):
                    spot = mutator.randrange(len(mutated))
                    mutated[spot] ^= 1 << mutator.randrange(8)
            elif how == "truncate":
                del mutated[2 + 4 * mutator.randrange(max(1, (len(mutated) - 2) // 4)):]
            elif how == "random":
                mutated = bytearray(mutated[:2]) + bytes(mutator.getrandbits(8) for _ in range(4 * mutator.randint(0, 40)))
            else:
                mutated[0], mutated[1] = mutator.randrange(256), mutator.randrange(256)
            try:
                decoded = decode_context_positions(bytes(mutated), shape, positions.size)
            except FormatError:
                outcomes.add("FormatError")
            else:  # a mutation may decode to another valid map: then it is a valid one
                outcomes.add("ok")
                assert decoded.size == positions.size and np.all(np.diff(decoded) > 0)
                assert decoded[0] >= 0 and decoded[-1] < int(np.prod(shape))
        assert "FormatError" in outcomes


def test_version_2_codebooks_are_base64_float32():
    import base64
    import json

    layer = _fixture_layers()["conv.weight"]
    manifest, sections = unpack(FIXTURE_V2.read_bytes())
    text = manifest["layers"][0]["codebook"]
    assert isinstance(text, str) and np.array_equal(np.frombuffer(base64.b64decode(text), "<f4"), layer.codebook)
    assert np.array_equal(loads(FIXTURE_V2.read_bytes()).layers["conv.weight"].quantized.codebook, layer.codebook)
    sections = [bytes(s) for s in sections]

    def refused(codebook, match, version=2):
        edited = json.loads(json.dumps(manifest))
        edited["layers"][0]["codebook"] = codebook
        edited["version"] = version
        with pytest.raises(FormatError, match=match):
            loads(pack(edited, sections))

    refused(text, "base64 codebook in a version-1 file", version=1)
    refused(text[:-4] + "!!!!", "not valid base64")
    refused(base64.b64encode(b"\x00" * 6).decode(), "not whole float32 values")
    refused(base64.b64encode(np.array([1.0, np.nan], "<f4").tobytes()).decode(), "finite float32")
    refused(base64.b64encode(np.zeros(8, "<f4").tobytes()).decode(), "exceeds 2\\^3 - 1")
    refused("A" * 10_000, "characters exceeds")
    # the version-1 list form is still read in version 2
    edited = json.loads(json.dumps(manifest))
    edited["layers"][0]["codebook"] = [float(v) for v in layer.codebook]
    assert np.array_equal(loads(pack(edited, sections)).layers["conv.weight"].quantized.codebook, layer.codebook)


def test_a_version_2_file_may_not_use_the_adaptive_ans_model():
    from jointsparse.codecs.entropy import encode_symbols

    manifest, sections = unpack(FIXTURE_V2.read_bytes())
    sections = [bytes(s) for s in sections]
    entry = next(e for e in manifest["layers"] if e["name"] == "ctx.weight")
    nnz = entry["nnz"]
    skewed = np.minimum(np.random.default_rng(0).geometric(0.3, nnz) - 1, 30)  # other, skewed indices
    stream = encode_symbols(skewed, 31, "ans")
    assert stream.data[0] == 2  # the version-3 writer's choice for them: the adaptive model
    sections[entry["indices"]["section"]] = stream.data
    with pytest.raises(FormatError, match="layer 'ctx.weight': unknown ANS model kind 2 \\(adaptive models are format version 3\\)"):
        loads(pack(manifest, sections))  # re-framed as version 2, every checksum right
