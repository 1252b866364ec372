#!/usr/bin/env python3
"""Adversarial campaign against the ``.jsz`` reader, past the checksums (issue 16).

Every case is a real file (written by ``jointsparse.codecs.encode``) that an adversary mutated
and then re-framed with every checksum recomputed, so that the mutation reaches the parser:
manifest numbers at boundary values (huge integers, NaN and infinities, negatives, float32
overflow), fields of the wrong type or missing, crafted shapes and Winograd tiles (with streams
that fit them, so the file is valid but asks for a lot), and edits of the binary streams and of
the manifest text. Each case runs through every reader entry point, in both domains:
``decode`` (spatial), ``decode`` (winograd), ``report``, ``info`` (the command line's payload,
MAC table included) and ``winograd_weights``.

A reader entry point may succeed or raise ``FormatError`` (or ``UntrustedModelError`` where a file
names code to import that nobody trusted: the trust gate's refusal, counted with FormatError).
Anything else is a failure, and so are
a case that runs past the time limit (a hang) and an operation whose peak memory exceeds the
budget: ``DEFAULT_MAX_EXPANSION`` times the file size (the decoder's own promise, docs/format.md
section 5) plus a fixed allowance for the interpreter's own small allocations.

How memory is measured: the operations run in a worker process whose C allocator hands every
block of 128 KiB or more straight to ``mmap`` (``MALLOC_MMAP_THRESHOLD_``, which also stops glibc
from raising that threshold later), so that every tensor and array (torch, numpy, zstd buffers)
enters the resident set when it is touched and leaves it when freed. Before each operation the
worker resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, value 5) and afterwards
reads ``VmHWM``: the peak resident growth of that operation, whatever allocated it.
``tracemalloc`` would not do: it never sees a torch tensor. Linux only.

Usage::

    python experiments/fuzz_decoder.py --cases 10000 --out experiments/results/fuzz_decoder.md
    python experiments/fuzz_decoder.py --replay 1234      # one case in this process, tracebacks shown
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OPERATIONS = ("decode_spatial", "decode_winograd", "report", "info", "winograd_weights")
#: What the interpreter itself may allocate during one operation, on top of the decoder's budget
#: (small Python objects, module-level caches such as Cook-Toom matrices, allocator slack).
DEFAULT_ALLOWANCE_MIB = 24
DEFAULT_TIME_LIMIT = 60.0
#: Worker allocator settings (see the module docstring); MALLOC_ARENA_MAX keeps torch's threads
#: from spreading small allocations over many arenas.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1",
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: A safety net, not the measurement: a runaway allocation fails instead of exhausting a shared
#: machine (and then counts as an "other" exception).
WORKER_ADDRESS_SPACE = 12 << 30


# ------------------------------------------------------------------------------- seed files


def seed_files() -> dict[str, bytes]:
    """Real files from the encoder: three architectures, both quantizers and coders, tiles 2 and 4,
    with and without Winograd pruning, float32 and (format version 4's options) float16 codebooks
    and raw tensors, order-0 and (format version 5, ``lenet5_ctx``) context-coded indices."""
    import torch

    from jointsparse.codecs import encode
    from jointsparse.models import get_model

    specs = {
        "lenet5": dict(model=("lenet5", {}), size=[1, 28, 28], density=0.05, quantizer="kmeans", bits=4, coder="ans", m=2,
                       winograd=0.5),
        "vgg_small": dict(model=("vgg_small", {"width": 0.125, "hidden": 32}), size=[1, 32, 32], density=0.3,
                          quantizer="universal", bits=5, coder="zstd", m=4, winograd=0.6),
        "vgg_small_ans": dict(model=("vgg_small", {"width": 0.25, "hidden": 16}), size=[1, 16, 16], density=0.2,
                              quantizer="kmeans", bits=3, coder="ans", m=2, winograd=None),
        "resnet20": dict(model=("resnet20", {}), size=[3, 32, 32], density=0.1, quantizer="kmeans", bits=5, coder="ans", m=2,
                         winograd=0.3),
        "vgg_small_half": dict(model=("vgg_small", {"width": 0.25, "hidden": 16}), size=[1, 16, 16], density=0.2,
                               quantizer="kmeans", bits=6, coder="ans", m=2, winograd=0.5, half=True),
        # weights that wander along each row, so the ctx index coding (format version 5) wins
        "lenet5_ctx": dict(model=("lenet5", {}), size=[1, 28, 28], density=0.3, quantizer="kmeans", bits=5, coder="ans", m=2,
                           winograd=0.5, smooth=True),
    }
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            torch.manual_seed(0)
            model = get_model(spec["model"][0], **spec["model"][1])
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                        if spec.get("smooth"):
                            walk = torch.randn(module.weight.shape[0], module.weight[0].numel()).cumsum(1)
                            module.weight.copy_(walk.reshape(module.weight.shape) * module.weight.abs().mean())
                        keep = module.weight.abs() > module.weight.abs().flatten().quantile(1 - spec["density"])
                        module.weight.mul_(keep)
            path = Path(tmp) / f"{name}.jsz"
            half = {"codebook_dtype": "float16", "raw_float_dtype": "float16"} if spec.get("half") else {}
            encode(model, path, quantizer=spec["quantizer"], bits=spec["bits"], coder=spec["coder"], m=spec["m"],
                   winograd_sparsity=spec["winograd"], provenance={"data": {"name": "digits", "input_size": spec["size"]}}, **half)
            files[name] = path.read_bytes()
    return files


# ------------------------------------------------------------------------------- framing


def frame(manifest_text: bytes, sections: list[bytes], compress: bool = True) -> bytes:
    """A file around manifest TEXT (which no writer would produce: NaN, duplicate keys, broken
    JSON), with every checksum computed, so the case reaches the parser."""
    from jointsparse.codecs.framing import pack_text

    return pack_text(manifest_text, sections, compress=compress, level=3)


def unframe(data: bytes) -> tuple[dict, list[bytes]]:
    from jointsparse.codecs.framing import unpack

    manifest, sections = unpack(data)
    return manifest, [bytes(s) for s in sections]


# ------------------------------------------------------------------------------- mutations
_NAN, _INF, _NINF, _HUGE_EXP = "\u0000NaN", "\u0000Infinity", "\u0000-Infinity", "\u00001e999"
BOUNDARY_VALUES: list[Any] = [
    0, 1, -1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53 + 1,
    2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**30, 10**400, -(2**63), -(2**64), -(10**400),
    0.0, -0.0, 0.5, 1e-45, 5e-324, 1e-300, 3.4028235e38, 3.5e38, 1e308, -1e308, 2.0**63, 2.0**64,
    _NAN, _INF, _NINF, _HUGE_EXP, True, False, None, "", "1", "x" * 300, [], [0], [2**64], {}, {"a": 1},
]
LAYER_DIMS = [0, 1, 2, 3, 17, 64, 905, 4096, 2**16, 2**20, 2**31, 2**39]
KERNELS = [1, 2, 3, 4, 5, 7, 11, 15, 16, 17]


def _dumps(manifest: Any) -> bytes:
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    for token, literal in ((_NAN, "NaN"), (_INF, "Infinity"), (_NINF, "-Infinity"), (_HUGE_EXP, "1e999")):
        text = text.replace(json.dumps(token), literal)
    return text.encode("utf-8")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``node`` (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node[:8]):
            found += _paths(value, prefix + (index,))
    return found


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def _set(node: Any, path: tuple, value: Any) -> None:
    _get(node, path[:-1])[path[-1]] = value


def _varint(value: int) -> bytes:
    from jointsparse.codecs.varint import varint_bytes

    return varint_bytes(value)


def _stream_sections(case: "Case", layer: dict) -> tuple[int, int]:
    """The (positions, indices) sections of ``layer``: stated in version 1 and 2 records, implied
    by the layer's place in version 3 (section 0 holds the codebooks)."""
    if case.manifest.get("version", 3) < 3:
        return layer["positions"]["section"], layer["indices"]["section"]
    place = case.manifest["layers"].index(layer)
    return 1 + 2 * place, 2 + 2 * place


def _raw_section(case: "Case", entry: dict) -> int:
    if case.manifest.get("version", 3) < 3:
        return entry["section"]
    return 1 + 2 * len(case.manifest["layers"]) + case.manifest["raw"].index(entry)


def _all_zero_positions(numel: int, coder: str) -> bytes:
    """A position stream (bitmap coding) saying "no weight is coded" for ``numel`` weights."""
    if numel == 0:
        return b""
    if coder == "ans":
        return bytes([1]) + _varint(1) + _varint(numel)  # counts: all symbols are 0; empty payload
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes((numel + 7) // 8))


class Case:
    """One mutated file: the manifest (as data or as text), the sections, and what was done."""

    def __init__(self, manifest: dict, sections: list[bytes]) -> None:
        self.manifest, self.sections, self.text, self.compress, self.notes = manifest, sections, None, True, []

    def data(self) -> bytes:
        return frame(self.text if self.text is not None else _dumps(self.manifest), self.sections, self.compress)


def _layer(case: Case, rng: random.Random, winograd_only: bool = False) -> dict | None:
    layers = [entry for entry in case.manifest.get("layers", []) if isinstance(entry, dict)]
    if winograd_only:
        layers = [entry for entry in layers if isinstance(entry.get("winograd"), dict)] or layers
    return rng.choice(layers) if layers else None


def mutate_value(case: Case, rng: random.Random) -> None:
    """A manifest value (anywhere, free-form records included) set to a boundary value."""
    path = rng.choice(_paths(case.manifest))
    value = rng.choice(BOUNDARY_VALUES)
    _set(case.manifest, path, value)
    case.notes.append(f"{'.'.join(map(str, path))}={str(value)[:40]!r}")


def mutate_number(case: Case, rng: random.Random) -> None:
    """A numeric manifest field (counts, sections, bits, thresholds, shapes) set to a boundary value."""
    paths = [p for p in _paths(case.manifest) if isinstance(_get(case.manifest, p), (int, float)) and p[0] in ("layers", "raw", "original_parameter_count", "provenance")]
    if not paths:
        return mutate_value(case, rng)
    path = rng.choice(paths)
    value = rng.choice(BOUNDARY_VALUES[:46])  # numbers and NaN/inf tokens only
    _set(case.manifest, path, value)
    case.notes.append(f"{'.'.join(map(str, path))}={str(value)[:40]!r}")


def mutate_delete(case: Case, rng: random.Random) -> None:
    paths = [p for p in _paths(case.manifest) if isinstance(p[-1], str)]
    path = rng.choice(paths)
    del _get(case.manifest, path[:-1])[path[-1]]
    case.notes.append(f"del {'.'.join(map(str, path))}")


def mutate_winograd(case: Case, rng: random.Random) -> None:
    """The Winograd entry of a layer: tile sizes, threshold and sparsity at boundary values."""
    layer = _layer(case, rng, winograd_only=True)
    if layer is None:
        return mutate_value(case, rng)
    entry = layer.get("winograd") if isinstance(layer.get("winograd"), dict) else {"m": 2, "r": 3, "threshold": 0.0, "sparsity": None}
    layer["winograd"] = entry
    key = rng.choice(["m", "r", "threshold", "sparsity", "m", "threshold"])
    value = rng.choice(list(range(-1, 21)) + BOUNDARY_VALUES[:46]) if key in ("m", "r") else rng.choice(BOUNDARY_VALUES[:46])
    entry[key] = value
    case.notes.append(f"{layer.get('name')}.winograd.{key}={str(value)[:40]!r}")


def mutate_shape(case: Case, rng: random.Random) -> None:
    """A crafted, self-consistent layer: a new shape, all weights pruned (so the streams are tiny),
    a Winograd tile that fits it. The file is valid; what it asks the decoder for may be huge."""
    layer = _layer(case, rng, winograd_only=rng.random() < 0.7)
    if layer is None:
        return mutate_value(case, rng)
    k = rng.choice(KERNELS)
    cout, cin = rng.choice(LAYER_DIMS), rng.choice(LAYER_DIMS)
    if rng.random() < 0.5:
        cout, cin = rng.choice(LAYER_DIMS[:8]), rng.choice(LAYER_DIMS[:8])
    shape = [cout, cin, k, k] if rng.random() < 0.85 else [cout, cin]
    numel = math.prod(shape)
    coder = rng.choice(["ans", "ans", "zstd"]) if numel < 2**26 else "ans"
    position_section, index_section = _stream_sections(case, layer)
    layer.update(shape=shape, nnz=0)
    if case.manifest.get("version", 3) < 3:
        layer["parameter_count"] = numel
        layer["positions"] = {"coding": "bitmap", "coder": coder, "section": position_section, "symbols": numel}
        layer["indices"] = {"coder": coder, "section": index_section, "symbols": 0}
    else:  # version 3 states neither sections nor the counts the shape and nnz imply
        layer["positions"] = {"coding": "bitmap", "coder": coder}
        layer["indices"] = {"coder": coder}
    case.sections[position_section] = _all_zero_positions(numel, coder)
    case.sections[index_section] = b""
    if len(shape) == 4 and k >= 2 and rng.random() < 0.9:
        m = rng.choice([1, 2, 3, 4, 6, 8, 10, 14, 15, 16 - k + 1, 17 - k])
        layer["winograd"] = {"m": m, "r": k, "threshold": rng.choice([0.0, 0.0, 1e-3, 1.0]), "sparsity": None}
    else:
        layer["winograd"] = None
    if rng.random() < 0.5:
        case.manifest["arch"] = None  # so that report and winograd_weights reach the layer
    case.notes.append(f"{layer['name']} shape={shape} winograd={layer['winograd'] and (layer['winograd']['m'], k)} coder={coder}")


def mutate_counts(case: Case, rng: random.Random) -> None:
    """nnz, symbol counts, parameter counts and (version 3) codebook sizes just off (or far off) what
    the streams and the codebook section hold."""
    layer = _layer(case, rng)
    if layer is None:
        return mutate_value(case, rng)
    if case.manifest.get("version", 3) < 3:
        target = rng.choice([("nnz",), ("positions", "symbols"), ("indices", "symbols"), ("parameter_count",)])
    else:  # version 3: the symbol counts follow from nnz and the shape (gaps excepted); codebook is a count
        target = rng.choice([("nnz",), ("nnz",), ("positions", "symbols"), ("codebook",)])
    try:
        current = _get(layer, target)
    except (KeyError, TypeError, IndexError):
        return mutate_value(case, rng)
    current = current if isinstance(current, int) else 0
    value = rng.choice([current - 1, current + 1, 0, current * 2, current * 255, 2**40, 2**62, current + 255])
    _set(layer, target, value)
    case.notes.append(f"{layer.get('name')}.{'.'.join(target)}={value}")


def mutate_stream(case: Case, rng: random.Random) -> None:
    """Edits of a binary section: bit flips, truncation, growth, replacement, swaps, crafted headers."""
    if not case.sections:
        return mutate_value(case, rng)
    index = rng.randrange(len(case.sections))
    data = bytearray(case.sections[index])
    how = rng.choice(["flip", "flip", "truncate", "append", "random", "empty", "swap", "ans_header", "zstd_size", "repeat"])
    if how == "flip" and data:
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif how == "truncate" and data:
        del data[rng.randrange(len(data)):]
    elif how == "append":
        data += bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 3, 4, 64])))
    elif how == "random":
        data = bytearray(rng.getrandbits(8) for _ in range(rng.choice([1, 2, 5, 16, 200, len(data) or 1])))
    elif how == "empty":
        data = bytearray()
    elif how == "swap":
        other = rng.randrange(len(case.sections))
        case.sections[other], data = bytes(data), bytearray(case.sections[other])
    elif how == "ans_header":
        # model kind, then a count table with hostile sizes, then whatever payload was there
        table = rng.choice([_varint(0), _varint(2**20), _varint(1) + _varint(2**62), _varint(2) + _varint(2**63) + _varint(2**63),
                            _varint(3) + _varint(1) + _varint(1) + _varint(10**20), b"\xff" * 12])
        data = bytearray([rng.choice([0, 1, 1, 2, 255])]) + table + data[rng.randint(1, max(1, len(data))):]
    elif how == "zstd_size":
        import zstandard

        declared = rng.choice([0, 1, len(data) + 1, 2**20, 2**40, 2**60])
        content = bytes(rng.choice([0, 1, 8, 64, 1024]))
        frame_bytes = zstandard.ZstdCompressor(write_content_size=True).compress(content)
        data = bytearray(frame_bytes)
        # rewrite the frame header's content size field when it is 8 bytes wide (flag bits 11)
        descriptor = data[4]
        if descriptor >> 6 == 3:
            offset = 5 + (0 if descriptor & 0x20 else 1)
            data[offset:offset + 8] = struct.pack("<Q", declared)
    elif how == "repeat" and data:
        data = data * rng.choice([2, 16, 256])
    case.sections[index] = bytes(data)
    case.notes.append(f"section {index} {how}")


