"""Issue #6's comparison: every sparsity method through the same compression pipeline.

Each dense model is trained once (cached as ``<out-dir>/<model>/dense.pt``); every method then
starts from that checkpoint and runs :func:`jointsparse.compress.compress` (retrain with the
method's hook -> prune/finalize -> masked fine-tune -> quantize -> codebook fine-tune -> encode)
into a real ``.jsz``. The file is then decoded for both deployments and evaluated, and its
report and MAC counts are read back from the file (``codecs.report``, ``jointsparse.info.info_payload``).

Every method stores the same Winograd target (``--winograd-target``) for decode-time pruning,
so the Winograd column shows which methods survive Winograd pruning: only joint sparsity is
trained for it.

Per-method results are cached in ``<out-dir>/<model>/<method>.json`` together with the settings
that produced them; a later run with the same settings reuses them (so models can run in
parallel processes and a final run assembles the table).

    python experiments/compare_methods.py --quick --out-dir /tmp/cmp        # smoke, < 2 min
    python experiments/compare_methods.py --models lenet5,vgg_small --subset 12000 ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from jointsparse.baselines import DEEP_COMPRESSION_BITS, METHODS, deep_compression_bytes
from jointsparse.checkpoint import load_model, save_model
from jointsparse.codecs import decode, load
from jointsparse.compress import compress
from jointsparse.data import make_loaders
from jointsparse.info import info_payload
from jointsparse.models import get_model
from jointsparse.provenance import machine_summary
from jointsparse.recipe import StageConfig, parse_recipe
from jointsparse.train import evaluate, seed_everything, train
from jointsparse.utils import atomic_write_text

ALL_METHODS = ("joint_sparsity", *METHODS)
RESULTS = Path(__file__).resolve().parent / "results"
#: Model constructor arguments: vgg_small at half width keeps its runs within the CPU budget.
MODEL_KWARGS = {"lenet5": {}, "vgg_small": {"width": 0.5}}


class CompareError(ValueError):
    """A bad command line (unknown model or method)."""


def per_model(spec: str, model_name: str, flag: str) -> float:
    """``0.03`` for every model, or ``lenet5=0.02,vgg_small=0.04`` (a model not named is an error)."""
    try:
        if "=" not in spec:
            return float(spec)
        values = {key.strip(): float(value) for key, value in (item.split("=", 1) for item in spec.split(",") if item)}
    except ValueError:
        raise CompareError(f"{flag} {spec!r}: give a number or model=number pairs") from None
    if model_name not in values:
        raise CompareError(f"{flag} {spec!r} names no value for {model_name}")
    return values[model_name]


def method_settings(method: str, model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides for ``method``: its regularizer options and, where the method has
    them, its own quantization bits. Options aim at 70-90% of the weights removed."""
    spatial = args.spatial_target
    if method == "joint_sparsity":
        return {"regularizer": {"method": method, "mode": "joint", "update_every": 20},
                "sparsity": {"spatial": {"*": spatial}}}
    steps = args.steps_per_epoch * args.epochs_retrain
    options: dict[str, Any] = {
        # Prox strengths are outcomes, not targets: set so that a few epochs at lr 0.02 reach
        # about the target; the table reports the density actually reached.
        "l1_prox": {"lam": per_model(args.l1_lam, model_name, "--l1-lam")},
        "l0_budget": {"keep": round(1 - spatial, 4), "every": max(1, steps // 8)},
        # Channel connections only exist in convs (Changpinyo et al.); FC layers stay dense.
        "channel_sparse": {"alpha": round(1 - spatial, 4)},
        # Magnitude pruning after Bridgeout training (filter-norm pruning at 80% kills the net).
        "bridgeout": {"p": per_model(args.bridgeout_p, model_name, "--bridgeout-p"), "q": 1.6, "prune": "magnitude", "sparsity": spatial},
        "group_prox": {"lam": per_model(args.group_lam, model_name, "--group-lam")},
        "deep_compression": {"sparsity": spatial, "rounds": 3, "every": max(1, steps // 3)},
    }[method]
    settings: dict[str, Any] = {"regularizer": {"method": method, "options": options}}
    if method == "deep_compression":
        # Han et al.'s own bit widths (8 conv, 5 FC) rather than the common recipe's.
        settings["quantize"] = {"conv_bits": DEEP_COMPRESSION_BITS["conv"], "linear_bits": DEEP_COMPRESSION_BITS["linear"]}
    return settings


def build_recipe(method: str, model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    stage = {"max_steps_per_epoch": args.max_steps} if args.max_steps else {}
    recipe: dict[str, Any] = {
        "data": {"batch_size": args.batch_size},
        "sparsity": {"spatial": {"*": args.spatial_target}, "winograd": {"*": args.winograd_target}},
        "retrain": {"epochs": args.epochs_retrain, "lr": args.lr, **stage},
        "finetune": {"epochs": args.epochs_finetune, "lr": args.lr / 5, **stage},
        "codebook": {"epochs": args.epochs_codebook, "lr": 0.0005, "momentum": 0.0, "schedule": "constant", **stage},
        "quantize": {"method": "kmeans", "conv_bits": 6, "linear_bits": 5},
        "winograd": {"m": 2},
    }
    for section, values in method_settings(method, model_name, args).items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def train_dense(model_name: str, loaders: tuple, info: Any, args: argparse.Namespace, out: Path, log) -> Path:
    """The dense baseline, trained once per model and settings and cached."""
    path = out / "dense.pt"
    signature = {"subset": args.subset, "epochs": args.epochs_dense, "max_steps": args.max_steps, "data": args.data,
                 "batch_size": args.batch_size, "kwargs": MODEL_KWARGS[model_name], "seed": args.seed}
    if path.is_file():
        _, payload = load_model(path)
        if payload["meta"].get("signature") == signature:
            log(f"[{model_name}] dense checkpoint cached: {path}")
            return path
    seed_everything(args.seed)
    model = get_model(model_name, num_classes=info.num_classes, in_channels=info.in_channels, **MODEL_KWARGS[model_name])
    stage = StageConfig(epochs=args.epochs_dense, lr=args.dense_lr, weight_decay=5e-4, max_steps_per_epoch=args.max_steps or 0)
    start = time.perf_counter()
    result = train(model, loaders[0], loaders[1], stage.train_config(seed=args.seed, device="cpu", progress=False),
                   checkpoint_path=out / "dense.ckpt", stage="dense")
    (out / "dense.ckpt").unlink(missing_ok=True)
    save_model(path, model.state_dict(), model.jointsparse_arch,
               meta={"signature": signature, "test_accuracy": result.test_accuracy, "seconds": time.perf_counter() - start})
    log(f"[{model_name}] dense: {100 * result.test_accuracy:.2f}% after {args.epochs_dense} epoch(s)")
    return path


def run_method(method: str, model_name: str, dense: Path, loaders: tuple, info: Any, args: argparse.Namespace, out: Path, log) -> dict[str, Any]:
    recipe_dict = build_recipe(method, model_name, args)
    cache = out / f"{method}.json"
    settings = {"recipe": recipe_dict, "dense": str(dense), "dense_mtime": dense.stat().st_mtime,
                "test_subset": args.test_subset, "seed": args.seed}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("settings") == settings:
            log(f"[{model_name}/{method}] cached: {cache}")
            return cached
    recipe = parse_recipe(recipe_dict)
    model, _ = load_model(dense)
    seed_everything(args.seed)
    jsz = out / f"{method}.jsz"
    data_record = {"name": args.data, "subset": args.subset, "input_size": [info.in_channels, *info.input_size]}
    start = time.perf_counter()
    result = compress(model, loaders[0], loaders[1], recipe, jsz, workdir=out / f"{method}.work", seed=args.seed,
                      progress=False, log=lambda line: log(f"[{model_name}/{method}] {line}"),
                      provenance={"data": data_record, "command": "experiments/compare_methods.py"})
    compress_seconds = time.perf_counter() - start
    decoded = {domain: evaluate(decode(jsz, domain), loaders[1])["accuracy"] for domain in ("spatial", "winograd")}
    payload = info_payload(str(jsz))
    total, macs = payload["report"]["total"], payload["macs"]
    record = {
        "model": model_name,
        "method": method,
        "options": recipe_dict["regularizer"].get("options", {}) or {k: v for k, v in recipe_dict["regularizer"].items() if k != "method"},
        "bits": {"conv": recipe.quantize.conv_bits, "linear": recipe.quantize.linear_bits},
        "accuracy": {"dense": result.accuracy["dense"], "compressed": result.accuracy["codebook"],
                     "decoded_spatial": decoded["spatial"], "decoded_winograd": decoded["winograd"], "stages": result.accuracy},
        "spatial_density": total["density"],
        "winograd_density": total["winograd_density"],
        "file_bytes": total["file_bytes"],
        "compression_ratio": total["compression_ratio"],
        "weights_only_ratio": total["weights_only_ratio"],
        "huffman_relative_index_bytes": deep_compression_bytes(load(jsz)),
        "macs": {k: macs[k] for k in ("dense", "spatial", "winograd", "reduction_spatial", "reduction_winograd")},
        "layers": [{k: row[k] for k in ("name", "params", "density", "winograd_density")} for row in payload["report"]["layers"]],
        "seconds": compress_seconds,
        "stage_seconds": result.seconds,
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "settings": settings,
    }
    record["huffman_relative_index_ratio"] = 32 * total["original_parameter_count"] / (8 * record["huffman_relative_index_bytes"])
    atomic_write_text(cache, json.dumps(record, indent=2) + "\n")
    log(f"[{model_name}/{method}] done in {compress_seconds:.0f} s: {total['file_bytes']:,} B, "
        f"{total['compression_ratio']:.1f}x, spatial {100 * decoded['spatial']:.2f}%, winograd {100 * decoded['winograd']:.2f}%")
    return record


# -- the table ----------------------------------------------------------------------------------


def _machine() -> str:
    return f"{machine_summary()} CPU (shared with other jobs), no GPU, {torch.get_num_threads()} thread(s)"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _options(record: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in record["options"].items())
    return f"{text}; {record['bits']['conv']}/{record['bits']['linear']} bits"


def markdown(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, header: dict[str, Any]) -> str:
    lines = [
        "# Sparsity methods through one pipeline (issue #6)",
        "",
        f"Command: `{header['command']}`",
        "",
        f"Machine: {header['machine']}. Date: {header['date']}. Wall time of this run: {header['wall']:.0f} s "
        "(cached per-method results were reused where the settings matched; each record's own command is in the JSON).",
        "",
        f"Data: {args.data}, training subset {args.subset or 'all'} images, test subset {args.test_subset or 'all'} images. "
        f"Dense baseline: {args.epochs_dense} epoch(s). Every method: retrain {args.epochs_retrain}, masked fine-tune "
        f"{args.epochs_finetune}, codebook fine-tune {args.epochs_codebook} epoch(s)"
        + (f", at most {args.max_steps} steps each" if args.max_steps else "")
        + f", batch {args.batch_size}, lr {args.lr} (fine-tune lr/5), k-means quantization, Winograd F(2, r), ANS/zstd "
        "auto coder (the .jsz). This is a scaled-down CPU experiment: few epochs on a subset, one seed.",
        "",
        "Columns: accuracies (%) are top-1 on the test subset: dense start, after the pipeline "
        "(codebook fine-tuning), and of the .jsz decoded for the spatial and the Winograd deployment "
        "(`codecs.decode(path, domain)`). Densities from `codecs.report` (Winograd density after the stored "
        "threshold, over Winograd-form layers). Ratio = 32 x all original parameters / (8 x file bytes). "
        "MACs per image from `jointsparse.info.info_payload` (sparse spatial and sparse Winograd deployments). "
        "`HR bytes` is *not* a file: the same quantized weights coded Deep Compression's way "
        "(Huffman + relative indices, 8-bit conv / 5-bit FC gaps, `relative_index_layer_encode`) "
        "plus codebooks and raw tensors, with its ratio beside it.",
        "",
        f"**Winograd target.** Every method's file stores the same Winograd sparsity target ({args.winograd_target}) "
        "for decode-time pruning in the Winograd domain. Only joint sparsity is trained for it (the paper's point); "
        "for the other methods the Winograd column shows what is left after pruning their weights' "
        "Winograd transforms without ever training for it.",
        "",
        "**Options.** Target-driven methods (joint_sparsity, l0_budget, bridgeout, deep_compression) get the same "
        f"spatial target ({args.spatial_target} of each layer's weights removed). l1_prox and group_prox reach a sparsity "
        "that depends on their strength `lam`, set per model after a first pass (the table shows what they reached). "
        "channel_sparse removes input channels of conv layers only (Changpinyo et al.), so on FC-heavy nets its "
        "whole-model density stays high. bridgeout uses magnitude pruning (filter-norm pruning of 80% of filters "
        "is not comparable); its drop probability is per model because p = 0.3 diverged (NaN) on LeNet-5 at lr 0.02. "
        "deep_compression quantizes with Han et al.'s 8 (conv) / 5 (FC) bits, every other method with 6 / 5.",
        "",
    ]
    for model_name, records in results.items():
        lines += [f"## {model_name} {MODEL_KWARGS[model_name] or ''}".rstrip(), "",
                  "| method | options; bits conv/FC | dense | compressed | decoded spatial | decoded Winograd | spatial density | Winograd density | file bytes | ratio | HR bytes (ratio) | MACs dense | MACs spatial | MACs Winograd | s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in records:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['options']} | failed: {r['error']} |" + " |" * 12)
                continue
            a, m = r["accuracy"], r["macs"]
            lines.append(
                f"| {r['method']} | {_options(r)} | {_pct(a['dense'])} | {_pct(a['compressed'])} | {_pct(a['decoded_spatial'])} | "
                f"{_pct(a['decoded_winograd'])} | {r['spatial_density']:.3f} | {r['winograd_density']:.3f} | {r['file_bytes']:,} | "
                f"{r['compression_ratio']:.1f}x | {r['huffman_relative_index_bytes']:,} ({r['huffman_relative_index_ratio']:.1f}x) | "
                f"{m['dense']:,} | {m['spatial']:,} ({m['reduction_spatial']:.2f}x) | {m['winograd']:,} ({m['reduction_winograd']:.2f}x) | "
                f"{r['seconds']:.0f} |"
            )
        lines += ["", "Per-layer spatial / Winograd density:", ""]
        done = [r for r in records if "error" not in r]
        if not done:
            continue
        names = [row["name"] for row in done[0]["layers"]]
        lines += ["| method | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        for r in done:
            cells = [f"{row['density']:.3f} / {'-' if row['winograd_density'] is None else format(row['winograd_density'], '.3f')}" for row in r["layers"]]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = dict(zip(ALL_METHODS, "o s ^ v D P X".split()))
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, (model_name, records) in zip(axes[0], results.items()):
        records = [r for r in records if "error" not in r]
        if not records:
            continue
        for r in records:
            x = r["compression_ratio"]
            marker = markers.get(r["method"], "o")
            ax.scatter(x, 100 * r["accuracy"]["decoded_spatial"], marker=marker, color="tab:blue", s=60, label=r["method"])
            ax.scatter(x, 100 * r["accuracy"]["decoded_winograd"], marker=marker, facecolors="none", edgecolors="tab:red", s=60)
        ax.legend(fontsize=8, loc="center left", title="method (marker)", title_fontsize=8)
        ax.axhline(100 * records[0]["accuracy"]["dense"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio of the .jsz file (x, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model_name}: filled blue = spatial decode, hollow red = Winograd decode; dotted = dense", fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 2 methods, few steps: a smoke test (< 2 min)")
    p.add_argument("--out-dir", default="/tmp/compare_methods", help="checkpoints, .jsz files and per-method caches")
    p.add_argument("--results-dir", default=None, help="where the .md/.json/.png go (default experiments/results; --quick: the out dir)")
    p.add_argument("--models", default="lenet5,vgg_small")
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=12000, help="training images (0: all)")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (0: all)")
    p.add_argument("--epochs-dense", type=int, default=4)
    p.add_argument("--epochs-retrain", type=int, default=3)
    p.add_argument("--epochs-finetune", type=int, default=1)
    p.add_argument("--epochs-codebook", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="cap on steps per epoch (0: whole subset)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--dense-lr", type=float, default=0.05)
    p.add_argument("--spatial-target", type=float, default=0.8, help="pruned fraction for the methods that take a target")
    p.add_argument("--winograd-target", type=float, default=0.7, help="the Winograd sparsity every file stores")
    p.add_argument("--l1-lam", default="0.03", help="l1_prox strength: a number, or model=number pairs")
    p.add_argument("--group-lam", default="0.05", help="group_prox strength: a number, or model=number pairs")
    p.add_argument("--bridgeout-p", default="0.3", help="bridgeout drop probability: a number, or model=number pairs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.subset, args.test_subset = "digits", 0, 0
        args.epochs_dense, args.epochs_retrain, args.epochs_finetune, args.epochs_codebook = 3, 1, 1, 1
        args.max_steps = args.max_steps or 6
        if "--methods" not in " ".join(argv or sys.argv):
            args.methods = "joint_sparsity,deep_compression"
        if "--models" not in " ".join(argv or sys.argv):
            args.models = "lenet5"
    args.subset = args.subset or None
    args.test_subset = args.test_subset or None
    args.model_list = [m for m in args.models.split(",") if m]
    args.method_list = [m for m in args.methods.split(",") if m]
    for name in args.model_list:
        if name not in MODEL_KWARGS:
            raise CompareError(f"unknown model {name!r}; known: {', '.join(MODEL_KWARGS)}")
        per_model(args.l1_lam, name, "--l1-lam")  # fail before any training, not mid-run
        per_model(args.group_lam, name, "--group-lam")
        per_model(args.bridgeout_p, name, "--bridgeout-p")
    for name in args.method_list:
        if name not in ALL_METHODS:
            raise CompareError(f"unknown method {name!r}; known: {', '.join(ALL_METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    results_dir = Path(args.results_dir) if args.results_dir else (out_dir if args.quick else RESULTS)
    results_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    results: dict[str, list[dict[str, Any]]] = {}
    for model_name in args.model_list:
        out = out_dir / model_name
        out.mkdir(parents=True, exist_ok=True)
        # LeNet-5 needs >= 16 px; the 8x8 digits are upsampled for it in quick runs.
        resize = 16 if args.data == "digits" and model_name == "lenet5" else None
        train_loader, test_loader, info = make_loaders(args.data, batch_size=args.batch_size, seed=args.seed, subset=args.subset,
                                                       subset_seed=args.seed, test_subset=args.test_subset, resize=resize)
        args.steps_per_epoch = min(len(train_loader), args.max_steps or len(train_loader))
        loaders = (train_loader, test_loader)
        dense = train_dense(model_name, loaders, info, args, out, log)
        results[model_name] = []
        for method in args.method_list:
            try:
                results[model_name].append(run_method(method, model_name, dense, loaders, info, args, out, log))
            except Exception as error:  # one method's failure is a result of the comparison, not the end of it
                log(f"[{model_name}/{method}] FAILED: {type(error).__name__}: {error}")
                results[model_name].append({"model": model_name, "method": method, "error": f"{type(error).__name__}: {error}",
                                            "options": build_recipe(method, model_name, args)["regularizer"].get("options", {})})

    header = {
        "command": " ".join(shlex.quote(a) for a in ["python", "experiments/compare_methods.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": _machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall": time.perf_counter() - start,
    }
    stem = results_dir / "compare_methods"
    atomic_write_text(stem.with_suffix(".md"), markdown(results, args, header))
    atomic_write_text(stem.with_suffix(".json"), json.dumps({"header": header, "results": results}, indent=2) + "\n")
    plot(results, stem.with_suffix(".png"))
    log(f"wrote {stem}.md/.json/.png in {header['wall']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
