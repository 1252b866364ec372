"""Shared driver of ``alexnet_tables.py`` and ``resnet18_tables.py``: the paper's compression
tables (SPEC section 7) on a network, on ImageNet (``--data imagefolder:PATH``) or on the CPU
proxy (Fashion-MNIST resized, 3 replicated channels, a 10-class head).

Stages, each its own invocation if wanted (``--stages``), each resumable and recorded as
``<work-dir>/<stage>.json`` so that the report is rebuilt from every finished stage:

- ``dense``: the dense baseline, trained to convergence on validation: a first cosine schedule
  (``--dense-epochs``), then one-epoch cosine cycles at a halving learning rate until two
  epochs in a row fail to raise the best validation top-1 by ``--dense-min-gain`` points (or
  ``--dense-max-epochs`` is reached, which the table then says); the per-epoch validation
  curve is recorded;
- ``control``: the dense model trained on, dense, through the recipe's retrain, fine-tune and
  codebook stage settings (same optimizer, learning rates, schedules and step counts; no
  regularizer, no pruning, no quantization): the compressed model's extra epochs given to the
  dense one. Every drop is measured against the better of dense and control;
- ``joint``: the recipe through ``jointsparse.compress.compress`` into a real ``.jsz`` file,
  decoded in both domains (``jointsparse.codecs.decode``) and evaluated: Tables A and B. The
  file is copied to ``--out-dir`` (``<net>_tables.jsz``) so that it can be committed;
- ``ablation``: Table C, the recipe in ``spatial``, ``winograd`` and ``joint`` regularizer mode
  with retraining capped at ``--ablation-steps`` (default half an epoch) and the masked and
  codebook fine-tuning of the full run, each coded into a file and deployed in both domains
  (``--ablation-modes`` picks rows, so two processes can run different rows side by side);
- ``deepcomp`` (AlexNet): Deep Compression (Han et al.) through the same pipeline from the same
  dense model, at the per-layer densities Han et al. report for AlexNet, its own bits; its
  bytes also counted in Han et al.'s coding, and our ratio divided by its ratio;
- ``highres-dense``, ``highres-control``, ``highres`` (AlexNet): the row at a resolution where
  the last pool copies nothing (SPEC section 10's trap), on ``--highres-subset`` training
  images: the dense model trained on there from the low-resolution one until converged (the
  same rule as ``dense``), its equal-epoch control, and the full recipe. Each stage resumes
  from its per-epoch checkpoints, so the row can be spread over several sittings;
- ``tune`` (only alone, never a default): ``--recipe`` as a candidate through ``compress`` from
  the dense model, its file decoded in both domains and scored on validation only. The record
  goes to ``<out-dir>/<net>_tuning/`` (committed with the results), the report lists every
  candidate (``experiments/tuning.py``), and a candidate that changes only later stages starts
  from the finished stages of the joint run or an earlier candidate that trained the same way.
  Once a candidate becomes the recipe, the joint stage takes that candidate's finished stages
  (the report's wall-time line says so) and trains nothing again.

A validation split (``--validation`` images, drawn from the training images with a fixed seed)
is held out of training. Every choice made during a run (the dense epochs, the dense model
kept, each compression stage's per-epoch score) looks at validation; the test images are scored
once per reported figure.

The tables land in ``--out-dir`` as ``<net>_tables.md`` and ``<net>_tables.json``.

Every finished stage's record and invocation list is also copied to ``<out-dir>/<net>_stages/``
(committed with the results). WORK's checkpoints go with the machine that ran them; the records
are all the report needs, so a later sitting with a fresh WORK reports the stages an earlier one
finished, as long as its dense model is the same (same weights digest; a different one sets the
archived stages aside, since they started from other weights). A report that lacks results
the finished tables in ``--out-dir`` hold (Tables A/B, Table C, the Deep Compression or the
high-resolution row) goes to ``<net>_tables_pending.md`` / ``.json`` instead, unless its Table C
or Deep Compression row can be carried over from those tables: same dense weights, same dense
and control top-1 and, for the Deep Compression row, the same recipe; labelled as carried.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from jointsparse.baselines import DEEP_COMPRESSION_BITS, deep_compression_bytes
from jointsparse.codecs import decode, load
from jointsparse.compress import compress, run_fingerprint
from jointsparse.cost import WINOGRAD_PRODUCTS_CONVENTION, WINOGRAD_TRANSFORMS_CONVENTION
from jointsparse.data import DataError, ShardSampler, TensorImageDataset, data_loader, get_dataset, make_loaders, select_subset
from jointsparse.info import info_payload
from jointsparse.models import get_model
from jointsparse.provenance import ROOT, code_version, command_line, machine_summary
from jointsparse.recipe import Recipe, RegularizerConfig, SparsityConfig, load_recipe
from jointsparse.train import CheckpointError, TrainConfig, evaluate, get_rank, init_distributed, is_rank0, seed_everything, train
from jointsparse.utils import atomic_torch_save, atomic_write_bytes, atomic_write_text

from tuning import TUNE, already_tried, load_records, recipe_digest, record_path, reuse_trained_stages, tuning_lines, write_record  # a sibling script: its directory is on sys.path

#: What a "+modified" code stamp means; the stamp cannot say which edits they were.
MODIFIED_NOTE = ("`+modified`: the invocation started with uncommitted edits to the code it runs (jointsparse/ and "
                 "experiments/ minus experiments/results since 1345d9a; before it, jointsparse/ only). They were committed "
                 "later, but the stamp does not record which commit holds them.")

STAGES = ("dense", "control", "joint", "ablation", "deepcomp", "highres-dense", "highres-control", "highres")
HIGHRES_STAGES = ("highres-dense", "highres-control", "highres")
ABLATION_MODES = ("spatial", "winograd", "joint")
#: Table B's accuracy bound: top-1 drop from our own dense baseline, in points, in both domains.
MAX_DROP_POINTS = 1.0
#: Table C: rows within this fraction of the densest row's density count as at equal density,
#: and top-1 differences under this many points as no difference (seeds and test noise).
DENSITY_TOLERANCE = 0.05
VERDICT_MARGIN_POINTS = 0.2
#: Issue 15's target for a file's position streams, as a fraction of their order-0 bound.
POSITION_TARGET = 0.90


@contextlib.contextmanager
def _exclusive(lock_file: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_file`` (dropped by the kernel if we die), waiting for it;
    with ``wait=False``, yield False at once if another process holds it (True once held)."""
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Held while a process merges its Table C row into the record, and while it writes the report
#: (a report written from records read before another process's merge would drop that row).
ABLATION_RECORD_LOCK = ".ablation.json.merge-lock"


def _agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a decision every rank must take alike); ``value`` alone
    when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


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
    target_ratio: float
    target_macs: float
    quoted: list[dict[str, str]]  # rows quoted from the papers (SPEC section 7)
    highres_resolution: int | None = None
    describe_proxy: Callable[[int], str] = lambda resolution: ""
    # Deep Compression's kept fraction per layer for equal accuracy (Han et al.'s published figures); None: no such row
    deep_compression_density: dict[str, float] | None = None
    deep_compression_source: str = ""
    # said beside the accuracy target's verdict when the recipe was chosen with test figures in view
    accuracy_caveat: str = ""
    # how the recipe's settings were chosen (what was tuned on what), for the report
    recipe_note: str = ("The recipe itself (the `a` values, the densities, the stage epochs and learning rates) is unchanged from the issue-7 run, "
                        "where it was set while looking at test figures; it was not re-tuned on validation here.")


# ------------------------------------------------------------------------------- settings


def default_stages(spec: NetworkSpec) -> list[str]:
    """Every stage the network has (the highres ones need a resolution, deepcomp known densities)."""
    return [s for s in STAGES if (s not in HIGHRES_STAGES or spec.highres_resolution) and (s != "deepcomp" or spec.deep_compression_density)]


