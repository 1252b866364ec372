"""Whole decoded models against dense torch (oneDNN) and onnxruntime, at the paper tables' densities.

For each network: random weights (seeded) pruned by magnitude to the per-layer spatial densities
of its recipe, encoded with ``jointsparse.encode`` (Winograd thresholds at the recipe's
Winograd sparsity) into a real ``.jsz`` file, then decoded four ways: dense (the architecture's
own modules), spatial, Winograd, and auto (per-layer choice timed in this run). Random weights
are not trained weights: the densities match the tables, the positions of the non-zeros do not.

``--file`` benches a trained ``.jsz`` (a committed table's) instead, at the input size its
provenance records: the positions of its non-zeros are then the trained ones.

Timings: threads pinned (torch, the compiled kernels and onnxruntime), the candidates interleaved round by
round, median and spread over the repeats. The machine is shared, so state the load.

    python experiments/bench_models.py --out experiments/results/bench_models.md
    python experiments/bench_models.py --networks "" --file experiments/results/ctsrcnn.jsz --out OUT.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

import torch

from jointsparse.codecs import FormatError, decode, encode, load
from jointsparse.export import static_adaptive_pools
from jointsparse.models import get_model
from jointsparse.nn import _compiled
from jointsparse.nn.choice import TimingCache
from jointsparse.nn.fast import swap_fast_layers
from jointsparse.provenance import command_line, machine_summary
from jointsparse.sparsity import spatial_prune
from jointsparse.timing import time_interleaved

RECIPES = Path(__file__).resolve().parent / "recipes"
# name, factory kwargs, input (C, H, W), recipe whose [sparsity] sections give the densities
NETWORKS = {
    "alexnet": ({"num_classes": 1000}, (3, 227, 227), "alexnet.toml"),
    "resnet18": ({"num_classes": 1000}, (3, 224, 224), "resnet18.toml"),
    "vgg_small": ({"num_classes": 10, "in_channels": 3}, (3, 32, 32), "demo.toml"),
    # CT-SRCNN on a 256 x 256 luminance image, the size its MAC table is counted at
    "ctsrcnn": ({}, (1, 256, 256), "ctsrcnn.toml"),
}


def build_file(name: str, work: Path) -> tuple[Path, tuple[int, int, int]]:
    kwargs, size, recipe_name = NETWORKS[name]
    recipe = tomllib.loads((RECIPES / recipe_name).read_text())
    torch.manual_seed(0)
    model = get_model(name, **kwargs).eval()
    pruned = spatial_prune(model, recipe["sparsity"]["spatial"])
    path = work / f"{name}.jsz"
    encode(pruned, path, winograd_sparsity=recipe["sparsity"]["winograd"], m=recipe.get("winograd", {}).get("m", 2),
           arch={"name": name, "kwargs": kwargs}, provenance={"data": {"input_size": list(size)}, "note": "random weights, magnitude-pruned"})
    return path, size


def onnx_runner(model: torch.nn.Module, sample: torch.Tensor, threads: int, work: Path):
    """A callable running ``model`` densely in onnxruntime, or (None, reason)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed (pip install 'jointsparse[onnx]')"
    path = work / f"model-{sample.shape[0]}.onnx"
    model = copy.deepcopy(model)
    static_adaptive_pools(model, sample)  # AlexNet's adaptive pool does not export otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (sample,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    except Exception as error:  # noqa: BLE001 - report and skip the column
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        return None, f"onnx export failed ({type(error).__name__}: {first_line})"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = sample.numpy()
    return (lambda: session.run(None, {"x": array})), None


def trained_file(path: Path) -> tuple[str, tuple[int, int, int]]:
    """A trained file's row label and the input size (C, H, W) its provenance records (ValueError
    when it records none)."""
    manifest = load(path).manifest
    size = ((manifest.get("provenance") or {}).get("data") or {}).get("input_size")
    if not (isinstance(size, list) and len(size) == 3):
        raise ValueError(f"{path} records no input size (provenance data.input_size); bench its architecture through --networks instead")
    return f"{manifest['arch']['name']} (trained: {path.name})", tuple(size)


def bench_network(name: str, work: Path, batches: list[int], threads_list: list[int], repeats: int,
                  file: tuple[Path, tuple[int, int, int]] | None = None) -> list[dict]:
    """``name``'s file built from random weights, or ``file`` (a trained file and its input size; ``name`` its row label)."""
    path, size = build_file(name, work) if file is None else file
    rows = []
    cache = TimingCache(work / "layer_timings.json")  # fresh per run: choices timed under this run's load
    for threads in threads_list:
        for batch in batches:
            torch.set_num_threads(threads)
            sample = torch.randn(batch, *size, generator=torch.Generator().manual_seed(1))
            dense = decode(path, "spatial", runtime=False)
            dense_fast = copy.deepcopy(dense)
            swap_fast_layers(dense_fast)
            models = {
                "dense": dense,
                "dense_fast": dense_fast,
                "spatial": decode(path, "spatial"),
                "winograd": decode(path, "winograd"),
                "auto": decode(path, "auto", batch=batch, threads=threads, timing_cache=cache),
            }
            runners = {key: (lambda model=model: model(sample)) for key, model in models.items()}
            ort_run, ort_note = onnx_runner(dense, sample, threads, work)
            if ort_run is not None:
                runners["onnxruntime"] = ort_run
            timings = time_interleaved(runners, repeats)
            choices = models["auto"].deployment_choices
            rows.append({"network": name, "input": list(size), "batch": batch, "threads": threads, "timings": timings,
                         "onnx_note": ort_note, "auto_choices": {k: v["choice"] for k, v in choices.items()},
                         "auto_layer_ms": {k: v["ms"] for k, v in choices.items()}})
            print(json.dumps({k: rows[-1][k] for k in ("network", "batch", "threads")}), {k: round(v["median_ms"], 2) for k, v in timings.items()}, flush=True)
    return rows


