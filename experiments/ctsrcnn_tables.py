"""The paper's third result (SPEC section 7): CT-SRCNN x3 super-resolution compressed under joint
spatial/Winograd sparsity, on the offline ``sr-natural`` photographs (``jointsparse.superres``).

Stages, each resumable and recorded as ``<work-dir>/<stage>.json``; the report is rebuilt from
every finished stage's record:

- ``dense``: cascade training (CT-SRCNN's recipe): the 9-5-5 net first, then two identity-
  initialised 3x3 layers inserted and training continued, until the final depth
  (``--cascade``); Adam, one cosine cycle per cascade step, validated on the validation patches;
- ``control``: the dense net trained on through the recipe's retrain, fine-tune and codebook
  stage settings (same optimizer, learning rates, schedules and step counts, no regularizer, no
  pruning, no quantization): the compressed net's extra training, given to the dense one;
- ``joint``: the recipe through ``compress`` into a ``.jsz`` file, decoded in both domains
  and scored on the held-out test images; the file is copied to ``--out-dir``;
- ``ablation``: the recipe in ``spatial``, ``winograd`` and ``joint`` regularizer mode with a
  shortened budget (retraining capped at ``--ablation-steps``, no fine-tuning), each coded and
  deployed in both domains;
- ``tune`` (only when named): a candidate ``--recipe`` through ``compress``, scored on the
  validation patches only. Its record goes to ``<out-dir>/ctsrcnn_tuning/`` (committed with the
  results, since work directories do not outlive a sitting), and the report lists every recipe
  tried, so the choice of the committed recipe can be checked without touching the test images.
  A candidate starts from the finished stages of the joint run or another candidate that trained
  the same way, and the joint stage from those of the candidate that became its recipe.

Nothing is tuned on the test images: training and every stage's per-epoch score use the
training images' patches (train / val); the test images are scored once per finished model.

Run as committed (the results file lists the exact invocation)::

    nice -n 19 python experiments/ctsrcnn_tables.py --work-dir experiments/work/ctsrcnn

Trying a candidate recipe (validation only), one per core beside another::

    python experiments/ctsrcnn_tables.py --stages tune --recipe CANDIDATE.toml --work-dir experiments/work/ctsrcnn

Smoke run (a few patches, two steps per stage; checks the path and the report)::

    python experiments/ctsrcnn_tables.py --smoke --work-dir smoke-ctsrcnn --out-dir smoke-ctsrcnn
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tuning import TUNE, already_tried, load_records, record_path, reuse_trained_stages, tuning_lines, write_record  # siblings: the directory of the running script is on sys.path
from paper_tables import SECONDS_COVER, _dense_digest, _density_spread, _density, _layer_rows, _met, _shown, _times, _torch_threads, _weights_digest, code_changed_note, control_settings, run_seconds, stage_table, train_control  # a sibling script: its directory is on sys.path

from jointsparse import superres
from jointsparse.info import info_payload
from jointsparse.codecs import decode
from jointsparse.cost import WINOGRAD_TRANSFORMS_CONVENTION
from jointsparse.data import make_loaders
from jointsparse.models import ctsrcnn_insert_layers, get_model
from jointsparse.compress import compress, run_fingerprint
from jointsparse.provenance import ROOT, code_version, command_line, machine_summary
from jointsparse.recipe import Recipe, load_recipe
from jointsparse.tasks import SUPER_RESOLUTION
from jointsparse.train import TrainConfig, evaluate, seed_everything, train
from jointsparse.utils import atomic_torch_save, atomic_write_bytes, atomic_write_text

STAGES = ("dense", "control", "joint", "ablation")
RECIPE = Path(__file__).resolve().parent / "recipes" / "ctsrcnn.toml"
TUNING_DIR = "ctsrcnn_tuning"  # under --out-dir: one record per candidate recipe (a run from another dense net replaces it)
ABLATION_MODES = ("spatial", "winograd", "joint")
TASK = SUPER_RESOLUTION
# Issue 14's targets.
TARGET_RATIO, TARGET_MACS, MAX_DROP_DB, MIN_GAIN_DB = 35.4, 23.5, 0.1, 1.0
RESULTS = Path(__file__).resolve().parent / "results"


class TablesError(ValueError):
    """Inconsistent settings or a stage that needs one not yet run."""


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TablesError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CT-SRCNN x3 super-resolution under joint sparsity: the paper's third result, offline.",
                                     epilog="example: nice -n 19 python experiments/ctsrcnn_tables.py --work-dir experiments/work/ctsrcnn")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {', '.join(STAGES)} (finished stages are reused), or {TUNE}: --recipe scored on validation only")
    parser.add_argument("--report-only", action="store_true", help="run no stage: rebuild the report from the work directory's records")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--cascade", default="3,5,7,9", help="depths of the cascade steps (3 = SRCNN 9-5-5; each step inserts layers)")
    parser.add_argument("--cascade-steps", default="1500,900,900,3000", help="training steps of each cascade step")
    parser.add_argument("--dense-lr", type=float, default=5e-4, help="Adam learning rate of each cascade step (cosine to a tenth)")
    parser.add_argument("--ablation-steps", type=int, default=100, help="retraining steps per ablation mode")
    parser.add_argument("--count-size", type=int, default=256, help="MACs are counted on a 1 x N x N luminance image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "experiments" / "work" / "ctsrcnn")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--smoke", action="store_true", help="64 patches, 2 test images, two steps per stage")
    args = parser.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not args.stages or any(s not in (*STAGES, TUNE) for s in args.stages):
        raise TablesError(f"--stages must name some of {', '.join((*STAGES, TUNE))}, got {args.stages}")
    if TUNE in args.stages and len(args.stages) > 1:
        raise TablesError(f"--stages {TUNE} runs alone: its --recipe is a candidate, not the recipe of the other stages")
    args.cascade, args.cascade_steps = _ints(args.cascade), _ints(args.cascade_steps)
    if args.smoke:  # two steps per depth, whatever the depths
        args.cascade_steps = [2] * len(args.cascade)
    if not args.cascade or args.cascade[0] < 3 or args.cascade != sorted(set(args.cascade)):
        raise TablesError(f"--cascade must be increasing depths starting at >= 3, got {args.cascade}")
    if len(args.cascade_steps) != len(args.cascade) or min(args.cascade_steps) < 1:
        raise TablesError("--cascade-steps needs one positive step count per cascade depth")
    if args.ablation_steps < 1 or args.count_size < 8 or args.threads < 1 or not args.dense_lr > 0:
        raise TablesError("--ablation-steps >= 1, --count-size >= 8, --threads >= 1 and --dense-lr > 0 are needed")
    if not args.recipe.is_file():
        raise TablesError(f"recipe {args.recipe} not found")
    args.subset, args.val_subset, args.test_subset = (64, 16, 2) if args.smoke else (None, None, None)
    if args.smoke:
        args.ablation_steps = 2
    return args


def stage_recipe(args: argparse.Namespace) -> Recipe:
    recipe = load_recipe(args.recipe)
    if args.smoke:
        short = lambda stage: dataclasses.replace(stage, epochs=min(stage.epochs, 1), max_steps_per_epoch=2)  # noqa: E731
        recipe = dataclasses.replace(recipe, retrain=short(recipe.retrain), finetune=short(recipe.finetune), codebook=short(recipe.codebook))
    return recipe


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work_dir
        self.work.mkdir(parents=True, exist_ok=True)
        self.recipe = stage_recipe(args)
        self.code = code_version()
        self.progress = sys.stderr.isatty()
        if not args.resume:
            for stage in args.stages:
                (self.work / f"{stage}.json").unlink(missing_ok=True)
        batch = self.recipe.data.batch_size
        self.train_loader, self.val_loader, self.info = make_loaders(
            "sr-natural", batch_size=batch, eval_batch_size=self.recipe.data.eval_batch_size, seed=args.seed,
            subset=args.subset, subset_seed=args.seed if args.subset else None, test_subset=args.val_subset, eval_split="val")
        self.test_loader = make_loaders("sr-natural", batch_size=batch, test_subset=args.test_subset)[1]

    def log(self, text: str) -> None:
        print(f"[ctsrcnn {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {text}", flush=True)

    def record(self, stage: str) -> dict[str, Any] | None:
        path = self.work / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_record(self, stage: str, record: dict[str, Any]) -> None:
        record.update(command=command_line(), date=datetime.date.today().isoformat(), code=self.code, nice=os.nice(0))
        atomic_write_text(self.work / f"{stage}.json", json.dumps(record, indent=2, default=float) + "\n")

    def done(self, stage: str) -> bool:
        finished = self.record(stage) is not None
        if finished:
            self.log(f"{stage}: already done")
        return finished

    def test_scores(self, model: torch.nn.Module) -> dict[str, Any]:
        """Mean PSNR over the held-out test images, and each image's."""
        model.eval()
        per_image = []
        with torch.no_grad():
            for inputs, targets in self.test_loader:
                per_image.append(float(TASK.metric_sum(model(inputs), targets)))
        names = list(superres.TEST_IMAGES[: len(per_image)])
        return {"psnr": sum(per_image) / len(per_image), "per_image": dict(zip(names, per_image))}

    def dense_model(self, name: str = "dense") -> torch.nn.Module:
        if self.record("dense") is None:
            raise TablesError("run the dense stage first (--stages dense)")
        model = get_model("ctsrcnn", depth=self.args.cascade[-1])
        model.load_state_dict(torch.load(self.work / f"{name}.pt", map_location="cpu", weights_only=True))
        return model

    # -- dense: cascade training -----------------------------------------------------------------
    def run_dense(self) -> None:
        if self.done("dense"):
            return
        seed_everything(self.args.seed)
        model = get_model("ctsrcnn", depth=self.args.cascade[0])
        with torch.no_grad():  # start from the bicubic image itself: the residual branch outputs zero
            model.convs()[-1].weight.zero_()
            model.convs()[-1].bias.zero_()
        steps_log = []
        generator = torch.Generator().manual_seed(self.args.seed)
        for index, (depth, steps) in enumerate(zip(self.args.cascade, self.args.cascade_steps)):
            if index:
                model = ctsrcnn_insert_layers(model, depth - model.depth, generator=generator)
            saved = self.work / f"dense-depth{depth}.pt"
            if saved.is_file() and self.args.resume:
                model.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
                steps_log.append(json.loads((self.work / f"dense-depth{depth}.json").read_text()))
                self.log(f"dense: depth {depth} already trained")
                continue
            epochs = max(1, min(4, steps // 50))  # several epochs, so a killed run resumes near where it stopped
            config = TrainConfig(epochs=epochs, max_steps_per_epoch=-(-steps // epochs), lr=self.args.dense_lr, optimizer="adam",
                                 schedule="cosine", min_lr=self.args.dense_lr / 10, seed=self.args.seed, progress=self.progress, log_every=0)
            self.log(f"dense: depth {depth}, {config.epochs} x {config.max_steps_per_epoch} steps, Adam lr {config.lr:g}")
            result = train(model, self.train_loader, self.val_loader, config, task=TASK, checkpoint_path=self.work / f"dense-depth{depth}.ckpt",
                           resume="auto" if self.args.resume else False, log_path=self.work / f"dense-depth{depth}.jsonl", stage=f"dense-depth{depth}",
                           eval_name="validation")
            entry = {"depth": depth, "steps": config.epochs * config.max_steps_per_epoch, "val_psnr": result.test_metric,
                     "seconds": sum(r.get("seconds", 0.0) for r in result.history)}
            atomic_torch_save(model.state_dict(), saved)
            atomic_write_text(self.work / f"dense-depth{depth}.json", json.dumps(entry) + "\n")
            steps_log.append(entry)
            self.log(f"dense: depth {depth} validation PSNR {result.test_metric:.2f} dB")
        atomic_torch_save(model.state_dict(), self.work / "dense.pt")
        bicubic = superres.bicubic_psnr(self.test_loader.dataset)
        scores = self.test_scores(model)
        self.save_record("dense", {
            "cascade": steps_log, "lr": self.args.dense_lr, "psnr": scores["psnr"], "per_image": scores["per_image"],
            "psnr_bicubic": bicubic, "psnr_bicubic_val": superres.bicubic_psnr(self.val_loader.dataset),
            "val_psnr": steps_log[-1]["val_psnr"], "batch_size": self.recipe.data.batch_size,
            "seconds": sum(entry["seconds"] for entry in steps_log), "split": superres.split_record(),
        })
        self.log(f"dense: test PSNR {scores['psnr']:.2f} dB, bicubic {bicubic:.2f} dB")

    # -- control: the dense net, trained as long as compression trains -----------------------------
    def run_control(self) -> None:
        settings = control_settings(self.recipe)
        record = self.record("control")
        if record is not None and record.get("settings") == settings:
            self.log("control: already done")
            return
        if record is not None:  # the recipe's training settings changed: keep the stages that still match, train the rest
            self.log("control: the recipe's training settings changed; continuing from the stages that still match")
        seed_everything(self.args.seed)
        model = self.dense_model()
        seconds, steps = 0.0, 0
        for _, _, result in train_control(model, self.train_loader, self.val_loader, self.recipe, self.work, seed=self.args.seed, device="cpu",
                                          progress=self.progress, resume=self.args.resume, log=self.log, task=TASK):
            seconds += sum(r.get("seconds", 0.0) for r in result.history)
            steps += result.steps
        atomic_torch_save(model.state_dict(), self.work / "control.pt")
        scores = self.test_scores(model)
        self.save_record("control", {"psnr": scores["psnr"], "per_image": scores["per_image"], "steps": steps, "settings": settings,
                                     "val_psnr": evaluate(model, self.val_loader, task=TASK)["metric"], "seconds": seconds})
        self.log(f"control: test PSNR {scores['psnr']:.2f} dB after {steps} more steps")

    # -- compress one recipe, deploy the file both ways ------------------------------------------
    def compress_only(self, tag: str, recipe: Recipe) -> tuple[Path, dict[str, Any]]:
        """The dense net through ``compress`` into ``WORK/<tag>.jsz``: the file and its figures,
        with the validation PSNR after every stage; no test image is touched."""
        seed_everything(self.args.seed)
        model = self.dense_model()
        out = self.work / f"{tag}.jsz"
        start = time.perf_counter()
        fingerprint = {"tag": tag, "start": _weights_digest(model), "subset": self.args.subset}
        reused = reuse_trained_stages(self.work, self.work / f"{tag}.work", run_fingerprint(recipe, fingerprint), self.log) if self.args.resume else None
        result = compress(model, self.train_loader, self.val_loader, recipe, out, workdir=self.work / f"{tag}.work", resume=self.args.resume,
                          seed=self.args.seed, progress=self.progress, log=self.log, task=TASK, fingerprint=fingerprint, eval_name="validation",
                          provenance={"data": {"name": "sr-natural", "input_size": [1, self.args.count_size, self.args.count_size]}})
        # The file decoded in each domain, on validation: the Winograd deployment prunes at decode
        # time, so the in-memory scores above say nothing of it, and a recipe is chosen on both.
        decoded = {domain: evaluate(decode(out, domain=domain), self.val_loader, task=TASK)["metric"] for domain in ("spatial", "winograd")}
        return out, {**file_figures(out, self.args.count_size), "val_psnr_stages": result.scores, "val_psnr_decoded": decoded,
                     **({"reused": reused} if reused else {}),
                     "seconds": run_seconds(time.perf_counter() - start, result, reused), SECONDS_COVER: True}

    def compress_and_deploy(self, tag: str, recipe: Recipe) -> dict[str, Any]:
        out, record = self.compress_only(tag, recipe)
        seconds = record["seconds"]
        scores = {}
        for domain in ("spatial", "winograd"):
            begin = time.perf_counter()
            scores[domain] = self.test_scores(decode(out, domain=domain))
            seconds[f"test_{domain}"] = time.perf_counter() - begin
        return {**record, "psnr_spatial": scores["spatial"]["psnr"], "psnr_winograd": scores["winograd"]["psnr"],
                "per_image": {domain: scores[domain]["per_image"] for domain in scores}}

    def run_joint(self) -> None:
        record = self.record("joint")
        if record is not None and record.get("recipe") == self.recipe.to_dict():
            self.log("joint: already done")
            if self.place_file(record):  # a later invocation with another --out-dir: the file goes there too
                atomic_write_text(self.work / "joint.json", json.dumps(record, indent=2, default=float) + "\n")
            return
        if record is not None:
            self.log("joint: the recipe changed; compressing again (the pipeline keeps the stages the change does not touch)")
        record = self.compress_and_deploy("joint", self.recipe)
        self.place_file(record)
        record["recipe"] = self.recipe.to_dict()
        self.save_record("joint", record)
        self.log(f"joint: {record['compression_ratio']:.1f}x, PSNR spatial {record['psnr_spatial']:.2f} dB, winograd {record['psnr_winograd']:.2f} dB")

    def place_file(self, record: dict[str, Any]) -> bool:
        """Copy the joint file into --out-dir (``ctsrcnn.jsz``) and point the record at it; False if it already was."""
        self.args.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.args.out_dir / "ctsrcnn.jsz"
        path = str(final.resolve().relative_to(ROOT)) if final.resolve().is_relative_to(ROOT) else str(final)
        if record.get("file") == path and final.is_file() and final.read_bytes() == (self.work / "joint.jsz").read_bytes():
            return False
        atomic_write_bytes(final, (self.work / "joint.jsz").read_bytes())  # a kill mid-copy must not leave a torn committed file
        record["file"] = path
        return True

    def run_ablation(self) -> None:
        previous = self.record("ablation") or {"modes": {}}
        steps = self.args.ablation_steps
        if previous.get("steps") != steps or previous.get("recipe") != self.recipe.to_dict():
            previous = {"modes": {}}  # rows of other settings (e.g. other bits) are all run again
        for mode in ABLATION_MODES:
            if mode in previous["modes"]:
                self.log(f"ablation {mode}: already done")
                continue
            recipe = dataclasses.replace(
                self.recipe, regularizer=dataclasses.replace(self.recipe.regularizer, mode=mode),
                retrain=dataclasses.replace(self.recipe.retrain, epochs=1, max_steps_per_epoch=steps),
                finetune=dataclasses.replace(self.recipe.finetune, epochs=0), codebook=dataclasses.replace(self.recipe.codebook, epochs=0))
            self.log(f"ablation {mode}: {steps} retraining steps")
            row = self.compress_and_deploy(f"ablation-{mode}", recipe)
            row.pop("layers")
            previous["modes"][mode] = row
            previous["steps"] = steps
            previous["recipe"] = self.recipe.to_dict()  # a changed recipe (e.g. other bits) runs the modes again
            self.save_record("ablation", previous)

    # -- tune: a candidate recipe, validation only -------------------------------------------
    def run_tune(self) -> None:
        dense = _weights_digest(self.dense_model())
        recipe = self.recipe.to_dict()
        path, digest = record_path(self.args.out_dir / TUNING_DIR, self.args.recipe, recipe)
        if self.args.resume and already_tried(path, dense, "val_psnr_decoded"):
            self.log(f"tune {self.args.recipe.name}: already done ({path.name})")
            return
        self.log(f"tune {self.args.recipe.name}: compressing, scored on the {len(self.val_loader.dataset)} validation patches only")
        _, record = self.compress_only(f"{TUNE}-{digest}", self.recipe)
        write_record(path, record, recipe_file=self.args.recipe, recipe=recipe, dense_digest=dense, command=_shown(command_line()), code=self.code)
        self.log(f"tune {self.args.recipe.name}: validation {_psnr(record['val_psnr_decoded']['spatial'])} / {_psnr(record['val_psnr_decoded']['winograd'])} dB "
                 f"decoded spatial / Winograd, {record['compression_ratio']:.1f}x, "
                 f"MACs {record['macs_reduction_winograd']:.2f}x (Winograd); wrote {path}")


def file_figures(path: Path, count_size: int) -> dict[str, Any]:
    """Size, densities and MACs of a ``.jsz`` file (MACs per 1 x N x N image, by ``jointsparse.cost``)."""
    payload = info_payload(str(path), (1, count_size, count_size))
    total, macs = payload["report"]["total"], payload["macs"]
    return {
        "file_bytes": total["file_bytes"], "compression_ratio": total["compression_ratio"], "weights_only_ratio": total["weights_only_ratio"],
        "density": total["density"], "winograd_density": total["winograd_density"],
        "macs": {key: macs[key] for key in ("dense", "spatial", "winograd", "winograd_with_transforms", "input_size")},
        "macs_reduction_spatial": macs["reduction_spatial"], "macs_reduction_winograd": macs["reduction_winograd"],
        "macs_reduction_winograd_with_transforms": macs["reduction_winograd_with_transforms"],
        "layers": _layer_rows(payload),
        "transform_macs": {row["name"]: None if row["input_transform_macs"] is None else row["input_transform_macs"] + row["output_transform_macs"]
                           for row in macs["layers"]},
    }


# ------------------------------------------------------------------------------------- report


def _psnr(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _invocation(record: dict[str, Any]) -> str:
    """The command as it ran: the work directory as WORK, and the niceness it ran at."""
    nice = record.get("nice", 0)
    return (f"nice -n {nice} " if nice else "") + _shown(record["command"])


def bicubic_per_image(names: list[str]) -> dict[str, float]:
    """Each test image's bicubic PSNR (the degradation is deterministic, so it is recomputed, not recorded)."""
    scores = {}
    for name in names:
        hr = superres.load_y(name)
        scores[name] = float(superres.psnr_y(superres.bicubic_degrade(hr), hr).mean())
    return scores


def targets(records: dict[str, Any]) -> dict[str, bool]:
    joint, dense, control = records["joint"], records["dense"], records.get("control")
    reference = max(dense["psnr"], control["psnr"]) if control else dense["psnr"]
    return {
        "compression": joint["compression_ratio"] >= TARGET_RATIO,
        "computation": max(joint["macs_reduction_spatial"], joint["macs_reduction_winograd"]) >= TARGET_MACS,
        "psnr": reference - min(joint["psnr_spatial"], joint["psnr_winograd"]) <= MAX_DROP_DB,
        "dense_vs_bicubic": dense["psnr"] - dense["psnr_bicubic"] >= MIN_GAIN_DB,
    }


def drop_breakdown(joint: dict[str, Any], control: dict[str, Any] | None) -> str:
    """Where a missed PSNR target's drop arises, stage by stage, on the validation patches the recipe was chosen on."""
    stages, decoded = joint["val_psnr_stages"], joint["val_psnr_decoded"]
    worst = min(decoded.values())
    has_control = bool(control) and "val_psnr" in control
    reference = max(stages["dense"], control["val_psnr"]) if has_control else stages["dense"]
    return (f"Where the drop arises, on the validation patches: the decoded file's worse domain ({worst:.2f} dB) is "
            f"{reference - worst:.2f} dB below {'the better of dense and control' if has_control else 'the dense net'} ({reference:.2f} dB). Of that, the control's extra training "
            f"is {reference - stages['dense']:.2f} dB; retraining under the regularizer and pruning leave the net "
            f"{stages['dense'] - stages['pruned']:.2f} dB below dense, masked fine-tuning brings it back to "
            f"{stages['dense'] - stages['finetune']:.2f} dB below, and quantization, codebook fine-tuning, coding and (in the Winograd "
            f"domain) decode-time pruning add {stages['finetune'] - worst:.2f} dB.")


def ablation_verdict(rows: dict[str, dict[str, Any]], dense: dict[str, Any]) -> str:
    """What the ablation can and cannot show: whether its rows rise above bicubic at all, and
    whether they sit at equal Winograd density."""
    bicubic, learned = dense["psnr_bicubic"], dense["psnr"]
    best = max(max(row["psnr_spatial"], row["psnr_winograd"]) for row in rows.values())
    worst = min(min(row["psnr_spatial"], row["psnr_winograd"]) for row in rows.values())
    if best < bicubic + (learned - bicubic) / 2:
        text = (f"At this budget every mode ends near bicubic ({worst:.2f} to {best:.2f} dB against bicubic {bicubic:.2f} dB and dense {learned:.2f} dB): "
                "pruning without fine-tuning loses most of what the net learned, so this table does not separate the regularizers; "
                "a budget with the full run's fine-tuning, as the AlexNet Table C has, would.")
    else:
        text = f"The rows span {worst:.2f} to {best:.2f} dB (bicubic {bicubic:.2f}, dense {learned:.2f})."
    spread = _density_spread(rows, "winograd_density")
    if spread is not None and not spread[4]:
        low, high, low_value, gap, _ = spread
        text += f" The rows are not at equal Winograd density: the {low} row lands at {low_value:.3f}, {gap:.3f} below the {high} row."
    return text


def write_report(args: argparse.Namespace) -> Path | None:
    records = {stage: json.loads((args.work_dir / f"{stage}.json").read_text()) for stage in STAGES if (args.work_dir / f"{stage}.json").is_file()}
    if "dense" not in records:
        return None
    dense, control, joint, ablation = (records.get(s) for s in STAGES)
    if joint and (ROOT / joint["file"]).is_file():  # the file's figures by the cost model of the code that writes the report
        joint.update(file_figures(ROOT / joint["file"], joint["macs"]["input_size"][-1]))
    split = dense["split"]
    lines = ["# CT-SRCNN x3 super-resolution under joint sparsity (issue 14)", "",
             "Produced by (each stage resumes and is reused by the next):", "", "```"]
    invocations: dict[tuple[str, str, str], list[str]] = {}
    for stage, record in records.items():
        invocations.setdefault((_invocation(record), record["date"], record["code"]), []).append(stage)
    for (command, date, code), stages in invocations.items():
        lines.append(f"{command}    # {', '.join(stages)}: {date}, code {code}")
    lines += ["```", ""] + [f"Note on {stage}: {record['note']}." for stage, record in records.items() if record.get("note")]
    lines += ["", "WORK: a scratch directory (checkpoints and stage records). OUT: a scratch directory the report and file were written to, "
              "then placed here.", "",
              f"Machine: {machine_summary()}, {_torch_threads([r['command'] for r in records.values()], args.threads)}, shared with other jobs (wall times are not benchmarks). "
              f"Recipe: `experiments/recipes/{args.recipe.name}`.", "", "Wall time per stage (seconds):", "",
              "- dense (cascade): " + ", ".join(f"depth {c['depth']} {c['seconds']:.0f}" for c in dense["cascade"])]
    if control:
        lines.append(f"- control: {control['seconds']:.0f}")
    if joint:
        lines.append("- joint: " + _times(joint["seconds"], joint.get("reused")))
    if ablation:
        lines.append("- ablation: " + "; ".join(f"{mode} {_times(row['seconds'], row.get('reused'))}" for mode, row in ablation["modes"].items()))
    lines += ["", "## Data and network", "",
              f"`sr-natural` (`jointsparse.superres`): x{split['scale']} bicubic degradation of the Y channel ({split['colour']}); "
              f"{len(split['train_images'])} training photographs ({', '.join(split['train_images'])}) cut into {split['train_patches']:,} training and "
              f"{split['val_patches']} validation {split['patch']} px patches (flat patches dropped, training patches augmented by the 8 rotations/flips); "
              f"the validation patches are cut from the training photographs, so they check fit less independently than held-out images would; "
              f"{len(split['test_images'])} held-out test images scored whole ({', '.join(f'{n} {s[0]}x{s[1]}' for n, s in split['test_sizes'].items())}), "
              f"PSNR on Y with {split['border']} px shaved off each border, 8-bit levels, as SRCNN. Nothing was tuned on the test images.", "",
              "CT-SRCNN (`jointsparse.models.ctsrcnn`, *reconstructed*: see docs/method.md): 9x9 1->64, 5x5 64->32, six 3x3 32->32, 5x5 32->1, "
              "'same' padding, ReLUs, a global skip from the bicubic input. Cascade training: "
              + " -> ".join(f"depth {c['depth']} ({c['steps']} steps, validation {c['val_psnr']:.2f} dB)" for c in dense["cascade"])
              + f", Adam at lr {dense['lr']:g} (one cosine cycle per step), batch {dense['batch_size']}; inserted layers start as the identity plus noise.", ""]
    bicubic = bicubic_per_image(list(dense["per_image"]))
    lines += ["## Dense baseline (test images, PSNR in dB)", "", "| image | bicubic | dense | dense control |", "| --- | ---: | ---: | ---: |"]
    for name, value in dense["per_image"].items():
        lines.append(f"| {name} | {bicubic[name]:.2f} | {value:.2f} | {_psnr(control['per_image'].get(name)) if control else '-'} |")
    lines.append(f"| mean | {dense['psnr_bicubic']:.2f} | {dense['psnr']:.2f} | {_psnr(control['psnr']) if control else '-'} |")
    if control:
        lines += ["", f"The control is the dense net trained {control['steps']} more steps with the recipe's retrain, fine-tune and codebook settings "
                  "(no regularizer, pruning or quantization), i.e. as long as the compressed net trains after the dense stage."]
    if joint:
        macs = joint["macs"]
        lines += ["", "## Per layer (the joint run's file)", "",
                  f"MACs per {macs['input_size'][1]}x{macs['input_size'][2]} luminance image, Winograd F(4, r) (t = r + 3) for every layer.", "",
                  "| layer | weights | spatial density | Winograd density | bits | coded bytes | dense MACs | spatial-sparse MACs | Winograd-sparse MACs | transform MACs |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in joint["layers"]:
            wino = "-" if row["sparse_winograd_macs"] is None else f"{row['sparse_winograd_macs'] / 1e6:.2f}M"
            mults = joint["transform_macs"].get(row["name"])
            lines.append(f"| {row['name']} | {row['params']:,} | {_density(row['density'])} | {_density(row['winograd_density'])} | {row['bits']} | {row['coded_bytes']:,} | "
                         f"{row['dense_macs'] / 1e6:.2f}M | {row['sparse_spatial_macs'] / 1e6:.2f}M | {wino} | {'-' if mults is None else f'{mults / 1e6:.2f}M'} |")
        lines += [f"| total | {sum(r['params'] for r in joint['layers']):,} | {_density(joint['density'])} | {_density(joint['winograd_density'])} | | "
                  f"{sum(r['coded_bytes'] for r in joint['layers']):,} | {macs['dense'] / 1e6:.1f}M | {macs['spatial'] / 1e6:.1f}M | {macs['winograd'] / 1e6:.1f}M | "
                  f"{(macs['winograd_with_transforms'] - macs['winograd']) / 1e6:.1f}M |", "",
                  "Winograd-sparse MACs: element-wise products only (the paper's convention). Transform MACs: the input transform (once per input "
                  "channel and tile) and the output transform (once per output channel and tile), one operation per non-zero entry of B^T and A^T "
                  f"applied separably (`jointsparse.cost.transform_macs`). The 'with transforms' reduction below counts {WINOGRAD_TRANSFORMS_CONVENTION}.", ""]
        lines += ["## Where the PSNR goes (validation patches, dB)", "",
                  "The joint run's validation PSNR after each stage (the figures the recipe was chosen on; the test images are scored once, below; "
                  "\"in the file\" is what `codebook_selection` kept):", ""] + stage_table([("joint", joint["val_psnr_stages"])]) + [""]
        if "val_psnr_decoded" in joint:
            lines += [f"The file decoded, on the same patches: {_psnr(joint['val_psnr_decoded']['spatial'])} dB spatial, "
                      f"{_psnr(joint['val_psnr_decoded']['winograd'])} dB Winograd (pruned at decode time).", ""]
        met = targets(records)
        reference = max(dense["psnr"], control["psnr"]) if control else dense["psnr"]
        with_transforms = max(joint["macs_reduction_spatial"], joint["macs_reduction_winograd_with_transforms"])
        lines += ["## Summary (measured)", "",
                  "| PSNR bicubic | PSNR dense | PSNR control | PSNR spatial | PSNR Winograd | file bytes | compression (file) | compression (weights only) | MAC reduction spatial | MAC reduction Winograd | Winograd with transforms |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| {dense['psnr_bicubic']:.2f} | {dense['psnr']:.2f} | {_psnr(control['psnr']) if control else '-'} | {joint['psnr_spatial']:.2f} | {joint['psnr_winograd']:.2f} | "
                  f"{joint['file_bytes']:,} | {joint['compression_ratio']:.1f}x | {joint['weights_only_ratio']:.1f}x | {joint['macs_reduction_spatial']:.2f}x | "
                  f"{joint['macs_reduction_winograd']:.2f}x | {joint['macs_reduction_winograd_with_transforms']:.2f}x |", "",
                  "Quoted from the paper (Choi, El-Khamy & Lee, arXiv 1805.08303; not measured here): CT-SRCNN 35.4x compression, 23.5x fewer multiplications.", "",
                  "Targets (issue 14):", "",
                  f"- compression {joint['compression_ratio']:.1f}x vs >= {TARGET_RATIO}x: {_met(met['compression'])}",
                  f"- MAC reduction {max(joint['macs_reduction_spatial'], joint['macs_reduction_winograd']):.2f}x (better domain, Winograd products only: the paper's convention) "
                  f"vs >= {TARGET_MACS}x: {_met(met['computation'])}; counted with the transforms, the better domain's is "
                  f"{with_transforms:.2f}x: {_met(with_transforms >= TARGET_MACS)}",
                  f"- PSNR drop {reference - min(joint['psnr_spatial'], joint['psnr_winograd']):.2f} dB (worse domain, from the better of dense and control) vs <= {MAX_DROP_DB} dB: {_met(met['psnr'])}",
                  f"- dense over bicubic {dense['psnr'] - dense['psnr_bicubic']:.2f} dB vs >= {MIN_GAIN_DB} dB: {_met(met['dense_vs_bicubic'])}"]
        if not met["psnr"] and "val_psnr_decoded" in joint:
            lines += ["", drop_breakdown(joint, control)]
    if ablation:
        lines += ["", "## Regularization ablation", "",
                  f"The recipe's targets in each regularizer mode from the same dense net, {ablation['steps']} retraining steps, no masked or codebook fine-tuning, "
                  f"then quantized and coded like the full run; each file decoded in both domains (the Winograd deployment prunes at decode time) and "
                  f"scored on the {len(split['test_images'])} test images.", "",
                  "| regularizer | PSNR spatial | PSNR Winograd | spatial density | Winograd density | compression | MAC reduction Winograd |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for mode in ABLATION_MODES:
            if mode in ablation["modes"]:
                r = ablation["modes"][mode]
                lines.append(f"| {mode} | {r['psnr_spatial']:.2f} | {r['psnr_winograd']:.2f} | {_density(r['density'])} | {_density(r['winograd_density'])} | "
                             f"{r['compression_ratio']:.1f}x | {r['macs_reduction_winograd']:.2f}x |")
        lines += ["", ablation_verdict(ablation["modes"], dense)]
    tried = load_records(args.out_dir / TUNING_DIR)
    if tried:
        lines += [""] + tuning_lines(tried, joint.get("recipe") if joint else None, _dense_digest(args.work_dir), directory=TUNING_DIR,
                                     score="PSNR (dB)", decoded_key="val_psnr_decoded", stages_key="val_psnr_stages", fmt=_psnr, stage_table=stage_table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = args.out_dir / "ctsrcnn_tables.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    payload: dict[str, Any] = {"psnr_dense": dense["psnr"], "psnr_bicubic": dense["psnr_bicubic"],
                               "psnr_dense_control": control["psnr"] if control else None, "test_images": split["test_images"], "split": split}
    if joint:
        payload.update({key: joint[key] for key in ("compression_ratio", "weights_only_ratio", "macs_reduction_spatial", "macs_reduction_winograd",
                                                     "macs_reduction_winograd_with_transforms", "psnr_spatial", "psnr_winograd", "file", "file_bytes")})
        payload["macs"] = joint["macs"]
        payload["targets_met"] = targets(records)
    if ablation:
        payload["ablation"] = {mode: {k: row[k] for k in ("psnr_spatial", "psnr_winograd", "density", "winograd_density", "compression_ratio", "macs_reduction_winograd")}
                               for mode, row in ablation["modes"].items()}
    if tried:
        payload["tuning"] = [{"recipe_file": r["recipe_file"], "recipe_digest": r["recipe_digest"], "val_psnr_kept": r["val_psnr_stages"].get("kept"),
                              "val_psnr_decoded": r.get("val_psnr_decoded"),
                              **{k: r[k] for k in ("compression_ratio", "macs_reduction_winograd", "dense_weights_digest", "date")}} for r in tried]
    payload.update(command="; ".join(dict.fromkeys(_invocation(r) for r in records.values())),
                   date=(joint or dense)["date"], machine=machine_summary(),
                   stage_seconds={stage: (r["seconds"] if stage != "ablation" else {m: row["seconds"] for m, row in r["modes"].items()}) for stage, r in records.items()})
    atomic_write_text(args.out_dir / "ctsrcnn_tables.json", json.dumps(payload, indent=2) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        torch.set_num_threads(args.threads)
        run = Run(args)
        for stage in (*STAGES, TUNE):
            if stage in args.stages and not args.report_only:
                getattr(run, f"run_{stage}")()
        if TUNE in args.stages:
            args.recipe = RECIPE  # the report is the committed recipe's; the candidate's record lists its own
        path = write_report(args)
        run.log(f"wrote {path}" if path else "no report yet (the dense stage has not run)")
        if path and not args.report_only and (note := code_changed_note(run.code, code_version())):
            run.log(note)
        return 0
    except (TablesError, ValueError, FileNotFoundError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
