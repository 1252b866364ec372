"""Codec benchmark: ANS (constriction) vs zstd on LeNet-5- and AlexNet-shaped sparse weights.

Random Gaussian weights at 90% spatial sparsity, k-means with 5 bits in every layer (the shapes
are the real ones; no model or data is needed). For each coder it prints the quantize time, the
code-and-write time, the decode time (load + dequantize, medians over repeats, one thread), the
bytes of every position and index stream, each stream's order-0 entropy bound and the ratio to
it (the index stream with and without its stored model). As a point of comparison with SPEC
section 10, it also codes each layer's dense int8 code tensor (0 = pruned, else index + 1) with
zstd -19, which is how "zstd on raw symbol arrays" is often done.

    python experiments/bench_codec.py                 # both models, 3 repeats
    python experiments/bench_codec.py --quick         # LeNet-5 only, 1 repeat
    python experiments/bench_codec.py --out experiments/results/bench_codec.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

from jointsparse.codecs import load, quantize_weight, save
from jointsparse.codecs.entropy import order0_entropy_bits
from jointsparse.utils import atomic_write_text
from jointsparse.provenance import cpu_model

MODELS = {
    "LeNet-5": {
        "conv1.weight": (20, 1, 5, 5),
        "conv2.weight": (50, 20, 5, 5),
        "fc1.weight": (500, 800),
        "fc2.weight": (10, 500),
    },
    "AlexNet": {  # Caffe shapes; conv2, conv4 and conv5 have groups=2
        "conv1.weight": (96, 3, 11, 11),
        "conv2.weight": (256, 48, 5, 5),
        "conv3.weight": (384, 256, 3, 3),
        "conv4.weight": (384, 192, 3, 3),
        "conv5.weight": (256, 192, 3, 3),
        "fc6.weight": (4096, 9216),
        "fc7.weight": (4096, 4096),
        "fc8.weight": (1000, 4096),
    },
}
DENSITY = 0.1
BITS = 5
CODERS = ("ans", "zstd")


def _random_sparse(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(shape, generator=generator)
    return weight * (torch.rand(shape, generator=generator) < DENSITY)


def _median_time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and median process-CPU seconds of ``repeats`` calls, and the last result. On a
    shared machine the CPU clock is the steadier of the two."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def _dense_code_zstd(layer) -> tuple[int, float]:
    """zstd -19 on the dense uint8 code tensor and that tensor's order-0 entropy bound (bytes)."""
    codes = np.zeros(layer.numel, dtype=np.uint8)
    codes[layer.positions] = layer.indices.astype(np.uint8) + 1
    size = len(zstandard.ZstdCompressor(level=19).compress(codes.tobytes()))
    return size, order0_entropy_bits(np.bincount(codes, minlength=256)) / 8


