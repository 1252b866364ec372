"""Shared driver of ``alexnet_tables.py`` and ``resnet18_tables.py``: the paper's compression
tables (SPEC section 7) on a network, on ImageNet (``--data imagefolder:PATH``) or on the CPU
proxy (Fashion-MNIST resized, 3 replicated channels, a 10-class head).

Stages, each its own invocation if wanted (``--stages``), each resumable and recorded as
``<work-dir>/<stage>.json`` so that the report is rebuilt from every finished stage:

- ``dense``: the dense baseline (the trainer's checkpoint resumes a killed run);
- ``joint``: the recipe through ``jointsparse.compress.compress`` into a real ``.jsz`` file,
  decoded in both domains (``jointsparse.codecs.decode``) and evaluated: Tables A and B;
- ``ablation``: Table C, the recipe in ``spatial``, ``winograd`` and ``joint`` regularizer mode
  with the same shortened budget (retraining capped at ``--ablation-steps``, no fine-tuning),
  each coded into a file and deployed in both domains;
- ``highres`` (AlexNet): the dense model adapted to a resolution where the last pool copies
  nothing (SPEC section 10's trap), then compressed with the same recipe on a training subset.

The tables land in ``--out-dir`` as ``<net>_tables.md`` and ``<net>_tables.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from jointsparse.codecs import decode
from jointsparse.compress import compress
from jointsparse.cost import WINOGRAD_PRODUCTS_CONVENTION, WINOGRAD_TRANSFORMS_CONVENTION
from jointsparse.data import make_loaders
from jointsparse.info import info_payload
from jointsparse.models import get_model
from jointsparse.provenance import code_version, command_line, machine_summary
from jointsparse.recipe import Recipe, load_recipe
from jointsparse.train import TrainConfig, evaluate, get_rank, init_distributed, is_rank0, seed_everything, train
from jointsparse.utils import atomic_torch_save, atomic_write_text

STAGES = ("dense", "joint", "ablation", "highres")
ABLATION_MODES = ("spatial", "winograd", "joint")
#: Table B's accuracy bound: top-1 drop from our own dense baseline, in points, in both domains.
MAX_DROP_POINTS = 1.0


class TablesError(ValueError):
    """Inconsistent settings or a stage that needs one not yet run."""


@dataclass
class NetworkSpec:
    """What differs between the AlexNet and the ResNet-18 table."""

    name: str  # get_model name, also the results stem: <name>_tables
    title: str
    recipe: Path
    proxy_resolution: int
    count_resolution: int  # MACs are counted at the paper's input size
    dense_epochs: int
    dense_lr: float
    dense_polish_epochs: int
    target_ratio: float
    target_macs: float
    quoted: list[dict[str, str]]  # rows quoted from the papers (SPEC section 7)
    highres_resolution: int | None = None
    describe_proxy: Callable[[int], str] = lambda resolution: ""


# ------------------------------------------------------------------------------- settings


def parse_args(spec: NetworkSpec, argv: list[str] | None = None) -> argparse.Namespace:
    results = Path(__file__).resolve().parent / "results"
    parser = argparse.ArgumentParser(
        description=f"Reproduce the paper's {spec.title} compression tables (proxy or ImageNet).",
        epilog=f"example: python experiments/{spec.name}_tables.py --stages dense,joint,ablation   "
        f"(smoke: python experiments/{spec.name}_tables.py --smoke --out-dir /tmp/t)",
    )
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist (the CPU proxy) or imagefolder:PATH (ImageNet)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; run under torchrun for several GPUs")
    parser.add_argument("--stages", default=",".join(s for s in STAGES if s != "highres" or spec.highres_resolution),
                        help=f"comma-separated subset of {', '.join(STAGES)} (finished stages are reused)")
    parser.add_argument("--resolution", type=int, default=None, help=f"proxy input side in px (default {spec.proxy_resolution}; ImageNet: 227 for AlexNet, 224 for ResNet-18)")
    parser.add_argument("--recipe", type=Path, default=spec.recipe)
    parser.add_argument("--subset", type=int, default=None, help="train on N training images (default all)")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on N test images (default all)")
    parser.add_argument("--dense-epochs", type=int, default=spec.dense_epochs)
    parser.add_argument("--dense-lr", type=float, default=spec.dense_lr)
    parser.add_argument("--dense-polish-epochs", type=int, default=spec.dense_polish_epochs,
                        help="more dense epochs at a low LR after the first schedule, so the baseline is converged (SPEC section 10)")
    parser.add_argument("--dense-polish-lr", type=float, default=None, help="default --dense-lr / 2 (a second, shorter cosine cycle)")
    parser.add_argument("--ablation-steps", type=int, default=None, help="retraining steps per Table C mode (default: half an epoch)")
    parser.add_argument("--highres-resolution", type=int, default=spec.highres_resolution)
    parser.add_argument("--highres-subset", type=int, default=4000, help="training images of the highres stage")
    parser.add_argument("--highres-test-subset", type=int, default=1000)
    parser.add_argument("--highres-dense-epochs", type=int, default=3,
                        help="epochs (at --dense-lr, cosine) adapting the low-resolution dense model to the high resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs share a 2-core machine)")
    parser.add_argument("--work-dir", type=Path, default=None, help=f"checkpoints and stage records (default {spec.name}-tables-work)")
    parser.add_argument("--out-dir", type=Path, default=results)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="reuse finished and partial stages")
    parser.add_argument("--smoke", action="store_true", help="a few hundred images, one short epoch per stage: checks the path and the tables")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or not args.stages:
        raise TablesError(f"--stages must name some of {', '.join(STAGES)}, got {unknown or 'nothing'}")
    if "highres" in args.stages and not args.highres_resolution:
        raise TablesError("the highres stage needs --highres-resolution")
    if args.resolution is None:
        args.resolution = None if args.data.startswith("imagefolder:") else spec.proxy_resolution
    if args.smoke:
        args.subset = args.subset or 256
        args.test_subset = args.test_subset or 128
        args.dense_epochs = 1
        args.highres_subset, args.highres_test_subset, args.highres_dense_epochs = 64, 32, 1
    for name in ("subset", "test_subset", "ablation_steps", "highres_subset", "highres_test_subset", "highres_dense_epochs", "resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TablesError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    args.dense_polish_lr = args.dense_polish_lr or args.dense_lr / 2
    if args.smoke:
        args.dense_polish_epochs = min(args.dense_polish_epochs, 1)
    if args.dense_epochs < 0 or args.dense_polish_epochs < 0 or args.threads < 1 or not args.dense_lr > 0 or not args.dense_polish_lr > 0:
        raise TablesError("--dense-epochs and --dense-polish-epochs must be >= 0, --threads >= 1, the learning rates > 0")
    if not args.recipe.is_file():
        raise TablesError(f"recipe {args.recipe} not found")
    args.work_dir = args.work_dir or Path(f"{spec.name}-tables-work")
    return args


def load_stage_recipe(args: argparse.Namespace) -> Recipe:
    recipe = load_recipe(args.recipe)
    if args.smoke:  # one short epoch per stage
        short = lambda stage: dataclasses.replace(stage, epochs=min(stage.epochs, 1), max_steps_per_epoch=2)
        recipe = dataclasses.replace(recipe, retrain=short(recipe.retrain), finetune=short(recipe.finetune), codebook=short(recipe.codebook))
    return recipe


# ---------------------------------------------------------------------------------- stages


class Run:
    """One network's stages sharing a work directory (rank > 0 works in its own subdirectory,
    so that only rank 0's files are the run's)."""

    def __init__(self, spec: NetworkSpec, args: argparse.Namespace) -> None:
        self.spec, self.args = spec, args
        _, self.world, _ = init_distributed()
        self.work = args.work_dir if is_rank0() else args.work_dir / f"rank{get_rank()}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = not args.no_progress and is_rank0()
        self.recipe = load_stage_recipe(args)
        self.code = code_version(("jointsparse", "experiments/recipes"))  # the code that runs, read before anything can change it
        if not args.resume and is_rank0():  # the stages asked for start over; the others stay
            for stage in args.stages:
                (args.work_dir / f"{stage}.json").unlink(missing_ok=True)

    def log(self, text: str) -> None:
        if is_rank0():
            print(f"[{self.spec.name}] {text}", flush=True)

    def loaders(self, resolution: int | None, subset: int | None, test_subset: int | None) -> tuple:
        data = self.recipe.data
        return make_loaders(
            self.args.data, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, seed=self.args.seed,
            resize=resolution, channels=3, subset=subset, subset_seed=self.args.seed if subset else None,
            test_subset=test_subset, distributed=self.world > 1,
        )

    def record(self, stage: str) -> dict[str, Any] | None:
        path = self.args.work_dir / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_record(self, stage: str, record: dict[str, Any]) -> None:
        record.update(command=command_line(), date=datetime.date.today().isoformat(), code=self.code)
        if is_rank0():
            atomic_write_text(self.args.work_dir / f"{stage}.json", json.dumps(record, indent=2, default=float) + "\n")
        _barrier()  # other ranks read rank 0's records and dense weights next

    def _done(self, stage: str) -> bool:
        """A stage with a record is finished; say so and skip it."""
        done = self.record(stage) is not None
        if done:
            self.log(f"{stage}: already done")
        return done

    def new_model(self, num_classes: int) -> torch.nn.Module:
        return get_model(self.spec.name, num_classes=num_classes, in_channels=3)

    def dense_model(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        record = self.record("dense")
        if record is None:
            raise TablesError("run the dense stage first (--stages dense)")
        model = self.new_model(record["num_classes"])
        model.load_state_dict(torch.load(self.args.work_dir / "dense.pt", map_location="cpu", weights_only=True))
        return model, record

    # -- dense --------------------------------------------------------------------------------
    def run_dense(self) -> None:
        if self._done("dense"):
            return
        seed_everything(self.args.seed)  # the model's initialization and every draw after it
        train_loader, test_loader, info = self.loaders(self.args.resolution, self.args.subset, self.args.test_subset)
        model = self.new_model(info.num_classes)
        config = TrainConfig(epochs=self.args.dense_epochs, lr=self.args.dense_lr, weight_decay=5e-4, schedule="cosine", seed=self.args.seed,
                             device=self.args.device, progress=self.progress, log_every=0,
                             max_steps_per_epoch=2 if self.args.smoke else None)
        self.log(f"dense: {config.epochs} epoch(s) at {info.input_size} px on {info.train_size:,} images")
        start = time.perf_counter()
        result = train(model, train_loader, test_loader, config, checkpoint_path=self.work / "dense.ckpt",
                       resume="auto" if self.args.resume else False, log_path=self.work / "dense.jsonl", stage="dense")
        top1_first_schedule = 100 * result.test_accuracy
        seconds = sum(r.get("seconds", 0.0) for r in result.history)
        if self.args.dense_polish_epochs:
            self.log(f"dense: top-1 {top1_first_schedule:.2f}% after {config.epochs} epoch(s); polishing {self.args.dense_polish_epochs} epoch(s) at lr {self.args.dense_polish_lr}")
            config = dataclasses.replace(config, epochs=self.args.dense_polish_epochs, lr=self.args.dense_polish_lr)
            result = train(model, train_loader, test_loader, config, checkpoint_path=self.work / "dense-polish.ckpt",
                           resume="auto" if self.args.resume else False, log_path=self.work / "dense-polish.jsonl", stage="dense-polish")
            seconds += sum(r.get("seconds", 0.0) for r in result.history)
        if is_rank0():
            atomic_torch_save(model.state_dict(), self.args.work_dir / "dense.pt")
        self.save_record("dense", {
            "top1": 100 * result.test_accuracy, "top1_first_schedule": top1_first_schedule, "epochs": self.args.dense_epochs, "lr": self.args.dense_lr,
            "polish_epochs": self.args.dense_polish_epochs, "polish_lr": self.args.dense_polish_lr, "num_classes": info.num_classes,
            "resolution": info.input_size, "train_images": info.train_size, "test_images": info.test_size,
            "seconds": seconds or time.perf_counter() - start,
        })
        self.log(f"dense: top-1 {100 * result.test_accuracy:.2f}%")

    # -- compress one recipe and deploy its file both ways --------------------------------------
    def compress_and_deploy(self, tag: str, recipe: Recipe, model: torch.nn.Module, loaders: tuple, count_size: tuple[int, int, int]) -> dict[str, Any]:
        train_loader, test_loader, info = loaders
        out = self.work / f"{tag}.jsz"
        start = time.perf_counter()
        result = compress(model, train_loader, test_loader, recipe, out, workdir=self.work / f"{tag}.work", resume=self.args.resume,
                          device=self.args.device, seed=self.args.seed, progress=self.progress, log=self.log,
                          fingerprint={"tag": tag, "data": self.args.data, "size": list(info.input_size), "train": info.train_size,
                                       "start": _weights_digest(model)},
                          provenance={"data": {"name": self.args.data, "input_size": [3, *info.input_size]}})
        seconds = {"compress": time.perf_counter() - start, **result.seconds}
        top1 = {}
        for domain in ("spatial", "winograd"):
            begin = time.perf_counter()
            decoded = decode(out, domain=domain).to(self.args.device)
            top1[domain] = 100 * evaluate(decoded, test_loader, self.args.device)["accuracy"]
            seconds[f"evaluate_{domain}"] = time.perf_counter() - begin
        payload = info_payload(str(out), count_size)
        total = payload["report"]["total"]
        return {
            "file": str(out), "file_bytes": total["file_bytes"], "compression_ratio": total["compression_ratio"],
            "weights_only_ratio": total["weights_only_ratio"], "density": total["density"], "winograd_density": total["winograd_density"],
            "macs_reduction_spatial": payload["macs"]["reduction_spatial"], "macs_reduction_winograd": payload["macs"]["reduction_winograd"],
            "macs_reduction_winograd_with_transforms": payload["macs"]["reduction_winograd_with_transforms"],
            "macs": {k: payload["macs"][k] for k in ("dense", "spatial", "winograd", "winograd_with_transforms", "input_size")},
            "top1_spatial": top1["spatial"], "top1_winograd": top1["winograd"],
            "top1_stages": {k: 100 * v for k, v in result.accuracy.items()},
            "layers": _layer_rows(payload), "seconds": seconds, "resolution": info.input_size,
            "train_images": info.train_size, "test_images": info.test_size,
        }

    def count_size(self) -> tuple[int, int, int]:
        return (3, self.spec.count_resolution, self.spec.count_resolution)

    # -- joint (Tables A and B) -------------------------------------------------------------------
    def run_joint(self) -> None:
        if self._done("joint"):
            return
        seed_everything(self.args.seed)  # the model's initialization and every draw after it
        model, dense = self.dense_model()
        loaders = self.loaders(self.args.resolution, self.args.subset, self.args.test_subset)
        record = self.compress_and_deploy("joint", self.recipe, model, loaders, self.count_size())
        record["top1_dense"] = dense["top1"]
        self.save_record("joint", record)
        self.log(f"joint: {record['compression_ratio']:.1f}x, top-1 spatial {record['top1_spatial']:.2f}% winograd {record['top1_winograd']:.2f}%")

    # -- ablation (Table C) ---------------------------------------------------------------------
    def run_ablation(self) -> None:
        previous = self.record("ablation") or {"modes": {}}
        loaders = self.loaders(self.args.resolution, self.args.subset, self.args.test_subset)
        steps = self.args.ablation_steps or (2 if self.args.smoke else max(1, len(loaders[0]) // 2))
        for mode in ABLATION_MODES:
            if mode in previous["modes"] and previous.get("steps") == steps:
                self.log(f"ablation {mode}: already done")
                continue
            seed_everything(self.args.seed)
            model, dense = self.dense_model()
            recipe = dataclasses.replace(
                self.recipe,
                regularizer=dataclasses.replace(self.recipe.regularizer, mode=mode),
                retrain=dataclasses.replace(self.recipe.retrain, epochs=1, max_steps_per_epoch=steps),
                finetune=dataclasses.replace(self.recipe.finetune, epochs=0),
                codebook=dataclasses.replace(self.recipe.codebook, epochs=0),
            )
            self.log(f"ablation {mode}: {steps} retraining steps")
            row = self.compress_and_deploy(f"ablation-{mode}", recipe, model, loaders, self.count_size())
            row.pop("layers")
            previous["modes"][mode] = row
            previous.update(steps=steps, batch_size=self.recipe.data.batch_size, top1_dense=self._dense_top1(dense, loaders[1]))
            self.save_record("ablation", previous)

    def _dense_top1(self, dense: dict[str, Any], test_loader: Any) -> float:
        """The dense baseline's top-1 on this stage's test set (re-measured when it is a subset)."""
        if len(test_loader.dataset) == dense.get("test_images"):
            return dense["top1"]
        model, _ = self.dense_model()
        return 100 * evaluate(model, test_loader, self.args.device)["accuracy"]

    # -- highres (no copying before fc6) -------------------------------------------------------
    def run_highres(self) -> None:
        if self._done("highres"):
            return
        seed_everything(self.args.seed)  # the model's initialization and every draw after it
        model, dense = self.dense_model()
        side = self.args.highres_resolution
        loaders = self.loaders(side, self.args.highres_subset, self.args.highres_test_subset)
        top1_lowres_weights = 100 * evaluate(model, loaders[1], self.args.device)["accuracy"]
        config = TrainConfig(epochs=self.args.highres_dense_epochs, lr=self.args.dense_lr, weight_decay=5e-4, schedule="cosine", seed=self.args.seed,
                             device=self.args.device, progress=self.progress, log_every=0, max_steps_per_epoch=2 if self.args.smoke else None)
        self.log(f"highres: adapting the dense model to {side} px on {loaders[2].train_size:,} images")
        result = train(model, loaders[0], loaders[1], config, checkpoint_path=self.work / "highres-dense.ckpt",
                       resume="auto" if self.args.resume else False, log_path=self.work / "highres-dense.jsonl", stage="highres-dense")
        capped = lambda stage: dataclasses.replace(stage, epochs=min(stage.epochs, 1))
        recipe = dataclasses.replace(self.recipe, retrain=capped(self.recipe.retrain), finetune=capped(self.recipe.finetune))
        record = self.compress_and_deploy("highres", recipe, model, loaders, self.count_size())
        record.update(top1_dense=100 * result.test_accuracy, top1_dense_before_adaptation=top1_lowres_weights,
                      adaptation_epochs=config.epochs, adaptation_lr=config.lr,
                      dense_seconds=sum(r.get("seconds", 0.0) for r in result.history))
        self.save_record("highres", record)
        self.log(f"highres: {record['compression_ratio']:.1f}x, top-1 dense {record['top1_dense']:.2f}% spatial {record['top1_spatial']:.2f}% winograd {record['top1_winograd']:.2f}%")


def _weights_digest(model: torch.nn.Module) -> str:
    """Which starting weights a compress work directory belongs to (a new dense model must not
    resume an old run's retraining)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _layer_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    macs = {row["name"]: row for row in payload["macs"]["layers"]}
    rows = []
    for layer in payload["report"]["layers"]:
        name = layer["name"].removesuffix(".weight")
        cost = macs.get(name, {})
        rows.append({
            "name": name, "params": layer["params"], "density": layer["density"], "winograd_density": layer["winograd_density"],
            "bits": layer["bits"], "coded_bytes": layer["position_bytes"] + layer["index_bytes"] + layer["codebook_bytes"],
            "dense_macs": cost.get("dense_macs"), "sparse_spatial_macs": cost.get("sparse_spatial_macs"),
            "sparse_winograd_macs": cost.get("sparse_winograd_macs"),
        })
    return rows


# ---------------------------------------------------------------------------------- report


def _ratio(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.2f}x"


def _with_transforms_note(macs: dict[str, Any]) -> str:
    if macs.get("winograd_with_transforms") is None:
        return "This run predates the transform count; re-run the stage to measure the Winograd figure with transforms."
    return (f"Counting {WINOGRAD_TRANSFORMS_CONVENTION}, the Winograd deployment needs {macs['winograd_with_transforms'] / 1e6:.1f}M "
            f"({macs['dense'] / macs['winograd_with_transforms']:.2f}x fewer than dense).")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _density(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _shown(command: str) -> str:
    """The command as results show it: the work directory (any scratch path of the machine that
    ran it, and irrelevant to the figures) as WORK."""
    return re.sub(r"(--work-dir[ =])\S+", r"\1WORK", command)


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """Table B's figures of one compressed run (the JSON keys the issue names)."""
    return {
        "compression_ratio": record["compression_ratio"], "weights_only_ratio": record["weights_only_ratio"],
        "macs_reduction_spatial": record["macs_reduction_spatial"], "macs_reduction_winograd": record["macs_reduction_winograd"],
        # records written before the transforms were counted lack it: None, never a guess
        "macs_reduction_winograd_with_transforms": record.get("macs_reduction_winograd_with_transforms"),
        "top1_dense": record["top1_dense"], "top1_spatial": record["top1_spatial"], "top1_winograd": record["top1_winograd"],
        "file_bytes": record["file_bytes"],
    }


def top1_drop(record: dict[str, Any]) -> float:
    """Points lost from the dense baseline in the worse of the two deployed domains."""
    return record["top1_dense"] - min(record["top1_spatial"], record["top1_winograd"])


def _times(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in seconds.items())


def targets_met(spec: NetworkSpec, record: dict[str, Any]) -> dict[str, bool]:
    return {
        "compression": record["compression_ratio"] >= spec.target_ratio,
        "computation": max(record["macs_reduction_spatial"], record["macs_reduction_winograd"]) >= spec.target_macs,
        "accuracy": top1_drop(record) <= MAX_DROP_POINTS,
    }


def write_report(spec: NetworkSpec, args: argparse.Namespace) -> Path | None:
    records = {stage: json.loads((args.work_dir / f"{stage}.json").read_text()) for stage in STAGES if (args.work_dir / f"{stage}.json").is_file()}
    if "joint" not in records:
        return None
    joint, dense = records["joint"], records["dense"]
    resolution = joint["resolution"][0]
    lines = [f"# {spec.title}: the paper's compression tables, reproduced on {'ImageNet' if args.data.startswith('imagefolder:') else 'a CPU proxy'}", ""]
    lines += ["Produced by (stage by stage, in this order; each stage resumes and is reused by the next):", "", "```"]
    invocations: dict[tuple[str, str, str], list[str]] = {}
    for stage, record in records.items():
        invocations.setdefault((_shown(record["command"]), record["date"], record["code"]), []).append(stage)
    for (command, date, code), stages in invocations.items():
        lines.append(f"{command}    # {', '.join(stages)}: {date}, code {code}")
    lines += ["```", "", "WORK: any scratch directory (checkpoints and stage records; the same one for every stage).", "", f"Machine: {machine_summary()}, {args.threads} torch thread(s) per run. Recipe: `{os.path.relpath(args.recipe)}`.", ""]
    lines += ["Wall time per stage (seconds):", ""]
    polish = f", then {dense['polish_epochs']} at lr {dense['polish_lr']:g}" if dense.get("polish_epochs") else ""
    lines.append(f"- dense: {dense['seconds']:.0f} s ({dense['epochs']} epoch(s) at lr {dense['lr']:g}{polish}, cosine; "
                 f"top-1 {dense['top1']:.2f}%" + (f", {dense['top1_first_schedule']:.2f}% before polishing)" if polish else ")"))
    for stage in ("joint", "highres"):
        if stage in records:
            lines.append(f"- {stage}: " + _times(records[stage]["seconds"]) + (f", dense adaptation {records[stage]['dense_seconds']:.0f}" if stage == "highres" else ""))
    if "ablation" in records:
        lines.append("- ablation: " + "; ".join(f"{mode} {_times(row['seconds'])}" for mode, row in records["ablation"]["modes"].items()))
    lines += ["", "## The proxy", "", spec.describe_proxy(resolution),
              f"Training images {joint['train_images']:,}, test images {joint['test_images']:,}, input {resolution} px, 3 replicated grey channels. "
              f"MACs are counted at {spec.count_resolution}x{spec.count_resolution} (the paper's input), with each layer's measured densities. "
              "The compression ratio is 32-bit dense bytes of every parameter (the 10-class head and BatchNorm included) over the file's size on disk; "
              "weights only is the compressed layers' dense bytes over their coded streams and codebooks.", ""]
    if "highres" in records:
        high = records["highres"]
        lines += [f"The highres row: the {resolution} px dense model, adapted to {high['resolution'][0]} px for {high['adaptation_epochs']} epoch(s) "
                  f"at lr {high['adaptation_lr']:g} on {high['train_images']:,} training images (top-1 {high['top1_dense_before_adaptation']:.2f}% "
                  f"before, {high['top1_dense']:.2f}% after, on {high['test_images']:,} test images), then compressed with the same recipe, "
                  "retraining and masked fine-tuning capped at one epoch each. It checks the compression at a resolution where the pool copies nothing; "
                  "its accuracies are on a subset and a short budget, so they say less than the main row's.", ""]

    lines += ["## Table A: per layer (the joint run's file)", "",
              "| layer | weights | spatial density | Winograd density | bits | coded bytes | dense MACs | spatial-sparse MACs | Winograd-sparse MACs |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in joint["layers"]:
        wino = "-" if row["sparse_winograd_macs"] is None else f"{row['sparse_winograd_macs'] / 1e6:.2f}M"
        lines.append(f"| {row['name']} | {row['params']:,} | {_density(row['density'])} | {_density(row['winograd_density'])} | {row['bits']} | {row['coded_bytes']:,} | "
                     f"{row['dense_macs'] / 1e6:.2f}M | {row['sparse_spatial_macs'] / 1e6:.2f}M | {wino} |")
    macs = joint["macs"]
    lines += [f"| total | {sum(r['params'] for r in joint['layers']):,} | {_density(joint['density'])} | {_density(joint['winograd_density'])} | | "
              f"{sum(r['coded_bytes'] for r in joint['layers']):,} | {macs['dense'] / 1e6:.1f}M | {macs['spatial'] / 1e6:.1f}M | {macs['winograd'] / 1e6:.1f}M |", "",
              f"Winograd-sparse MACs: {WINOGRAD_PRODUCTS_CONVENTION}; layers without a Winograd form run spatially in that deployment and count their spatial-sparse MACs in the total. "
              + _with_transforms_note(macs), ""]

    lines += ["## Table B: summary (measured)", "",
              "| run | top-1 dense | top-1 spatial | top-1 Winograd | file bytes | compression (file) | compression (weights only) | MAC reduction spatial | MAC reduction Winograd (products) | MAC reduction Winograd (with transforms) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    runs = [("joint", f"{resolution} px proxy (full recipe)")]
    if "highres" in records:
        runs.append(("highres", f"{records['highres']['resolution'][0]} px, no copying ({records['highres']['train_images']:,} training images)"))
    for stage, label in runs:
        r = records[stage]
        lines.append(f"| {label} | {_pct(r['top1_dense'])} | {_pct(r['top1_spatial'])} | {_pct(r['top1_winograd'])} | {r['file_bytes']:,} | "
                     f"{r['compression_ratio']:.1f}x | {r['weights_only_ratio']:.1f}x | {r['macs_reduction_spatial']:.2f}x | {r['macs_reduction_winograd']:.2f}x | "
                     f"{_ratio(r.get('macs_reduction_winograd_with_transforms'))} |")
    lines += ["", "Quoted from the papers (ImageNet, not measured here):", "", "| system | compression | computation reduction |", "| --- | ---: | ---: |"]
    lines += [f"| {q['system']} | {q['compression']} | {q['computation']} |" for q in spec.quoted]
    lines += ["", "Targets (issue 7): compression and computation reduction at least the paper's, top-1 within 1 point of our dense baseline in both domains:", ""]
    for stage, label in runs:
        r = records[stage]
        met = targets_met(spec, r)
        lines.append(f"- {label}: compression {r['compression_ratio']:.1f}x vs >= {spec.target_ratio}x: {_met(met['compression'])}; "
                     f"computation {max(r['macs_reduction_spatial'], r['macs_reduction_winograd']):.2f}x (better domain) vs >= {spec.target_macs}x: {_met(met['computation'])}; "
                     f"top-1 drop {top1_drop(r):.2f} pt (worse domain) vs <= {MAX_DROP_POINTS} pt: {_met(met['accuracy'])}")
    if "ablation" in records:
        abl = records["ablation"]
        lines += ["", "## Table C: regularization ablation", "",
                  f"The recipe's targets in each regularizer mode, from the same dense model, with a shortened budget: {abl['steps']} retraining steps "
                  f"(batch {abl.get('batch_size') or load_recipe(args.recipe).data.batch_size}), evaluated on {next(iter(abl['modes'].values()))['test_images']:,} test images, "
                  "no masked or codebook fine-tuning, then quantized and coded like the full run. Each file is decoded in both domains "
                  "(the Winograd deployment prunes the spatially pruned weights in the Winograd domain at decode time).", "",
                  "| regularizer | top-1 spatial | top-1 Winograd | drop spatial (pt) | drop Winograd (pt) | spatial density | Winograd density | compression |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for mode in ABLATION_MODES:
            if mode in abl["modes"]:
                r = abl["modes"][mode]
                lines.append(f"| {mode} | {_pct(r['top1_spatial'])} | {_pct(r['top1_winograd'])} | {abl['top1_dense'] - r['top1_spatial']:.2f} | "
                             f"{abl['top1_dense'] - r['top1_winograd']:.2f} | {_density(r['density'])} | {_density(r['winograd_density'])} | {r['compression_ratio']:.1f}x |")
        lines.append(f"\nDense top-1: {abl['top1_dense']:.2f}%.")
    text = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = args.out_dir / f"{spec.name}_tables.md"
    atomic_write_text(md, text)
    payload = {**summary(joint), "targets_met": targets_met(spec, joint), "resolution": resolution,
               "command": "; ".join(dict.fromkeys(_shown(record["command"]) for record in records.values())), "date": joint["date"], "machine": machine_summary()}
    if "highres" in records:
        payload["highres"] = {**summary(records["highres"]), "resolution": records["highres"]["resolution"][0], "targets_met": targets_met(spec, records["highres"])}
    if "ablation" in records:
        payload["ablation"] = {mode: {k: row[k] for k in ("top1_spatial", "top1_winograd", "density", "winograd_density", "compression_ratio")}
                               for mode, row in records["ablation"]["modes"].items()}
    atomic_write_text(args.out_dir / f"{spec.name}_tables.json", json.dumps(payload, indent=2) + "\n")
    return md


def main(spec: NetworkSpec, argv: list[str] | None = None) -> int:
    try:
        args = parse_args(spec, argv)
        torch.set_num_threads(args.threads)
        run = Run(spec, args)
        for stage in STAGES:
            if stage in args.stages:
                getattr(run, f"run_{stage}")()
        if is_rank0():
            path = write_report(spec, args)
            run.log(f"wrote {path}" if path else "no table yet (the joint stage has not run)")
        return 0
    except (TablesError, ValueError, FileNotFoundError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