def parse_args(spec: NetworkSpec, argv: list[str] | None = None) -> argparse.Namespace:
    results = Path(__file__).resolve().parent / "results"
    parser = argparse.ArgumentParser(
        description=f"Reproduce the paper's {spec.title} compression tables (proxy or ImageNet).",
        epilog=f"example: python experiments/{spec.name}_tables.py --stages dense,joint,ablation   "
        f"(smoke: python experiments/{spec.name}_tables.py --smoke --out-dir /tmp/t)",
    )
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist (the CPU proxy) or imagefolder:PATH (ImageNet)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; run under torchrun for several GPUs")
    parser.add_argument("--stages", default=",".join(default_stages(spec)),
                        help=f"comma-separated subset of {', '.join(STAGES)} (finished stages are reused), or {TUNE}: "
                             "--recipe as a candidate, scored on validation only, its record kept beside the report")
    parser.add_argument("--resolution", type=int, default=None, help=f"proxy input side in px (default {spec.proxy_resolution}; ImageNet: 227 for AlexNet, 224 for ResNet-18)")
    parser.add_argument("--recipe", type=Path, default=spec.recipe)
    parser.add_argument("--subset", type=int, default=None, help="train on N training images (default all)")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on N test images (default all)")
    parser.add_argument("--dense-epochs", type=int, default=spec.dense_epochs)
    parser.add_argument("--dense-lr", type=float, default=spec.dense_lr)
    parser.add_argument("--dense-max-epochs", type=int, default=12,
                        help="cap on the dense epochs in all; after --dense-epochs, one-epoch cycles run until two epochs in a row raise the best validation top-1 by < --dense-min-gain")
    parser.add_argument("--dense-min-gain", type=float, default=0.1, help="convergence: two epochs in a row raise the best validation top-1 by less than this many points")
    parser.add_argument("--dense-polish-lr", type=float, default=None,
                        help="peak LR of the first one-epoch cosine cycle after the first schedule (default --dense-lr / 2; each next cycle halves it)")
    parser.add_argument("--validation", type=int, default=6000, help="training images held out as the validation split (fixed seed: --seed)")
    parser.add_argument("--highres-validation", type=int, default=1000, help="validation images of the highres stages, held out of --highres-subset")
    parser.add_argument("--ablation-modes", default=",".join(ABLATION_MODES), metavar="MODES",
                        help="Table C rows this invocation runs, comma-separated (default all: " + ",".join(ABLATION_MODES)
                        + "); processes given different modes run side by side and share one record")
    parser.add_argument("--ablation-steps", type=int, default=None, help="retraining steps per Table C mode (default: half an epoch)")
    parser.add_argument("--highres-resolution", type=int, default=spec.highres_resolution)
    parser.add_argument("--highres-subset", type=int, default=21000,
                        help="images drawn from the training split for the highres stages: --highres-validation of them validate, the rest (20,000 by default) train")
    parser.add_argument("--highres-test-subset", type=int, default=None, help="test images of the highres stages (default all)")
    parser.add_argument("--highres-dense-epochs", type=int, default=3,
                        help="first cosine schedule (at --dense-lr) of the high-resolution dense model, which starts from the low-resolution one; "
                             "then one-epoch cycles as the dense stage's, until converged")
    parser.add_argument("--highres-dense-max-epochs", type=int, default=10, help="cap on the high-resolution dense epochs in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs share a 2-core machine)")
    parser.add_argument("--work-dir", type=Path, default=None, help=f"checkpoints and stage records (default {spec.name}-tables-work)")
    parser.add_argument("--out-dir", type=Path, default=results)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="reuse finished and partial stages")
    parser.add_argument("--report-only", action="store_true",
                        help="run no stage: write the tables from the finished stages (and, while the dense stage is unfinished, its logged epochs)")
    parser.add_argument("--smoke", action="store_true", help="a few hundred images, one short epoch per stage: checks the path and the tables")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in (*STAGES, TUNE)]
    if unknown or not args.stages:
        raise TablesError(f"--stages must name some of {', '.join((*STAGES, TUNE))}, got {unknown or 'nothing'}")
    if TUNE in args.stages and len(args.stages) > 1:
        raise TablesError(f"--stages {TUNE} runs alone: its --recipe is a candidate, not the recipe of the other stages")
    if set(HIGHRES_STAGES) & set(args.stages) and not args.highres_resolution:
        raise TablesError("the highres stages need --highres-resolution")
    if "deepcomp" in args.stages and not spec.deep_compression_density:
        raise TablesError(f"no Deep Compression densities are known for {spec.title}: the deepcomp stage is AlexNet's")
    if args.resolution is None:
        args.resolution = None if args.data.startswith("imagefolder:") else spec.proxy_resolution
    if args.smoke:
        args.subset = args.subset or 256
        args.test_subset = args.test_subset or 128
        args.validation = min(args.validation, 64)
        args.dense_epochs = 1
        args.dense_max_epochs = min(args.dense_max_epochs, 2)
        args.highres_subset, args.highres_test_subset, args.highres_dense_epochs, args.highres_validation = 64, 32, 1, 16
        args.highres_dense_max_epochs = min(args.highres_dense_max_epochs, 2)
    for name in ("subset", "test_subset", "ablation_steps", "highres_subset", "highres_test_subset", "highres_dense_epochs", "resolution",
                 "validation", "highres_validation"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TablesError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    args.dense_polish_lr = args.dense_polish_lr or args.dense_lr / 2
    if args.highres_dense_max_epochs < args.highres_dense_epochs:
        raise TablesError("--highres-dense-max-epochs must be >= --highres-dense-epochs")
    if args.dense_epochs < 1 or args.dense_max_epochs < args.dense_epochs or args.threads < 1 or not args.dense_lr > 0 or not args.dense_polish_lr > 0 \
            or not args.dense_min_gain >= 0:
        raise TablesError("--dense-epochs must be >= 1 and <= --dense-max-epochs, --threads >= 1, the learning rates > 0, --dense-min-gain >= 0")
    if args.subset is not None and args.validation >= args.subset:
        raise TablesError(f"--validation ({args.validation}) must leave training images out of --subset ({args.subset})")
    if args.highres_subset is not None and args.highres_validation >= args.highres_subset:
        raise TablesError(f"--highres-validation ({args.highres_validation}) must leave training images out of --highres-subset ({args.highres_subset})")
    if not args.recipe.is_file():
        raise TablesError(f"recipe {args.recipe} not found")
    args.ablation_modes = tuple(m.strip() for m in args.ablation_modes.split(",") if m.strip())
    unknown = [m for m in args.ablation_modes if m not in ABLATION_MODES]
    if unknown or not args.ablation_modes:
        raise TablesError(f"--ablation-modes: unknown mode(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ABLATION_MODES)}")
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
        self.code = code_version()  # the code that runs, read before anything can change it
        if not args.resume and is_rank0():  # the stages asked for start over; the others stay
            for stage in args.stages:
                if stage != "ablation":  # its rows start over one by one (run_ablation): other processes' rows stay
                    (args.work_dir / f"{stage}.json").unlink(missing_ok=True)

    def log(self, text: str) -> None:
        if is_rank0():
            print(f"[{self.spec.name}] {text}", flush=True)

    def loaders(self, resolution: int | None, subset: int | None, test_subset: int | None, validation: int,
                within: torch.Tensor | None = None) -> tuple:
        """(train, validation, test) loaders and the data's info: ``validation`` images drawn from
        the (subset of the) training images with the fixed seed ``--seed`` are held out of training
        (drawn among the positions ``within``, when given)."""
        data = self.recipe.data
        full_loader, test_loader, info = make_loaders(
            self.args.data, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, seed=self.args.seed,
            resize=resolution, channels=3, subset=subset, subset_seed=self.args.seed if subset else None,
            test_subset=test_subset, distributed=self.world > 1,
        )
        train_set, val_set = carve_validation(full_loader.dataset, validation, self.args.seed, within)
        rank = get_rank()
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=self.world, rank=rank, shuffle=True, seed=self.args.seed, drop_last=False)
        train_loader = data_loader(train_set, sampler, data.batch_size, False, 0)
        val_loader = data_loader(val_set, ShardSampler(len(val_set), rank, self.world), data.eval_batch_size, False, 0)
        return train_loader, val_loader, test_loader, dataclasses.replace(info, train_size=len(train_set))

    def main_loaders(self) -> tuple:
        if getattr(self, "_main_loaders", None) is None:
            self._main_loaders = self.loaders(self.args.resolution, self.args.subset, self.args.test_subset, self.args.validation)
        return self._main_loaders

    def record(self, stage: str) -> dict[str, Any] | None:
        path = self.args.work_dir / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def provenance(self) -> dict[str, str]:
        """This invocation: its command line, today's date and the code it runs."""
        return {"command": command_line(), "date": datetime.date.today().isoformat(), "code": self.code}

    def save_record(self, stage: str, record: dict[str, Any]) -> None:
        record.update(self.provenance())
        if is_rank0():
            text = json.dumps(record, indent=2, default=float) + "\n"
            atomic_write_text(self.args.work_dir / f"{stage}.json", text)
            _archive_text(stage_archive(self.spec, self.args) / f"{stage}.json", text)
        _barrier()  # other ranks read rank 0's records and dense weights next

    def _done(self, stage: str, settings: dict[str, Any] | None = None, strict: bool = False) -> bool:
        """A stage with a record made with these ``settings`` is finished; say so and skip it (a
        record of other settings is run again: the pipeline keeps the stages the change does not
        touch; a record older than this check, without settings, stands unless ``strict``). An
        unfinished one notes the invocation that starts it (``<stage>.started.json``), for the
        report of an unfinished run."""
        record = self.record(stage)
        recorded = record.get("settings", None if strict else settings) if record is not None else None
        done = record is not None and (settings is None or recorded == settings)
        if done:
            self.log(f"{stage}: already done")
        elif record is not None:
            self.log(f"{stage}: the recipe changed since its record; running it again")
        if not done and is_rank0():
            started = self.args.work_dir / f"{stage}.started.json"
            history = json.loads(started.read_text()) if started.is_file() else []
            history.append({"command": command_line(), "date": datetime.date.today().isoformat(), "code": self.code})
            atomic_write_text(started, json.dumps(history, indent=2) + "\n")
            _archive_text(stage_archive(self.spec, self.args) / started.name, started.read_text())
        return done

    def new_model(self, num_classes: int) -> torch.nn.Module:
        return get_model(self.spec.name, num_classes=num_classes, in_channels=3)

    def dense_model(self, stage: str = "dense") -> tuple[torch.nn.Module, dict[str, Any]]:
        """The kept weights and the record of a dense stage (``dense`` or ``highres-dense``)."""
        record = self.record(stage)
        if record is None:
            raise TablesError(f"run the {stage} stage first (--stages {stage})")
        model = self.new_model(record["num_classes"])
        model.load_state_dict(torch.load(self.args.work_dir / f"{stage}.pt", map_location="cpu", weights_only=True))
        return model, record

    def highres_loaders(self) -> tuple:
        if getattr(self, "_highres_loaders", None) is None:
            a = self.args
            # validation images the model it starts from never trained on: the main run's validation images
            within = main_validation_positions(len(get_dataset(a.data, "train")), a.seed, a.subset, a.validation, a.highres_subset)
            self._highres_loaders = self.loaders(a.highres_resolution, a.highres_subset, a.highres_test_subset, a.highres_validation, within)
        return self._highres_loaders

    # -- dense --------------------------------------------------------------------------------
    def train_dense(self, stage: str, model: torch.nn.Module, loaders: tuple, epochs: int, max_epochs: int) -> dict[str, Any]:
        """A first cosine schedule of ``epochs`` at --dense-lr, then one-epoch cosine cycles at a
        halving peak LR (from --dense-polish-lr) until two epochs in a row raise the best by < --dense-min-gain points of
        validation top-1 (capped at ``max_epochs`` in all). ``model`` ends as the cycle end with
        the best validation top-1, saved as ``<stage>.pt``; the test set is scored once. Every
        epoch is checkpointed (``<stage>.ckpt``, ``<stage>-cycle<k>.ckpt``): a killed run resumes."""
        args = self.args
        train_loader, val_loader, test_loader, info = loaders
        config = TrainConfig(epochs=epochs, lr=args.dense_lr, weight_decay=5e-4, schedule="cosine", seed=args.seed,
                             device=args.device, progress=self.progress, log_every=0, max_steps_per_epoch=2 if args.smoke else None)
        self.log(f"{stage}: {config.epochs} epoch(s) at {info.input_size} px on {info.train_size:,} images, validation {len(val_loader.dataset):,}")
        restarting = dict(resume=args.resume, log=self.log, what="it afresh")  # a checkpoint of other data (another --highres-subset) restarts
        result = train_restarting(model, train_loader, val_loader, config, self.work, stage, **restarting)
        curve = [_curve_point(r, config.lr, "first schedule") for r in result.history]
        best = {"val_top1": curve[-1]["val_top1"], "epoch": len(curve)}
        if is_rank0():
            atomic_torch_save(model.state_dict(), args.work_dir / f"{stage}-best.pt")
        cycle, lr = 0, args.dense_polish_lr
        while len(curve) < max_epochs and not converged(curve, args.dense_min_gain):
            cycle += 1
            self.log(f"{stage}: validation top-1 {curve[-1]['val_top1']:.2f}% ({_gain(curve):+.2f} pt over the best before the last {CONVERGENCE_PATIENCE} epochs); cycle {cycle}: 1 epoch, cosine from lr {lr:g}")
            config = dataclasses.replace(config, epochs=1, lr=lr)
            result = train_restarting(model, train_loader, val_loader, config, self.work, f"{stage}-cycle{cycle}", **restarting)
            curve += [_curve_point(r, lr, f"cycle {cycle}") for r in result.history]
            if curve[-1]["val_top1"] > best["val_top1"] and is_rank0():
                best = {"val_top1": curve[-1]["val_top1"], "epoch": len(curve)}
                atomic_torch_save(model.state_dict(), args.work_dir / f"{stage}-best.pt")
            lr /= 2
        _barrier()
        model.load_state_dict(torch.load(args.work_dir / f"{stage}-best.pt", map_location="cpu", weights_only=True))
        if is_rank0():
            atomic_torch_save(model.state_dict(), args.work_dir / f"{stage}.pt")
        begin = time.perf_counter()
        top1 = 100 * evaluate(model, test_loader, args.device)["accuracy"]  # the one look at the test set
        self.log(f"{stage}: kept epoch {best['epoch']} (validation {best['val_top1']:.2f}%), test top-1 {top1:.2f}%")
        return {
            "top1": top1, "val_top1": best["val_top1"], "kept_epoch": best["epoch"], "curve": curve, "epochs": epochs,
            "epochs_total": len(curve), "converged": converged(curve, args.dense_min_gain), "max_epochs": max_epochs,
            "min_gain": args.dense_min_gain, "lr": args.dense_lr, "polish_lr": args.dense_polish_lr, "num_classes": info.num_classes,
            "resolution": info.input_size, "train_images": info.train_size, "validation_images": len(val_loader.dataset),
            "test_images": info.test_size, "seconds": sum(point["seconds"] for point in curve) + time.perf_counter() - begin,
            "weights_digest": _weights_digest(model),
        }

    def run_dense(self) -> None:
        if self._done("dense"):
            return
        seed_everything(self.args.seed)  # the model's initialization and every draw after it
        loaders = self.main_loaders()
        record = self.train_dense("dense", self.new_model(loaders[3].num_classes), loaders, self.args.dense_epochs, self.args.dense_max_epochs)
        self.save_record("dense", record)

    # -- control: the dense model given the compressed model's extra training ------------------
    def train_control_stage(self, stage: str, dense_stage: str, loaders: Callable[[], tuple]) -> None:
        """``dense_stage``'s kept model trained on, dense, with the recipe's retrain, fine-tune and
        codebook settings: the extra training its compressed model gets. Tied to the dense
        weights it starts from: after a new dense model, its record and checkpoints are stale."""
        model, _ = self.dense_model(dense_stage)
        settings = {**control_settings(self.recipe), "dense_weights": _weights_digest(model)}
        record = self.record(stage)
        if record is not None and record.get("settings") == control_settings(self.recipe):
            settings = record["settings"]  # a record from before the weights were tied stands, as other records without them do
        if self._done(stage, settings):
            return
        args = self.args
        marker = self.work / f"{stage}.dense-weights"
        if marker.is_file() and marker.read_text() != settings["dense_weights"]:
            self.log(f"{stage}: its checkpoints started from other dense weights; training afresh")
            for path in self.work.glob(f"{stage}-*.ckpt"):
                path.unlink()
        if is_rank0():
            atomic_write_text(marker, settings["dense_weights"])
        seed_everything(args.seed)
        train_loader, val_loader, test_loader, _ = loaders()
        curve, steps = [], 0
        for part, config, result in train_control(model, train_loader, val_loader, self.recipe, self.work, seed=args.seed, device=args.device,
                                                  progress=self.progress, resume=args.resume, log=self.log, prefix=stage):
            curve += [_curve_point(r, config.lr, part) for r in result.history]
            steps += result.steps
        if is_rank0():
            atomic_torch_save(model.state_dict(), args.work_dir / f"{stage}.pt")
        begin = time.perf_counter()
        top1 = 100 * evaluate(model, test_loader, args.device)["accuracy"]  # the one look at the test set
        self.save_record(stage, {
            "top1": top1, "val_top1": curve[-1]["val_top1"] if curve else None, "curve": curve, "steps": steps,
            "epochs": steps / len(train_loader), "seconds": sum(point["seconds"] for point in curve) + time.perf_counter() - begin,
            "settings": settings,
        })
        self.log(f"{stage}: test top-1 {top1:.2f}% after {steps} more steps ({steps / len(train_loader):.2f} epochs)")

    def run_control(self) -> None:
        self.train_control_stage("control", "dense", self.main_loaders)

    # -- compress one recipe and deploy its file both ways --------------------------------------
    def compress_only(self, tag: str, recipe: Recipe, model: torch.nn.Module, loaders: tuple, count_size: tuple[int, int, int]) -> dict[str, Any]:
        """Compress on the training split into ``WORK/<tag>.jsz``, every stage scored on validation:
        the file's figures; no test image is touched. The run starts from the finished stages of an
        earlier run that trained the same way (``tuning.reuse_trained_stages``): a candidate from the
        joint run's, the joint run from the candidate that became the recipe."""
        train_loader, val_loader, _, info = loaders
        out = (self.work / f"{tag}.jsz").resolve()  # the record's path works from any directory
        fingerprint = {"tag": tag, "data": self.args.data, "size": list(info.input_size), "train": info.train_size, "start": _weights_digest(model)}
        reused = (reuse_trained_stages(self.work, self.work / f"{tag}.work", run_fingerprint(recipe, fingerprint), self.log)
                  if self.args.resume else None)  # every rank from its own work directory
        start = time.perf_counter()
        result = compress(model, train_loader, val_loader, recipe, out, workdir=self.work / f"{tag}.work", resume=self.args.resume,
                          device=self.args.device, seed=self.args.seed, progress=self.progress, log=self.log, eval_name="validation",
                          fingerprint=fingerprint, provenance={"data": {"name": self.args.data, "input_size": [3, *info.input_size]}})
        seconds = run_seconds(time.perf_counter() - start, result, reused)
        payload = info_payload(str(out), count_size)
        total = payload["report"]["total"]
        return {
            "file": str(out), "file_bytes": total["file_bytes"], "file_sha256": _file_sha256(out), "compression_ratio": total["compression_ratio"],
            "weights_only_ratio": total["weights_only_ratio"], "density": total["density"], "winograd_density": total["winograd_density"],
            **_position_figures(total),
            "macs_reduction_spatial": payload["macs"]["reduction_spatial"], "macs_reduction_winograd": payload["macs"]["reduction_winograd"],
            "macs_reduction_winograd_with_transforms": payload["macs"]["reduction_winograd_with_transforms"],
            "macs": {k: payload["macs"][k] for k in ("dense", "spatial", "winograd", "winograd_with_transforms", "input_size")},
            "val_top1_stages": {k: 100 * v for k, v in result.accuracy.items()},
            "layers": _layer_rows(payload), "seconds": seconds, SECONDS_COVER: True, "resolution": info.input_size,
            "train_images": info.train_size, "validation_images": len(val_loader.dataset), "test_images": info.test_size,
            **({"reused": reused} if reused else {}),
        }

    def decoded_top1(self, record: dict[str, Any], loader: Any, prefix: str) -> dict[str, float]:
        """The record's file decoded in each domain, top-1 on ``loader`` (the Winograd deployment
        prunes at decode time, so compress's in-memory scores say nothing of it)."""
        top1 = {}
        for domain in ("spatial", "winograd"):
            begin = time.perf_counter()
            decoded = decode(record["file"], domain=domain).to(self.args.device)
            top1[domain] = 100 * evaluate(decoded, loader, self.args.device)["accuracy"]
            record["seconds"][f"{prefix}_{domain}"] = time.perf_counter() - begin
        return top1

    def compress_and_deploy(self, tag: str, recipe: Recipe, model: torch.nn.Module, loaders: tuple, count_size: tuple[int, int, int]) -> dict[str, Any]:
        """Compress on the training split (every stage scored on validation), then decode the
        file in both domains and score each on the test set once."""
        record = self.compress_only(tag, recipe, model, loaders, count_size)
        top1 = self.decoded_top1(record, loaders[2], "evaluate")
        return {**record, "top1_spatial": top1["spatial"], "top1_winograd": top1["winograd"]}

    def count_size(self) -> tuple[int, int, int]:
        return (3, self.spec.count_resolution, self.spec.count_resolution)

    # -- joint (Tables A and B) -------------------------------------------------------------------
    def compress_stage(self, stage: str, recipe: Callable[[], Recipe], dense_stage: str, control_stage: str, loaders: Callable[[], tuple],
                       extra: Callable[[dict[str, Any]], None] = lambda record: None) -> dict[str, Any] | None:
        """``recipe`` from ``dense_stage``'s kept model into ``<stage>.jsz``, deployed both ways;
        the record carries the dense and (if run) the control's test top-1, and what ``extra``
        adds. None if done (a record without settings, from before this rule, is run again)."""
        settings = recipe().to_dict()
        if self._done(stage, settings, strict=True):
            return None
        seed_everything(self.args.seed)  # every draw after the dense model
        model, dense = self.dense_model(dense_stage)
        record = self.compress_and_deploy(stage, recipe(), model, loaders(), self.count_size())
        control = self.record(control_stage)
        record.update(top1_dense=dense["top1"], dense_control_top1=control["top1"] if control else None, settings=settings)
        extra(record)
        self.save_record(stage, record)
        self.log(f"{stage}: {record['compression_ratio']:.1f}x, top-1 spatial {record['top1_spatial']:.2f}% winograd {record['top1_winograd']:.2f}%")
        return record

    def run_joint(self) -> None:
        self.compress_stage("joint", lambda: self.recipe, "dense", "control", self.main_loaders)

    # -- tune: a candidate recipe, validation only -------------------------------------------------
    def run_tune(self) -> None:
        """``--recipe`` (a candidate) through ``compress`` from the dense model, its file decoded
        in both domains and scored on the validation split only; the record goes to
        ``<out-dir>/<network>_tuning/`` and the report lists it."""
        model, _ = self.dense_model("dense")
        dense = _weights_digest(model)
        recipe = self.recipe.to_dict()
        path, digest = record_path(self.args.out_dir / tuning_dir(self.spec), self.args.recipe, recipe)
        if self.args.resume and already_tried(path, dense, "val_top1_decoded"):
            self.log(f"tune {self.args.recipe.name}: already done ({path.name})")
            return
        loaders = self.main_loaders()
        self.log(f"tune {self.args.recipe.name}: compressing, scored on the {len(loaders[1].dataset):,} validation images only")
        seed_everything(self.args.seed)
        record = self.compress_only(f"{TUNE}-{digest}", self.recipe, model, loaders, self.count_size())
        record["val_top1_decoded"] = decoded = self.decoded_top1(record, loaders[1], "validate")
        if is_rank0():
            write_record(path, record, recipe_file=self.args.recipe, recipe=recipe, dense_digest=dense, command=_shown(command_line()), code=self.code)
        self.log(f"tune {self.args.recipe.name}: validation top-1 {decoded['spatial']:.2f}% / {decoded['winograd']:.2f}% decoded spatial / Winograd, "
                 f"{record['compression_ratio']:.1f}x, MACs {record['macs_reduction_winograd']:.2f}x (Winograd products); wrote {path}")

    # -- Deep Compression on the same proxy ------------------------------------------------------
    def deep_compression_recipe(self) -> Recipe:
        """Han et al.'s method in our pipeline: iterative magnitude pruning (3 rounds over the
        recipe's retraining) to their published densities, their 8/5 bits, the same fine-tuning."""
        per_epoch = -(-_train_images(self.args) // self.recipe.data.batch_size)
        retrain = self.recipe.retrain
        steps = retrain.epochs * min(per_epoch, retrain.max_steps_per_epoch or per_epoch)
        sparsity = {name: round(1.0 - kept, 6) for name, kept in self.spec.deep_compression_density.items()}
        rounds = 3  # the last one a quarter of the retraining before its end, so that it is retrained too
        return dataclasses.replace(
            self.recipe,
            regularizer=RegularizerConfig(method="deep_compression", options={"sparsity": sparsity, "rounds": rounds, "every": max(1, steps // (rounds + 1))}),
            sparsity=SparsityConfig(spatial=sparsity, winograd={}),  # no Winograd pruning: the method has no Winograd domain
            quantize=dataclasses.replace(self.recipe.quantize, conv_bits=DEEP_COMPRESSION_BITS["conv"], linear_bits=DEEP_COMPRESSION_BITS["linear"]),
        )

    def run_deepcomp(self) -> None:
        def han(record: dict[str, Any]) -> None:  # Han et al.'s own coding of the same quantized weights, beside our file
            record["han_bytes"] = deep_compression_bytes(load(record["file"]))
            # compression_ratio = dense bytes / file bytes (unrounded), so this is dense bytes / Han et al.'s bytes
            record["han_ratio"] = record["file_bytes"] * record["compression_ratio"] / record["han_bytes"]
            record["densities"] = self.spec.deep_compression_density
        self.compress_stage("deepcomp", self.deep_compression_recipe, "dense", "control", self.main_loaders, extra=han)

    # -- ablation (Table C) ---------------------------------------------------------------------
    def _ablation_key(self, steps: int) -> dict[str, Any]:
        """What makes Table C rows comparable: their retraining steps, the recipe, the dense net they
        start from and the data they see. Rows recorded under another key are run again."""
        a = self.args
        return {"steps": steps, "settings": self.recipe.to_dict(), "dense_weights_digest": _dense_digest(a.work_dir),
                "data": {"seed": a.seed, "subset": a.subset, "validation": a.validation, "resolution": a.resolution, "test_subset": a.test_subset}}

    def _ablation_record(self, steps: int) -> dict[str, Any]:
        """The ablation record on disk, or a fresh one if its rows were made under another key
        (a key the record predates, e.g. a record from before the dense digest was kept, matches)."""
        record = self.record("ablation") or {"modes": {}}
        stale = [name for name, value in self._ablation_key(steps).items() if record.get(name, value) != value]
        if stale and record["modes"]:
            self.log(f"ablation: the recorded row(s) {', '.join(record['modes'])} were made with another {', '.join(stale)}; they are run again")
            return {"modes": {}}
        return record

    def run_ablation(self) -> None:
        """Table C's rows, one mode after another. Several processes may run it side by side, each
        given other modes (--ablation-modes): a row is run under its own lock (a second process asked
        for the same row skips it), and merged into the record on disk under the record's lock, so
        no process drops or re-runs another's row. Without --resume the rows asked for are run again;
        the others stay."""
        loaders = self.main_loaders()
        steps = self.args.ablation_steps or (2 if self.args.smoke else max(1, len(loaders[0]) // 2))
        for mode in self.args.ablation_modes:
            with _exclusive(self.args.work_dir / f".ablation-{mode}.lock", wait=False) if is_rank0() else contextlib.nullcontext(True) as mine:
                if not _agree(mine):
                    self.log(f"ablation {mode}: another process is running this row; skipped")
                    continue
                if _agree(self.args.resume and mode in self._ablation_record(steps)["modes"]):  # read now: another process may have finished it
                    self.log(f"ablation {mode}: already done")
                    continue
                seed_everything(self.args.seed)
                model, dense = self.dense_model()
                recipe = dataclasses.replace(
                    self.recipe,
                    regularizer=dataclasses.replace(self.recipe.regularizer, mode=mode),
                    retrain=dataclasses.replace(self.recipe.retrain, epochs=1, max_steps_per_epoch=steps),
                )  # masked and codebook fine-tuning as in the full run
                self.log(f"ablation {mode}: {steps} retraining steps")
                row = self.compress_and_deploy(f"ablation-{mode}", recipe, model, loaders, self.count_size())
                row.pop("layers")
                row.update(self.provenance())  # rows may come from different invocations
                top1_dense = self._dense_top1(dense, loaders[2])
                lock = _exclusive(self.args.work_dir / ABLATION_RECORD_LOCK) if is_rank0() else contextlib.nullcontext()
                with lock:  # rank 0 alone writes records; the other ranks wait at save_record's barrier
                    current = self._ablation_record(steps)
                    current["modes"][mode] = row
                    current.update(self._ablation_key(steps), batch_size=self.recipe.data.batch_size, top1_dense=top1_dense, finetune="as the full run")
                    self.save_record("ablation", current)

    def _dense_top1(self, dense: dict[str, Any], test_loader: Any) -> float:
        """The dense baseline's top-1 on this stage's test set (re-measured when it is a subset)."""
        if len(test_loader.dataset) == dense.get("test_images"):
            return dense["top1"]
        model, _ = self.dense_model()
        return 100 * evaluate(model, test_loader, self.args.device)["accuracy"]

    # -- highres (no copying before fc6) -------------------------------------------------------
    def run_highres_dense(self) -> None:
        """The low-resolution dense model trained on at the high resolution until converged."""
        if self._done("highres-dense"):
            return
        seed_everything(self.args.seed)
        model, _ = self.dense_model()
        loaders = self.highres_loaders()
        before = 100 * evaluate(model, loaders[1], self.args.device)["accuracy"]  # on validation: a diagnostic
        record = self.train_dense("highres-dense", model, loaders, self.args.highres_dense_epochs, self.args.highres_dense_max_epochs)
        record["val_top1_before"] = before
        record["validation_seen_by_start"] = highres_validation_seen(self.args)
        self.save_record("highres-dense", record)

    def run_highres_control(self) -> None:
        self.train_control_stage("highres-control", "highres-dense", self.highres_loaders)

    def run_highres(self) -> None:
        self.compress_stage("highres", lambda: self.recipe, "highres-dense", "highres-control", self.highres_loaders)


class _Carved(torch.utils.data.Dataset):
    """Some of a dataset's images, by index; batch indexing (one fancy-indexing op per batch)
    passes through when the dataset has it."""

    def __init__(self, base: Any, indices: torch.Tensor) -> None:
        self.base, self.indices = base, indices
        self.batch_indexing = isinstance(base, TensorImageDataset) or bool(getattr(base, "batch_indexing", False))
        self.info = getattr(base, "info", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int):
            return self.base[int(self.indices[index])]
        return self.base[self.indices[torch.as_tensor(index, dtype=torch.long)]]


def carve_validation(dataset: Any, validation: int, seed: int, within: torch.Tensor | None = None) -> tuple[_Carved, _Carved]:
    """(training, validation) parts of ``dataset``: ``validation`` images drawn at random with
    the fixed ``seed``, the rest for training; both in the dataset's order. ``within``: positions
    to draw from first (the rest only when they are too few)."""
    if not 0 < validation < len(dataset):
        raise TablesError(f"--validation must be between 1 and the training images - 1 ({len(dataset) - 1}), got {validation}")
    if within is None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        return _Carved(dataset, order[validation:].sort().values), _Carved(dataset, order[:validation].sort().values)
    generator = torch.Generator().manual_seed(seed)
    first = torch.zeros(len(dataset), dtype=torch.bool)
    first[within] = True
    # a random order of the ``within`` positions, then of the others
    order = torch.cat([positions[torch.randperm(len(positions), generator=generator)] for positions in (torch.nonzero(first).flatten(), torch.nonzero(~first).flatten())])
    return _Carved(dataset, order[validation:].sort().values), _Carved(dataset, order[:validation].sort().values)


def _subset_ids(images: int, size: int | None, seed: int) -> torch.Tensor:
    """The image ids of the seeded subset of ``size`` that ``make_loaders`` keeps of ``images``."""
    kept = select_subset(images, size, seed)
    return torch.arange(images) if kept is None else kept


def _split_ids(images: int, seed: int, size: int | None, held_out: int, within: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (training, validation) image ids of the split ``Tables.loaders`` draws from ``images``
    training images: the seeded subset of ``size``, then ``carve_validation``."""
    ids = _subset_ids(images, size, seed)
    train_part, validation_part = carve_validation(ids, held_out, seed, within)
    return ids[train_part.indices], ids[validation_part.indices]


def main_validation_positions(images: int, seed: int, subset: int | None, validation: int, highres_subset: int | None) -> torch.Tensor:
    """Positions, in the highres subset, of the main run's validation images: the highres stages
    draw their validation images there, so the model they start from never trained on them."""
    _, main_validation = _split_ids(images, seed, subset, validation)
    return torch.nonzero(torch.isin(_subset_ids(images, highres_subset, seed), main_validation)).flatten()


def validation_seen_by_start(images: int, seed: int, subset: int | None, validation: int, highres_subset: int | None,
                             highres_validation: int, *, drawn_within_main_validation: bool = True) -> int:
    """How many of the highres stages' validation images are in the main run's training part (the
    model the highres dense stage starts from trained on them, at the main resolution). Zero when
    the main run holds out at least as many as the highres stages do, since those are drawn among
    the main run's validation images; splits from before that (``drawn_within_main_validation=False``:
    drawn from the whole highres subset) hold many."""
    main_train, _ = _split_ids(images, seed, subset, validation)
    within = main_validation_positions(images, seed, subset, validation, highres_subset) if drawn_within_main_validation else None
    _, highres_validation_ids = _split_ids(images, seed, highres_subset, highres_validation, within)
    return int(torch.isin(highres_validation_ids, main_train).sum())


def highres_validation_seen(args: argparse.Namespace, drawn_within_main_validation: bool = True) -> int | None:
    """``validation_seen_by_start`` for the splits ``args`` ask for; None when the data cannot be read."""
    try:
        images = len(get_dataset(args.data, "train"))
    except (DataError, OSError):
        return None
    return validation_seen_by_start(images, args.seed, args.subset, args.validation, args.highres_subset, args.highres_validation,
                                    drawn_within_main_validation=drawn_within_main_validation)


CONTROL_STAGES = ("retrain", "finetune", "codebook")


def control_settings(recipe: Recipe) -> dict[str, Any]:
    """What the dense control's training follows: the recipe's retrain, fine-tune and codebook sections."""
    sections = recipe.to_dict()
    return {stage: sections[stage] for stage in CONTROL_STAGES}


def train_control(model: torch.nn.Module, train_loader: Any, val_loader: Any, recipe: Recipe, work: Path, *, seed: int, device: str,
                  progress: bool, resume: bool, log: Callable[[str], None], prefix: str = "control",
                  **kwargs: Any) -> Iterator[tuple[str, TrainConfig, Any]]:
    """Train the dense control with the recipe's retrain, fine-tune and codebook settings in turn
    (stages of 0 epochs left out), each resuming from its checkpoint in ``work``; yields
    ``(stage, config, TrainResult)``. A checkpoint written under other settings (the recipe
    changed since) is removed with the later stages' files, and that stage trains afresh from the
    model as it stands. Files are ``<prefix>-<stage>.ckpt`` / ``.jsonl``."""
    plan = [(stage, getattr(recipe, stage).train_config(seed=seed, device=device, progress=progress)) for stage in CONTROL_STAGES]
    plan = [(stage, config) for stage, config in plan if config.epochs > 0]
    for index, (stage, config) in enumerate(plan):
        per_epoch = min(len(train_loader), config.max_steps_per_epoch or len(train_loader))
        log(f"{prefix}: {stage}'s settings, {config.epochs} epoch(s) x {per_epoch} steps, lr {config.lr:g} {config.schedule}")
        result = train_restarting(model, train_loader, val_loader, config, work, f"{prefix}-{stage}", resume=resume, log=log, who=prefix,
                                  what=f"{stage} and the later stages again", stale=tuple(f"{prefix}-{later}" for later, _ in plan[index + 1:]), **kwargs)
        yield stage, config, result


def train_restarting(model: torch.nn.Module, train_loader: Any, val_loader: Any, config: TrainConfig, work: Path, name: str, *, resume: bool,
                     log: Callable[[str], None], what: str, who: str | None = None, stale: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``train`` resuming from ``work/<name>.ckpt`` (logging to ``<name>.jsonl``). A checkpoint of
    other data or settings is removed, with the files of the ``stale`` schedules that followed
    from it, and the schedule trains afresh from the model as it stands."""
    paths = dict(checkpoint_path=work / f"{name}.ckpt", log_path=work / f"{name}.jsonl", stage=name, eval_name="validation")
    try:
        return train(model, train_loader, val_loader, config, resume="auto" if resume else False, **paths, **kwargs)
    except CheckpointError as error:
        log(f"{who or name}: {error}; training {what}")
        for removed in (name, *stale):
            for suffix in (".ckpt", ".jsonl"):
                (work / f"{removed}{suffix}").unlink(missing_ok=True)
        return train(model, train_loader, val_loader, config, resume=False, **paths, **kwargs)


def _curve_point(record: dict[str, Any], peak_lr: float, phase: str) -> dict[str, Any]:
    """One epoch of a validation curve, from the trainer's epoch record (its test score is validation's here)."""
    return {"phase": phase, "peak_lr": peak_lr, "val_top1": 100 * record["test_acc"], "train_loss": record["train_loss"],
            "train_top1": 100 * record["train_acc"], "seconds": record.get("seconds", 0.0)}


#: Epochs in a row that must fail to raise the best validation top-1 by the bound. One is not
#: enough: the first cycle after the cosine schedule restarts at a higher learning rate and can
#: dip before the lower ones gain (ResNet-18's second issue-13 run: -0.13 pt in its first cycle).
CONVERGENCE_PATIENCE = 2


def _gain(curve: list[dict[str, Any]]) -> float:
    """What the last CONVERGENCE_PATIENCE epochs added to the best validation top-1 before them."""
    if len(curve) <= CONVERGENCE_PATIENCE:
        return float("inf")
    before = max(point["val_top1"] for point in curve[:-CONVERGENCE_PATIENCE])
    return max(point["val_top1"] for point in curve[-CONVERGENCE_PATIENCE:]) - before


#: Accuracies are image counts over a split: a gain equal to the rule's bound (say 6 of 6,000
#: images for 0.1 pt) must not pass as under it by float rounding.
_GAIN_TOLERANCE = 1e-9


def converged(curve: list[dict[str, Any]], min_gain: float) -> bool:
    """Neither of the last CONVERGENCE_PATIENCE epochs raised the best validation top-1 of the
    epochs before them by ``min_gain`` points or more."""
    return _gain(curve) < min_gain - _GAIN_TOLERANCE


def _weights_digest(model: torch.nn.Module) -> str:
    """Which starting weights a compress work directory belongs to (a new dense model must not
    resume an old run's retraining)."""
    return _state_digest(model.state_dict())


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _dense_digest(work: Path, stage: str = "dense") -> str | None:
    """The kept dense weights' digest, which the results record: the work directory is not kept,
    so a later sitting that trains the dense model again can tell whether it got the same one."""
    path = work / f"{stage}.pt"
    if not path.is_file():
        return None
    stat = path.stat()
    return _weights_file_digest(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _weights_file_digest(path: Path, mtime_ns: int, size: int) -> str:
    """One weights file's digest, read once per version of the file (keyed by its stat): a report
    asks for the dense digest in several sections, and AlexNet's weights are 228 MB."""
    return _state_digest(torch.load(path, map_location="cpu", weights_only=True))


def _kept_digest(dense: dict[str, Any] | None, args: argparse.Namespace) -> str | None:
    """The kept dense weights' digest: the record's (which the stage archive keeps when WORK is
    gone), else (no record yet, or one from before records kept it) computed from WORK's weights."""
    return (dense or {}).get("weights_digest") or _dense_digest(args.work_dir)


def stage_archive(spec: NetworkSpec, args: argparse.Namespace) -> Path:
    """Where finished stages' records and invocation lists are copied, beside the results."""
    return args.out_dir / f"{spec.name}_stages"


def _archive_text(path: Path, text: str) -> None:
    if not (path.is_file() and path.read_text() == text):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two records of a dense stage kept the same weights: by digest where both have one, else by
    their test top-1 and validation curve (a record from before dense records kept a digest)."""
    if a.get("weights_digest") and b.get("weights_digest"):
        return a["weights_digest"] == b["weights_digest"]
    curve = lambda record: [point["val_top1"] for point in record.get("curve", [])]  # noqa: E731
    return a.get("top1") == b.get("top1") and curve(a) == curve(b)


@dataclass
class StageFiles:
    """The finished stages' records and every stage's invocation list (``<stage>.started.json``),
    from WORK, else from the archive (``from_archive``); ``set_aside`` names archived stages that
    started from other dense weights than WORK's."""

    records: dict[str, dict[str, Any]]
    started: dict[str, list[dict[str, Any]]]
    from_archive: list[str]
    set_aside: list[str]

    def lines(self, archive: Path) -> list[str]:
        shown = os.path.relpath(archive)
        lines = []
        if self.from_archive:
            lines.append(f"Read from the stage archive `{shown}/` (finished in an earlier sitting whose WORK is gone; the same dense weights): "
                         f"{', '.join(self.from_archive)}.")
        if self.set_aside:
            lines.append(f"Set aside from the stage archive: {', '.join(self.set_aside)}, which started from other dense weights than this WORK's "
                         "(git history keeps their records).")
        return lines + [""] if lines else []


def load_stage_files(spec: NetworkSpec, args: argparse.Namespace) -> StageFiles:
    """WORK's stages, with the archive's for those WORK lacks; WORK's are copied into the archive.
    A dense stage that WORK trained again with other weights sets aside the archived stages that
    started from the old ones (``dense``: all of them; ``highres-dense``: the highres ones)."""
    archive = stage_archive(spec, args)

    def texts(directory: Path) -> dict[str, dict[str, str]]:
        return {suffix: {stage: (directory / f"{stage}{suffix}").read_text() for stage in STAGES if (directory / f"{stage}{suffix}").is_file()}
                for suffix in (".json", ".started.json")}

    def parsed(by_stage: dict[str, str]) -> dict[str, Any]:
        return {stage: json.loads(text) for stage, text in by_stage.items()}

    work_texts = texts(args.work_dir)
    old_texts = texts(archive) if archive.resolve() != args.work_dir.resolve() else {".json": {}, ".started.json": {}}
    work_records, work_started = parsed(work_texts[".json"]), parsed(work_texts[".started.json"])
    old_records, old_started = parsed(old_texts[".json"]), parsed(old_texts[".started.json"])
    set_aside: list[str] = []
    for base, descendants in (("dense", STAGES), ("highres-dense", HIGHRES_STAGES)):
        if base in work_records and base in old_records and not _same_weights(work_records[base], old_records[base]):
            set_aside += [stage for stage in descendants if stage in old_records and stage != base and stage not in set_aside]
            for stage in descendants:
                old_records.pop(stage, None)
                old_started.pop(stage, None)
    if is_rank0() and args.work_dir.is_dir():
        for stage in set_aside:
            (archive / f"{stage}.json").unlink(missing_ok=True)  # git history keeps them; the archive is WORK's lineage
            (archive / f"{stage}.started.json").unlink(missing_ok=True)
        for suffix, by_stage in work_texts.items():
            for stage, text in by_stage.items():
                _archive_text(archive / f"{stage}{suffix}", text)
    records = {stage: work_records.get(stage, old_records.get(stage)) for stage in STAGES if stage in work_records or stage in old_records}
    started = {stage: work_started.get(stage, old_started.get(stage)) for stage in STAGES if stage in work_started or stage in old_started}
    from_archive = [stage for stage in records if stage not in work_records]
    return StageFiles(records, started, from_archive, set_aside)


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


def _torch_threads(commands: list[str], default: int) -> str:
    """The torch threads the stages ran with, read from their commands (the report's own
    ``--threads`` says nothing about them; ``default`` stands for a command without one)."""
    counts = sorted({int(found.group(1)) if (found := re.search(r"--threads[ =](\d+)", command)) else default for command in commands} or {default})
    return f"{counts[0]} torch thread(s) per run" if len(counts) == 1 else f"{' or '.join(map(str, counts))} torch threads per run (each command's --threads)"


def _shown(command: str) -> str:
    """The command as results show it: the work directory (any scratch path of the machine that
    ran it, and irrelevant to the figures) as WORK, and an output directory other than
    ``experiments/results`` (a scratch directory the tables were then copied from) as OUT."""
    command = re.sub(r"(--work-dir[ =])\S+", r"\1WORK", command)
    return re.sub(r"(--out-dir[ =])(?!experiments/results/?(?:\s|$))\S+", r"\1OUT", command)


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """Table B's figures of one compressed run (the JSON keys the issue names)."""
    return {
        "compression_ratio": record["compression_ratio"], "weights_only_ratio": record["weights_only_ratio"],
        "macs_reduction_spatial": record["macs_reduction_spatial"], "macs_reduction_winograd": record["macs_reduction_winograd"],
        # records written before the transforms were counted lack it: None, never a guess
        "macs_reduction_winograd_with_transforms": record.get("macs_reduction_winograd_with_transforms"),
        "top1_dense": record["top1_dense"], "dense_control_top1": record.get("dense_control_top1"), "top1_baseline": baseline_top1(record),
        "top1_spatial": record["top1_spatial"], "top1_winograd": record["top1_winograd"],
        "drop_spatial": baseline_top1(record) - record["top1_spatial"], "drop_winograd": baseline_top1(record) - record["top1_winograd"],
        "validation_images": record.get("validation_images"), "train_images": record.get("train_images"), "test_images": record.get("test_images"),
        "file": record.get("committed_file"), "file_bytes": record["file_bytes"],
        "position_bytes": record.get("position_bytes"), "position_vs_order0": record.get("position_vs_order0"),
    }


def _position_figures(total: dict[str, Any]) -> dict[str, Any]:
    """The file's position streams against their order-0 bound (each layer's size times the
    binary entropy of its density: issue 15's yardstick), from a report's totals."""
    return {"position_bytes": total["position_bytes"], "position_order0_bytes": total["position_entropy_bytes"],
            "position_vs_order0": total["position_vs_entropy"]}


def _fill_position_figures(record: dict[str, Any], count_size: tuple[int, int, int]) -> None:
    """A record written before the position figures were kept: read them from its file, if it is there."""
    path = Path(record.get("file") or "")
    if "position_vs_order0" not in record and path.is_file():
        try:
            record.update(_position_figures(info_payload(str(path), count_size)["report"]["total"]))
        except ValueError as error:  # FormatError is one: the report says nothing rather than fail
            print(f"note: no position figures from {path}: {error}", file=sys.stderr)


def baseline_top1(record: dict[str, Any]) -> float:
    """The better of the dense model and its equal-epoch dense control (test top-1)."""
    control = record.get("dense_control_top1")
    return record["top1_dense"] if control is None else max(record["top1_dense"], control)


def top1_drop(record: dict[str, Any]) -> float:
    """Points lost from the better of dense and control, in the worse of the two deployed domains."""
    return baseline_top1(record) - min(record["top1_spatial"], record["top1_winograd"])


#: A compress record's key saying its ``seconds`` count every invocation that resumed the run;
#: records without it hold the last invocation's time alone.
SECONDS_COVER = "seconds_cover_every_invocation"


def run_seconds(invocation: float, result: Any, reused: dict[str, Any] | None) -> dict[str, float]:
    """A compress run's wall times: ``compress``, the whole run's over every invocation that
    resumed it (``invocation`` is this one's), then each stage's. Stages taken from another run
    (``reused``) took no time in this one, so they are left out of both."""
    seconds = dict(result.seconds)
    taken = sum(seconds.pop(stage, 0.0) for stage in (reused or {}).get("stages", ()))
    return {"compress": invocation + result.earlier_seconds - taken, **seconds}


def _times(seconds: dict[str, float], reused: dict[str, Any] | None = None) -> str:
    """A stage's wall times; stages taken from another run (``reused``) took no time here, so the
    line names where they were trained (a tune run's times are in its record)."""
    line = ", ".join(f"{name} {value:.0f}" for name, value in seconds.items())
    if reused:
        line += f" (the {', '.join(reused['stages'])} stage(s) taken from `{reused['from']}`, a run that trained the same way)"
    return line


def _accuracy_miss_lines(spec: NetworkSpec, records: dict[str, Any], stage: str, label: str) -> list[str]:
    """Where a run that misses the accuracy target loses its points, measured from its own
    figures: the control's extra training, the gap at equal training, decode-time Winograd pruning."""
    r = records[stage]
    control = records.get("highres-control" if stage == "highres" else "control")
    if targets_met(spec, r)["accuracy"] or control is None:
        return []
    dense_top1, control_top1 = r["top1_dense"], control["top1"]
    spatial, winograd = r["top1_spatial"], r["top1_winograd"]
    own = dense_top1 - min(spatial, winograd)
    text = (f"Why the {label} misses the accuracy target: on test its decoded file scores {spatial:.2f}% / {winograd:.2f}% (spatial / Winograd) against "
            f"the dense model's {dense_top1:.2f}% ({spatial - dense_top1:+.2f} / {winograd - dense_top1:+.2f} pt). Of its {top1_drop(r):.2f} pt drop, ")
    if control_top1 > dense_top1:
        text += f"{control_top1 - dense_top1:.2f} pt is what the control's extra training adds to the dense model and {own:.2f} pt the file's own loss against the dense model"
    else:
        text += "all is the file's own loss against the dense model"
    text += f"; decode-time Winograd pruning costs {spatial - winograd:.2f} pt of top-1 (spatial minus Winograd)."
    stages = r.get("val_top1_stages") or {}
    if control.get("val_top1") is not None and "finetune" in stages:
        text += (f" On validation the control reaches {control['val_top1']:.2f}% and the pipeline {stages.get('kept', stages.get('codebook', stages['finetune'])):.2f}% "
                 f"(the table above: retraining and pruning cost {stages['dense'] - stages['pruned']:.2f} pt"
                 + (f" [retraining {stages['retrain'] - stages['dense']:+.2f}, pruning {stages['pruned'] - stages['retrain']:+.2f}]" if "retrain" in stages else "")
                 + f", masked fine-tuning wins back {stages['finetune'] - stages['pruned']:.2f}"
                 + (f"; one standard error of a validation top-1 here is {_standard_error_points(stages['finetune'], r['validation_images']):.2f} pt"
                    if r.get("validation_images") else "") + ").")
    dc = records.get("deepcomp") if stage == "joint" else None
    if dc is not None and "density" in dc:
        text += (f" Deep Compression, from the same dense model at density {dc['density']:.3f} (ours {r['density']:.3f}), is "
                 f"{baseline_top1(dc) - dc['top1_spatial']:.2f} pt below the same baseline (ours {baseline_top1(r) - spatial:.2f} pt in the same, spatial, "
                 "domain): the denser file loses less.")
    text += (f" What would close it: a dense model with nothing left to give at the recipe's learning rates (so that compression starts where the "
             f"control ends), or a higher density, paid from the compression margin ({r['compression_ratio']:.1f}x against {spec.target_ratio}x).")
    return ["", text]


def targets_met(spec: NetworkSpec, record: dict[str, Any]) -> dict[str, bool]:
    return {
        "compression": record["compression_ratio"] >= spec.target_ratio,
        "computation": max(record["macs_reduction_spatial"], record["macs_reduction_winograd"]) >= spec.target_macs,
        "accuracy": top1_drop(record) <= MAX_DROP_POINTS,
    }


def commit_file(record: dict[str, Any], target: Path, copies: tuple[Path, ...] = ()) -> str | None:
    """Put the stage's ``.jsz`` at ``target`` (in the results, to be committed); the path to cite:
    relative to the repository root when inside it. The file is the record's own, or, once WORK is
    gone, a copy committed earlier (``target`` or ``copies``) that is byte for byte the record's
    file: its size and, where the record kept it, its sha256. A file at ``target`` that is not the
    record's (an earlier run's) is removed, and None is returned when no copy is found: a report
    never cites another run's file as its own."""
    source = next((path for path in (Path(record.get("file") or ""), target, *copies) if _is_records_file(path, record)), None)
    if source is None:
        target.unlink(missing_ok=True)
        return None
    if source != target:
        atomic_write_bytes(target, source.read_bytes())
    resolved = target.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def _is_records_file(path: Path, record: dict[str, Any]) -> bool:
    if not path.is_file() or path.stat().st_size != record["file_bytes"]:
        return False
    return record.get("file_sha256") in (None, _file_sha256(path))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _curve_table(curve: list[dict[str, Any]], kept: int | None = None) -> list[str]:
    """A validation curve. Its gain column is the convergence rule's own measure at each epoch
    (a per-epoch gain would show two small gains in a row where the rule, which sums them against
    the best before both, rightly did not stop)."""
    lines = [f"| epoch | phase | peak lr | train loss | validation top-1 | gain of the last {CONVERGENCE_PATIENCE} epochs (pt) | seconds |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for index, point in enumerate(curve):
        gain = f"{_gain(curve[:index + 1]):+.2f}" if index >= CONVERGENCE_PATIENCE else ""
        mark = " (kept)" if kept == index + 1 else ""
        lines.append(f"| {index + 1} | {point['phase']} | {point['peak_lr']:g} | {point['train_loss']:.4f} | {point['val_top1']:.2f}{mark} | {gain} | {point['seconds']:.0f} |")
    return lines + ["", f"Gain of the last {CONVERGENCE_PATIENCE} epochs: how far that epoch and the one before it raised the best validation top-1 of the "
                        "epochs before them (the convergence rule's measure)."]


def _dense_lines(dense: dict[str, Any]) -> list[str]:
    if "curve" not in dense:  # a record from before the validation split
        polish = f", then {dense['polish_epochs']} at lr {dense['polish_lr']:g}" if dense.get("polish_epochs") else ""
        return [f"Dense baseline: {dense['epochs']} epoch(s) at lr {dense['lr']:g}{polish}, cosine, test top-1 {dense['top1']:.2f}% "
                "(a record from before the validation split and the convergence rule).", ""]
    total, cap = dense["epochs_total"], dense["max_epochs"]
    last = dense["curve"][-1]["val_top1"] - dense["curve"][-2]["val_top1"] if total > 1 else float("nan")
    if dense["converged"] and converged(dense["curve"], dense["min_gain"]):
        gain = _gain(dense["curve"])
        moved = (f"raised the best validation top-1 of the epochs before them by {gain:+.2f} pt" if gain >= 0
                 else f"stayed {-gain:.2f} pt below the best validation top-1 of the epochs before them")
        verdict = f"met the stopping rule: epochs {total - 1} and {total} {moved}, under the {dense['min_gain']:g} pt rule"
    elif dense["converged"]:  # judged by the rule's earlier form: the last epoch's own gain, and no float tolerance
        images = round(last / 100 * dense["validation_images"]) if dense.get("validation_images") else None
        verdict = (f"stopped at epoch {total} by the rule's earlier form (the last epoch's own gain under the bound), on a gain of {last:+.2f} pt"
                   + (f" ({images} of {dense['validation_images']:,} validation images)" if images else "")
                   + f"; by the current rule ({CONVERGENCE_PATIENCE} epochs in a row under the {dense['min_gain']:g} pt bound) it is not converged")
    else:
        verdict = (f"**not converged**: the cap of {cap} epochs was hit while the last {CONVERGENCE_PATIENCE} epochs still raised the best validation top-1 "
                   f"by {_gain(dense['curve']):+.2f} pt (rule: < {dense['min_gain']:g} pt)")
    lines = [f"Dense baseline: a {dense['epochs']}-epoch cosine schedule at lr {dense['lr']:g} (weight decay 5e-4, batch as the recipe), then one-epoch "
             f"cosine cycles from lr {dense['polish_lr']:g}, halved each cycle, until {CONVERGENCE_PATIENCE} epochs in a row raise the best validation top-1 by less than {dense['min_gain']:g} pt "
             f"(cap {cap} epochs). {total} epoch(s) in all, {verdict}. The model kept is the epoch with the best validation top-1 "
             f"(epoch {dense['kept_epoch']}, {dense['val_top1']:.2f}%); its test top-1 is **{dense['top1']:.2f}%** (the test set's one look at it)."
             + _rule_resolution(dense), ""]
    return lines + _curve_table(dense["curve"], dense["kept_epoch"]) + [""]


def _rule_resolution(dense: dict[str, Any]) -> str:
    """The rule's bound in images, beside the validation split's own sampling noise: a flat curve
    under the bound is a stopping point, not a proven optimum."""
    images = dense.get("validation_images")
    if not images:
        return ""
    return (f" The rule's {dense['min_gain']:g} pt is {dense['min_gain'] / 100 * images:.0f} of the {images:,} validation images; one standard error of "
            f"a validation top-1 near {dense['val_top1']:.0f}% is {_standard_error_points(dense['val_top1'], images):.2f} pt, so the rule stops where the curve no longer rises "
            "by more than that noise, not on a proven optimum; the equal-epoch control below measures what more training gives.")


def _control_lines(control: dict[str, Any], dense: dict[str, Any] | None = None) -> list[str]:
    lines = [f"Equal-epoch dense control: the kept dense model trained on, dense, through the recipe's retrain, fine-tune and codebook stage settings "
             f"(the same optimizer, learning rates, schedules and step counts; no regularizer, no pruning, no quantization): {control['steps']:,} steps, "
             f"{control['epochs']:.2f} epochs, the extra training the compressed model gets. Validation top-1 {_pct(control.get('val_top1'))}%, "
             f"test top-1 **{control['top1']:.2f}%**." + _control_gain_remark(control, dense), ""]
    return lines + _curve_table(control["curve"]) + [""] if control.get("curve") else lines


def _control_gain_remark(control: dict[str, Any], dense: dict[str, Any] | None) -> str:
    """What the control's gain says about the dense model's convergence, when it gained more than the rule's bound."""
    if not dense or control.get("val_top1") is None or "curve" not in dense:
        return ""
    gain = control["val_top1"] - dense["val_top1"]
    if gain < dense["min_gain"]:
        return f" It adds {gain:+.2f} pt of validation top-1 to the kept dense model: the dense model had nothing left to give at these settings."
    last_lr = dense["curve"][-1]["peak_lr"]
    return (f" It adds **{gain:+.2f} pt** of validation top-1 to the kept dense model ({control['top1'] - dense['top1']:+.2f} pt test): the dense model met its "
            f"stopping rule as its learning rate decayed (its last cycle peaked at lr {last_lr:g}), not because training had nothing left to give at the "
            "recipe's learning rates. So every drop below is measured from the better of the two.")


_STAGE_NAMES = {"dense": "dense", "retrain": "retrained", "pruned": "pruned", "finetune": "fine-tuned", "quantized": "quantized",
                "codebook": "codebook fine-tuned", "kept": "in the file"}


def stage_table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    """A table of each run's score after every pipeline stage (``compress``'s scores by stage)."""
    columns = [key for key in _STAGE_NAMES if any(key in values for _, values in rows)]
    lines = ["| run | " + " | ".join(_STAGE_NAMES[key] for key in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    return lines + [f"| {run} | " + " | ".join(_pct(values.get(key)) for key in columns) + " |" for run, values in rows]


def _stage_lines(records: dict[str, Any], stages: list[str]) -> list[str]:
    """Where the accuracy goes: each compressed row's validation top-1 after every pipeline stage
    (the figures its choices were made on; the test set is scored only on the decoded file)."""
    rows = [(stage, records[stage]["val_top1_stages"]) for stage in stages if records[stage].get("val_top1_stages")]
    if not rows:
        return []
    return ["", "Where the accuracy goes (validation top-1 after each stage; \"in the file\" is what `codebook_selection` kept):", ""] + stage_table(rows)


def _ablation_lines(args: argparse.Namespace, spec: NetworkSpec, records: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """Table C from this run's ablation record, else the earlier run's (``<net>_ablation_earlier.json``
    in the results), said plainly."""
    header = ["| regularizer | top-1 spatial | top-1 Winograd | drop spatial (pt) | drop Winograd (pt) | spatial density | Winograd density | compression |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    if "ablation" in records:
        abl = records["ablation"]
        finetune = ("with the masked and codebook fine-tuning of the full run" if abl.get("finetune")
                    else "no masked or codebook fine-tuning")
        intro = (f"The recipe's targets in each regularizer mode, from the same dense model: {abl['steps']} retraining steps "
                 f"(batch {abl.get('batch_size') or load_recipe(args.recipe).data.batch_size}), {finetune}, then quantized and coded like the full run; "
                 f"evaluated on {next(iter(abl['modes'].values()))['test_images']:,} test images. Each file is decoded in both domains "
                 "(the Winograd deployment prunes the spatially pruned weights in the Winograd domain at decode time).")
        rows, base, base_note = abl["modes"], abl["top1_dense"], f"Drops from that run's dense top-1, {abl['top1_dense']:.2f}%."
        control = records.get("control")
        if control is not None and control["top1"] > base:
            # The control trained the full run's extra epochs and these rows fewer (their retraining
            # is capped), so against it the drops are if anything overstated; they compare the modes.
            row_epochs = control["epochs"] - load_recipe(args.recipe).retrain.epochs + abl["steps"] / (control["steps"] / control["epochs"])
            base_note = (f"Drops from the better of that run's dense top-1 ({base:.2f}%) and Table B's equal-epoch control ({control['top1']:.2f}%). "
                         f"The control trained {control['epochs']:.2f} extra epochs, these rows about {row_epochs:.2f} (their retraining is capped), "
                         "so the drops overstate what each mode loses at equal training; they compare the modes.")
            base = control["top1"]
    else:
        carried = _carried_ablation(spec, args, records)
        if carried is not None:
            return carried
        earlier = args.out_dir / f"{spec.name}_ablation_earlier.json"
        if not earlier.is_file():
            return [], None
        abl = json.loads(earlier.read_text())
        intro = "**From the earlier run, not re-run in this one:** " + abl["note"]
        rows, base = abl["modes"], abl["top1_dense"]
        base_note = f"Drops from that run's dense top-1, {base:.2f}%.\n" + abl.get("remark", "")
    lines = ["", "## Table C: regularization ablation", "", intro, ""] + header
    for mode in ABLATION_MODES:
        if mode in rows:
            r = rows[mode]
            lines.append(f"| {mode} | {_pct(r['top1_spatial'])} | {_pct(r['top1_winograd'])} | {base - r['top1_spatial']:.2f} | "
                         f"{base - r['top1_winograd']:.2f} | {_density(r['density'])} | {_density(r['winograd_density'])} | {r['compression_ratio']:.1f}x |")
    lines.append(f"\n{base_note}")
    missing = [mode for mode in ABLATION_MODES if mode not in rows]
    if missing and "ablation" in records:
        lines.append(f"\n**Pending:** the {', '.join(missing)} row(s) (`--stages ablation --ablation-modes {','.join(missing)}`).")
    lines += _ablation_verdict(rows)
    payload = {mode: {k: row[k] for k in ("top1_spatial", "top1_winograd", "density", "winograd_density", "compression_ratio")} for mode, row in rows.items()}
    if "ablation" not in records:
        payload = {"source": "earlier run (not re-run)", "date": abl.get("date"), "modes": payload}
    return lines, payload


TABLE_C_HEADING = "## Table C: regularization ablation"
CARRIED_MARK = "**Carried over from the finished tables"


def _finished_with_this_baseline(spec: NetworkSpec, args: argparse.Namespace, records: dict[str, Any]) -> tuple[dict[str, Any], list[str]] | None:
    """The finished tables' JSON and report lines, when they started from this run's dense weights
    (digest) and measured this run's dense and control top-1, so their rows and drops share this
    run's baseline and can stand for rows a lost WORK took. None otherwise."""
    finished = _finished_tables(spec, args)
    dense, control = records.get("dense"), records.get("control")
    if not (dense and control and finished.get("dense_weights_digest")):
        return None
    if (finished["dense_weights_digest"] != _kept_digest(dense, args) or finished.get("top1_dense") != dense["top1"]
            or finished.get("dense_control_top1") != control["top1"]):
        return None
    try:
        return finished, (args.out_dir / f"{spec.name}_tables.md").read_text().splitlines()
    except OSError:
        return None


def _carried_label(finished: dict[str, Any], records: dict[str, Any]) -> str:
    return (f"{CARRIED_MARK} of {finished.get('date')}, not re-run in this sitting:** their dense model has this run's weights "
            f"(digest `{finished['dense_weights_digest']}`), dense top-1 ({records['dense']['top1']:.2f}%) and control top-1 ({records['control']['top1']:.2f}%), "
            "and training here is deterministic (the dense and control stages, trained again with the same commands, got the same weights and "
            "top-1), so their figures stand for this run's. Their files were coded by that run's code (the stamps below), not coded again here. "
            "They were produced by:")


def _carried_block(label: str, commands: list[str]) -> list[str]:
    """A carried-over section's head: its label, the invocations that produced it, and what a
    ``+modified`` stamp among them means."""
    return [label, "", "```", *commands, "```"] + (["", MODIFIED_NOTE] if any("+modified" in command for command in commands) else [])


def _carried_ablation(spec: NetworkSpec, args: argparse.Namespace, records: dict[str, Any]) -> tuple[list[str], dict[str, Any]] | None:
    """The finished tables' Table C, for a run whose WORK and stage archive lack the ablation
    record (a lost WORK), when those tables share this run's baseline. Their section is shown
    verbatim under a label naming its date and invocations; a section that was itself carried
    keeps its first label. None when it cannot be carried."""
    same = _finished_with_this_baseline(spec, args, records)
    if same is None or not _holds(same[0], "ablation"):
        return None
    finished, text = same
    if TABLE_C_HEADING not in text:
        return None
    start = text.index(TABLE_C_HEADING) + 1
    end = next((i for i in range(start, len(text)) if text[i].startswith("## ")), len(text))
    section = text[start:end]
    while section and not section[-1].strip():
        section.pop()
    payload = finished["ablation"]
    rows = payload.get("modes", payload)
    shown = [f"| {mode} | {_pct(row.get('top1_spatial'))} | {_pct(row.get('top1_winograd'))} |" for mode, row in rows.items() if isinstance(row, dict)]
    if not shown or len(shown) != len(rows) or not all(any(line.startswith(cells) for line in section) for cells in shown):
        return None  # the report's Table C is not the JSON's (an edited file): nothing to vouch for
    if not any(line.startswith(CARRIED_MARK) for line in section):
        produced = _produced_by(text, "ablation")
        section = ["", *_carried_block(_carried_label(finished, records), produced)] + section
        payload = {"source": f"carried over from the finished tables of {finished.get('date')} (same dense weights)", "date": finished.get("date"),
                   "dense_weights_digest": finished["dense_weights_digest"], "commands": produced, "modes": payload}
    return ["", TABLE_C_HEADING, *section], payload


def _joint_recipe_digest(finished: dict[str, Any], text: list[str]) -> str | None:
    """The recipe (settings digest) the finished tables' joint row was compressed with: their JSON's
    ``recipe_digest``, or, in tables written before it was kept, the tuning candidate their report
    marks as the joint run's."""
    if finished.get("recipe_digest"):
        return finished["recipe_digest"]
    marked = [m.group(1) for line in text for m in [re.search(r"\(([0-9a-f]{8})\) \*\*= joint\*\*", line)] if m]
    return marked[0] if len(set(marked)) == 1 else None


def _carried_deepcomp(spec: NetworkSpec, args: argparse.Namespace, records: dict[str, Any]) -> dict[str, Any] | None:
    """The finished tables' Deep Compression row, as a record, for a run whose WORK and stage
    archive lack it (a lost WORK): only when those tables share this run's baseline and compressed
    with this run's recipe (the row's retraining and fine-tuning are the recipe's), and their report
    shows the JSON's row. None when it cannot be carried."""
    same = _finished_with_this_baseline(spec, args, records)
    joint = records.get("joint") or {}
    if same is None or not _holds(same[0], "deep_compression") or "settings" not in joint:
        return None
    finished, text = same
    if _joint_recipe_digest(finished, text) != recipe_digest(joint["settings"]):
        return None
    dc = finished["deep_compression"]
    row = f"| Deep Compression | {_density(dc.get('density'))} | {_pct(dc.get('top1_spatial'))} |"
    if not any(line.startswith(row) for line in text):
        return None  # the report's row is not the JSON's (an edited file): nothing to vouch for
    carried = {key: dc[key] for key in ("source", "date", "commands") if key in dc}  # carried again: its first label
    if not carried:
        carried = {"source": f"carried over from the finished tables of {finished.get('date')} (same dense weights, same recipe)",
                   "date": finished.get("date"), "commands": _produced_by(text, "deepcomp")}
    return {"top1_spatial": dc["top1_spatial"], "density": dc["density"], "densities": dc["densities"], "han_bytes": dc["han_bytes"],
            "han_ratio": dc["han_ratio"], "file_bytes": dc["jsz_bytes"], "compression_ratio": dc["jsz_ratio"],
            "top1_dense": records["dense"]["top1"], "dense_control_top1": records["control"]["top1"], "carried": carried,
            "label": _carried_label({**finished, "date": carried["date"]}, records)}


def _produced_by(report: list[str], stage: str) -> list[str]:
    """A report's header lines (its "Produced by" block) for one stage."""
    fences = [i for i, line in enumerate(report) if line.startswith("```")][:2]
    block = report[fences[0] + 1:fences[1]] if len(fences) == 2 else []
    return [line for line in block if re.search(rf"    # {re.escape(stage)}\b", line)]


def _highres_pending(spec: NetworkSpec, records: dict[str, Any], started_stages: dict[str, Any], resolution: int) -> dict[str, Any] | None:
    """The no-copying row while it is not done: which of its stages have finished, said in Table B
    and in the JSON (``{"status": "pending", ...}``) rather than left out silently."""
    if not spec.highres_resolution or "highres" in records:
        return None
    done = [stage for stage in HIGHRES_STAGES if stage in records]
    started = [stage for stage in HIGHRES_STAGES if stage not in records and stage in started_stages]
    state = "; ".join(part for part in (f"finished: {', '.join(done)}" if done else "", f"started: {', '.join(started)}" if started else "") if part) or "not started"
    text = (f"{spec.highres_resolution} px row (no copying): **pending** ({state}; `--stages {','.join(HIGHRES_STAGES)}` runs and resumes it). "
            f"Until it exists, every figure above is from the {resolution} px proxy, with the copying its proxy section describes.")
    return {"status": "pending", "resolution": spec.highres_resolution, "stages_finished": done, "stages_started": started, "text": text}


def _highres_lines(records: dict[str, Any], resolution: int, seen: int | None = None) -> list[str]:
    """How the no-copying row's dense model, control and compression were made; ``seen``: how
    many of its validation images the start model trained on, for a record that predates keeping it."""
    dense, control, high = records.get("highres-dense"), records.get("highres-control"), records.get("highres")
    if dense is None:
        return []
    side = dense["resolution"][0]
    lines = [f"The highres row ({side} px, where the last pool copies nothing): its dense model starts from the {resolution} px one "
             f"(validation top-1 {dense['val_top1_before']:.2f}% at {side} px before training) and trains at {side} px on {dense['train_images']:,} "
             f"training images (validation {dense['validation_images']:,}, test {dense['test_images']:,}) under the same convergence rule (cap {dense['max_epochs']} epochs). "]
    if high is not None:
        lines[0] += "It is compressed with the full recipe, as the main row is, and its drops count against the same targets."
        main_control = records.get("control") or {}
        if control and "steps" in control and "steps" in main_control:
            lines[0] += (f" The same settings and epochs on fewer images make fewer steps: its control (as long as its compression) "
                         f"trained {control['steps']:,} steps, the main row's {main_control['steps']:,}.")
    else:
        lines[0] += "Its compression is pending."
    seen = dense.get("validation_seen_by_start", seen)
    if seen == 0:
        lines[0] += (f" Its validation images are drawn among the {resolution} px run's validation images, so the model it starts from "
                     "never trained on any of them.")
    elif seen:
        lines[0] += (f" Of its {dense['validation_images']:,} validation images, {seen:,} are among the {resolution} px run's training images "
                     f"(this record's {side} px split was drawn from its own subset, without regard to that run's; the split now draws them among that run's validation images): the model it starts from trained on them "
                     f"at {resolution} px, so this row's validation figures (the kept dense epoch, every stage's score) are partly on seen images. "
                     f"Its test figures are not: the test set is apart and was scored once per figure.")
    lines += [""] + _dense_lines(dense)
    if control:
        lines += _control_lines(control, dense)
    return lines


def _accuracy_remark(deep_compression: float, ours: float) -> str:
    if abs(deep_compression - ours) < 0.05:
        return f"The two are at equal accuracy (top-1 {deep_compression:.2f}% vs {ours:.2f}%, ours in the worse domain)."
    if deep_compression > ours:
        return (f"Deep Compression's top-1 ({deep_compression:.2f}%) is above ours ({ours:.2f}%, the worse domain): at equal accuracy it could "
                "prune more, so the ratio above flatters us.")
    return (f"Deep Compression's top-1 ({deep_compression:.2f}%) is below ours ({ours:.2f}%, the worse domain): at equal accuracy it would need "
            "more weights, so the ratio above does not flatter us.")


def _deepcomp_lines(spec: NetworkSpec, records: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """Deep Compression on the same proxy and pipeline, and our ratio over its ratio."""
    dc, joint = records.get("deepcomp"), records["joint"]
    if dc is None or "han_bytes" not in dc:
        return [], None
    base = baseline_top1(dc)
    densities = ", ".join(f"{name} {kept:.2f}" for name, kept in dc["densities"].items())
    carried = dc.get("carried")
    lines = ["", "## Deep Compression on the same proxy", ""]
    if carried:
        lines += _carried_block(dc["label"], carried["commands"]) + ["", "Our ratio over its ratio, below, is this run's file's ratio over that row's.", ""]
    lines += [
             f"Han et al.'s method run through the same pipeline from the same dense model: iterative magnitude pruning in 3 rounds over the recipe's "
             f"retraining, to the kept fractions Han et al. report for AlexNet at no loss ({densities}; {spec.deep_compression_source}), no Winograd "
             f"pruning, k-means with {DEEP_COMPRESSION_BITS['conv']} bits (conv) / {DEEP_COMPRESSION_BITS['linear']} bits (FC), the recipe's masked and "
             "codebook fine-tuning. Its bytes are counted two ways: our `.jsz` of its weights, and Han et al.'s own coding of the same quantized "
             "weights (Huffman-coded relative indices and codebook indices, `jointsparse.baselines.deep_compression_bytes`).", "",
             "| run | spatial density | top-1 spatial | drop (pt) | bytes (Han et al.'s coding) | compression (Han et al.'s coding) | bytes (.jsz) | compression (.jsz) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| Deep Compression | {_density(dc['density'])} | {_pct(dc['top1_spatial'])} | {base - dc['top1_spatial']:.2f} | {dc['han_bytes']:,} | "
             f"{dc['han_ratio']:.1f}x | {dc['file_bytes']:,} | {dc['compression_ratio']:.1f}x |",
             f"| joint sparsity (Table B) | {_density(joint['density'])} | {_pct(joint['top1_spatial'])} | {baseline_top1(joint) - joint['top1_spatial']:.2f} | - | - | "
             f"{joint['file_bytes']:,} | {joint['compression_ratio']:.1f}x |", "",
             f"Our ratio over Deep Compression's: **{joint['compression_ratio'] / dc['han_ratio']:.2f}x** (against its own coding; "
             f"{joint['compression_ratio'] / dc['compression_ratio']:.2f}x against our coding of its weights). The paper's, on ImageNet: 47.7 / 35 = 1.36x. "
             + _accuracy_remark(dc["top1_spatial"], min(joint["top1_spatial"], joint["top1_winograd"]))
             + f" Like for like (both spatial deployments): {dc['top1_spatial']:.2f}% vs {joint['top1_spatial']:.2f}%, {dc['top1_spatial'] - joint['top1_spatial']:+.2f} pt for Deep Compression."]
    payload = {"top1_spatial": dc["top1_spatial"], "density": dc["density"], "densities": dc["densities"], "han_bytes": dc["han_bytes"],
               "han_ratio": dc["han_ratio"], "jsz_bytes": dc["file_bytes"], "jsz_ratio": dc["compression_ratio"],
               "ours_over_deep_compression": joint["compression_ratio"] / dc["han_ratio"], **(carried or {})}
    return lines, payload


def _ablation_verdict(rows: dict[str, dict[str, Any]]) -> list[str]:
    """What Table C shows, in words measured from its rows: whether the rows sit at equal
    densities, and whether joint regularization beats spatial-only in the Winograd domain."""
    if not {"spatial", "joint"} <= set(rows):
        return []
    text = []
    for key, domain in (("density", "spatial"), ("winograd_density", "Winograd")):
        spread = _density_spread(rows, key)
        if spread is None:
            continue
        low, high, low_value, gap, equal = spread
        if not equal:
            why = (" (Winograd pruning keeps at most its target; where the spatially pruned weights have fewer non-zero Winograd coefficients "
                   "than the target keeps, a row lands lower)" if key == "winograd_density" else "")
            text.append(f"The rows are **not** at equal {domain} density: the {low} row lands at {low_value:.3f}, {gap:.3f} below the "
                        f"{high} row{why}.")
        else:
            text.append(f"The rows are at equal {domain} density (within {gap:.3f}).")
    # What decode-time Winograd pruning costs each row, apart from how well its spatial model does:
    # the part of the Winograd top-1 that the regularizer's Winograd term is there to protect.
    costs = {mode: row["top1_spatial"] - row["top1_winograd"] for mode, row in rows.items()}
    text.append("Decode-time Winograd pruning costs " + ", ".join(f"{mode} {cost:.2f} pt" for mode, cost in costs.items())
                + " (spatial top-1 minus Winograd top-1 of the same file).")
    joint, spatial = rows["joint"]["top1_winograd"], rows["spatial"]["top1_winograd"]
    images = rows["joint"].get("test_images")
    margin = _noise_points(joint, spatial, images)
    if abs(joint - spatial) < margin:
        text.append(f"Joint and spatial-only regularization keep the same Winograd top-1 within {margin:.2f} pt{_margin_meaning(images)} ({joint:.2f}% vs "
                    f"{spatial:.2f}%): no difference at this budget.")
    elif joint > spatial:
        text.append(f"Joint regularization keeps a higher Winograd top-1 than spatial-only ({joint:.2f}% vs {spatial:.2f}%), the paper's point.")
    else:
        if costs["joint"] < costs["spatial"] - margin:
            why = (f"joint regularization does shrink what Winograd pruning costs ({costs['joint']:.2f} vs {costs['spatial']:.2f} pt), "
                   f"but its spatial model is worse ({rows['joint']['top1_spatial']:.2f}% vs {rows['spatial']['top1_spatial']:.2f}%): "
                   "the Winograd term's pull on the weights costs more here than it saves")
        else:
            why = (f"joint regularization does not shrink what Winograd pruning costs either ({costs['joint']:.2f} vs "
                   f"{costs['spatial']:.2f} pt)")
        text.append(f"**Joint regularization does not beat spatial-only in the Winograd domain here** ({joint:.2f}% vs {spatial:.2f}%): "
                    f"the paper's point is not reproduced at this budget and these densities; {why}.")
    if "winograd" in rows:
        text.append(_against_winograd_only(rows["joint"], rows["winograd"], images))
    return ["", " ".join(text)]


def _density_spread(rows: dict[str, dict[str, Any]], key: str) -> tuple[str, str, float, float, bool] | None:
    """(sparsest row, densest row, the sparsest's density, the gap, whether the gap is within
    DENSITY_TOLERANCE of the densest) of the rows' ``key`` density; None with fewer than two rows
    that have it."""
    values = {mode: row[key] for mode, row in rows.items() if row.get(key) is not None}
    if len(values) < 2:
        return None
    low, high = min(values, key=values.get), max(values, key=values.get)
    gap = values[high] - values[low]
    return low, high, values[low], gap, gap <= DENSITY_TOLERANCE * values[high]


def _against_winograd_only(joint: dict[str, Any], winograd: dict[str, Any], images: int | None) -> str:
    """Whether the spatial term earns its place: joint against Winograd-only regularization."""
    ours, theirs = joint["top1_winograd"], winograd["top1_winograd"]
    margin = _noise_points(ours, theirs, images)
    spatial_gap = joint["top1_spatial"] - winograd["top1_spatial"]
    if abs(ours - theirs) < margin:
        return (f"Against Winograd-only regularization, joint keeps the same Winograd top-1 within {margin:.2f} pt{_margin_meaning(images)} "
                f"({ours:.2f}% vs {theirs:.2f}%), and its spatial top-1 is {spatial_gap:+.2f} pt from Winograd-only's: at this budget the spatial term "
                "adds nothing measurable in the Winograd domain.")
    better = "above" if ours > theirs else "below"
    return (f"Against Winograd-only regularization, joint's Winograd top-1 is {better} it beyond {margin:.2f} pt{_margin_meaning(images)} "
            f"({ours:.2f}% vs {theirs:.2f}%; spatial top-1 {spatial_gap:+.2f} pt).")


def _noise_points(a: float, b: float, images: int | None) -> float:
    """Two standard errors (points) of the difference of two top-1 figures scored on ``images`` test
    images each, taken as independent (conservative: the rows share one test set, which pairs their
    errors); at least VERDICT_MARGIN_POINTS, and that alone when the count is unknown."""
    if not images:
        return VERDICT_MARGIN_POINTS
    return max(VERDICT_MARGIN_POINTS, 2 * math.hypot(_standard_error_points(a, images), _standard_error_points(b, images)))


def _standard_error_points(top1: float, images: int) -> float:
    """The binomial standard error, in points, of a top-1 of ``top1`` percent measured on ``images`` images."""
    p = top1 / 100
    return 100 * math.sqrt(p * (1 - p) / images)


def _margin_meaning(images: int | None) -> str:
    return f", two standard errors of a difference on {images:,} test images" if images else ""


def logged_dense_curve(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The dense epochs an unfinished dense stage has finished, read from the trainer's logs in the
    work directory (the first schedule, then each cycle in turn)."""
    curve: list[dict[str, Any]] = []
    logs = [(args.work_dir / "dense.jsonl", args.dense_lr, "first schedule")]
    logs += [(args.work_dir / f"dense-cycle{k}.jsonl", args.dense_polish_lr / 2 ** (k - 1), f"cycle {k}") for k in range(1, args.dense_max_epochs + 1)]
    for path, lr, phase in logs:
        if not path.is_file():
            break
        epochs: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("kind") == "epoch":
                epochs[record["epoch"]] = record
        curve += [_curve_point(epochs[e], lr, phase) for e in sorted(epochs)]
    return curve


def _machine() -> str:
    return f"{machine_summary()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def _recipe_epochs(recipe: Recipe, train_images: int, batch_size: int) -> float:
    """The training the recipe's retrain, fine-tune and codebook stages give, in epochs."""
    steps = -(-train_images // batch_size)
    total = 0
    for stage in (recipe.retrain, recipe.finetune, recipe.codebook):
        total += stage.epochs * min(steps, stage.max_steps_per_epoch or steps)
    return total / steps if steps else 0.0


def _train_images(args: argparse.Namespace) -> int:
    """The training images a run trains on (its training split, less the validation images)."""
    return len(get_dataset(args.data, "train", subset=args.subset, subset_seed=args.seed if args.subset else None)) - args.validation


def tuning_dir(spec: NetworkSpec) -> str:
    """Where the tune stage's records go, under --out-dir: one per candidate recipe (named by its file
    and settings; a run from another dense model replaces it, the record names its dense model)."""
    return f"{spec.name}_tuning"


def _tuning_section(spec: NetworkSpec, args: argparse.Namespace, chosen: dict[str, Any] | None,
                    dense_digest: str | None) -> tuple[list[str], list[dict[str, Any]] | None]:
    """The candidates tried on validation (``--stages tune``): the report's lines and the JSON's list.
    ``dense_digest``: the report's dense model, which each candidate's is compared with."""
    tried = load_records(args.out_dir / tuning_dir(spec))
    if not tried:
        return [], None
    lines = [""] + tuning_lines(tried, chosen, dense_digest, directory=tuning_dir(spec), score="top-1 (%)",
                                decoded_key="val_top1_decoded", stages_key="val_top1_stages", fmt=_pct, stage_table=stage_table)
    payload = [{"recipe_file": r["recipe_file"], "recipe_digest": r["recipe_digest"], "val_top1_decoded": r.get("val_top1_decoded"),
                **{k: r[k] for k in ("compression_ratio", "macs_reduction_winograd", "macs_reduction_winograd_with_transforms", "dense_weights_digest", "date")}}
               for r in tried]
    return lines, payload


def _pending_report(spec: NetworkSpec, args: argparse.Namespace, files: StageFiles) -> Path | None:
    """The report of a run whose joint stage has not finished: what has, what is pending, and the
    command that resumes it. None while no dense epoch has finished."""
    records = files.records
    dense = records.get("dense")
    curve = dense["curve"] if dense else logged_dense_curve(args)
    if not curve:
        return None
    control = records.get("control")
    pending = [stage for stage in ("dense", "control", "joint") if stage not in records]
    resume = (f"python experiments/{spec.name}_tables.py --stages {','.join(pending)} --threads {args.threads}"
              + (f" --dense-max-epochs {args.dense_max_epochs}" if args.dense_max_epochs != 12 else "") + " --work-dir WORK")
    later = [stage for stage in default_stages(spec) if stage not in records and stage not in pending]
    lines = [f"# {spec.title}: the paper's compression tables, reproduced on {'ImageNet' if args.data.startswith('imagefolder:') else 'a CPU proxy'}", "",
             f"**Status: unfinished.** Pending: {', '.join(pending)}. Tables A and B need the joint stage; until it has run there are no new "
             "compression, MAC or accuracy figures here. Resume (each stage continues from its checkpoints in WORK):", "", "```", resume, "```", ""]
    if later:
        lines += [f"Later stages, also pending: {', '.join(later)}.", ""]
    earlier = args.out_dir / f"{spec.name}_tables_earlier.md"
    if earlier.is_file():
        lines += [f"The earlier run's tables (before the validation split, the convergence rule and the control) stay in `{earlier.name}` until this run "
                  "replaces them.", ""]
    finished = [(stage, record) for stage, record in records.items()]
    if finished:
        lines += ["Finished stages, produced by:", "", "```"]
        lines += [f"{_shown(record['command'])}    # {stage}: {record['date']}, code {record['code']}" for stage, record in finished]
        lines += ["```", ""]
    started = [(stage, entry) for stage in pending for entry in files.started.get(stage, [])]
    if started:
        lines += ["Unfinished stages, started by (each invocation in turn):", "", "```"]
        lines += [f"{_shown(entry['command'])}    # {stage}: {entry['date']}, code {entry['code']}" for stage, entry in started]
        lines += ["```", ""]
    lines += files.lines(stage_archive(spec, args))
    commands = [record["command"] for _, record in finished] + [entry["command"] for _, entry in started]
    lines += [f"Machine: {_machine()}, {_torch_threads(commands, args.threads)}. Recipe: `{os.path.relpath(args.recipe)}`. WORK: the run's work directory. "
              f"Report written {datetime.date.today().isoformat()} from WORK's state (`--report-only`).", "",
              f"Data: {_train_images(args):,} training images and {args.validation:,} validation images, drawn from the training split at random with the "
              f"fixed seed {args.seed} and held out of all training; the test split is scored once per reported figure. What is tuned on what: the dense "
              "epochs and the dense model kept, on validation; the compression stages and the control score their epochs on validation. "
              + spec.recipe_note, ""]
    if dense:
        lines += _dense_lines(dense) + _same_dense_lines(spec, args, _kept_digest(dense, args))
    else:
        seconds = sum(point["seconds"] for point in curve)
        lines += [f"Dense baseline, **unfinished**: {len(curve)} epoch(s) done in {seconds:.0f} s of wall time (validation after each), read from the "
                  f"trainer's logs in WORK. The rule: a {args.dense_epochs}-epoch cosine schedule at lr {args.dense_lr:g}, then one-epoch cosine cycles "
                  f"from lr {args.dense_polish_lr:g}, halved each cycle, until {CONVERGENCE_PATIENCE} epochs in a row raise the best validation top-1 by less than {args.dense_min_gain:g} pt "
                  f"(cap {args.dense_max_epochs} epochs); the kept epoch is then chosen on validation and scored once on the test set. "
                  + (f"So far the last {CONVERGENCE_PATIENCE} epochs raised the best by {_gain(curve):+.2f} pt: " if len(curve) > CONVERGENCE_PATIENCE
                     else "Too few epochs so far to judge: ")
                  + ("converged, the stage only has to pick and score its model." if converged(curve, args.dense_min_gain) else "not converged yet.")
                  + " No test figure yet.", ""]
        lines += _curve_table(curve) + [""]
    if control:
        lines += _control_lines(control)
    pace = sum(point["seconds"] for point in curve) / len(curve)
    extra = _recipe_epochs(load_recipe(args.recipe), len(curve) and _train_images(args), load_recipe(args.recipe).data.batch_size)
    first_left = max(0, args.dense_epochs - len(curve))
    dense_left = (0, 0) if dense else (first_left or int(not converged(curve, args.dense_min_gain)), args.dense_max_epochs - len(curve))
    todo = dense_left[0] + (0 if control else extra) + ("joint" not in records) * extra
    pending = ([] if dense else [f"dense {dense_left[0]}-{dense_left[1]} more epoch(s)"]) + ([] if control else [f"the control {extra:.2f}"]) \
        + [f"the joint stage {extra:.2f} epochs of training (regularized retraining runs slower than dense) plus evaluations"]
    lines += [f"Remaining, at this run's pace of {pace:.0f} s per dense epoch: {', '.join(pending)}: at least {todo * pace / 3600:.1f} h of one core.", ""]
    ablation_lines, ablation_payload = _ablation_lines(args, spec, records)
    tuning, tuning_payload = _tuning_section(spec, args, None, _kept_digest(dense, args))
    lines += ablation_lines + tuning
    payload = {key: None for key in ("compression_ratio", "weights_only_ratio", "macs_reduction_spatial", "macs_reduction_winograd",
                                     "macs_reduction_winograd_with_transforms", "top1_spatial", "top1_winograd", "file", "file_bytes")}
    payload.update(status="unfinished", pending=pending, resume=resume, top1_dense=dense["top1"] if dense else None,
                   dense_control_top1=control["top1"] if control else None, dense_epochs=len(curve), dense_converged=converged(curve, args.dense_min_gain),
                   dense_curve_val_top1=[point["val_top1"] for point in curve], validation_images=args.validation,
                   train_images=dense["train_images"] if dense else _train_images(args), machine=machine_summary())
    if tuning_payload is not None:
        payload["tuning"] = tuning_payload
    if ablation_payload is not None:
        payload["ablation"] = ablation_payload
    return _write_tables(spec, args, lines, payload, _lacking(spec, args, {"ablation"} if _holds(payload, "ablation") else set()))


def write_report(spec: NetworkSpec, args: argparse.Namespace) -> Path | None:
    files = load_stage_files(spec, args)
    records = files.records
    if "joint" not in records:
        return _pending_report(spec, args, files)
    joint, dense, control = records["joint"], records["dense"], records.get("control")
    for stage, control_stage in (("joint", "control"), ("deepcomp", "control"), ("highres", "highres-control")):
        if stage in records:  # a control finished after the row was compressed counts too
            records[stage]["dense_control_top1"] = records[control_stage]["top1"] if control_stage in records else None
    if "highres" in records and "settings" not in records["highres"]:
        del records["highres"]  # the capped, adapted row of the earlier code: the highres stage runs it again
    ablation_lines, ablation_payload = _ablation_lines(args, spec, records)
    carried_deepcomp = None if "deepcomp" in records else _carried_deepcomp(spec, args, records)
    with_deepcomp = records if carried_deepcomp is None else {**records, "deepcomp": carried_deepcomp}  # the sections that show its row
    holds = {"compression_ratio"} | {key for key, stage in (("deep_compression", "deepcomp"), ("highres", "highres")) if stage in with_deepcomp}
    if _holds({"ablation": ablation_payload}, "ablation"):
        holds.add("ablation")
    lacking = _lacking(spec, args, holds)
    name = f"{spec.name}_tables" + ("_pending" if lacking else "")  # the finished tables, and their file, stay until a report holds all they hold
    # once WORK is gone, the stage's file is the copy an earlier report committed, finished or pending
    committed_copies = lambda suffix: tuple(args.out_dir / f"{spec.name}_tables{pending}{suffix}.jsz" for pending in ("", "_pending"))  # noqa: E731
    joint["committed_file"] = commit_file(joint, args.out_dir / f"{name}.jsz", committed_copies(""))
    for stage in ("joint", "highres", "deepcomp"):
        if stage in records:
            _fill_position_figures(records[stage], (3, spec.count_resolution, spec.count_resolution))
    if "highres" in records:
        records["highres"]["committed_file"] = commit_file(records["highres"], args.out_dir / f"{name}_highres.jsz", committed_copies("_highres"))
    resolution = joint["resolution"][0]
    lines = [f"# {spec.title}: the paper's compression tables, reproduced on {'ImageNet' if args.data.startswith('imagefolder:') else 'a CPU proxy'}", ""]
    lines += ["Produced by (stage by stage, in this order; each stage resumes and is reused by the next):", "", "```"]
    invocations: dict[tuple[str, str, str], list[str]] = {}
    for stage, record in records.items():
        # a row records its own invocation; one from before rows did is the record's
        rows = [(f"{stage} {mode}", row if "command" in row else record) for mode, row in record["modes"].items()] if stage == "ablation" else []
        for label, source in rows or [(stage, record)]:
            invocations.setdefault((_shown(source["command"]), source["date"], source["code"]), []).append(label)
    for (command, date, code), stages in invocations.items():
        lines.append(f"{command}    # {', '.join(stages)}: {date}, code {code}")
    lines += ["```", ""]
    if any("+modified" in code for _, _, code in invocations):
        lines += [MODIFIED_NOTE, ""]
    for stage in records:  # a stage that ran over several sittings: each resumed from the last one's checkpoints
        history = files.started.get(stage, [])
        if len(history) > 1:
            codes = ", ".join(dict.fromkeys(entry["code"] for entry in history))
            lines.append(f"The {stage} stage ran over {len(history)} invocations ({history[0]['date']} to {history[-1]['date']}; code {codes}), each resuming "
                         f"from the last one's per-epoch checkpoints; the line above is the one that finished it (`WORK/{stage}.started.json` and its copy in the stage archive list them all).")
    carried = {"ablation"} if "ablation" in holds and "ablation" not in records else set()
    carried |= {"deepcomp"} if carried_deepcomp is not None else set()
    in_progress = [stage for stage in STAGES if stage not in records and stage not in carried and stage in files.started]
    resumable = [stage for stage in in_progress if (args.work_dir / f"{stage}.started.json").is_file()]
    if resumable:  # started in this WORK, not finished: their per-epoch checkpoints wait there
        lines.append(f"Started, not finished (each resumes from its checkpoints in WORK when its `--stages` command is run again): {', '.join(resumable)}.")
    if len(resumable) < len(in_progress):  # known only from the stage archive: their checkpoints went with that WORK
        lines.append(f"Started in a sitting whose WORK is gone, not finished (their checkpoints went with it; run again, they start over): "
                     f"{', '.join(stage for stage in in_progress if stage not in resumable)}.")
    lines += [""] + files.lines(stage_archive(spec, args))
    lines += ["", "WORK: any scratch directory (checkpoints and stage records; the same one for every stage).", "",
              f"Machine: {_machine()}, {_torch_threads([r['command'] for r in records.values()], args.threads)}. Recipe: `{os.path.relpath(args.recipe)}`.", ""]
    lines += ["Wall time per stage (seconds):", ""]
    if "curve" in dense:
        lines.append(f"- dense: {dense['seconds']:.0f} ({dense['epochs_total']} epoch(s), validation after each, one test evaluation)")
    else:
        lines.append(f"- dense: {dense['seconds']:.0f}")
    if control:
        lines.append(f"- control: {control['seconds']:.0f} ({control['epochs']:.2f} epochs)")
    if "highres-dense" in records:
        lines.append(f"- highres-dense: {records['highres-dense']['seconds']:.0f}"
                     + (f" ({records['highres-dense']['epochs_total']} epoch(s))" if "epochs_total" in records["highres-dense"] else ""))
    if "highres-control" in records:
        lines.append(f"- highres-control: {records['highres-control']['seconds']:.0f} ({records['highres-control']['epochs']:.2f} epochs)")
    for stage in ("joint", "deepcomp", "highres"):
        if stage in records:
            partial = len(files.started.get(stage, [])) > 1 and not records[stage].get(SECONDS_COVER)
            lines.append(f"- {stage}: " + _times(records[stage]["seconds"], records[stage].get("reused"))
                         + (f" (the last invocation's time: the record predates counting what earlier invocations trained, which the epochs "
                            f"in `WORK/{stage}.work/*.jsonl` show while that WORK lasts)" if partial else ""))
    if "ablation" in records:
        lines.append("- ablation: " + "; ".join(f"{mode} {_times(row['seconds'], row.get('reused'))}" for mode, row in records["ablation"]["modes"].items()))
    elif "ablation" in holds:
        lines.append("- ablation: not run in this sitting (Table C is carried over from the finished tables, below)")
    if carried_deepcomp is not None:
        lines.append("- deepcomp: not run in this sitting (the Deep Compression row is carried over from the finished tables, below)")
    if joint["committed_file"]:
        lines += ["", f"The joint run's file is committed as `{joint['committed_file']}` ({joint['file_bytes']:,} bytes): "
                  f"`jointsparse info {joint['committed_file']}`, `decode` and `bench` run on it without retraining."]
    if records.get("highres", {}).get("committed_file"):
        high = records["highres"]
        lines.append(f"The {high['resolution'][0]} px row's file is committed as `{high['committed_file']}` ({high['file_bytes']:,} bytes).")

    validation = joint.get("validation_images")
    lines += ["", "## The proxy, the data splits and what was tuned on what", "", spec.describe_proxy(resolution)]
    if validation:
        lines.append(f"Training images {joint['train_images']:,} and validation images {validation:,} (drawn from the "
                     f"{joint['train_images'] + validation:,} training images at random with the fixed seed {args.seed} and held out of all training), "
                     f"test images {joint['test_images']:,}; input {resolution} px, 3 replicated grey channels.")
        lines += ["", "What was tuned on what: the dense model's epoch count (the convergence rule) and the dense epoch kept were chosen on validation; "
                  "every compression stage and the control scored their epochs on validation; the test set was scored once per reported figure "
                  "(dense, control, and the decoded file in each domain). " + spec.recipe_note]
    else:
        lines.append(f"Training images {joint['train_images']:,}, test images {joint['test_images']:,}, input {resolution} px, 3 replicated grey channels "
                     "(a run from before the validation split: its settings were chosen on the test set).")
    lines += ["", f"MACs are counted at {spec.count_resolution}x{spec.count_resolution} (the paper's input) for every row, with each layer's measured densities. "
              "The compression ratio is 32-bit dense bytes of every parameter (the 10-class head and BatchNorm included) over the file's size on disk; "
              "weights only is the compressed layers' dense bytes over their coded streams and codebooks.", ""]
    lines += ["## Baselines", ""] + _dense_lines(dense)
    digest = _kept_digest(dense, args)
    if digest:
        lines += [f"The kept dense weights' digest is `{digest}` (sha256 over the state dict's names and bytes, first 16 hex digits; "
                  "`dense_weights_digest` in the JSON). WORK is not kept, so a later sitting that trains the dense model again with the "
                  "same command can check that it got the same weights.", ""]
    if control:
        lines += _control_lines(control, dense)
    else:
        lines += ["Equal-epoch dense control: **pending** (its stage has not run); drops below are from the dense model alone.", ""]
    high_dense = records.get("highres-dense") or {}
    # a record from before the count was kept: the count of this invocation's splits, if they are the record's sizes
    same_splits = (high_dense.get("validation_images") == args.highres_validation
                   and high_dense.get("train_images", 0) + args.highres_validation == args.highres_subset)
    lines += _highres_lines(records, resolution, highres_validation_seen(args, drawn_within_main_validation=False)
                            if same_splits and "validation_seen_by_start" not in high_dense else None)

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
    if joint.get("position_vs_order0") is not None:
        lines += [f"Positions: {joint['position_bytes']:,} bytes, **{joint['position_vs_order0']:.4f}x** their order-0 bound "
                  f"({joint['position_order0_bytes']:,.0f} bytes: each layer's size times the binary entropy of its density); issue 15's target "
                  f"for the context coder, <= {POSITION_TARGET:.2f}x: {_met(joint['position_vs_order0'] <= POSITION_TARGET)}"
                  + ("" if joint["position_vs_order0"] <= POSITION_TARGET else
                     f" (`python experiments/mask_structure.py {joint.get('committed_file') or 'FILE'}` bounds what any context model of these kinds could gain on each layer's map)")
                  + ".", ""]

    lines += ["## Table B: summary (measured)", "",
              "Drops are measured from the better of the dense model and its equal-epoch control (test top-1), in each domain.", "",
              "| run | top-1 dense | top-1 control | top-1 spatial | top-1 Winograd | drop spatial (pt) | drop Winograd (pt) | file bytes | compression (file) | compression (weights only) | "
              "MAC reduction spatial | MAC reduction Winograd (products) | MAC reduction Winograd (with transforms) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    runs = [("joint", f"{resolution} px proxy (full recipe)")]
    if "highres" in records:
        runs.append(("highres", f"{records['highres']['resolution'][0]} px, no copying ({records['highres']['train_images']:,} training images)"))
    for stage, label in runs:
        r = records[stage]
        base = baseline_top1(r)
        lines.append(f"| {label} | {_pct(r['top1_dense'])} | {_pct(r.get('dense_control_top1'))} | {_pct(r['top1_spatial'])} | {_pct(r['top1_winograd'])} | "
                     f"{base - r['top1_spatial']:.2f} | {base - r['top1_winograd']:.2f} | {r['file_bytes']:,} | "
                     f"{r['compression_ratio']:.1f}x | {r['weights_only_ratio']:.1f}x | {r['macs_reduction_spatial']:.2f}x | {r['macs_reduction_winograd']:.2f}x | "
                     f"{_ratio(r.get('macs_reduction_winograd_with_transforms'))} |")
    pending_highres = _highres_pending(spec, records, files.started, resolution)
    if pending_highres:
        lines += ["", pending_highres["text"]]
    lines += ["", "Quoted from the papers (ImageNet, not measured here):", "", "| system | compression | computation reduction |", "| --- | ---: | ---: |"]
    lines += [f"| {q['system']} | {q['compression']} | {q['computation']} |" for q in spec.quoted]
    lines += ["", "Targets (issue 7): compression and computation reduction at least the paper's, top-1 within 1 point of the better of our dense baseline "
              "and its control in both domains:", ""]
    for stage, label in runs:
        r = records[stage]
        met = targets_met(spec, r)
        lines.append(f"- {label}: compression {r['compression_ratio']:.1f}x vs >= {spec.target_ratio}x: {_met(met['compression'])}; "
                     f"computation {max(r['macs_reduction_spatial'], r['macs_reduction_winograd']):.2f}x (better domain) vs >= {spec.target_macs}x: {_met(met['computation'])}; "
                     f"top-1 drop {top1_drop(r):.2f} pt (worse domain) vs <= {MAX_DROP_POINTS} pt: {_met(met['accuracy'])}"
                     + (f" ({spec.accuracy_caveat})" if spec.accuracy_caveat and met["accuracy"] else ""))
    lines += _stage_lines(records, [stage for stage, _ in runs])
    for stage, label in runs:
        lines += _accuracy_miss_lines(spec, with_deepcomp, stage, label)
    deepcomp_lines, deepcomp_payload = _deepcomp_lines(spec, with_deepcomp)
    lines += deepcomp_lines
    tuning, tuning_payload = _tuning_section(spec, args, joint.get("settings"), digest)
    lines += ablation_lines + tuning
    payload = {**summary(joint), "targets_met": targets_met(spec, joint), "resolution": resolution,
               "dense_epochs": dense.get("epochs_total"), "dense_converged": dense.get("converged"), "dense_val_top1": dense.get("val_top1"),
               "dense_curve_val_top1": [point["val_top1"] for point in dense.get("curve", [])],
               "dense_control_epochs": control["epochs"] if control else None, "dense_weights_digest": digest,
               "recipe_digest": recipe_digest(joint["settings"]) if "settings" in joint else None,
               "command": "; ".join(command for command, _, _ in invocations), "date": joint["date"], "machine": machine_summary()}
    if pending_highres:
        payload["highres"] = {key: value for key, value in pending_highres.items() if key != "text"}
    if "highres" in records:
        high_dense = records.get("highres-dense", {})
        payload["highres"] = {**summary(records["highres"]), "resolution": records["highres"]["resolution"][0], "targets_met": targets_met(spec, records["highres"]),
                              "dense_epochs": high_dense.get("epochs_total"), "dense_converged": high_dense.get("converged"),
                              "dense_curve_val_top1": [point["val_top1"] for point in high_dense.get("curve", [])]}
    if deepcomp_payload is not None:
        payload["deep_compression"] = deepcomp_payload
    if ablation_payload is not None:
        payload["ablation"] = ablation_payload
    if tuning_payload is not None:
        payload["tuning"] = tuning_payload
    return _write_tables(spec, args, lines, payload, lacking)


#: What a finished report holds that a later one must hold too before it replaces it.
REPORT_RESULTS = {"compression_ratio": "Tables A and B", "deep_compression": "the Deep Compression row", "ablation": "Table C",
                  "highres": "the high-resolution row"}


def _holds(payload: dict[str, Any], key: str) -> bool:
    value = payload.get(key)
    if isinstance(value, dict):
        return value.get("status") != "pending" and not str(value.get("source", "")).startswith("earlier")
    return value is not None


def _lacking(spec: NetworkSpec, args: argparse.Namespace, holds: set[str]) -> list[str]:
    """What the finished tables in --out-dir hold (of :data:`REPORT_RESULTS`) that a report
    holding ``holds`` lacks."""
    finished = _finished_tables(spec, args)
    return [label for key, label in REPORT_RESULTS.items() if _holds(finished, key) and key not in holds]


def _finished_tables(spec: NetworkSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON of the tables in --out-dir ({} if there are none or they do not parse)."""
    try:
        finished = json.loads((args.out_dir / f"{spec.name}_tables.json").read_text())
    except (OSError, ValueError):
        return {}
    return finished if isinstance(finished, dict) else {}


def _same_dense_lines(spec: NetworkSpec, args: argparse.Namespace, digest: str | None) -> list[str]:
    """Whether an unfinished run's dense model is the one the finished tables in --out-dir started
    from (the same digest: its stages reproduce those tables' training)."""
    finished = _finished_tables(spec, args).get("dense_weights_digest")
    if not digest or not finished:
        return []
    verdict = "the same weights" if digest == finished else "other weights: this run's figures will not be those tables' figures"
    return [f"The kept dense weights' digest is `{digest}`; the finished tables' dense model (`{spec.name}_tables.json`) has `{finished}`: {verdict}.", ""]


def _write_tables(spec: NetworkSpec, args: argparse.Namespace, lines: list[str], payload: dict[str, Any], lacking: list[str]) -> Path:
    """``<net>_tables.md`` / ``.json`` in --out-dir, unless the finished tables there hold results
    this report lacks (a run still under way, or one whose WORK lost stages): then
    ``<net>_tables_pending.md`` / ``.json``, and the finished tables stay."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{spec.name}_tables"
    if lacking:
        name += "_pending"
        lines = lines[:2] + [f"This report lacks {', '.join(lacking)} that `{spec.name}_tables.md` holds; that file keeps the last finished "
                             "tables until a report holds them all (move it away to let this report replace it).", ""] + lines[2:]
    md = args.out_dir / f"{name}.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    atomic_write_text(args.out_dir / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    if not lacking:  # these tables hold all the pending ones did: a stale pending report would contradict them
        for suffix in (".md", ".json", ".jsz", "_highres.jsz"):
            (args.out_dir / f"{spec.name}_tables_pending{suffix}").unlink(missing_ok=True)
    return md


def code_changed_note(started: str, now: str) -> str | None:
    """A stage runs for hours while the checkout may move on: its report is written by the code
    the process loaded at its start, so a wording fixed since then is missing from it."""
    if started == now:
        return None
    return (f"note: the code changed while this run went on ({started} -> {now}); the report above was written by the code it "
            "started with: the same command with --report-only rewrites it with the current code")


def main(spec: NetworkSpec, argv: list[str] | None = None) -> int:
    try:
        args = parse_args(spec, argv)
        torch.set_num_threads(args.threads)
        run = Run(spec, args)
        for stage in (*STAGES, TUNE):
            if stage in args.stages and not args.report_only:
                getattr(run, f"run_{stage.replace('-', '_')}")()
        if TUNE in args.stages:
            args.recipe = spec.recipe  # the report is the committed recipe's; the candidate's record lists its own
        if is_rank0():
            lock = _exclusive(args.work_dir / ABLATION_RECORD_LOCK) if args.work_dir.is_dir() else contextlib.nullcontext()
            with lock:  # read the records and write their report after any merge in flight
                path = write_report(spec, args)
            run.log(f"wrote {path}" if path else "no table yet (no dense epoch has finished)")
            if path and not args.report_only and (note := code_changed_note(run.code, code_version())):
                run.log(note)
        return 0
    except (TablesError, ValueError, FileNotFoundError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
