"""The training loop, evaluation, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import ShardSampler, set_sampler_epoch
from ..tasks import CLASSIFICATION, Task
from ..utils import OutputWriteError, atomic_write_text
from .config import TrainConfig, TrainResult
from .distributed import (
    _average_grads,
    _collective_device,
    _resolve_device,
    get_rank,
    get_world_size,
)
from .resume import (
    CheckpointError,
    _check_compatible,
    _first_line,
    _hook_names,
    _model_signature,
    _save_checkpoint,
    _set_rng_state,
    load_checkpoint,
    seed_everything,
)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _loader_is_sharded(loader: DataLoader) -> bool:
    for sampler in (loader.sampler, getattr(loader.sampler, "sampler", None), loader.batch_sampler):
        if isinstance(sampler, ShardSampler) or isinstance(getattr(sampler, "sampler", None), ShardSampler):
            return True
    return False


def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu", task: Task = CLASSIFICATION) -> dict[str, float]:
    """The task's metric (under ``"metric"`` and under its own name: ``"accuracy"``, a fraction
    in [0, 1], or ``"psnr"``), its mean loss and the sample count over ``loader``.

    If the loader is sharded across ranks (``ShardSampler``, as ``make_loaders`` builds it) and
    a process group is running, per-rank sums are all-reduced so every rank returns the totals.
    The model's train/eval mode is restored afterwards.
    """
    net = _unwrap(model)
    device = torch.device(device)
    was_training = net.training
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # metric sum, loss sum, n
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = net(inputs)
                totals[0] += task.metric_sum(outputs, targets)
                totals[1] += task.loss_sum(outputs, targets)
                totals[2] += task.count(targets)
    finally:
        net.train(was_training)
    if get_world_size() > 1 and _loader_is_sharded(loader):
        reduced = totals.to(_collective_device())
        dist.all_reduce(reduced)
        totals = reduced.cpu()
    n = int(totals[2])
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    metric = float(totals[0] / n)
    return {"metric": metric, task.metric: metric, "loss": float(totals[1] / n), "n": n}


def _hook_param_groups(hooks: Sequence[Any]) -> list[dict[str, Any]]:
    groups = []
    for hook in hooks:
        if not hasattr(hook, "parameters"):
            continue
        extra = hook.parameters()
        group = dict(extra) if isinstance(extra, dict) else {"params": list(extra)}
        group["params"] = list(group["params"])
        if not group["params"]:
            continue
        for p in group["params"]:
            if not isinstance(p, torch.Tensor) or not p.requires_grad or not p.is_leaf:
                raise ValueError(f"{type(hook).__name__}.parameters() must return leaf tensors with requires_grad=True")
        group.setdefault("weight_decay", 0.0)
        groups.append(group)
    return groups


def _build_optimizer(model: nn.Module, hooks: Sequence[Any], config: TrainConfig) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    model_params = [p for p in model.parameters() if p.requires_grad]
    hook_groups = _hook_param_groups(hooks)
    groups = ([{"params": model_params}] if model_params else []) + hook_groups
    if not groups:
        raise ValueError("nothing to train: the model has no trainable parameters and no hook adds any")
    seen: set[int] = set()
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError("a tensor appears twice among the model's and hooks' trainable parameters")
            seen.add(id(p))
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=config.nesterov)
    else:
        opt = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    hook_params = [p for g in hook_groups for p in g["params"]]
    return opt, hook_params


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base LR at global ``step`` (0-based) for ``config``'s schedule."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        drops = sum(epoch >= m for m in config.milestones) if config.milestones else epoch // config.step_size
        return config.gamma**drops
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = config.min_lr / config.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _sum_penalties(hooks: Sequence[Any], device: torch.device, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
    """Every hook's ``penalty()`` and ``output_penalty(inputs, outputs, targets)``, summed."""
    total = None
    for hook in hooks:
        for method, args in (("penalty", ()), ("output_penalty", batch)):
            fn = getattr(hook, method, None)
            if fn is None:
                continue
            value = fn(*args)
            value = value if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=device)
            total = value if total is None else total + value
    return total


