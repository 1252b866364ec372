"""Two-domain ablation (SPEC section 3): does sparsity in one domain carry over to the other?

A dense ``vgg_small`` is trained on Fashion-MNIST, then retrained three times from it with the
joint sparsity regularizer in ``spatial``, ``winograd`` and ``joint`` mode (same targets in every
mode), and each retrained model is deployed in both domains:

- **spatial**: the retrained weights pruned to the target spatial sparsity per layer
  (``spatial_prune``); optionally fine-tuned with the pruning masks fixed (``--epochs-finetune``,
  the regularizer stays on, so the Winograd term keeps working in joint mode, SPEC section 4);
- **winograd**: the retrained weights pruned to the target sparsity in the Winograd domain
  (``winograd_prune``, sparse ``WinogradConv2d`` layers). Layers without a Winograd form (here
  the two FC layers) run spatially in every deployment, so they are spatially pruned to their
  target in the Winograd deployment too;
- **one file**: the Winograd deployment of the final spatial model (the pipeline's decode path:
  one spatially pruned file, Winograd-pruned at decode time).

The dense model pruned the same ways, without retraining, is the reference row. Every stage is
checkpointed (file names carry a hash of the stage's settings, so tuning variants never collide
and the dense stage is trained once) and resumes with ``--resume`` (the default).

    python experiments/ablation_domains.py                      # full run, ~1 h on 2 busy cores
    python experiments/ablation_domains.py --quick --out-dir /tmp/abl   # digits, < 60 s
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jointsparse.cost import layer_costs, macs_reduction
from jointsparse.data import make_loaders
from jointsparse.layers import prunable_layers
from jointsparse.models import get_model
from jointsparse.nn import winograd_prune
from jointsparse.provenance import code_version, command_line, machine_info
from jointsparse.sparsity import (
    MODES,
    JointSparsity,
    layer_densities,
    spatial_prune,
    winograd_thresholds,
)
from jointsparse.train import TrainConfig, evaluate, train
from jointsparse.transforms import has_winograd_form
from jointsparse.utils import atomic_write_text

RESULT_STEM = "ablation_domains"
MODE_ORDER = ("spatial", "winograd", "joint")
#: A single-domain mode "loses clearly more in the other domain" when its accuracy drop there
#: exceeds its drop in its own domain by at least this many points.
CLEAR_GAP_POINTS = 2.0
#: The issue's bound for joint mode: accuracy within this many points of dense, in both domains.
JOINT_TOLERANCE_POINTS = 1.0


class AblationError(ValueError):
    """Inconsistent command-line settings."""


# ------------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, 1 epoch per stage: a smoke run (< 60 s)")
    parser.add_argument("--dataset", default=None, help="default fashion-mnist (digits with --quick)")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--width", type=float, default=0.5, help="vgg_small channel multiplier (default 0.5)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoints and logs (default: a directory under the system temp dir)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="reuse finished/partial stages from --work-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 measured faster than 2 on the busy 2-core box)")
    parser.add_argument("--modes", default=",".join(MODE_ORDER), help="comma-separated subset of spatial,winograd,joint")
    parser.add_argument("--batch-size", type=int, default=128)
    # dense baseline
    parser.add_argument("--epochs-dense", type=int, default=None, help="default 12 (1 with --quick)")
    parser.add_argument("--lr-dense", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    # regularized retraining
    parser.add_argument("--epochs-retrain", type=int, default=None, help="default 6 (1 with --quick)")
    parser.add_argument("--lr-retrain", type=float, default=0.02)
    parser.add_argument("--sparsity", type=float, default=0.7, help="target sparsity of Winograd-form conv layers, both domains")
    parser.add_argument("--first-conv-sparsity", type=float, default=None,
                        help="target of the first conv layer in both domains (default: --sparsity, like every conv layer)")
    parser.add_argument("--fc-sparsity", type=float, default=0.7, help="target (spatial) sparsity of layers without a Winograd form")
    parser.add_argument("--a-spatial", type=float, default=1.0)
    parser.add_argument("--a-winograd", type=float, default=1.0)
    parser.add_argument("--update-every", type=int, default=50)
    parser.add_argument("--m", type=int, default=2, help="Winograd output tile F(m x m, 3 x 3)")
    # masked fine-tuning of the spatial model
    parser.add_argument("--epochs-finetune", type=int, default=None, help="default 2 (1 with --quick); 0 skips it")
    parser.add_argument("--lr-finetune", type=float, default=0.002)
    parser.add_argument("--notes", type=Path, default=None, help="markdown file copied into the report (e.g. the recipes tried)")
    args = parser.parse_args(argv)

    args.dataset = args.dataset or ("digits" if args.quick else "fashion-mnist")
    defaults = {"epochs_dense": (12, 1), "epochs_retrain": (6, 1), "epochs_finetune": (2, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = [mode for mode in args.modes if mode not in MODES]
    if unknown or not args.modes:
        raise AblationError(f"--modes must name some of {', '.join(MODE_ORDER)}, got {unknown or 'nothing'}")
    if args.epochs_dense < 1 or args.epochs_retrain < 1 or args.epochs_finetune < 0:
        raise AblationError("--epochs-dense and --epochs-retrain must be >= 1, --epochs-finetune >= 0")
    for name in ("sparsity", "fc_sparsity", "first_conv_sparsity"):
        if getattr(args, name) is not None and not 0.0 <= getattr(args, name) < 1.0:
            raise AblationError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if args.threads < 1:
        raise AblationError(f"--threads must be >= 1, got {args.threads}")
    if args.notes is not None and not args.notes.is_file():
        raise AblationError(f"--notes {args.notes} is not a file")
    return args


def settings_key(*parts: Any) -> str:
    """Short stable hash of a stage's settings: checkpoint names, so that variants never collide."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------- stages


