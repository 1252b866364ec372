"""The compression pipeline: regularize and retrain -> prune -> fine-tune -> quantize ->
codebook fine-tune -> code into one ``.jsz`` file.

Each stage runs through :func:`jointsparse.train.train` and leaves its results in a work
directory, so a killed run continues with ``resume=True``: finished stages are loaded, the
interrupted one resumes from its last epoch checkpoint. The stages only talk through the model's
weights and the small objects each stage's API returns.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .recipe import Recipe, StageConfig
from . import codecs
from .baselines import build_method
from .layers import prunable_layers
from .sparsity import JointSparsity, Sparsifier
from .tasks import CLASSIFICATION, Task
from .train import Distillation, evaluate, train
from .utils import atomic_torch_save

STAGES = ("retrain", "finetune", "codebook")


class PipelineError(ValueError):
    """A work directory that belongs to another run, or a recipe the pipeline cannot carry out."""


@dataclass
class CompressResult:
    """``scores``: the task's metric on the test loader after each stage (``metric`` names it:
    accuracy as a fraction, or PSNR in dB)."""

    path: Path
    report: dict[str, Any]
    scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    densities: dict[str, dict[str, float | None]] = field(default_factory=dict)
    metric: str = "accuracy"
    regularization: dict[str, Any] = field(default_factory=dict)  # e.g. {"a": {"spatial": ..., "winograd": ...}}
    #: the part of ``seconds`` spent before this call: stages an earlier, interrupted call (or a
    #: run whose ``.done`` files were copied in) finished, and the epochs it trained of a stage
    #: this call resumed. A caller timing the call adds it to get the whole run's wall time.
    earlier_seconds: float = 0.0

    @property
    def accuracy(self) -> dict[str, float]:
        """``scores`` under its classification name."""
        return self.scores


def build_regularizer(model: nn.Module, recipe: Recipe) -> Sparsifier:
    """The retraining hook the recipe names: the paper's joint sparsity, or a baseline method."""
    reg = recipe.regularizer
    if reg.method == "joint_sparsity":
        if reg.options:
            raise PipelineError(f"regularizer.options {sorted(reg.options)} are for baseline methods, not joint_sparsity")
        return JointSparsity(
            model,
            spatial_sparsity=recipe.sparsity.spatial,
            winograd_sparsity=recipe.sparsity.winograd,
            mode=reg.mode,
            m=recipe.winograd.m,
            learnable=reg.learnable,
            a_spatial=reg.a_spatial,
            a_winograd=reg.a_winograd,
            init_log_coefficient=reg.init_log_coefficient,
            lambda_spatial=reg.lambda_spatial,
            lambda_winograd=reg.lambda_winograd,
            update_every=reg.update_every,
            seed=recipe.quantize.seed,
        )
    return build_method(reg.method, model, **reg.options)


#: Recipe sections each stage does not read, so a change to them keeps the stage's result:
#: a resumed run with a longer fine-tune or other bits reuses the retraining. (The regularizer
#: draws from ``quantize.seed``, so that one field stays in every stage's view.)
_LATER_SECTIONS = {
    "retrain": ("finetune", "codebook", "quantize", "coding"),
    "finetune": ("codebook", "quantize", "coding"),
    "codebook": ("coding",),
}