def _call(hooks: Sequence[Any], method: str, *args: Any) -> None:
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(*args)


class _JsonLog:
    """JSON-lines metrics log. A fresh run starts it empty; a resumed run drops the lines a
    killed run wrote after its last checkpoint, so each step is logged once."""

    def __init__(self, path: str | os.PathLike[str] | None, enabled: bool, keep_until_step: int | None) -> None:
        self.path = Path(path) if (path is not None and enabled) else None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:  # a line cut short by the kill
                    continue
        atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, sort_keys=True) + "\n")
            except OSError as error:  # a full disk raises on close, with no file name
                raise OutputWriteError.naming(error, self.path) from None


def _data_geometry(loader: DataLoader, steps_per_epoch: int) -> dict[str, int]:
    batch = loader.batch_size if loader.batch_size is not None else getattr(loader.sampler, "batch_size", -1)
    try:
        n = len(loader.dataset)
    except TypeError:
        n = -1
    return {"num_samples": int(n), "batch_size": int(batch), "steps_per_epoch": int(steps_per_epoch)}


def train(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader | None,
    config: TrainConfig,
    *,
    hooks: Sequence[Any] = (),
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool | str = False,
    log_path: str | os.PathLike[str] | None = None,
    stage: str = "train",
    task: Task = CLASSIFICATION,
    eval_name: str = "test",
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs; evaluate and checkpoint every epoch.

    ``resume``: ``False`` starts fresh (and overwrites ``checkpoint_path``), ``True`` requires
    the checkpoint and continues from it, ``"auto"`` resumes if it exists (restartable jobs).
    ``log_path``: JSON lines, one ``{"kind": "epoch", ...}`` per epoch (epoch, step, lr,
    train_loss, penalty, train_acc, test_acc, test_loss, seconds, ...) and one
    ``{"kind": "step", ...}`` every ``config.log_every`` steps; appended to on resume.
    ``test_loader=None`` skips evaluation (test figures are then NaN). ``eval_name`` is what the
    printed epoch lines call ``test_loader``'s data (a validation split is not "test"); the
    log file's keys keep the ``test_`` prefix so that older logs read the same.
    """
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
    if resume and checkpoint_path is None:
        raise ValueError("resume needs a checkpoint_path")
    hooks = tuple(hooks)
    rank, world = get_rank(), get_world_size()
    device = _resolve_device(config.device)
    model.to(device)
    steps_per_epoch = len(train_loader)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError("the training loader is empty")

    optimizer, hook_params = _build_optimizer(model, hooks, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, steps_per_epoch)
    )
    expected = {
        "stage": stage,
        "arch": getattr(model, "jointsparse_arch", None),
        "model_signature": _model_signature(model),
        "config": config.to_dict(),
        "data": _data_geometry(train_loader, steps_per_epoch),
        "hook_names": _hook_names(hooks),
        "world_size": world,
        "task": task.name,
    }

    start_epoch, step, history, resumed_from = 0, 0, [], None
    ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if resume is True or (resume == "auto" and ckpt_path is not None and ckpt_path.is_file()):
        ckpt = load_checkpoint(ckpt_path)
        try:
            _check_compatible(ckpt, ckpt_path, expected)
            model.load_state_dict(ckpt["model"])
            for hook, state in zip(hooks, ckpt["hooks"]):
                if state is not None:
                    hook.load_state_dict(state)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"][rank])
        except CheckpointError:
            raise
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{ckpt_path} does not fit this run: {_first_line(exc)}") from None
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        resumed_from = start_epoch
    else:
        seed_everything(config.seed + rank)
    _call(hooks, "attach_optimizer", optimizer)

    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = _JsonLog(log_path, rank == 0, keep_until_step=step if resumed_from is not None else None)
    show = config.progress and rank == 0
    bar_enabled = show and sys.stderr.isatty()
    t_start = time.perf_counter()
    train_key, test_key = f"train_{task.short}", f"test_{task.short}"
    last_eval = {"metric": float("nan"), "loss": float("nan"), "n": 0}
    if history:
        last_eval = {"metric": history[-1][test_key], "loss": history[-1]["test_loss"], "n": 0}

    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        set_sampler_epoch(train_loader, epoch)
        net.train()
        # Epoch sums (float64, on CPU): task loss * n, penalty * n, metric sum, n.
        sums = torch.zeros(4, dtype=torch.float64)
        window = torch.zeros(3, dtype=torch.float64)  # task loss * n, penalty * n, n since last step line
        bar = _progress_bar(steps_per_epoch, f"{stage} {epoch + 1}/{config.epochs}", bar_enabled)
        for batch_index, (inputs, targets) in enumerate(train_loader):
            if batch_index >= steps_per_epoch:
                break
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            _call(hooks, "on_batch_start", step)
            outputs = net(inputs)
            task_loss = task.loss(outputs, targets)
            penalty = _sum_penalties(hooks, device, (inputs, outputs, targets))
            loss = task_loss if penalty is None else task_loss + penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1 and hook_params:
                _average_grads(hook_params, world)
            _call(hooks, "after_backward", step)
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
            optimizer.step()
            scheduler.step()
            _call(hooks, "after_step", step)
            step += 1

            n = task.count(targets)
            task_value = task_loss.item()
            pen_value = 0.0 if penalty is None else float(penalty.detach())
            metric_sum = task.metric_sum(outputs.detach(), targets)
            sums += torch.tensor([task_value * n, pen_value * n, metric_sum, n], dtype=torch.float64)
            window += torch.tensor([task_value * n, pen_value * n, n], dtype=torch.float64)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{task_value:.4f}", pen=f"{pen_value:.3g}", refresh=False)
            if config.log_every and step % config.log_every == 0:
                log.write({"kind": "step", "stage": stage, "epoch": epoch + 1, "step": step,
                           "lr": optimizer.param_groups[0]["lr"], "train_loss": float(window[0] / window[2]),
                           "penalty": float(window[1] / window[2])})
                window.zero_()
        if bar is not None:
            bar.close()

        if world > 1:
            reduced = sums.to(_collective_device())
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        train_seconds = time.perf_counter() - t_epoch
        if test_loader is not None:
            last_eval = evaluate(model, test_loader, device, task)
        record = {
            "kind": "epoch", "stage": stage, "epoch": epoch + 1, "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / sums[3]), "penalty": float(sums[1] / sums[3]),
            train_key: float(sums[2] / sums[3]),
            test_key: last_eval["metric"], "test_loss": last_eval["loss"],
            "seconds": time.perf_counter() - t_epoch,
            "img_per_s": float(sums[3]) / train_seconds if train_seconds > 0 else float("nan"),
        }
        history.append(record)
        log.write(record)
        if show:
            _print(f"[{stage}] epoch {epoch + 1}/{config.epochs} step {step}: train loss {record['train_loss']:.4f} "
                   f"penalty {record['penalty']:.4g} train {task.metric} {task.format(record[train_key])} | "
                   f"{eval_name} {task.metric} {task.format(record[test_key])} loss {record['test_loss']:.4f} "
                   f"({record['seconds']:.1f}s, {record['img_per_s']:.0f} img/s)", bar_enabled)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, hooks, epoch + 1, step, history, expected)

    return TrainResult(
        test_metric=last_eval["metric"], test_loss=last_eval["loss"], history=history, steps=step,
        epochs=config.epochs, resumed_from_epoch=resumed_from, seconds=time.perf_counter() - t_start,
    )


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _print(text: str, through_tqdm: bool) -> None:
    if through_tqdm:
            tqdm.write(text)
    else:
        print(text, flush=True)
