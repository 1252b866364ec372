"""Codec benchmark: context-modelled positions and indices (ans+ctx) vs order-0 ANS vs zstd vs NNCodec.

Three sets of tensors. LeNet-5- and AlexNet-shaped random Gaussian weights at 90% spatial
sparsity, k-means with 5 bits in every layer (real shapes, i.i.d. masks: no context can help
there, by construction). Then trained, pruned files (default: the committed
experiments/results/ctsrcnn.jsz; pass more with --jsz, e.g. the demo's vgg_small model.jsz), whose
quantized layers are re-coded (raw tensors left out, so every coder codes the same tensors).

For each variant (ans with the ctx position and index codings, the default; ans with the order-0
codings; zstd) it prints the code-and-write time, the decode time (load + dequantize,
medians over repeats, one thread), the bytes of the position streams against their order-0 bound
``N H(nnz/N) / 8`` and against the context bound (the map's conditional entropy under the contexts
the ctx coder picks), and the index streams against their order-0 bound and their context bound
(the indices' conditional entropy given the context the ctx index coder picks). With ``--nncodec
PYTHON`` (a Python where ``pip install --no-deps nncodec==2.1.3`` was built, with numpy < 2, pybind11,
scikit-learn, h5py, pandas and tqdm) it
also codes the same integer level tensors with NNCodec (experiments/nncodec_run.py; torchvision
and cv2 are stubbed by experiments/nncodec_stubs, NNCodec imports them but this path never uses them).

    python experiments/bench_codec.py                 # both models and ctsrcnn.jsz, 3 repeats
    python experiments/bench_codec.py --quick         # LeNet-5 only, 1 repeat
    python experiments/bench_codec.py --jsz experiments/results/ctsrcnn.jsz experiments/results/demo_vgg_small.jsz \\
        experiments/results/alexnet_tables.jsz experiments/results/resnet18_tables.jsz \\
        --nncodec /path/to/venv/bin/python --out experiments/results/bench_codec.md

experiments/results/demo_vgg_small.jsz is the demo's file (``bash scripts/demo.sh OUT`` writes it as
OUT/model.jsz), committed so that the benchmark's inputs are all in the repository."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _blas_threads(argv: list[str]) -> str:
    """``--threads``, read before numpy and torch start their BLAS and OpenMP pools (they read
    the variables below only then)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--threads", type=int, default=1)
    return str(early.parse_known_args(argv)[0].threads)


# --threads caps numpy's BLAS pool too, which torch.set_num_threads does not: with the machine's
# cores taken by another job, OpenBLAS's spinning threads made the ctx encoder's CPU time 14x
# larger (AlexNet fc6: 1.5 s with one thread, 22 s with the default pool).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, _blas_threads(sys.argv[1:]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zstandard  # noqa: E402,F401  (its version goes in the header)

# Measure the checkout this script is in: ``python experiments/bench_codec.py`` puts experiments/
# (not the checkout) first on sys.path, so an editable install of another checkout would win.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jointsparse.codecs import load, quantize_weight, save  # noqa: E402
from jointsparse.codecs.context import context_entropy_bytes  # noqa: E402
from jointsparse.codecs.entropy import bitmap_entropy_bytes  # noqa: E402
from jointsparse.codecs import index_context  # noqa: E402
from jointsparse.utils import atomic_write_text  # noqa: E402
from jointsparse.provenance import machine_summary  # noqa: E402

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
DEFAULT_FILE = Path(__file__).resolve().parent / "results" / "ctsrcnn.jsz"


#: The AlexNet paper table's densities (SPEC section 10): conv1 0.4, conv2-5 0.2, fc6-7 0.04, fc8 0.2.
PAPER_DENSITY = {"conv1": 0.4, "conv2": 0.2, "conv3": 0.2, "conv4": 0.2, "conv5": 0.2, "fc6": 0.04, "fc7": 0.04, "fc8": 0.2}


