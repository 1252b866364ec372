"""Context-coded codebook indices (jointsparse/codecs/index_context.py): round trips on awkward
layers, both interleaving paths, the choice in the layer record, format version 5's rules and
hostile streams."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from jointsparse.codecs import FormatError, QuantizedLayer, load, loads, read_manifest, save
from jointsparse.codecs import index_context
from jointsparse.codecs.entropy import encode_symbols
from jointsparse.codecs.framing import pack, unpack
from jointsparse.codecs.report import report
from jointsparse.codecs.varint import get_varint
from jointsparse.codecs.index_context import decode_context_indices, encode_context_indices, first_in_row

FIXTURE_V4 = Path(__file__).parent / "data" / "format_v4.jsz"


def _walk_indices(positions: np.ndarray, shape: tuple[int, ...], alphabet: int, rng: np.random.Generator) -> np.ndarray:
    """Indices that wander by small steps along each row: each one says much about the next."""
    steps = rng.integers(-1, 2, positions.size)
    steps[first_in_row(positions, shape)] = 0
    start = rng.integers(0, alphabet, positions.size)
    walk = np.empty(positions.size, dtype=np.int64)
    for i, first in enumerate(first_in_row(positions, shape)):
        walk[i] = start[i] if first else np.clip(walk[i - 1] + steps[i], 0, alphabet - 1)
    return walk.astype(np.uint8)


def _layer(shape: tuple[int, ...], density: float, alphabet: int, seed: int, walk: bool = True) -> QuantizedLayer:
    rng = np.random.default_rng(seed)
    numel = int(np.prod(shape))
    positions = np.flatnonzero(rng.random(numel) < density)
    if positions.size == 0:
        positions = np.array([numel - 1])
    indices = _walk_indices(positions, shape, alphabet, rng) if walk else rng.integers(0, alphabet, positions.size).astype(np.uint8)
    return QuantizedLayer(shape=shape, positions=positions, indices=indices, codebook=np.linspace(-1, 1, alphabet).astype(np.float32),
                          quantizer="kmeans", bits=max(1, int(alphabet).bit_length()), kind="conv" if len(shape) == 4 else "linear")


@pytest.mark.parametrize(
    "shape, density, alphabet",
    [
        ((64, 300), 0.2, 31),  # a linear layer
        ((16, 5, 3, 3), 0.5, 7),  # a conv
        ((1, 1, 3, 3), 1.0, 2),  # one channel, a binary codebook
        ((7, 1), 0.6, 3),  # rows of at most one non-zero: every index is first in its row
        ((3, 1000), 0.9, 255),  # the largest codebook 8 bits give
        ((50, 50), 0.0, 5),  # one non-zero in the whole layer (the fixture's fallback)
    ],
)
@pytest.mark.parametrize("compiled", [True, False])
def test_round_trip_on_awkward_layers(shape, density, alphabet, compiled, monkeypatch):
    if compiled and index_context._interleave is None:
        pytest.skip("the C helper jointsparse.codecs._interleave is not built")
    if not compiled:
        monkeypatch.setattr(index_context, "_interleave", None)
    layer = _layer(shape, density, alphabet, seed=alphabet)
    data, header, bound = encode_context_indices(layer.indices, layer.positions, shape, alphabet)
    decoded, decoded_header = decode_context_indices(data, layer.positions, shape, layer.nnz, alphabet)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, layer.indices)
    assert decoded_header == header and 1 <= get_varint(data, 0)[0] <= alphabet and 0 <= bound <= len(data)


def test_correlated_indices_code_below_the_order_0_stream():
    layer = _layer((128, 512), 0.2, 31, seed=0)
    order0 = encode_symbols(layer.indices, 31, "ans")
    data, _, bound = encode_context_indices(layer.indices, layer.positions, layer.shape, 31)
    assert len(data) < 0.75 * order0.nbytes  # a +-1 walk: about log2(3) of log2(31) bits an index
    assert data[0] == 31  # so many indices: every previous index its own context
    # above the context bound by about what 32 adaptive models of 31 letters learn, 15 log2(n) bits each
    learning = 32 * 15 * np.log2(layer.nnz / 32) / 8
    assert bound < len(data) < bound + 1.2 * learning + 64


def test_contexts_are_per_row():
    """An index's context is the index before it in its own row, never the last of the row above."""
    shape = (2, 4)
    positions = np.array([1, 2, 4, 7])
    assert first_in_row(positions, shape).tolist() == [True, False, True, False]
    assert first_in_row(np.array([0, 3, 4, 5]), (3, 2)).tolist() == [True, True, True, False]
    assert first_in_row(np.array([0, 17, 18, 35]), (2, 2, 3, 3)).tolist() == [True, False, True, False]  # a row: 2 x 3 x 3