def _stage_view(fingerprint: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of a run's fingerprint that ``stage``'s result depends on."""
    recipe = dict(fingerprint.get("recipe") or {})
    view = {key: value for key, value in recipe.items() if key not in _LATER_SECTIONS[stage]}
    if "quantize" in _LATER_SECTIONS[stage]:
        view["quantize.seed"] = (recipe.get("quantize") or {}).get("seed")
    return {**{key: value for key, value in fingerprint.items() if key != "recipe"}, "recipe": view}


def run_fingerprint(recipe: Recipe, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a work directory's ``run.pt`` holds for a :func:`compress` run: the recipe and the
    caller's ``fingerprint`` (the model, the data, ...)."""
    return {"recipe": recipe.to_dict(), **(fingerprint or {})}


def reusable_stages(saved: Any, fingerprint: dict[str, Any], ignore: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The stages whose finished results a run with ``fingerprint`` may take from a work directory
    written under ``saved`` (its ``run.pt``): those before the first stage whose view (the
    fingerprint without the recipe sections the stage does not read) differs. ``ignore`` names
    fingerprint keys that label a run without changing what it computes (a tag)."""
    if not isinstance(saved, dict):
        return ()
    saved = {key: value for key, value in saved.items() if key not in ignore}
    fingerprint = {key: value for key, value in fingerprint.items() if key not in ignore}
    kept = 0
    while kept < len(STAGES) and _stage_view(saved, STAGES[kept]) == _stage_view(fingerprint, STAGES[kept]):
        kept += 1
    return STAGES[:kept]


def drop_stage_files(workdir: Path, stages: tuple[str, ...]) -> None:
    """Remove what ``stages`` left in a work directory: finished state, checkpoint and log."""
    for stage in stages:
        for suffix in (".done", ".ckpt", ".jsonl"):
            (workdir / f"{stage}{suffix}").unlink(missing_ok=True)


class _Stages:
    """Stage bookkeeping in the work directory: ``<stage>.ckpt`` is the trainer's per-epoch
    checkpoint; ``<stage>.done`` is written once the stage has finished.

    On resume, a work directory of another model or data set is refused; one whose recipe differs
    only in sections a stage does not read keeps that stage: the first stage whose view changed
    and every later one are run again."""

    def __init__(self, workdir: Path, resume: bool, fingerprint: dict[str, Any], log: Callable[[str], None] = print) -> None:
        self.workdir = workdir
        marker = workdir / "run.pt"
        if resume and marker.is_file():
            saved = torch.load(marker, weights_only=True)
            if saved != fingerprint:
                self._drop_changed_stages(saved, fingerprint, log)
        elif workdir.exists() and not resume:
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(fingerprint, marker)
        self.resume = resume

    def _drop_changed_stages(self, saved: Any, fingerprint: dict[str, Any], log: Callable[[str], None]) -> None:
        kept = reusable_stages(saved, fingerprint)
        if not kept:
            raise PipelineError(f"work directory {str(self.workdir)!r} belongs to another run (model, data or recipe differ); remove it or drop --resume")
        changed = STAGES[len(kept)] if len(kept) < len(STAGES) else None
        if changed is None:
            return  # only the coding changed: every stage stands, the file is written again
        log(f"[resume] the recipe changed from the {changed} stage on: keeping the earlier stages, running {changed} and later again")
        drop_stage_files(self.workdir, STAGES[STAGES.index(changed):])

    def checkpoint(self, stage: str) -> Path:
        return self.workdir / f"{stage}.ckpt"

    def done(self, stage: str) -> dict[str, Any] | None:
        path = self.workdir / f"{stage}.done"
        return torch.load(path, weights_only=True) if self.resume and path.is_file() else None

    def finish(self, stage: str, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.workdir / f"{stage}.done")


def compress(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    recipe: Recipe,
    out_path: str | Path,
    *,
    workdir: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    fingerprint: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    task: Task = CLASSIFICATION,
    input_size: tuple[int, int, int] | list[int] | None = None,
    eval_name: str = "test",
) -> CompressResult:
    """Run every stage of the recipe on ``model`` (trained, dense) and write ``out_path``.

    ``task`` supplies the training loss and the metric each stage reports. ``test_loader=None``
    skips every evaluation (the scores are NaN); ``eval_name`` is what the log lines call its
    data ("validation" when the caller holds the test set back). ``input_size`` (C, H, W) lets the file record
    each layer's map size (MACs without the model).
    """
    out_path = Path(out_path)
    stages = _Stages(Path(workdir or f"{out_path}.work"), resume, run_fingerprint(recipe, fingerprint), log)
    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    earlier: list[float] = []  # stage seconds spent before this call (see CompressResult.earlier_seconds)
    regularization: dict[str, Any] = {}  # values resolved at run time ("auto" a), kept in the file's provenance
    arch = getattr(model, "jointsparse_arch", None)
    model.to(device)

    def test_score() -> float:
        return evaluate(model, test_loader, device, task)["metric"] if test_loader is not None else math.nan

    def run_stage(stage: str, hooks: list[Any], config: StageConfig, title: str) -> None:
        start = time.perf_counter()
        done = stages.done(stage)
        if done is not None:
            model.load_state_dict(done["model"])
            for hook, state in zip(hooks, done["hooks"]):
                hook.load_state_dict(state)
            scores[stage] = done["score"] if "score" in done else done["accuracy"]  # markers written before tasks existed
            if "seconds" in done:  # markers written before stage times were kept say nothing of theirs
                seconds[stage] = done["seconds"]
                earlier.append(done["seconds"])
            log(f"[{stage}] already done ({eval_name} {task.metric} {task.format(scores[stage])})")
            return
        resumed_epochs = 0.0
        if config.epochs > 0:
            log(f"[{stage}] {title}: {config.epochs} epoch(s), lr {config.lr}")
            if resume and stages.checkpoint(stage).is_file():
                saved = torch.load(stages.checkpoint(stage), map_location="cpu", weights_only=True)
                log(f"[{stage}] resuming after epoch {saved.get('epoch')}")
            result = train(
                model, train_loader, test_loader, config.train_config(seed=seed, device=device, progress=progress),
                hooks=hooks, checkpoint_path=stages.checkpoint(stage), resume="auto" if resume else False,
                log_path=stages.workdir / f"{stage}.jsonl", stage=stage, task=task, eval_name=eval_name,
            )
            scores[stage] = result.test_metric
            # the epochs an earlier call trained before it was stopped count in the stage's time
            resumed_epochs = sum(record.get("seconds", 0.0) for record in result.history[:result.resumed_from_epoch or 0])
        else:
            log(f"[{stage}] skipped (0 epochs)")
            scores[stage] = test_score()
        seconds[stage] = time.perf_counter() - start + resumed_epochs
        earlier.append(resumed_epochs)
        stages.finish(stage, {"model": model.state_dict(), "hooks": [h.state_dict() for h in hooks], "score": scores[stage],
                              "seconds": seconds[stage]})

    scores["dense"] = test_score()
    log(f"[dense] {eval_name} {task.metric} {task.format(scores['dense'])}")

    # the dense model, frozen before retraining changes it: the teacher of stages that distil
    teacher = copy.deepcopy(model) if recipe.distills() else None

    def distillation(config: StageConfig) -> list[Any]:
        return [Distillation(teacher, config.distill, config.distill_temperature, task)] if config.distilling else []

    regularizer = build_regularizer(model, recipe)
    if getattr(regularizer, "learnable", False):  # joint sparsity's learnable coefficients: record the resolved a
        regularization["a"] = dict(regularizer.a)
        log(f"[retrain] a = spatial {regularizer.a['spatial']:.6g}, winograd {regularizer.a['winograd']:.6g}"
            f" (recipe: {recipe.regularizer.a_spatial}, {recipe.regularizer.a_winograd})")
    method = recipe.regularizer.method
    label = f"{method} ({recipe.regularizer.mode})" if method == "joint_sparsity" else method  # mode is joint sparsity's only
    run_stage("retrain", [regularizer] + distillation(recipe.retrain), recipe.retrain, f"{label} retraining")

    regularizer.prune()
    scores["pruned"] = test_score()
    log(f"[prune] spatial density {_overall_density(model):.3f} over all compressed layers, {eval_name} {task.metric} {task.format(scores['pruned'])}")
    run_stage("finetune", regularizer.finetune_hooks() + distillation(recipe.finetune), recipe.finetune, "masked fine-tuning")

    start = time.perf_counter()
    quantized = codecs.quantize_model(
        model, quantizer=recipe.quantize.method, bits=recipe.quantize.bits, seed=recipe.quantize.seed,
        conv_bits=recipe.quantize.conv_bits, linear_bits=recipe.quantize.linear_bits,
    )
    _load_dequantized(model, quantized)
    seconds["quantize"] = time.perf_counter() - start
    scores["quantized"] = test_score()
    log(f"[quantize] {recipe.quantize.method}, {eval_name} {task.metric} {task.format(scores['quantized'])}")
    finetuner = codecs.CodebookFinetuner(model, quantized, lr=recipe.quantize.centroid_lr)
    choose = recipe.quantize.codebook_selection == "best"
    before_codebook = {"model": copy.deepcopy(model.state_dict()), "codebooks": finetuner.state_dict()} if choose else {}
    run_stage("codebook", regularizer.finetune_hooks() + [finetuner] + distillation(recipe.codebook), recipe.codebook, "codebook fine-tuning")
    if choose:
        # a pure function of the two scores, so a resumed run that reloads the stage decides the same
        worse = task.drop(scores["quantized"], scores["codebook"]) > 0
        if worse:
            model.load_state_dict(before_codebook["model"])
            finetuner.load_state_dict(before_codebook["codebooks"])
            log(f"[codebook] {task.metric} {task.format(scores['codebook'])} is below the k-means codebooks' "
                f"{task.format(scores['quantized'])}: the file keeps those (quantize.codebook_selection = \"best\")")
        scores["kept"] = scores["quantized"] if worse else scores["codebook"]
    del before_codebook
    regularizer.squash_mask()  # plain weights, zeros baked in, for the encoder

    start = time.perf_counter()
    coder = None if recipe.coding.coder == "auto" else recipe.coding.coder
    report = codecs.encode(
        model, out_path, quantizer=recipe.quantize.method, winograd_sparsity=recipe.sparsity.winograd,
        m=recipe.winograd.m, quantized=quantized,  # the fine-tuner updated these codebooks in place
        coder=coder, recipe=recipe.to_dict(), arch=arch, input_size=None if input_size is None else tuple(input_size),
        raw_float_dtype=recipe.coding.raw_float_dtype, codebook_dtype=recipe.coding.codebook_dtype,
        provenance={**(provenance or {}), "regularization": regularization} if regularization else provenance,
    )
    seconds["encode"] = time.perf_counter() - start
    log(f"[encode] wrote {out_path} ({out_path.stat().st_size:,} bytes)")
    densities = {
        row["name"].removesuffix(".weight"): {"spatial": row["density"], "winograd": row["winograd_density"]} for row in report["layers"]
    }
    return CompressResult(out_path, report, scores, seconds, densities, task.metric, regularization, earlier_seconds=sum(earlier))


def _load_dequantized(model: nn.Module, quantized: dict[str, Any]) -> None:
    layers = prunable_layers(model)
    with torch.no_grad():
        for name, layer in quantized.items():
            module = layers[name.removesuffix(".weight")]
            module.weight.copy_(layer.dequantize().to(module.weight))


def _overall_density(model: nn.Module) -> float:
    """Non-zero fraction over every layer the file compresses, masked by the method or not."""
    weights = [module.weight for module in prunable_layers(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(int(torch.count_nonzero(w)) for w in weights) / total if total else 1.0