def _structured_sparse(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Synthetic trained-like mask at the paper densities: a quarter of the input channels dead,
    rows (filters) of different density, and (conv) the centre tap kept twice as often as the
    rest. Not a trained network: a timing and sanity case for the ctx coder at AlexNet size."""
    density = PAPER_DENSITY[name.split(".")[0]]
    rows, cols = shape[0], shape[1]
    alive = (torch.rand(cols, generator=generator) >= 0.25).float()
    row_scale = 0.5 + torch.rand(rows, generator=generator)
    p = row_scale[:, None] * alive[None, :]
    if len(shape) == 4:
        tap = torch.ones(shape[2], shape[3])
        tap[shape[2] // 2, shape[3] // 2] = 2.0
        p = p[:, :, None, None] * tap
    p = (p * density / p.mean()).clamp(max=1.0)
    weight = torch.randn(shape, generator=generator)
    return weight * (torch.rand(shape, generator=generator) < p)


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


def _levels(layer) -> np.ndarray:
    """The layer as the signed integer tensor DeepCABAC codes: 0 where pruned, else the rank of
    the weight's codebook entry away from zero (-1, -2, ... below zero, 1, 2, ... above)."""
    codebook = np.asarray(layer.codebook, dtype=np.float64)
    level = np.zeros(len(codebook), dtype=np.int32)
    negative = np.flatnonzero(codebook < 0)
    positive = np.flatnonzero(codebook >= 0)
    level[negative[np.argsort(-codebook[negative])]] = -np.arange(1, negative.size + 1)
    level[positive[np.argsort(codebook[positive])]] = np.arange(1, positive.size + 1)
    tensor = np.zeros(layer.numel, dtype=np.int32)
    tensor[layer.positions] = level[layer.indices.astype(np.int64)]
    return tensor.reshape(layer.shape)


def _nncodec_bytes(layers: dict, python: str | None, workdir: Path) -> tuple[int, int] | None:
    """NNCodec's bitstream bytes on the layers' integer level tensors (lossless, int32 input),
    and the float32 codebooks it would need besides (4 bytes an entry); None if not available."""
    if not python:
        return None
    arrays = workdir / "levels.npz"
    np.savez(arrays, **{name: _levels(layer) for name, layer in layers.items()})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent / "nncodec_stubs")}
    done = subprocess.run([python, str(Path(__file__).resolve().parent / "nncodec_run.py"), str(arrays)], capture_output=True, text=True, env=env)
    if done.returncode:
        print(f"NNCodec failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["roundtrip"], "NNCodec did not reproduce the level tensors"
    return int(result["bytes"]), sum(4 * len(layer.codebook) for layer in layers.values())


def _context_bound(stored) -> float:
    """The map's conditional empirical entropy under the contexts the ctx coder picks (bytes)."""
    q = stored.quantized
    return context_entropy_bytes(q.positions, q.shape) if q.numel else 0.0


def _index_bound(stored) -> float:
    """The indices' conditional empirical entropy under the contexts the ctx index coder picks
    (bytes; their order-0 bound where it cannot run)."""
    q = stored.quantized
    if not index_context.supports(len(q.codebook), q.nnz):
        return stored.indices.entropy_bytes
    return index_context.encode_context_indices(q.indices, q.positions, q.shape, len(q.codebook))[2]


VARIANTS = (("ans+ctx", "ans", True), ("ans order-0", "ans", False), ("zstd", "zstd", False))


def bench_layers(title: str, layers: dict, repeats: int, workdir: Path, nncodec: str | None, note: str = "") -> list[str]:
    """Code ``layers`` (name -> QuantizedLayer) with every variant; one markdown section."""
    params = sum(layer.numel for layer in layers.values())
    nnz = sum(layer.nnz for layer in layers.values())
    lines = [f"### {title}: {params:,} weights, {nnz:,} non-zero (density {nnz / params:.3f})", ""]
    if note:
        lines += [note, ""]
    summary = [
        "| variant | file bytes | code+write s wall / CPU | decode s wall / CPU | position B | pos / H0 | pos / H_ctx | index B / H0 (with model) | idx / H_ctx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    results = {}
    for label, coder, contexts in VARIANTS:
        path = workdir / f"{label.replace(' ', '_')}.jsz"
        encode_s, encode_cpu, _ = _median_time(lambda: save(path, layers, coder=coder, contexts=contexts), repeats)

        def decode():
            contents = load(path)
            for stored in contents.layers.values():
                stored.quantized.dequantize()
            return contents

        decode_s, decode_cpu, contents = _median_time(decode, repeats)
        for stored in contents.layers.values():  # the benchmark checks its own round trip
            assert torch.equal(stored.quantized.dequantize(), layers[stored.name].dequantize())
        results[label] = (os.path.getsize(path), contents)
        stats = list(contents.layers.values())
        if label == VARIANTS[0][0]:
            bounds = {s.name: _context_bound(s) for s in stats}
            index_bounds = {s.name: _index_bound(s) for s in stats}
        pos_b = sum(s.positions.nbytes for s in stats)
        pos_h = sum(bitmap_entropy_bytes(s.quantized.numel, s.quantized.nnz) for s in stats)
        pos_c = sum(bounds.values())
        idx_b = sum(s.indices.nbytes for s in stats)
        idx_h = sum(s.indices.entropy_bytes for s in stats)
        if label == VARIANTS[0][0]:
            streams = pos_b + idx_b  # the coded weights without codebooks or headers, for the NNCodec comparison
        summary.append(
            f"| {label} | {results[label][0]:,} | {encode_s:.2f} / {encode_cpu:.2f} | {decode_s:.2f} / {decode_cpu:.2f} | "
            f"{pos_b:,} | {pos_b / pos_h:.4f} | {pos_b / pos_c:.4f} | {idx_b:,} / {idx_h:,.0f} = {idx_b / idx_h:.4f} | "
            f"{idx_b / sum(index_bounds.values()):.4f} |"
        )
    nnc = _nncodec_bytes(layers, nncodec, workdir)
    ours = results[VARIANTS[0][0]][0]
    if nnc is not None:
        stream, codebooks = nnc
        summary.append(
            f"| NNCodec 2.1.3 (DeepCABAC) | {stream:,} + {codebooks:,} codebook B = {stream + codebooks:,} | | | | | | | |"
        )
        half = save(workdir / "half.jsz", layers, codebook_dtype="float16").stat().st_size  # format version 4's option
        summary += ["", f"Whole file (ans+ctx) / NNCodec (bitstream + float32 codebooks): {ours / (stream + codebooks):.4f}; "
                    f"/ NNCodec bitstream alone: {ours / stream:.4f}. Both with float16 codebooks "
                    f"(ours `codebook_dtype = \"float16\"`, {half:,} B; NNCodec's codebook bytes halved): {half / (stream + codebooks / 2):.4f}. "
                    f"Weight streams alone (ours: positions + indices, {streams:,} B, without the per-layer headers; NNCodec: its bitstream, "
                    f"headers included): {streams / stream:.4f}."]
    lines += summary + [""]
    ctx_stats = results[VARIANTS[0][0]][1].layers
    order0 = results[VARIANTS[1][0]][1].layers
    lines += [
        "Per stream, ans+ctx (bytes; H0 = the map's order-0 bound `N H(nnz/N) / 8`; H_ctx = its conditional "
        "entropy under the contexts the ctx coder picks, without side information and counts; order-0 = "
        "the best of bitmap and gaps, as version 1 wrote it; idx H_ctx = the indices' conditional entropy given "
        "the context the ctx index coder picks, without its header and what its models learn; idx coding: ctx, or "
        "ord0 where the order-0 stream was smaller):",
        "",
        "| layer | non-zeros | coding | pos B | order-0 pos B | pos H0 | pos H_ctx | pos / H0 | pos / H_ctx | idx coding | idx B | order-0 idx B | idx H0 | idx H_ctx | idx / H0 | idx / H_ctx |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in ctx_stats.items():
        p, i, q = s.positions, s.indices, s.quantized
        h0 = bitmap_entropy_bytes(q.numel, q.nnz)
        lines.append(
            f"| {name} | {q.nnz:,} of {q.numel:,} | {p.coding} | {p.nbytes:,} | {order0[name].positions.nbytes:,} | {h0:,.0f} | "
            f"{bounds[name]:,.0f} | {p.nbytes / h0:.4f} | {p.nbytes / bounds[name]:.4f} | {i.coding or 'ord0'} | {i.nbytes:,} | "
            f"{order0[name].indices.nbytes:,} | {i.entropy_bytes:,.0f} | {index_bounds[name]:,.0f} | {i.nbytes / i.entropy_bytes:.4f} | "
            f"{i.nbytes / index_bounds[name]:.4f} |"
        )
    return lines + [""]


def bench_model(name: str, shapes: dict, repeats: int, workdir: Path, nncodec: str | None, structured: bool = False) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    if structured:
        weights = {layer: _structured_sparse(layer, shape, generator) for layer, shape in shapes.items()}
    else:
        weights = {layer: _random_sparse(shape, generator) for layer, shape in shapes.items()}
    kinds = {layer: "conv" if len(shape) == 4 else "linear" for layer, shape in shapes.items()}
    quantize_s, quantize_cpu, layers = _median_time(lambda: {n: quantize_weight(w, "kmeans", BITS, kind=kinds[n]) for n, w in weights.items()}, repeats)
    what = ("synthetic structured masks at the paper table's densities (dead input channels, filters of different "
            "density, a favoured centre tap; see _structured_sparse)" if structured else
            "i.i.d. random mask (no context gain by construction)")
    note = (f"Random Gaussian weights, {what}, k-means {BITS} bits. "
            f"k-means quantization of all layers: {quantize_s:.2f} s wall, {quantize_cpu:.2f} s CPU (medians of {repeats}).")
    return bench_layers(f"{name}-shaped{', structured' if structured else ''}", layers, repeats, workdir, nncodec, note)


def bench_file(path: Path, repeats: int, workdir: Path, nncodec: str | None) -> list[str]:
    """A trained, pruned file: its quantized layers re-coded (raw tensors left out, so that every
    coder codes exactly the same tensors)."""
    contents = load(path)
    layers = {name: stored.quantized for name, stored in contents.layers.items()}
    arch = (contents.arch or {}).get("name", "?")
    note = (f"`{path}` (arch `{arch}`, {contents.file_size:,} bytes as stored, format version "
            f"{contents.manifest['version']}): its quantized layers re-coded; raw tensors (biases, BatchNorm) left out.")
    return bench_layers(f"{path.name} ({arch})", layers, repeats, workdir, nncodec, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LeNet-5 only, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the results as markdown here")
    parser.add_argument("--jsz", type=Path, nargs="*", default=[DEFAULT_FILE], help="trained .jsz files whose layers to re-code")
    parser.add_argument("--nncodec", metavar="PYTHON", help="a Python with nncodec 2.1.3 installed (numpy < 2): compare with it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    models = {"LeNet-5": MODELS["LeNet-5"]} if args.quick else MODELS
    command = "python experiments/bench_codec.py " + " ".join(argv if argv is not None else sys.argv[1:])
    command = re.sub(r"(--nncodec[ =])\S+", r"\1NNCODEC_PYTHON", command)  # a venv of this machine, not part of the figures
    header = [
        "# Codec benchmark: context-modelled positions and indices (ans+ctx) vs order-0 ANS vs zstd vs NNCodec",
        "",
        f"Command: `{command.strip()}`",
        *(["", "NNCODEC_PYTHON: the interpreter of a venv with NNCodec 2.1.3 (`python -m venv V; V/bin/pip install \"numpy<2\" pybind11 "
            "scikit-learn h5py pandas tqdm torch==2.13.0; V/bin/pip install --no-deps nncodec==2.1.3`)."] if args.nncodec else []),
        "",
        f"Machine: {machine_summary()} ({platform.machine()}), no GPU, shared with other jobs; "
        f"torch {torch.__version__} (CPU, {args.threads} thread; numpy's BLAS pool as many), numpy {np.__version__}, zstandard {zstandard.__version__}, "
        f"constriction {importlib.metadata.version('constriction')}, "
        f"Python {platform.python_version()}. Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Times are medians of {repeats} repeats (wall / process CPU); decode = load (validate, entropy-decode) + dequantize every layer; "
        f"the ctx index decoder's sequential step in {'the C helper jointsparse.codecs._interleave' if index_context._interleave else 'Python (the C helper is not built)'}.",
        "",
    ]
    body: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shapes in models.items():
            body += bench_model(name, shapes, repeats, Path(tmp), args.nncodec)
            print("\n".join(body), file=sys.stderr, flush=True)
        if not args.quick:
            body += bench_model("AlexNet", MODELS["AlexNet"], repeats, Path(tmp), args.nncodec, structured=True)
        for path in [] if args.quick else args.jsz:
            body += bench_file(path, repeats, Path(tmp), args.nncodec)
    text = "\n".join(header + body)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