def test_the_record_keeps_ctx_only_where_it_wins(tmp_path):
    layers = {"walk.weight": _layer((128, 512), 0.2, 31, seed=1), "iid.weight": _layer((128, 512), 0.2, 31, seed=2, walk=False)}
    path = save(tmp_path / "ctx.jsz", layers, raw={"walk.bias": torch.arange(3.0)})
    order0 = save(tmp_path / "order0.jsz", layers, raw={"walk.bias": torch.arange(3.0)}, contexts=False)
    manifest = unpack(path.read_bytes())[0]
    assert manifest["version"] == 5
    records = {entry["name"]: entry["indices"] for entry in manifest["layers"]}
    assert records == {"walk.weight": {"coder": "ans", "coding": "ctx"}, "iid.weight": {"coder": "ans"}}
    assert all("coding" not in entry["indices"] for entry in unpack(order0.read_bytes())[0]["layers"])
    assert path.stat().st_size < order0.stat().st_size
    contents = load(path)
    for name, layer in layers.items():
        assert torch.equal(contents.layers[name].quantized.dequantize(), layer.dequantize()), name
    assert contents.layers["walk.weight"].indices.coding == "ctx" and contents.layers["iid.weight"].indices.coding is None
    assert contents.layers["walk.weight"].indices.nbytes < contents.layers["walk.weight"].indices.entropy_bytes  # below order 0
    assert load(save(tmp_path / "zstd.jsz", layers, coder="zstd")).layers["walk.weight"].indices.coding is None
    codings = {row["name"]: row["index_coding"] for row in report(path)["layers"]}  # what info shows
    assert codings == {"walk.weight": "ctx", "iid.weight": "ord0"}


def test_a_version_4_file_still_decodes():
    """tests/data/format_v4.jsz: the version-2 fixture's layers with float16 codebooks, written by
    the version-4 writer of main at d56f174."""
    from test_context import _fixture_v2_layers

    data = FIXTURE_V4.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 4
    contents = loads(data)
    assert contents.manifest["version"] == 4 and contents.manifest["codebook_dtype"] == "float16"
    for name, layer in _fixture_v2_layers().items():
        rounded = layer.codebook.astype(np.float16).astype(np.float32)
        assert np.array_equal(contents.layers[name].quantized.indices, layer.indices), name
        assert np.array_equal(contents.layers[name].quantized.codebook, rounded), name
    assert torch.equal(contents.raw["fc.bias"], torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0]))


def _ctx_file(tmp_path) -> tuple[dict, list[bytes]]:
    path = save(tmp_path / "ctx.jsz", {"walk.weight": _layer((64, 256), 0.3, 15, seed=3)})
    manifest, sections = unpack(path.read_bytes())
    assert manifest["layers"][0]["indices"] == {"coder": "ans", "coding": "ctx"}
    return manifest, [bytes(s) for s in sections]


@pytest.mark.parametrize(
    "version, indices, message",
    [
        (4, {"coder": "ans", "coding": "ctx"}, r"unknown index coding 'ctx' \(in a version-4 file; ctx is version 5\)"),
        (5, {"coder": "ans", "coding": "bitmap"}, r"unknown index coding 'bitmap'"),
        (5, {"coder": "zstd", "coding": "ctx"}, r"ctx index coding needs the ans coder"),
        (5, {"coder": "ans", "coding": None}, r"unknown index coding None"),  # absent means order-0; null is not a second spelling
        (5, {"coder": "ans", "coding": "ctx", "codebook": 1}, r"ctx index coding needs 2\.\.255 codebook entries"),
    ],
)
def test_manifest_rules(tmp_path, version, indices, message):
    """Refused from the manifest alone (read_manifest, as info reads it), before any stream."""
    manifest, sections = _ctx_file(tmp_path)
    edited = json.loads(json.dumps(manifest))
    edited["version"], edited["layers"][0]["indices"] = version, {k: v for k, v in indices.items() if k != "codebook"}
    if "codebook" in indices:
        edited["layers"][0]["codebook"] = indices["codebook"]
        sections[0] = sections[0][:4]  # the codebook section holds that one float32 value
    path = tmp_path / "edited.jsz"
    path.write_bytes(pack(edited, sections))
    with pytest.raises(FormatError, match=message):
        read_manifest(path)


def _decode(data: bytes, layer: QuantizedLayer, alphabet: int = 15):
    return decode_context_indices(data, layer.positions, layer.shape, layer.nnz, alphabet)