def mutate_raw(case: Case, rng: random.Random) -> None:
    """A raw tensor with a new dtype and shape, its section resized to fit (or not)."""
    raws = [entry for entry in case.manifest.get("raw", []) if isinstance(entry, dict)]
    if not raws:
        return mutate_value(case, rng)
    entry = rng.choice(raws)
    dtype = rng.choice(["float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool", "complex64", "object"])
    shape = rng.choice([[], [0], [1], [3, 0, 2**40], [2**20], [7, 3], [1] * 8, [1] * 9, [2**39, 2**39]])
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int16": 2, "int32": 4, "int64": 8}.get(dtype, 1)
    numel = math.prod(shape)
    entry.update(dtype=dtype, shape=shape)
    if numel * itemsize <= 1 << 22 and rng.random() < 0.8:
        fill = 2 if dtype == "bool" and rng.random() < 0.3 else 1
        case.sections[_raw_section(case, entry)] = bytes([fill]) * (numel * itemsize)
    case.notes.append(f"raw {entry.get('name')} {dtype}{shape}")


def mutate_arch(case: Case, rng: random.Random) -> None:
    """The architecture reference: other models, imports, hostile constructor arguments."""
    arch = case.manifest.get("arch") or {"name": "lenet5", "kwargs": {}}
    case.manifest["arch"] = arch
    choice = rng.random()
    if choice < 0.3:
        arch["name"] = rng.choice(["resnet18", "alexnet", "nonet", "os:system", "jointsparse.models:lenet5", "", "builtins:eval"])
    else:
        key = rng.choice(["num_classes", "in_channels", "width", "hidden", "dropout", "lrn", "extra"])
        arch["kwargs"] = {**(arch.get("kwargs") or {}), key: rng.choice(BOUNDARY_VALUES)}
    case.notes.append(f"arch={json.dumps(arch, default=str)[:80]}")