def targets(model: nn.Module, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(spatial targets of every layer, Winograd targets of Winograd-form layers, spatial targets
    of the layers that run spatially in every deployment)."""
    layers = prunable_layers(model)
    spatial = {name: args.sparsity if has_winograd_form(module) else args.fc_sparsity for name, module in layers.items()}
    winograd = {name: args.sparsity for name, module in layers.items() if has_winograd_form(module)}
    first_conv = next((name for name, module in layers.items() if isinstance(module, nn.Conv2d)), None)
    if args.first_conv_sparsity is not None and first_conv is not None:
        spatial[first_conv] = args.first_conv_sparsity
        if first_conv in winograd:
            winograd[first_conv] = args.first_conv_sparsity
    spatial_only = {name: spatial[name] for name, module in layers.items() if not has_winograd_form(module)}
    return spatial, winograd, spatial_only


def stage_seconds(result: Any) -> float:
    """Training wall time of a stage over all its epochs, including ones a resumed run reused."""
    return float(sum(record.get("seconds", 0.0) for record in result.history))


def run_stage(model: nn.Module, loaders: tuple, config: TrainConfig, stage: str, key: str, args: argparse.Namespace, hooks: list) -> Any:
    path = args.work_dir / f"{stage}-{key}.pt"
    return train(
        model, loaders[0], loaders[1], config, hooks=hooks, checkpoint_path=path,
        resume="auto" if args.resume else False, log_path=args.work_dir / f"{stage}-{key}.jsonl", stage=stage,
    )


def deploy(retrained: nn.Module, finetuned: nn.Module | None, args: argparse.Namespace, test_loader: Any, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """Prune ``retrained`` in both domains, take the final spatial deployment (``finetuned``, or
    the plain spatial prune) to the Winograd domain too, and measure accuracy, densities, MACs."""
    spatial_targets, winograd_targets, spatial_only = targets(retrained, args)
    pruned_spatial = spatial_prune(retrained, spatial_targets)
    spatial_model = finetuned if finetuned is not None else pruned_spatial
    # Winograd deployment: only Winograd-form layers change domain; the rest is spatially pruned.
    base = spatial_prune(retrained, spatial_only) if spatial_only else copy.deepcopy(retrained)
    thresholds = winograd_thresholds(base, winograd_targets, args.m)
    one_file_thresholds = winograd_thresholds(spatial_model, winograd_targets, args.m)
    winograd_model = winograd_prune(base, {name: (args.m, t) for name, t in thresholds.items()})
    one_file_model = winograd_prune(spatial_model, {name: (args.m, t) for name, t in one_file_thresholds.items()})

    accuracy = {
        "retrained_unpruned": evaluate(retrained, test_loader)["accuracy"],
        "spatial": evaluate(pruned_spatial, test_loader)["accuracy"],
        "winograd": evaluate(winograd_model, test_loader)["accuracy"],
        "one_file_winograd": evaluate(one_file_model, test_loader)["accuracy"],
    }
    if finetuned is not None:
        accuracy["spatial_finetuned"] = evaluate(spatial_model, test_loader)["accuracy"]

    shape = (1, *input_size)  # (N, C, H, W); the counts are per image
    spatial_rows = {row.name: row for row in layer_costs(spatial_model, shape, m=args.m)}
    winograd_rows = {row.name: row for row in layer_costs(base, shape, m=args.m, winograd_thresholds=thresholds)}
    # Winograd-domain non-zeros of the spatially pruned filters, with no Winograd pruning at all:
    # how much of the spatial sparsity survives the transform.
    carried = layer_densities(spatial_model, args.m)
    one_file = layer_densities(spatial_model, args.m, one_file_thresholds)
    layers = []
    for name, row in spatial_rows.items():
        wrow = winograd_rows[name]
        layers.append({
            "name": name, "kind": row.kind, "params": row.params, "winograd_params": wrow.winograd_params,
            "spatial_density": row.nonzero / row.params,
            "winograd_density": None if wrow.winograd_params is None else wrow.winograd_nonzero / wrow.winograd_params,
            "winograd_density_of_spatial_model": carried[name]["winograd"],
            "one_file_winograd_density": one_file[name]["winograd"],
        })
    conv = [layer for layer in layers if layer["winograd_params"] is not None]

    def overall(key: str, count: str, rows: list[dict]) -> float:
        return sum(layer[key] * layer[count] for layer in rows) / max(1, sum(layer[count] for layer in rows))

    rows_s, rows_w = list(spatial_rows.values()), list(winograd_rows.values())
    return {
        "accuracy": accuracy,
        "winograd_thresholds": thresholds,
        "layers": layers,
        "overall": {
            "spatial_density_all_layers": overall("spatial_density", "params", layers),
            "spatial_density_conv": overall("spatial_density", "params", conv),
            "winograd_density_conv": overall("winograd_density", "winograd_params", conv),
            "winograd_density_of_spatial_model_conv": overall("winograd_density_of_spatial_model", "winograd_params", conv),
        },
        "macs_reduction": {
            "spatial": macs_reduction(rows_s, "spatial"),
            "winograd": macs_reduction(rows_w, "winograd"),
            "dense_winograd": macs_reduction(rows_w, "dense_winograd"),
        },
    }


# ---------------------------------------------------------------------------------- report


def judge(dense_accuracy: float, modes: dict[str, dict]) -> dict[str, Any]:
    """The issue's two criteria, on the direct prunes of the retrained weights (no fine-tuning,
    so both domains are treated alike); the fine-tuned spatial figure is judged alongside."""
    out: dict[str, Any] = {"joint_tolerance_points": JOINT_TOLERANCE_POINTS, "clear_gap_points": CLEAR_GAP_POINTS}
    drop = lambda acc: 100 * (dense_accuracy - acc)  # noqa: E731
    if "joint" in modes:
        acc = modes["joint"]["accuracy"]
        drops = {"spatial": drop(acc["spatial"]), "winograd": drop(acc["winograd"])}
        out["joint_drops_points"] = drops
        out["joint_within_tolerance"] = all(d <= JOINT_TOLERANCE_POINTS for d in drops.values())
        if "spatial_finetuned" in acc:
            ft = {"spatial_finetuned": drop(acc["spatial_finetuned"]), "one_file_winograd": drop(acc["one_file_winograd"])}
            out["joint_drops_points_finetuned"] = ft
            out["joint_within_tolerance_finetuned"] = all(d <= JOINT_TOLERANCE_POINTS for d in ft.values())
    gaps = {}
    for mode, other in (("spatial", "winograd"), ("winograd", "spatial")):
        if mode in modes:
            acc = modes[mode]["accuracy"]
            gaps[mode] = drop(acc[other]) - drop(acc[mode])
    out["single_domain_gap_points"] = gaps
    out["single_domain_loses_clearly_more"] = any(gap >= CLEAR_GAP_POINTS for gap in gaps.values()) if gaps else None
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _dens(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    finetuned = s["epochs_finetune"] > 0
    lines = [
        "# Two-domain ablation: spatial-only vs Winograd-only vs joint sparsity",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; code: git {report.get('code_version', 'unknown')}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['device']}, torch {m['torch']}, torch threads {s['threads']} "
        f"(machine shared with other jobs; wall times are noisy)",
        f"- data: {s['dataset']} ({report['data']['train_size']} train / {report['data']['test_size']} test, "
        f"{report['data']['input_size'][0]} channel(s), {report['data']['input_size'][1]}x{report['data']['input_size'][2]} px), batch {s['batch_size']}, seed {s['seed']}",
        f"- model: vgg_small width {s['width']} (6 conv 3x3 layers, all with a Winograd form; fc1, fc2 spatial-only)",
        f"- dense: {s['epochs_dense']} epochs, SGD momentum 0.9, lr {s['lr_dense']} cosine, weight decay {s['weight_decay']}",
        f"- retrain (per mode, from the dense weights): {s['epochs_retrain']} epochs, lr {s['lr_retrain']} cosine, weight decay "
        f"{s['weight_decay']}, learnable coefficients, a_spatial {s['a_spatial']}, a_winograd {s['a_winograd']}, "
        f"thresholds updated every {s['update_every']} steps, F({s['m']}x{s['m']}, 3x3)",
        f"- targets: conv layers {s['sparsity']:.2f} sparsity in both domains"
        + (f" (the first conv layer {s['first_conv_sparsity']:.2f})" if s.get("first_conv_sparsity") is not None else "")
        + f"; fc layers {s['fc_sparsity']:.2f} spatial sparsity "
        "(they run spatially in every deployment, so they are pruned the same way in both)",
        "- fine-tuning: " + (f"{s['epochs_finetune']} epochs of the spatially pruned model with its masks fixed, lr {s['lr_finetune']} "
                             "cosine, regularizer kept on" if finetuned else "none"),
        "",
        "Deployments: *spatial* = retrained weights pruned to the spatial targets; *Winograd* = retrained weights "
        "pruned to the Winograd targets (`winograd_prune`, sparse `WinogradConv2d`); "
        + ("*spatial+FT* = the spatial deployment after masked fine-tuning; *one file* = the Winograd deployment of "
           "spatial+FT (what a single compressed file decodes to). " if finetuned else
           "*one file* = the Winograd deployment of the spatially pruned weights (what a single compressed file decodes to). ")
        + "The *dense* row prunes the dense baseline without retraining. Accuracies: test set, %.",
        "",
    ]
    head = "| model | unpruned | spatial | " + ("spatial+FT | " if finetuned else "") + "Winograd | one file | MACs red. spatial | MACs red. Winograd |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    rows = [("dense", report["dense"])] + [(mode, report["modes"][mode]) for mode in MODE_ORDER if mode in report["modes"]]
    for name, entry in rows:
        acc = entry["accuracy"]
        cells = [name if name == "dense" else f"{name}-only" if name != "joint" else "joint", _pct(acc["retrained_unpruned"]), _pct(acc["spatial"])]
        if finetuned:
            cells.append(_pct(acc.get("spatial_finetuned")))
        cells += [_pct(acc["winograd"]), _pct(acc["one_file_winograd"]),
                  f"{entry['macs_reduction']['spatial']:.2f}x", f"{entry['macs_reduction']['winograd']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    dense_w = report["dense"]["macs_reduction"]["dense_winograd"]
    lines += ["", f"MACs reductions are against the dense spatial network at {report['data']['input_size'][1]}x"
              f"{report['data']['input_size'][2]} (`cost.layer_costs`, Winograd non-zeros above the deployment's thresholds); "
              f"dense Winograd alone gives {dense_w:.2f}x.", ""]

    c = report["criteria"]
    lines += ["## Criteria", ""]
    if "joint_drops_points" in c:
        d = c["joint_drops_points"]
        lines.append(f"- joint within {c['joint_tolerance_points']:g} point of dense in both domains (direct prunes): "
                     f"**{'yes' if c['joint_within_tolerance'] else 'no'}** (drops: spatial {d['spatial']:.2f}, Winograd {d['winograd']:.2f} points)")
        if "joint_drops_points_finetuned" in c:
            d = c["joint_drops_points_finetuned"]
            lines.append(f"- the same after fine-tuning (spatial+FT and one file): **{'yes' if c['joint_within_tolerance_finetuned'] else 'no'}** "
                         f"(drops: {d['spatial_finetuned']:.2f} and {d['one_file_winograd']:.2f} points)")
    if c["single_domain_gap_points"]:
        gaps = ", ".join(f"{mode}-only {gap:+.2f}" for mode, gap in c["single_domain_gap_points"].items())
        lines.append(f"- a single-domain mode loses at least {c['clear_gap_points']:g} points more in the other domain than in its own: "
                     f"**{'yes' if c['single_domain_loses_clearly_more'] else 'no'}** (other-domain drop minus own-domain drop: {gaps})")
    lines.append("")

    lines += ["## Densities per layer", "",
              "Non-zero fractions. *spatial*: the final spatial deployment; *Winograd*: the Winograd deployment "
              "(|G w G^T| above its threshold); *W of spatial*: |G w G^T| != 0 for the spatial deployment's filters, "
              "with no Winograd pruning (how much spatial sparsity survives the transform); *one file*: the one-file "
              "Winograd deployment.", ""]
    for name, entry in rows:
        overall = entry["overall"]
        lines += [f"**{name}** - conv overall: spatial {overall['spatial_density_conv']:.3f}, Winograd {overall['winograd_density_conv']:.3f}, "
                  f"W of spatial {overall['winograd_density_of_spatial_model_conv']:.3f}; all layers spatial {overall['spatial_density_all_layers']:.3f}",
                  "", "| layer | weights | spatial | Winograd | W of spatial | one file |", "|---|---|---|---|---|---|"]
        for layer in entry["layers"]:
            lines.append(f"| {layer['name']} | {layer['params']} | {_dens(layer['spatial_density'])} | {_dens(layer['winograd_density'])} | "
                         f"{_dens(layer['winograd_density_of_spatial_model'])} | {_dens(layer['one_file_winograd_density'])} |")
        lines.append("")

    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in report["seconds"].items()]
    lines += ["", "Training stages count every epoch, including epochs an interrupted run had already checkpointed.", ""]
    if report.get("notes"):
        lines += ["## Notes", "", report["notes"].rstrip(), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    if args.work_dir is None:
        args.work_dir = Path(tempfile.gettempdir()) / "jointsparse-ablation"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    loaders = make_loaders(args.dataset, batch_size=args.batch_size, seed=args.seed, subset=args.subset)
    train_loader, test_loader, info = loaders
    seconds: dict[str, float] = {}

    model = get_model("vgg_small", in_channels=info.in_channels, num_classes=info.num_classes, width=args.width)
    dense_config = TrainConfig(epochs=args.epochs_dense, lr=args.lr_dense, momentum=0.9, weight_decay=args.weight_decay,
                               schedule="cosine", seed=args.seed, log_every=0)
    dense_key = settings_key(args.dataset, args.subset, args.width, args.batch_size, dense_config.to_dict())
    result = run_stage(model, (train_loader, test_loader), dense_config, "dense", dense_key, args, [])
    seconds["dense"] = stage_seconds(result)
    print(f"dense: test accuracy {100 * result.test_accuracy:.2f}%", flush=True)

    started = time.perf_counter()
    report_modes: dict[str, dict] = {}
    dense_entry = deploy(model, None, args, test_loader, (info.in_channels, *info.input_size))
    seconds["dense pruning + evaluation"] = time.perf_counter() - started

    spatial_targets, winograd_targets, _ = targets(model, args)
    for mode in [mode for mode in MODE_ORDER if mode in args.modes]:
        retrained = copy.deepcopy(model)
        reg = JointSparsity(retrained, spatial_sparsity=spatial_targets, winograd_sparsity=winograd_targets, mode=mode, m=args.m,
                            learnable=True, a_spatial=args.a_spatial, a_winograd=args.a_winograd,
                            update_every=args.update_every, seed=args.seed)
        config = TrainConfig(epochs=args.epochs_retrain, lr=args.lr_retrain, momentum=0.9, weight_decay=args.weight_decay,
                             schedule="cosine", seed=args.seed, log_every=0)
        retrain_key = settings_key(dense_key, mode, config.to_dict(), spatial_targets, winograd_targets, args.a_spatial,
                                   args.a_winograd, args.update_every, args.m)
        result = run_stage(retrained, (train_loader, test_loader), config, f"retrain-{mode}", retrain_key, args, [reg])
        seconds[f"retrain {mode}"] = stage_seconds(result)
        print(f"retrain {mode}: unpruned test accuracy {100 * result.test_accuracy:.2f}%, coefficients {reg.coefficients()}", flush=True)

        spatial_model = None
        if args.epochs_finetune > 0:
            spatial_model = copy.deepcopy(retrained)
            # A fresh regularizer on the copy, carrying the retrained thresholds and coefficients.
            ft_reg = JointSparsity(spatial_model, spatial_sparsity=spatial_targets, winograd_sparsity=winograd_targets, mode=mode,
                                   m=args.m, learnable=True, a_spatial=args.a_spatial, a_winograd=args.a_winograd,
                                   update_every=args.update_every, seed=args.seed)
            ft_reg.load_state_dict(reg.state_dict())
            ft_reg.prune()
            ft_config = TrainConfig(epochs=args.epochs_finetune, lr=args.lr_finetune, momentum=0.9,
                                    weight_decay=args.weight_decay, schedule="cosine", seed=args.seed, log_every=0)
            ft_key = settings_key(retrain_key, ft_config.to_dict())
            result = run_stage(spatial_model, (train_loader, test_loader), ft_config, f"finetune-{mode}", ft_key, args, [ft_reg])
            seconds[f"finetune {mode}"] = stage_seconds(result)

        started = time.perf_counter()
        report_modes[mode] = deploy(retrained, spatial_model, args, test_loader, (info.in_channels, *info.input_size))
        seconds[f"pruning + evaluation {mode}"] = time.perf_counter() - started
        acc = report_modes[mode]["accuracy"]
        print(f"{mode}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()), flush=True)

    dense_accuracy = dense_entry["accuracy"]["retrained_unpruned"]
    report = {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y"),
        "machine": machine_info(),
        "code_version": code_version(),
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                     if key not in ("out_dir", "work_dir", "notes", "resume")},
        "data": {"train_size": info.train_size, "test_size": info.test_size, "input_size": list((info.in_channels, *info.input_size))},
        "dense": dense_entry,
        "modes": report_modes,
        "criteria": judge(dense_accuracy, report_modes),
        "seconds": seconds,
        "notes": args.notes.read_text(encoding="utf-8") if args.notes is not None else None,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / f"{RESULT_STEM}.json", json.dumps(report, indent=1, sort_keys=True) + "\n")
    markdown = render_markdown(report)
    atomic_write_text(args.out_dir / f"{RESULT_STEM}.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
