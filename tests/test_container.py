"""jointsparse.codecs.container: the .jsz frame, manifest validation, hostile files."""

from __future__ import annotations

import copy
import json
import os
import random
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from jointsparse.codecs import FormatError, load, loads, read_manifest, save
from jointsparse.codecs.container import MAGIC, RAW_DTYPES, pack, planned_bytes, unpack
from jointsparse.codecs.manifest import validate_manifest
from jointsparse.codecs.quantize import quantize_weight


def _layers(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    conv = torch.randn(6, 3, 3, 3, generator=generator) * (torch.rand(6, 3, 3, 3, generator=generator) < 0.5)
    fc = torch.randn(10, 24, generator=generator) * (torch.rand(10, 24, generator=generator) < 0.3)
    return {
        "conv.weight": quantize_weight(conv, "kmeans", 4, kind="conv"),
        "fc.weight": quantize_weight(fc, "universal", 3, kind="linear", seed=7),
    }


def _raw() -> dict:
    return {
        "conv.bias": torch.linspace(-1, 1, 6),
        "bn.running_var": torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
        "bn.num_batches_tracked": torch.tensor(12345, dtype=torch.int64),
        "half": torch.tensor([1.5, -2.25], dtype=torch.float16),
        "brain": torch.tensor([0.5, 3.0], dtype=torch.bfloat16),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture()
def small_file(tmp_path):
    path = tmp_path / "small.jsz"
    winograd = {"conv.weight": {"m": 2, "r": 3, "threshold": 0.05, "sparsity": 0.5}}
    save(path, _layers(), _raw(), arch={"name": "tiny", "kwargs": {"width": 6}}, winograd=winograd, recipe={"stage": "test"})
    return path


@pytest.mark.parametrize("coder", ["ans", "zstd"])
def test_save_load_round_trip_is_exact(tmp_path, coder):
    path = tmp_path / "model.jsz"
    layers, raw = _layers(), _raw()
    save(path, layers, raw, arch={"name": "tiny", "kwargs": {"width": 6}}, coder=coder, original_parameter_count=999)
    contents = load(path)
    assert contents.arch == {"name": "tiny", "kwargs": {"width": 6}}
    assert contents.manifest["original_parameter_count"] == 999
    for name, layer in layers.items():
        stored = contents.layers[name].quantized
        assert torch.equal(stored.dequantize(), layer.dequantize())
        np.testing.assert_array_equal(stored.codebook, layer.codebook)
        assert (stored.quantizer, stored.bits, stored.kind, stored.dither_seed) == (layer.quantizer, layer.bits, layer.kind, layer.dither_seed)
        assert contents.layers[name].positions.coder == coder
    for name, tensor in raw.items():
        assert contents.raw[name].dtype == tensor.dtype and torch.equal(contents.raw[name], tensor)
    assert os.listdir(tmp_path) == ["model.jsz"]  # no temp file left behind


def test_read_manifest_validates_without_decoding(tmp_path):
    path = tmp_path / "m.jsz"
    provenance = {"data": {"name": "digits", "input_size": [1, 8, 8]}, "command": "jointsparse compress"}
    save(path, _layers(), _raw(), recipe={"bits": 4}, provenance=provenance)
    manifest = read_manifest(path)
    assert manifest["provenance"] == provenance and manifest["recipe"] == {"bits": 4}
    assert [layer["name"] for layer in manifest["layers"]] == ["conv.weight", "fc.weight"]
    assert load(path).manifest == manifest
    path.write_bytes(_reframed(path, lambda m, s: m.update(provenance=[1, 2])))
    with pytest.raises(FormatError, match="provenance"):
        read_manifest(path)


def test_same_input_gives_identical_bytes(tmp_path):
    save(tmp_path / "a.jsz", _layers(), _raw())
    save(tmp_path / "b.jsz", _layers(), _raw())
    assert (tmp_path / "a.jsz").read_bytes() == (tmp_path / "b.jsz").read_bytes()


def test_save_refuses_what_load_would_refuse(tmp_path):
    layers = _layers()
    with pytest.raises(ValueError, match="both compressed and raw"):
        save(tmp_path / "x.jsz", layers, {"fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="cannot store"):
        save(tmp_path / "x.jsz", layers, {"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="not plain JSON"):
        save(tmp_path / "x.jsz", layers, recipe={"lr": float("nan")})
    with pytest.raises(ValueError, match="'<module>.weight'"):
        save(tmp_path / "x.jsz", {"conv": layers["conv.weight"]})
    broken = copy.copy(layers["conv.weight"])
    broken.indices = broken.indices.copy()
    broken.indices[0] = 200
    with pytest.raises(ValueError, match="beyond the codebook"):
        save(tmp_path / "x.jsz", {"conv.weight": broken})
    assert not (tmp_path / "x.jsz").exists()


def _reframed(path, mutate) -> bytes:
    """Unpack a valid file, let ``mutate(manifest, sections)`` change it, re-pack with valid CRCs."""
    manifest, sections = unpack(path.read_bytes())
    sections = [bytes(s) for s in sections]
    mutate(manifest, sections)
    return pack(manifest, sections)


def test_each_kind_of_damage_has_its_own_message(small_file):
    data = small_file.read_bytes()
    cases = {
        "bad magic": b"PK\x03\x04" + data[4:],
        "unknown .jsz version 7": data[:8] + struct.pack("<H", 7) + data[10:],
        "truncated": data[:-10],
        "truncated file: 3 bytes": data[:3],
        "after its declared end": data + b"\x00",
        "file checksum mismatch": data[:100] + bytes([data[100] ^ 1]) + data[101:],
        "unsupported .jsz flags": data[:10] + struct.pack("<H", 6) + data[12:],
    }
    for message, damaged in cases.items():
        with pytest.raises(FormatError, match=message):
            loads(damaged)
    # A consistent frame around inconsistent contents: checksums pass, validation must not.
    def bigger_nnz(m, s):
        m["layers"][0]["nnz"] += 1

    def stated_section(m, s):  # version 3: sections follow from the order, never stated
        m["layers"][1]["indices"]["section"] = 2

    def short_raw(m, s):  # version 3: raw tensor 0 is section 1 + 2 * layers
        s[1 + 2 * len(m["layers"])] = s[1 + 2 * len(m["layers"])][:-1]

    def wrong_dtype(m, s):
        m["raw"][0]["dtype"] = "object"

    def stated_count(m, s):  # derivable from the shape: left out of version 3
        m["layers"][0]["parameter_count"] = 55

    def huge_shape(m, s):
        m["layers"][0]["shape"] = [2**39, 2**39, 3, 3]

    def big_bits(m, s):
        m["layers"][0]["bits"] = 17

    for mutate, message in [
        (bigger_nnz, "non-zeros|symbols"),
        (stated_section, "indices: field 'section' is not part of a version-3 record"),
        (short_raw, "section has"),
        (wrong_dtype, "not allowed"),
        (stated_count, "field 'parameter_count' is not part of a version-3 record"),
        (huge_shape, "decoding needs"),
        (big_bits, "bits = 17"),
    ]:
        with pytest.raises(FormatError, match=message):
            loads(_reframed(small_file, mutate))


def test_memory_budget_refuses_decompression_bombs(tmp_path):
    # An all-zero layer needs no stream bytes at all; its size must still be bounded by the file.
    bomb = quantize_weight(torch.zeros(1 << 20), "kmeans", 4, kind="linear")
    path = tmp_path / "bomb.jsz"
    save(path, {"fc.weight": bomb})
    assert path.stat().st_size < 1000
    with pytest.raises(FormatError, match="pass max_expansion=None"):
        load(path)
    contents = load(path, max_expansion=None)  # the caller vouches for it
    assert contents.layers["fc.weight"].quantized.nnz == 0


def _random_mutation(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(5)
    buf = bytearray(data)
    if choice == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del buf[rng.randrange(len(buf)) :]
    elif choice == 2:  # overwrite a run with random bytes
        start = rng.randrange(len(buf))
        for i in range(start, min(len(buf), start + rng.randint(1, 16))):
            buf[i] = rng.randrange(256)
    elif choice == 3:  # insert or delete bytes in the middle
        at = rng.randrange(len(buf))
        if rng.random() < 0.5:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del buf[at : at + rng.randint(1, 8)]
    else:  # flip bits, then repair the whole-file CRC so the inner checks must catch it
        buf[rng.randrange(len(buf) - 8)] ^= 1 << rng.randrange(8)
        buf[-8:-4] = struct.pack("<I", zlib.crc32(bytes(buf[:-8])))
    return bytes(buf)


_JSON_POOL = [None, True, -1, 0, 1, 3, 2**31, 2**62, 10**30, -(10**30), 1e308, 0.5, "", "x", "gaps", "bitmap", "ans", "zstd", "kmeans", [], [1], [0, 0], {}, {"a": 1}]


def _mutate_manifest(rng: random.Random, manifest, sections):
    """Replace one random node of the manifest, or damage one section, keeping the frame valid."""
    if rng.random() < 0.3 and sections:
        index = rng.randrange(len(sections))
        section = bytearray(sections[index])
        if section and rng.random() < 0.7:
            section[rng.randrange(len(section))] ^= 1 << rng.randrange(8)
        else:
            section = section[: rng.randrange(len(section) + 1)] if rng.random() < 0.5 else section + b"\x01\x02\x03\x04"
        sections[index] = bytes(section)
        return
    nodes = []

    def walk(node):
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in children:
            nodes.append((node, key))
            walk(child)

    walk(manifest)
    parent, key = rng.choice(nodes)
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = copy.deepcopy(rng.choice(_JSON_POOL))


def _decoded_bytes(contents) -> int:
    total = sum(layer.quantized.numel * 4 for layer in contents.layers.values())
    return total + sum(t.numel() * t.element_size() for t in contents.raw.values())


def test_fuzzed_files_give_format_error_or_valid_decode_within_memory_budget(small_file):
    """Issue #4: thousands of flipped/truncated/re-framed files; only FormatError, no hang, and
    memory stays within a small multiple of the file size (checked by the validation logic on
    every decoded case, and by tracemalloc on a sample)."""
    expansion = 64
    original = small_file.read_bytes()
    manifest = validate_manifest(*unpack(original))
    manifest_bytes = planned_bytes(manifest["layers"], manifest["raw"])
    assert manifest_bytes <= expansion * len(original)  # the valid file fits the budget used below
    rng = random.Random(1234)
    outcomes = {"format_error": 0, "decoded": 0}
    for case in range(3000):
        if case % 2:
            data = _random_mutation(rng, original)
        else:
            data = _reframed(small_file, lambda m, s: _mutate_manifest(rng, m, s))
        traced = case % 40 == 0
        if traced:
            tracemalloc.start()
        try:
            contents = loads(data, max_expansion=expansion)
        except FormatError:
            outcomes["format_error"] += 1
            continue
        finally:
            if traced:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                # numpy and Python objects are traced; the constant covers interpreter overhead
                assert peak <= expansion * len(data) + (256 << 10), (case, peak, len(data))
        outcomes["decoded"] += 1
        assert _decoded_bytes(contents) <= expansion * len(data)
        for layer in contents.layers.values():
            layer.quantized.dequantize()  # a "valid decode" must really decode
    assert outcomes["format_error"] > 2000 and outcomes["decoded"] > 0, outcomes


def test_raw_dtype_allow_list_is_what_save_writes():
    assert set(RAW_DTYPES) >= {"float32", "float64", "float16", "bfloat16", "int64", "bool"}
    assert MAGIC == b"\x89JSZ\r\n\x1a\n"


# ------------------------------------------------- issue 16: typed validation, a budget for both domains


def _all_zero_layer_file(shape, m, threshold=0.0) -> bytes:
    """A valid file of one all-zero conv layer with a Winograd entry: a few hundred bytes that ask
    for ``prod(shape)`` spatial and far more Winograd-domain weights."""
    from jointsparse.codecs.varint import varint_bytes

    numel = int(np.prod(shape))
    positions = bytes([1, 1]) + varint_bytes(numel)  # ANS counts: every bitmap symbol is 0
    manifest = {
        "format": "jsz", "version": 1, "tool": {"name": "jointsparse", "version": "test"}, "arch": None, "recipe": None,
        "provenance": None, "original_parameter_count": numel, "raw": [],
        "layers": [{
            "name": "conv.weight", "module": "conv", "kind": "conv", "shape": list(shape), "parameter_count": numel,
            "quantizer": "kmeans", "bits": 1, "codebook": [1.0], "dither": None, "nnz": 0,
            "positions": {"coding": "bitmap", "coder": "ans", "section": 0, "symbols": numel},
            "indices": {"coder": "ans", "section": 1, "symbols": 0},
            "winograd": {"m": m, "r": shape[-1], "threshold": threshold, "sparsity": None},
        }],
    }
    return pack(manifest, [positions, b""])


def test_a_huge_winograd_tile_or_layer_is_refused_before_anything_is_allocated(tmp_path):
    from jointsparse.codecs import winograd_weights

    # Issue 16: a 17 KB file (here a few hundred bytes) of one all-zero [905, 905, 2, 2] conv with
    # F(15, 2) made winograd_weights allocate 5.4 GB.
    path = tmp_path / "wide.jsz"
    path.write_bytes(_all_zero_layer_file((905, 905, 2, 2), 15))
    with pytest.raises(FormatError, match="outside \\[1, 8\\]"):
        winograd_weights(path)
    # Within the tile limit the Winograd domain is still 20x the spatial one: the budget, which
    # load() checks for every caller and either domain, counts it.
    path.write_bytes(_all_zero_layer_file((905, 905, 2, 2), 8))
    for reader in (load, winograd_weights):
        with pytest.raises(FormatError, match="decoding needs"):
            reader(path)
    # The same shape with a 2x2 tile, F(1, 2): the Winograd domain is the spatial one, yet its
    # bytes are counted too.
    spatial_only = planned_bytes(unpack(_all_zero_layer_file((905, 905, 2, 2), 1))[0]["layers"], [])
    assert spatial_only > 12 * 905 * 905 * 4


def test_winograd_weights_of_a_file_within_the_budget_match_the_full_computation(tmp_path, monkeypatch):
    from jointsparse.codecs import winograd_weights
    from jointsparse.transforms import filter_to_winograd, pruning

    monkeypatch.setattr(pruning, "CHUNK_ENTRIES", 100)  # many chunks, uneven last ones
    torch.manual_seed(0)
    weight = torch.randn(7, 5, 3, 3) * (torch.rand(7, 5, 3, 3) > 0.5)
    layer = quantize_weight(weight, "kmeans", 4, kind="conv")
    full = filter_to_winograd(layer.dequantize().double(), 4)
    threshold = float(full.abs().flatten().kthvalue(full.numel() // 2).values)
    path = tmp_path / "w.jsz"
    save(path, {"conv.weight": layer}, winograd={"conv.weight": {"m": 4, "r": 3, "threshold": threshold, "sparsity": 0.5}})
    got = winograd_weights(path)["conv"]["weight"]
    assert torch.equal(got, (full * (full.abs() > threshold)).float())


def test_numbers_are_checked_and_kept_in_the_decoders_types(small_file, tmp_path):
    """Issue 16 item 2: a threshold written as the JSON integer 2^64 passed validation as an int
    and broke torch with OverflowError; now every number is converted, then checked."""
    from jointsparse.codecs import report, winograd_weights

    def huge_threshold(manifest, sections):
        manifest["layers"][0]["winograd"] = {"m": 2, "r": 3, "threshold": 2**64, "sparsity": None}

    path = tmp_path / "huge.jsz"
    path.write_bytes(_reframed(small_file, huge_threshold))
    checked = read_manifest(path)["layers"][0]
    assert type(checked["winograd"]["threshold"]) is float and checked["winograd"]["threshold"] == 2.0**64
    assert all(type(v) is float for v in checked["codebook"])
    assert not winograd_weights(path)["conv"]["weight"].any()  # everything is under 2^64
    assert report(path)["layers"][0]["winograd_nnz"] == 0

    def sparsity_out_of_range(manifest, sections):
        manifest["layers"][0]["winograd"] = {"m": 2, "r": 3, "threshold": 0.0, "sparsity": 2}

    with pytest.raises(FormatError, match="sparsity"):
        loads(_reframed(small_file, sparsity_out_of_range))


def test_a_number_that_overflows_a_float_is_refused_anywhere_in_the_manifest(small_file):
    from jointsparse.codecs.framing import pack_text

    manifest, sections = unpack(small_file.read_bytes())
    manifest["provenance"] = {"note": "__HUGE__"}
    text = json.dumps(manifest).replace('"__HUGE__"', "1e999").encode()
    with pytest.raises(FormatError, match="1e999"):
        loads(pack_text(text, [bytes(s) for s in sections]))


# ------------------------------------------------- format version 3: the compact frame and the codebook section


def _v3_frame(table: bytes, count: int, manifest_stored: bytes, body: bytes, manifest_length: int | None = None) -> bytes:
    """A version-3 file around a hand-made section table, every checksum right, so that the
    table's own checks are what fails."""
    from jointsparse.codecs import framing

    total = framing._HEADER.size + len(table) + len(manifest_stored) + len(body) + framing._TRAILER.size
    length = len(manifest_stored) if manifest_length is None else manifest_length
    header = framing._HEADER.pack(MAGIC, 3, 1, count, length, zlib.crc32(manifest_stored), total)
    data = header + table + manifest_stored + body
    return data + framing._TRAILER.pack(zlib.crc32(data), framing.END_MARKER)


def test_version_3_frame_is_a_varint_table_without_section_crcs(small_file):
    """Versions 4 and 5 kept version 3's frame (they added the manifest's codebook_dtype and the ctx index coding)."""
    from jointsparse.codecs.varint import get_varint

    data = small_file.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 5
    count = struct.unpack_from("<I", data, 12)[0]
    manifest, sections = unpack(data)
    assert count == len(sections) == 1 + 2 * len(manifest["layers"]) + len(manifest["raw"])
    offset = 32
    for section in sections:
        length, offset = get_varint(data, offset)
        assert length == len(section)
    assert offset == 32 + sum(1 if len(s) < 128 else 2 for s in sections)  # one or two bytes each here
    # The whole-file CRC is the only one over the sections: damage behind a repaired file CRC
    # reaches the stream decoders, which refuse it.
    manifest_length = struct.unpack_from("<I", data, 16)[0]
    damaged = bytearray(data)
    damaged[offset + manifest_length + len(sections[0]) + 2] ^= 0xFF  # inside the first position stream
    damaged[-8:-4] = struct.pack("<I", zlib.crc32(bytes(damaged[:-8])))
    try:
        loads(bytes(damaged))
    except FormatError:
        pass  # a damaged stream may also decode to another valid one; it must never raise anything else


def test_version_3_section_table_failures_each_have_their_message():
    from jointsparse.codecs import bounded_zstd
    from jointsparse.codecs.varint import varint_bytes

    stored = bounded_zstd.compress(b"{}", 19)
    body = b"abc" + b"defg"
    good = _v3_frame(varint_bytes(3) + varint_bytes(4), 2, stored, body)
    assert [bytes(s) for s in unpack(good)[1]] == [b"abc", b"defg"]  # the JSON {} fails later, in validation
    cases = {
        "section lengths do not add up": _v3_frame(varint_bytes(3) + varint_bytes(5), 2, stored, body),
        "section lengths do not add up to the file size": _v3_frame(varint_bytes(2) + varint_bytes(4), 2, stored, body),
        # a table cut short: the last varint runs into the trailer
        "section table is truncated or has an over-long varint": _v3_frame(b"\x83", 1, b"", b""),
        # eleven continuation bytes: longer than any 64-bit value needs
        "section table is truncated or has an over-long varint ": _v3_frame(b"\x80" * 11 + b"\x00", 1, b"", b""),
        "section table \\(1000 entries\\) overruns the file": _v3_frame(varint_bytes(3) + varint_bytes(4), 1000, stored, body),
        "and manifest \\(999 bytes\\) overrun the file": _v3_frame(varint_bytes(3) + varint_bytes(4), 2, stored, body, 999),
        "manifest checksum mismatch": None,
    }
    damaged = bytearray(good)
    damaged[20] ^= 1  # the manifest CRC (header offset 20)
    damaged[-8:-4] = struct.pack("<I", zlib.crc32(bytes(damaged[:-8])))
    cases["manifest checksum mismatch"] = bytes(damaged)
    for message, data in cases.items():
        with pytest.raises(FormatError, match=message.strip()):
            unpack(data)


def test_version_3_manifest_leaves_out_what_follows_from_other_fields(small_file):
    manifest, sections = unpack(small_file.read_bytes())
    layer, raw = manifest["layers"][0], manifest["raw"][0]
    assert not {"module", "parameter_count"} & set(layer) and "section" not in raw
    assert set(layer["indices"]) == {"coder"} and isinstance(layer["codebook"], int)
    checked = read_manifest(small_file)["layers"][0]  # the reader fills them in
    assert checked["module"] == "conv" and checked["parameter_count"] == 6 * 3 * 3 * 3
    assert checked["indices"]["section"] == 2 and checked["positions"]["section"] == 1
    assert checked["indices"]["symbols"] == checked["nnz"] and checked["positions"]["symbols"] == 162
    assert len(checked["codebook"]) == layer["codebook"] and all(type(v) is float for v in checked["codebook"])

    def refused(mutate, message):
        with pytest.raises(FormatError, match=message):
            loads(_reframed(small_file, mutate))

    refused(lambda m, s: m["layers"][0].update(module="conv"), "field 'module' is not part of a version-3 record")
    refused(lambda m, s: m["raw"][0].update(section=5), "field 'section' is not part of a version-3 record")
    refused(lambda m, s: m["layers"][0]["positions"].update(symbols=162), "positions: field 'symbols' is not part of")
    refused(lambda m, s: m["layers"][0]["indices"].update(symbols=3), "indices: field 'symbols' is not part of")
    refused(lambda m, s: m["layers"][0].update(name="conv"), "name must be a module name plus '.weight'")
    refused(lambda m, s: m["layers"][0].update(codebook=16), "codebook = 16 outside \\[0, 15\\]")
    refused(lambda m, s: m["layers"][0].update(codebook=[0.5]), "field 'codebook' has the wrong type")
    refused(lambda m, s: s.append(b""), "manifest: 13 sections for 2 layers and 7 raw tensors \\(needs 12\\)")
    refused(lambda m, s: m["raw"].pop(), "sections for 2 layers and 6 raw tensors")

    def gaps_without_symbols(m, s):
        m["layers"][0]["positions"]["coding"] = "gaps"

    refused(gaps_without_symbols, "missing field 'symbols'")  # a gap stream's length is stated


def test_the_codebook_section_round_trips_and_is_checked(small_file):
    from jointsparse.codecs import bounded_zstd
    from jointsparse.codecs.codebooks import pack_codebooks, unpack_codebooks

    rng = np.random.default_rng(0)
    smooth = [np.sort(rng.normal(0, 0.05, k)).astype(np.float32) for k in (31, 0, 29, 15)]
    packed = pack_codebooks(smooth)
    assert len(packed) < 4 * 75  # a narrow range: the byte planes compress
    for got, want in zip(unpack_codebooks(packed, [31, 0, 29, 15]), smooth):
        assert got.dtype == np.float32 and np.array_equal(got, want)
    tiny = pack_codebooks([np.array([0.25], np.float32)])
    assert tiny == np.array([0.25], "<f4").tobytes()  # too short to gain: stored as it is (4 bytes a value)
    assert unpack_codebooks(tiny, [1])[0].tolist() == [0.25] and pack_codebooks([]) == b""
    with pytest.raises(FormatError, match="for no codebook value"):
        unpack_codebooks(b"\x00", [0, 0])
    with pytest.raises(FormatError, match="declares"):  # a frame of the wrong size
        unpack_codebooks(packed, [31, 0, 29, 16])
    with pytest.raises(FormatError, match="not a zstd frame"):
        unpack_codebooks(b"\x00" * 7, [2])
    bomb = bounded_zstd.compress(bytes(4 * 60000), 19)  # small on disk, big when decoded
    with pytest.raises(FormatError, match="limit"):
        unpack_codebooks(bomb, [60000])
    # In a file: the section must hold the values the records count, all finite.

    def longer(m, s):
        s[0] = bytes(s[0]) + b"\x00"

    def not_finite(m, s):
        values = [np.full(m["layers"][0]["codebook"], np.inf, np.float32), np.zeros(m["layers"][1]["codebook"], np.float32)]
        s[0] = pack_codebooks(values)

    for mutate, message in [(longer, "codebook section"), (not_finite, "finite float32")]:
        with pytest.raises(FormatError, match=message):
            loads(_reframed(small_file, mutate))


@pytest.mark.parametrize("fixture", ["format_v1.jsz", "format_v2.jsz", "format_v3.jsz", "format_v4.jsz"])
def test_recode_writes_the_same_weights_in_this_version(tmp_path, fixture):
    from pathlib import Path

    from jointsparse.codecs import decode_state, recode, winograd_weights
    from jointsparse.codecs.container import VERSION

    source = Path(__file__).parent / "data" / fixture
    target = tmp_path / "recoded.jsz"
    before, after = recode(source, target)
    assert (before, after) == (source.stat().st_size, target.stat().st_size)
    old, new = load(source), load(target)
    assert new.manifest["version"] == VERSION and new.manifest["provenance"]["recoded"]["from_version"] == old.manifest["version"]
    for key in ("arch", "recipe", "original_parameter_count", "input_size"):
        assert new.manifest.get(key) == old.manifest.get(key)
    for entry_old, entry_new in zip(old.manifest["layers"], new.manifest["layers"]):
        assert {k: v for k, v in entry_old.items() if k not in ("positions", "indices")} == \
               {k: v for k, v in entry_new.items() if k not in ("positions", "indices")}
    (arch_old, state_old, _), (arch_new, state_new, _) = decode_state(source), decode_state(target)
    assert arch_old == arch_new and state_old.keys() == state_new.keys()
    assert all(torch.equal(state_old[name], state_new[name]) and state_old[name].dtype == state_new[name].dtype for name in state_old)
    wino_old, wino_new = winograd_weights(source), winograd_weights(target)
    assert wino_old.keys() == wino_new.keys() and all(torch.equal(wino_old[k]["weight"], wino_new[k]["weight"]) for k in wino_old)
    again = tmp_path / "again.jsz"
    recode(target, again)  # recoding a current file changes nothing but the provenance
    assert load(again).manifest["layers"] == new.manifest["layers"]


def test_recode_refuses_a_damaged_file_and_leaves_no_output(small_file, tmp_path):
    from jointsparse.codecs import recode

    damaged = tmp_path / "damaged.jsz"
    damaged.write_bytes(small_file.read_bytes()[:-7])
    with pytest.raises(FormatError):
        recode(damaged, tmp_path / "out.jsz")
    assert not (tmp_path / "out.jsz").exists()