def mutate_input_size(case: Case, rng: random.Random) -> None:
    """The recorded input size that ``info`` uses for its MAC table."""
    provenance = case.manifest.get("provenance") or {}
    case.manifest["provenance"] = provenance
    data = provenance.setdefault("data", {}) if isinstance(provenance.get("data", {}), dict) else {}
    size = rng.choice([[1, 2**20, 2**20], [3, 65536, 65536], [1, 0, 0], [1, 1, 1], [0, 32, 32], [-1, 32, 32], [1, 32],
                       [1, 32, 32, 32], [1, 2**64, 2**64], [1, 1.5, 32], "32", None, [1, 10**400, 1], [2**31, 32, 32]])
    data["input_size"] = size
    case.notes.append(f"input_size={str(size)[:40]}")


def mutate_text(case: Case, rng: random.Random) -> None:
    """Edits of the manifest text itself: tokens the writer never emits, broken syntax."""
    text = _dumps(case.manifest)
    how = rng.choice(["duplicate", "nan", "deep", "utf8", "truncate", "flip", "top", "raw_manifest"])
    if how == "duplicate":
        text = text.replace(b'"nnz":', b'"nnz":0,"nnz":', 1)
    elif how == "nan":
        text = text.replace(b'"threshold":', b'"threshold":NaN,"x":', 1) if rng.random() < 0.5 else text.replace(b"0.", b"1e999", 1)
    elif how == "deep":
        depth = rng.choice([100, 1000, 100000])
        text = text[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    elif how == "utf8":
        text = text[:10] + b"\xff\xfe" + text[10:]
    elif how == "truncate":
        text = text[: rng.randrange(len(text))]
    elif how == "flip":
        position = rng.randrange(len(text))
        text = text[:position] + bytes([text[position] ^ (1 << rng.randrange(8))]) + text[position + 1:]
    elif how == "top":
        text = rng.choice([b"[]", b"null", b"1", b'"jsz"', b""])
    elif how == "raw_manifest":
        case.compress = False  # flag bit 0 clear: a reader must take the JSON as stored
    case.text = text
    case.notes.append(f"text {how}")


MUTATORS: dict[str, Callable[[Case, random.Random], None]] = {
    "value": mutate_value,
    "number": mutate_number,
    "delete": mutate_delete,
    "winograd": mutate_winograd,
    "shape": mutate_shape,
    "counts": mutate_counts,
    "stream": mutate_stream,
    "raw": mutate_raw,
    "arch": mutate_arch,
    "input_size": mutate_input_size,
    "text": mutate_text,
}
#: How often each seed file is the starting point (resnet20 is the slowest to decode).
SEED_WEIGHTS = {"lenet5": 3, "vgg_small": 4, "vgg_small_ans": 3, "resnet20": 1, "vgg_small_half": 2, "lenet5_ctx": 3}
#: Relative frequency of each mutator; a case applies one, or with some probability two or three.
WEIGHTS = {"value": 3, "number": 4, "delete": 1, "winograd": 3, "shape": 4, "counts": 2, "stream": 4, "raw": 1, "arch": 1,
           "input_size": 1, "text": 1}


def make_case(seeds: dict[str, bytes], campaign_seed: int, index: int) -> tuple[str, str, str, bytes]:
    """Case ``index`` of the campaign: (seed file, mutator names, notes, file bytes). Deterministic."""
    rng = random.Random(f"{campaign_seed}:{index}")
    names = sorted(seeds)
    seed_name = rng.choices(names, weights=[SEED_WEIGHTS.get(name, 1) for name in names])[0]
    manifest, sections = unframe(seeds[seed_name])
    case = Case(manifest, sections)
    count = rng.choice([1, 1, 1, 2, 3])
    names = []
    for _ in range(count):
        name = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        if case.text is not None:
            break  # the text edits come last: they replace the manifest
        try:
            MUTATORS[name](case, rng)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            continue  # an earlier mutation left nothing this one can work on
        names.append(name)
    return seed_name, "+".join(names) or "none", "; ".join(case.notes), case.data()


# ------------------------------------------------------------------------------- the worker


def _operations() -> dict[str, Callable[[str], Any]]:
    from jointsparse.codecs import decode, report, winograd_weights
    from jointsparse.info import info_payload

    return {
        "decode_spatial": lambda path: decode(path, "spatial"),
        "decode_winograd": lambda path: decode(path, "winograd"),
        "report": report,
        "info": info_payload,
        "winograd_weights": winograd_weights,
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def run_operation(operation: Callable[[str], Any], path: str) -> dict[str, Any]:
    """Run one reader entry point; its outcome, time and peak resident growth in bytes."""
    from jointsparse.codecs import FormatError
    from jointsparse.models import UntrustedModelError

    _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    try:
        result = operation(path)
        del result
        outcome, error = "ok", None
    except (FormatError, UntrustedModelError) as caught:
        # A refusal: a malformed file, or one naming code to import that nobody trusted (the trust
        # gate of info/evaluate/bench); counted in the FormatError column.
        outcome, error = "FormatError", f"{type(caught).__name__}: {str(caught)[:200]}"
    except Exception as caught:  # noqa: BLE001 - anything else is what the campaign looks for
        outcome, error = "other", f"{type(caught).__name__}: {str(caught)[:300]}"
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) * 1024
    return {"outcome": outcome, "error": error, "seconds": seconds, "peak": max(peak, 0)}


def worker_main() -> None:
    """Read case paths on stdin, one per line; answer one JSON line each."""
    import resource

    import torch

    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE, WORKER_ADDRESS_SPACE))
    operations = _operations()
    print(json.dumps({"ready": True}), flush=True)
    operations["probe"] = _probe
    for served, line in enumerate(sys.stdin):
        if served % 64 == 63:
            gc.collect()  # cyclic garbage of earlier cases (a full collection costs ~0.1 s here)
        request = json.loads(line)
        results = {name: run_operation(operations[name], request["path"]) for name in request["operations"]}
        print(json.dumps(results), flush=True)