def test_hostile_streams_raise_format_errors():
    layer = _layer((64, 256), 0.3, 15, seed=3)
    data, header, _ = encode_context_indices(layer.indices, layer.positions, layer.shape, 15)
    cases = {
        "buckets 0": b"\x00" + data[1:],
        "more buckets than entries": b"\x10" + data[1:],
        "truncated header": data[:1],
        "an over-long varint": data[:1] + b"\xff" * 11,
        "counts above nnz": data[:1] + b"\xff\xff\xff\x7f" + data[2:],
        "a payload not in words": data + b"\x00",
        "a word left over": data + b"\x01\x00\x00\x00",
        "no payload": data[:header],
    }
    for name, mutated in cases.items():
        with pytest.raises(FormatError):
            _decode(mutated, layer)
            pytest.fail(name)
    with pytest.raises(FormatError, match="ctx index coding of a layer with 1 codebook entries"):
        decode_context_indices(data, layer.positions, layer.shape, layer.nnz, 1)


@pytest.mark.parametrize("compiled", [True, False])
def test_mutated_streams_raise_only_format_errors(compiled, monkeypatch):
    if compiled and index_context._interleave is None:
        pytest.skip("the C helper jointsparse.codecs._interleave is not built")
    if not compiled:
        monkeypatch.setattr(index_context, "_interleave", None)
    layer = _layer((16, 64), 0.3, 7, seed=4)
    data, _, _ = encode_context_indices(layer.indices, layer.positions, layer.shape, 7)
    mutator, outcomes = random.Random(5), set()
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(mutator.randint(1, 4)):
            mutated[mutator.randrange(len(mutated))] = mutator.randrange(256)
        try:
            decoded, _ = _decode(bytes(mutated), layer, 7)
        except FormatError:
            outcomes.add("FormatError")
        else:  # a mutation may decode to other valid indices
            outcomes.add("ok")
            assert decoded.size == layer.nnz and int(decoded.max()) < 7
    assert "FormatError" in outcomes


def test_the_c_helper_checks_its_inputs():
    if index_context._interleave is None:
        pytest.skip("the C helper jointsparse.codecs._interleave is not built")
    interleave = index_context._interleave.interleave
    # context 0 (first in row) holds [1]; context 1 (after a 0) nothing; context 2 (after a 1) [1, 0]
    symbols, starts = np.array([1, 1, 0], np.uint8), np.array([0, 1, 1, 3], np.int64)
    first, context_of, out = np.array([1, 0, 0], np.uint8), np.array([1, 2], np.uint8), np.empty(3, np.uint8)
    interleave(symbols, starts, first, context_of, out)
    assert out.tolist() == [1, 1, 0]
    refused = {
        "context 1 runs out of symbols at index 2": (symbols, np.array([0, 2, 2, 3], np.int64), first, context_of),
        "the first index is not the first of its row": (symbols, starts, np.zeros(3, np.uint8), context_of),
        "context 5 runs out": (symbols, starts, first, np.array([1, 5], np.uint8)),
        "not an ascending split": (symbols, np.array([0, 2, 1, 3], np.int64), first, context_of),
        "not an ascending split ": (symbols, np.array([0, 1, 1, 2], np.int64), first, context_of),
        "symbol 1 outside an alphabet of 1": (symbols, starts, first, np.array([1], np.uint8)),
        "buffer sizes disagree": (symbols, starts, first[:2], context_of),
        "not an ascending split  ": (symbols, np.array([1, 1, 1, 3], np.int64), first, context_of),
    }
    for message, arguments in refused.items():
        with pytest.raises(ValueError, match=message.strip()):
            interleave(*arguments, np.empty(3, np.uint8))
    # a wrong dtype is refused, never read as other memory
    for arguments, name in (((symbols, starts.astype(np.int32), first, context_of, out), "starts must be int64"),
                            ((symbols.astype(np.int16), starts, first, context_of, out), "by_context must be uint8"),
                            ((symbols, starts, first.astype(bool), context_of, out), "first_in_row must be uint8")):
        with pytest.raises(TypeError, match=name):
            interleave(*arguments)
    with pytest.raises(BufferError):
        interleave(symbols, starts, first, context_of, b"abc")  # out must be writable


def test_the_c_helper_is_built_where_required():
    """CI sets JOINTSPARSE_REQUIRE_COMPILED=1: there, a failed build of the C helper is an error
    instead of silently skipping its tests (and leaving the slower Python step to users)."""
    import os

    if os.environ.get("JOINTSPARSE_REQUIRE_COMPILED") != "1":
        pytest.skip("JOINTSPARSE_REQUIRE_COMPILED is not set")
    assert index_context._interleave is not None, "jointsparse.codecs._interleave is not built"