def bench_model(name: str, shapes: dict, repeats: int, workdir: Path) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    weights = {layer: _random_sparse(shape, generator) for layer, shape in shapes.items()}
    kinds = {layer: "conv" if len(shape) == 4 else "linear" for layer, shape in shapes.items()}
    quantize_s, quantize_cpu, layers = _median_time(lambda: {n: quantize_weight(w, "kmeans", BITS, kind=kinds[n]) for n, w in weights.items()}, repeats)
    params = sum(w.numel() for w in weights.values())
    lines = [f"### {name}-shaped: {params:,} weights, density {DENSITY}, k-means {BITS} bits", ""]
    lines.append(f"k-means quantization of all layers: {quantize_s:.2f} s wall, {quantize_cpu:.2f} s CPU (medians of {repeats})")
    lines.append("")
    summary = [
        "| coder | file bytes | code+write s wall / CPU | decode s wall / CPU | position B / H0 | index B / H0 (with model) | index payload / H0 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    details = []
    for coder in CODERS:
        path = workdir / f"{name}-{coder}.jsz"
        encode_s, encode_cpu, _ = _median_time(lambda: save(path, layers, coder=coder), repeats)

        def decode():
            contents = load(path)
            for stored in contents.layers.values():
                stored.quantized.dequantize()
            return contents

        decode_s, decode_cpu, contents = _median_time(decode, repeats)
        for stored in contents.layers.values():  # the benchmark checks its own round trip
            assert torch.equal(stored.quantized.dequantize(), layers[stored.name].dequantize())
        stats = list(contents.layers.values())
        pos_b = sum(s.positions.nbytes for s in stats)
        pos_h = sum(s.positions.entropy_bytes for s in stats)
        idx_b = sum(s.indices.nbytes for s in stats)
        idx_model = sum(s.indices.model_bytes for s in stats)
        idx_h = sum(s.indices.entropy_bytes for s in stats)
        summary.append(
            f"| {coder} | {os.path.getsize(path):,} | {encode_s:.2f} / {encode_cpu:.2f} | {decode_s:.2f} / {decode_cpu:.2f} | "
            f"{pos_b:,} / {pos_h:,.0f} = {pos_b / pos_h:.4f} | {idx_b:,} / {idx_h:,.0f} = {idx_b / idx_h:.4f} | {(idx_b - idx_model) / idx_h:.4f} |"
        )
        details.append(f"**{coder}** per stream (bytes; H0 = order-0 entropy bound in bytes):")
        details.append("")
        details.append("| layer | positions | coding | pos B | pos H0 | pos / H0 | idx B | idx model B | idx H0 | idx / H0 | idx payload / H0 |")
        details.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in stats:
            p, i = s.positions, s.indices
            details.append(
                f"| {s.name} | {s.quantized.nnz:,} of {s.quantized.numel:,} | {p.coding} | {p.nbytes:,} | {p.entropy_bytes:,.0f} | "
                f"{p.nbytes / p.entropy_bytes:.4f} | {i.nbytes:,} | {i.model_bytes} | {i.entropy_bytes:,.0f} | "
                f"{i.nbytes / i.entropy_bytes:.4f} | {(i.nbytes - i.model_bytes) / i.entropy_bytes:.4f} |"
            )
        details.append("")
    dense = ["For comparison (SPEC 10): zstd -19 on each layer's dense uint8 code tensor (0 = pruned, else index + 1):", ""]
    dense += ["| layer | zstd B | H0 of dense codes | ratio |", "| --- | ---: | ---: | ---: |"]
    for layer_name, layer in layers.items():
        size, bound = _dense_code_zstd(layer)
        dense.append(f"| {layer_name} | {size:,} | {bound:,.0f} | {size / bound:.3f} |")
    return lines + summary + [""] + details + dense + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LeNet-5 only, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the results as markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    models = {"LeNet-5": MODELS["LeNet-5"]} if args.quick else MODELS
    header = [
        "# Codec benchmark: ANS (constriction) vs zstd",
        "",
        f"Command: `python experiments/bench_codec.py{' --quick' if args.quick else ''}"
        f"{f' --repeats {args.repeats}' if args.repeats != 3 and not args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads != 1 else ''}{f' --out {args.out}' if args.out else ''}`",
        "",
        f"Machine: {os.cpu_count()}-core {cpu_model()} ({platform.machine()}), no GPU, shared with other jobs; "
        f"torch {torch.__version__} (CPU, {args.threads} thread), numpy {np.__version__}, zstandard {zstandard.__version__}, "
        f"constriction {importlib.metadata.version('constriction')}, "
        f"Python {platform.python_version()}. Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Times are medians of {repeats} repeats (wall / process CPU); decode = load (validate, entropy-decode) + dequantize every layer.",
        "",
    ]
    body: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shapes in models.items():
            body += bench_model(name, shapes, repeats, Path(tmp))
            print("\n".join(body[-3:]), file=sys.stderr, flush=True)
    text = "\n".join(header + body)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