def _probe(size: str) -> None:
    """A torch allocation of ``size`` bytes, touched: checks that the measurement sees torch."""
    import torch

    torch.ones(int(size), dtype=torch.uint8)


class WorkerDied(RuntimeError):
    """The worker process ended without answering (a crash in native code, say)."""


class Worker:
    """A worker process; killed and restarted after a hang."""

    def __init__(self) -> None:
        env = {**os.environ, **WORKER_ENV, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self._read(600)

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            raise WorkerDied(f"worker died (exit {self.process.wait()})")
        return json.loads(line)

    def run(self, path: str, operations: tuple[str, ...], timeout: float) -> dict | None:
        """The worker's results, or None if it did not answer within ``timeout`` seconds."""
        self.process.stdin.write(json.dumps({"path": path, "operations": list(operations)}) + "\n")
        self.process.stdin.flush()
        return self._read(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


# ------------------------------------------------------------------------------- the campaign


def run_campaign(cases: int, campaign_seed: int = 0, *, start: int = 0, time_limit: float = DEFAULT_TIME_LIMIT,
                 allowance: int = DEFAULT_ALLOWANCE_MIB << 20, seed_names: tuple[str, ...] | None = None,
                 progress: bool = False, checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run cases ``start .. start+cases-1`` (from the ``seed_names`` files, default all); return
    the counts and every failure. ``checkpoint`` receives the summary so far every 250 cases (a
    stopped run keeps what it ran)."""
    from jointsparse.codecs import DEFAULT_MAX_EXPANSION

    seeds = {name: data for name, data in seed_files().items() if seed_names is None or name in seed_names}
    worker = Worker()
    counts: dict[str, Counter] = defaultdict(Counter)  # operation -> outcome -> count
    by_mutator: dict[str, Counter] = defaultdict(Counter)
    failures: list[dict] = []
    worst = {"ratio": 0.0}
    began = time.perf_counter()
    baseline = {}

    def summary(done: int) -> dict[str, Any]:
        return {"cases": done, "start": start, "ranges": [[start, start + done - 1]], "seed": campaign_seed,
                "seconds": time.perf_counter() - began,
                "counts": {op: dict(c) for op, c in counts.items()}, "by_mutator": {k: dict(v) for k, v in by_mutator.items()},
                "failures": failures, "worst": worst, "baseline": baseline, "allowance": allowance,
                "max_expansion": DEFAULT_MAX_EXPANSION, "time_limit": time_limit}

    try:
        with tempfile.TemporaryDirectory(prefix="fuzz-jsz-") as tmp:
            for name, data in seeds.items():  # warm up every code path once, and record the real files' peaks
                path = Path(tmp) / f"seed-{name}.jsz"
                path.write_bytes(data)
                worker.run(str(path), OPERATIONS, 600)
                results = worker.run(str(path), OPERATIONS, 600)
                baseline[name] = {"bytes": len(data), "budget": DEFAULT_MAX_EXPANSION * len(data),
                                  **{op: results[op] for op in OPERATIONS}}
            for index in range(start, start + cases):
                seed_name, mutators, notes, data = make_case(seeds, campaign_seed, index)
                path = Path(tmp) / "case.jsz"
                path.write_bytes(data)
                budget = DEFAULT_MAX_EXPANSION * len(data) + allowance
                record = {"case": index, "seed_file": seed_name, "mutators": mutators, "notes": notes[:300], "bytes": len(data)}
                try:
                    results = worker.run(str(path), OPERATIONS, time_limit)
                    problem = None if results is not None else f"hang: no answer within {time_limit:g} s"
                except WorkerDied as died:
                    results, problem = None, f"crash: {died}"
                if results is None:
                    worker.stop()
                    worker = Worker()
                    counts["(case)"][problem.split(":")[0]] += 1
                    failures.append({**record, "failure": problem})
                    continue
                succeeded = all(result["outcome"] == "ok" for result in results.values())
                by_mutator[mutators.split("+")[0]]["decoded" if succeeded else "refused"] += 1
                for operation, result in results.items():
                    counts[operation][result["outcome"]] += 1
                    ratio = result["peak"] / budget
                    if ratio > worst["ratio"]:
                        worst = {"ratio": ratio, "case": index, "operation": operation, "peak": result["peak"], "budget": budget}
                    if result["outcome"] == "other":
                        failures.append({**record, "operation": operation, "failure": result["error"]})
                    if result["peak"] > budget:
                        counts[operation]["budget breach"] += 1
                        failures.append({**record, "operation": operation,
                                         "failure": f"peak {result['peak']:,} B over the budget {budget:,} B"})
                if checkpoint is not None and (index - start + 1) % 250 == 0:
                    checkpoint(summary(index - start + 1))
                if progress and (index - start + 1) % 500 == 0:
                    print(f"{index - start + 1}/{cases} cases, {len(failures)} failures, {time.perf_counter() - began:.0f} s", file=sys.stderr)
    finally:
        worker.stop()
    return summary(cases)


def replay(index: int, campaign_seed: int) -> None:
    """Case ``index`` in this process, with tracebacks: for debugging a failure."""
    seeds = seed_files()
    seed_name, mutators, notes, data = make_case(seeds, campaign_seed, index)
    print(f"case {index}: seed file {seed_name}, mutators {mutators}: {notes}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.jsz"
        path.write_bytes(data)
        from jointsparse.codecs import FormatError

        for name, operation in _operations().items():
            try:
                operation(str(path))
                print(f"{name}: ok")
            except FormatError as error:
                print(f"{name}: FormatError: {error}")
            except Exception:  # noqa: BLE001
                print(f"{name}: OTHER")
                traceback.print_exc()


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"


def markdown(summary: dict[str, Any], command: str) -> str:
    counts = summary["counts"]
    outcomes = ["ok", "FormatError", "other", "budget breach"]
    lines = [
        "# Adversarial campaign against the .jsz reader (issue 16)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine()}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Duration: {summary['seconds']:.0f} s",
        "",
        f"{summary['cases']:,} cases (campaign seed {summary['seed']}, cases "
        f"{', '.join(f'{a} to {b}' for a, b in summary['ranges'])}"
        f"{', run as %d parallel shards' % summary['shards'] if summary.get('shards', 1) > 1 else ''}), "
        "every one a real encoder file mutated and re-framed with all checksums recomputed, so every case "
        f"reaches the manifest parser. Each case runs all {len(OPERATIONS)} reader entry points. Budget per operation: "
        f"{summary['max_expansion']} x the file size (`DEFAULT_MAX_EXPANSION`) + {summary['allowance'] >> 20} MiB for the "
        f"interpreter; time limit {summary['time_limit']:g} s per case. See `experiments/fuzz_decoder.py` for the method.",
        "",
        "| operation | " + " | ".join(outcomes) + " |",
        "| --- | " + " | ".join("---:" for _ in outcomes) + " |",
    ]
    for operation in OPERATIONS:
        row = counts.get(operation, {})
        lines.append(f"| {operation} | " + " | ".join(f"{row.get(o, 0):,}" for o in outcomes) + " |")
    lines += [
        "",
        f"Hangs (no answer within the time limit): {counts.get('(case)', {}).get('hang', 0)}; "
        f"worker crashes: {counts.get('(case)', {}).get('crash', 0)}.  ",
        f"Failures in all (other exceptions, budget breaches, hangs): {len(summary['failures'])}.",
        "",
        "Per first mutator: cases every entry point decoded / cases refused with FormatError by at least one:",
        "",
        "| mutator | decoded | refused |",
        "| --- | ---: | ---: |",
    ]
    for name in MUTATORS:
        row = summary["by_mutator"].get(name, {})
        lines.append(f"| {name} | {row.get('decoded', 0):,} | {row.get('refused', 0):,} |")
    worst = summary["worst"]
    if worst.get("ratio"):
        lines += ["", f"Highest peak against its budget: {100 * worst['ratio']:.1f}% (case {worst['case']}, {worst['operation']}: "
                  f"{worst['peak']:,} B of {worst['budget']:,} B)."]
    lines += ["", "The unmutated seed files (peak resident growth per operation, bytes):", "",
              "| seed file | bytes | budget | " + " | ".join(OPERATIONS) + " |",
              "| --- | ---: | ---: | " + " | ".join("---:" for _ in OPERATIONS) + " |"]
    for name, row in summary["baseline"].items():
        lines.append(f"| {name} | {row['bytes']:,} | {row['budget']:,} | " + " | ".join(f"{row[op]['peak']:,}" for op in OPERATIONS) + " |")
    if summary["failures"]:
        lines += ["", "Failures (first 50):", ""]
        lines += [f"- case {f['case']} ({f['mutators']}: {f['notes'][:120]}) {f.get('operation', '')}: {f['failure'][:200]}" for f in summary["failures"][:50]]
    return "\n".join(lines) + "\n"


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of shards run in parallel (consecutive case ranges of one campaign seed)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    by_mutator: dict[str, Counter] = defaultdict(Counter)
    for summary in summaries:
        for key, row in summary["counts"].items():
            counts[key].update(row)
        for key, row in summary["by_mutator"].items():
            by_mutator[key].update(row)
    first = min(summaries, key=lambda s: s["start"])
    return {**first, "cases": sum(s["cases"] for s in summaries), "seconds": max(s["seconds"] for s in summaries),
            "counts": {k: dict(v) for k, v in counts.items()}, "by_mutator": {k: dict(v) for k, v in by_mutator.items()},
            "failures": [f for s in summaries for f in s["failures"]], "worst": max((s["worst"] for s in summaries), key=lambda w: w.get("ratio", 0)),
            "shards": len(summaries), "ranges": sorted(r for s in summaries for r in s["ranges"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="seconds per case")
    parser.add_argument("--allowance-mib", type=int, default=DEFAULT_ALLOWANCE_MIB)
    parser.add_argument("--out", type=Path, help="write the results (markdown) here")
    parser.add_argument("--replay", type=int, metavar="CASE", help="run one case here, with tracebacks")
    parser.add_argument("--summary-json", type=Path, help="also write the raw summary (JSON), e.g. for --combine")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON", help="merge the summaries of parallel shards")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    if args.replay is not None:
        replay(args.replay, args.seed)
        return 0
    from jointsparse.utils import atomic_write_text

    if args.combine:
        summary = combine([json.loads(path.read_text()) for path in args.combine])
    else:
        def save(partial: dict[str, Any]) -> None:
            if args.summary_json:
                atomic_write_text(args.summary_json, json.dumps(partial) + "\n")

        summary = run_campaign(args.cases, args.seed, start=args.start, time_limit=args.time_limit,
                               allowance=args.allowance_mib << 20, progress=True, checkpoint=save)
        save(summary)
    command = "python experiments/fuzz_decoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(summary, command.strip())
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0 if not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