def ratio(row: dict, key: str, clock: str) -> str:
    timing = row["timings"].get(key)
    return "-" if timing is None else f"{row['timings']['dense'][clock] / timing[clock]:.2f}x"


def render(rows: list[dict], header: list[str]) -> str:
    lines = list(header)
    for clock, title in (("median_ms", "wall clock: median ms [min-max] over the repeats"),
                         ("cpu_ms", "process CPU time: mean ms per run (excludes time the scheduler gave to other jobs; with 2 threads, both threads' time)")):
        lines += ["", f"## Whole model, {title}; speed-up vs dense torch in brackets (>1 = faster)", ""]
        lines.append("| network | batch | threads | dense torch | dense torch, our pool/LRN | onnxruntime dense | spatial | Winograd | auto | auto vs onnxruntime | auto vs dense with our pool/LRN |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            def cell(key: str) -> str:
                if key not in row["timings"]:
                    return "-"
                entry = row["timings"][key]
                spread = f" [{entry['min_ms']:.1f}-{entry['max_ms']:.1f}]" if clock == "median_ms" else ""
                return f"{entry[clock]:.1f}{spread} ({ratio(row, key, clock)})"
            vs_ort = "-" if "onnxruntime" not in row["timings"] else f"{row['timings']['onnxruntime'][clock] / row['timings']['auto'][clock]:.2f}x"
            vs_fast = f"{row['timings']['dense_fast'][clock] / row['timings']['auto'][clock]:.2f}x"
            lines.append(f"| {row['network']} {'x'.join(map(str, row['input'][1:]))} | {row['batch']} | {row['threads']} | "
                         f"{cell('dense')} | {cell('dense_fast')} | {cell('onnxruntime')} | {cell('spatial')} | {cell('winograd')} | {cell('auto')} | {vs_ort} | {vs_fast} |")
    notes = sorted({row["onnx_note"] for row in rows if row["onnx_note"]})
    if notes:
        lines += ["", *[f"- onnxruntime column skipped: {note}" for note in notes]]
    lines += ["", "## auto: per-layer choice and the per-layer mean CPU times it was chosen by", ""]
    for row in rows:
        lines.append(f"- {row['network']}, batch {row['batch']}, {row['threads']} thread(s): "
                     + ", ".join(f"{layer}={choice}" for layer, choice in row["auto_choices"].items()))
        slow = []
        for layer, ms in row["auto_layer_ms"].items():
            if ms and "dense" in ms:
                best = min(ms.values())
                slow.append(f"{layer} {ms['dense'] / best:.2f}x")
        if slow:
            lines.append("  - chosen form vs dense, per layer (timed when choosing): " + ", ".join(slow))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/results/bench_models.md")
    parser.add_argument("--networks", default="alexnet,resnet18,vgg_small,ctsrcnn")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--file", type=Path, action="append", default=[], help="a trained .jsz to bench as well (repeatable)")
    args = parser.parse_args(argv)
    networks = [n for n in args.networks.split(",") if n]
    trained = []  # (label, (path, input size)), checked before any row is benched
    for file in args.file:
        if not file.is_file():
            parser.error(f"no such file: {file}")
        try:
            label, size = trained_file(file)
        except (ValueError, FormatError) as error:
            parser.error(str(error).splitlines()[0])
        trained.append((label, (file, size)))
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network(s) {unknown}; known: {sorted(NETWORKS)}")
    load_before = os.getloadavg()
    kernels = f"sparse layers: {_compiled.describe()}"
    out = Path(args.out)

    def write(rows: list[dict], pending: list[str]) -> str:
        load_now = os.getloadavg()
        header = [
            "# Whole decoded models vs dense torch and onnxruntime",
            "",
            f"- command: `{command_line()}`",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- machine: {machine_summary()}; {kernels}",
            f"- load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, at writing: {'/'.join(f'{v:.2f}' for v in load_now)}."
            " The 2-core machine was shared with other engineers' jobs: the wall clock mostly measures their time slices; the CPU-time table is the one to read."
            " Ratios are within one run, candidates interleaved.",
            *([f"- trained files: {', '.join(f'`{f}`' for f in args.file)}, decoded as they are (their own non-zeros and Winograd thresholds)."] if args.file else []),
            *(["- weights of the other rows: random (seeded), pruned by magnitude to the recipes' per-layer spatial densities (experiments/recipes/"
            "alexnet.toml, resnet18.toml; vgg_small at demo.toml's), Winograd thresholds at the recipes' Winograd sparsity, "
            "encoded with jointsparse.encode and decoded from the .jsz file. Densities match the paper tables; trained weights would differ in where the non-zeros are."] if networks else []),
            f"- {args.repeats} interleaved repeats per cell after 2 warm-up rounds; 'auto' chose per layer in the same run by process CPU time (timing cache fresh per run).",
        ]
        if pending:
            header.append(f"- not measured (run stopped before them): {', '.join(pending)}")
        text = render(rows, header)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_suffix(out.suffix + ".tmp")
        tmp_out.write_text(text)
        os.replace(tmp_out, out)
        return text

    rows: list[dict] = []
    jobs = [(name, None) for name in networks] + trained
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, file) in enumerate(jobs):
            rows += bench_network(name, Path(tmp), [int(b) for b in args.batches.split(",")], [int(t) for t in args.threads.split(",")],
                                  args.repeats, file)
            text = write(rows, [name for name, _ in jobs[index + 1:]])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
