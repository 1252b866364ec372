"""The one trainer used by every stage: dense baseline, regularized retraining, fine-tuning,
codebook fine-tuning. Resumable bit-exactly, and data-parallel under ``torchrun``.

Hook protocol
-------------
A hook is any object with any subset of these methods (all optional, duck-typed)::

    parameters() -> list[Tensor] | dict   # extra trainable tensors: one extra optimizer param
                                          # group, weight_decay 0. A dict is taken as a whole
                                          # param group, e.g. {"params": [...], "lr": 0.01}.
    attach_optimizer(optimizer)           # once, after the optimizer is built and, on resume,
                                          # after its state has been restored
    penalty() -> Tensor | float           # added to the task loss each step, after the forward
    on_batch_start(step)                  # before the forward (e.g. a per-batch noise draw)
    after_backward(step)                  # after loss.backward() (and after DDP's all-reduce),
                                          # before gradient clipping and optimizer.step()
    after_step(step)                      # after optimizer.step() and the LR update
    state_dict() -> dict                  # saved in every checkpoint (weights_only types only)
    load_state_dict(d)                    # on resume; must copy *into* existing tensors
                                          # (``t.copy_``): the optimizer holds references

Per training step the order is: every hook's ``on_batch_start`` -> forward -> task loss +
sum of ``penalty()`` -> backward -> every ``after_backward`` -> grad clip -> optimizer step ->
LR scheduler step -> every ``after_step``. Hooks are called in the order given. ``step`` is the
0-based global step (optimizer steps taken before this batch). Hooks act on the model object
the caller passed in, never on the DDP wrapper (the wrapper shares that module's parameters).
A hook's ``state_dict`` must include the values of its own extra parameters (e.g. learnable
coefficients); the trainer saves their optimizer state, not the tensors.

Tasks: ``task`` (a :class:`jointsparse.tasks.Task`, classification by default) supplies the
loss and the metric: cross-entropy and top-1 accuracy, or MSE and PSNR for super-resolution.
``train_loss`` is the task loss alone; ``penalty`` is the hooks' sum, logged separately. Records
name the metric by the task (``train_acc``/``test_acc``, ``train_psnr``/``test_psnr``).
Accuracies are fractions in [0, 1] everywhere in the API; percent only in printed text.

Resuming
--------
A checkpoint is written atomically at the end of every epoch and holds only tensors and plain
containers (``torch.load(weights_only=True)`` reads it): model, optimizer, scheduler and hooks'
states, epoch, global step, the RNG states of every rank (torch, numpy, python ``random``,
CUDA), the config and the data geometry. Data order comes from samplers seeded by
``(seed, epoch)`` (see :func:`jointsparse.data.make_loaders`), so a resumed run replays exactly
the batches the uninterrupted run would have seen; with the RNG states restored, the weights
are bit-identical (same machine, same thread count). A checkpoint from another model, stage,
config, data geometry or world size raises :class:`CheckpointError`.

Distributed
-----------
Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), :func:`init_distributed`
starts a gloo (CPU) or nccl (CUDA) process group and :func:`train` wraps the model in DDP.
Gradients of hooks' extra parameters are averaged across ranks too. Evaluation runs on every
rank over a disjoint shard of the test set (``ShardSampler``) and the sums are all-reduced, so
every rank gets the exact full-test-set figures. Only rank 0 writes checkpoints and logs, and
only rank 0 prints.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .data import ShardSampler, set_sampler_epoch
from .tasks import CLASSIFICATION, Task
from .utils import OutputWriteError, atomic_torch_save, atomic_write_text

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "train",
    "evaluate",
    "load_checkpoint",
    "seed_everything",
    "init_distributed",
    "is_rank0",
    "get_rank",
    "get_world_size",
]

CHECKPOINT_FORMAT = "jointsparse-train-checkpoint"
CHECKPOINT_VERSION = 1
# Config fields that do not change the trajectory: a resume may differ in these.
_RESUME_FREE_FIELDS = frozenset({"progress", "log_every", "device"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another model/config/run."""


# ------------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    """Hyper-parameters of one training stage. Validated on construction.

    ``schedule``: ``"cosine"`` (to ``min_lr``), ``"step"`` (times ``gamma`` every ``step_size``
    epochs, or at each epoch in ``milestones`` when given) or ``"constant"``; the LR is updated
    every step. ``warmup_epochs`` (may be fractional) ramps the LR linearly from lr/steps up to lr.
    ``max_steps_per_epoch`` caps an epoch (quick runs, tests).
    """

    epochs: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "cosine"
    step_size: int = 30
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "cpu"
    grad_clip: float | None = None
    log_every: int = 50
    progress: bool = True
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {what}, got {getattr(self, name)!r}")

        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        need(is_int(self.epochs) and self.epochs >= 0, "epochs", "must be an int >= 0")
        need(is_num(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        need(self.optimizer in ("sgd", "adam"), "optimizer", "must be 'sgd' or 'adam'")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(isinstance(self.nesterov, bool), "nesterov", "must be a bool")
        need(not (self.nesterov and self.optimizer == "sgd" and self.momentum == 0), "nesterov", "needs momentum > 0")
        need(self.schedule in ("cosine", "step", "constant"), "schedule", "must be 'cosine', 'step' or 'constant'")
        need(is_int(self.step_size) and self.step_size >= 1, "step_size", "must be an int >= 1")
        need(all(is_int(m) and m >= 1 for m in self.milestones), "milestones", "must be ints >= 1")
        need(list(self.milestones) == sorted(set(self.milestones)), "milestones", "must be strictly increasing")
        need(is_num(self.gamma) and 0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        need(is_num(self.min_lr) and 0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        need(is_num(self.warmup_epochs) and self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(is_int(self.seed), "seed", "must be an int")
        need(isinstance(self.device, str) and self.device.split(":")[0] in ("cpu", "cuda"), "device", "must be 'cpu' or 'cuda[:N]'")
        need(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "grad_clip", "must be None or > 0")
        need(is_int(self.log_every) and self.log_every >= 0, "log_every", "must be an int >= 0 (0: no step lines)")
        need(isinstance(self.progress, bool), "progress", "must be a bool")
        need(
            self.max_steps_per_epoch is None or (is_int(self.max_steps_per_epoch) and self.max_steps_per_epoch >= 1),
            "max_steps_per_epoch",
            "must be None or an int >= 1",
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the task's metric (accuracy as a fraction in [0, 1], PSNR in dB)."""

    test_metric: float
    test_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0
    resumed_from_epoch: int | None = None
    seconds: float = 0.0

    @property
    def test_accuracy(self) -> float:
        """``test_metric`` under its classification name."""
        return self.test_metric


# ------------------------------------------------------------------------------ distributed


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    """True in a single process and on rank 0 of a process group: the one that writes and prints."""
    return get_rank() == 0


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group described by torchrun's env vars; returns (rank, world_size, local_rank).

    Without ``RANK``/``WORLD_SIZE`` in the environment this is a no-op returning (0, 1, 0).
    The backend defaults to nccl when CUDA is available, else gloo. Idempotent.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        backend = backend or ("nccl" if use_cuda else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://")
    return dist.get_rank(), dist.get_world_size(), local_rank


def _resolve_device(name: str) -> torch.device:
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if name == "cuda" and get_world_size() > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


# ------------------------------------------------------------------------------------- seeds


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python ``random``, numpy and torch (all devices). ``deterministic`` also asks
    cuDNN/torch for deterministic kernels (slower; some ops then raise)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ evaluation


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


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- checkpoints


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises :class:`CheckpointError` if the file is missing, unreadable or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for corrupt/foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a jointsparse training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} unsupported (want {CHECKPOINT_VERSION})")
    return ckpt


def _model_signature(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def _hook_names(hooks: Sequence[Any]) -> list[str]:
    return [type(h).__qualname__ for h in hooks]


def _check_compatible(ckpt: dict[str, Any], path: Path, expected: dict[str, Any]) -> None:
    """Everything that must match for the resume to continue the same run."""
    if ckpt["stage"] != expected["stage"]:
        raise CheckpointError(f"{path} is from stage {ckpt['stage']!r}, this run is stage {expected['stage']!r}")
    if ckpt.get("arch") != expected["arch"] and ckpt.get("arch") is not None and expected["arch"] is not None:
        raise CheckpointError(f"{path} is for model {ckpt['arch']}, not {expected['arch']}")
    saved_sig, sig = ckpt["model_signature"], expected["model_signature"]
    if saved_sig != sig:
        missing = sorted(set(sig) - set(saved_sig))
        extra = sorted(set(saved_sig) - set(sig))
        shape = [k for k in sig if k in saved_sig and saved_sig[k] != sig[k]]
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
            else f"{shape[0]} is {saved_sig[shape[0]]} there, {sig[shape[0]]} here"
        )
        raise CheckpointError(f"{path} holds a different model: {detail}")
    for name, value in expected["config"].items():
        if name not in _RESUME_FREE_FIELDS and ckpt["config"].get(name) != value:
            raise CheckpointError(
                f"{path} was written with TrainConfig.{name}={ckpt['config'].get(name)!r}, this run has {value!r}"
            )
    if ckpt.get("task", "classification") != expected["task"]:
        raise CheckpointError(f"{path} trained task {ckpt.get('task', 'classification')!r}, this run is {expected['task']!r}")
    for key, label in (("data", "data"), ("hook_names", "hooks"), ("world_size", "world size")):
        if ckpt[key] != expected[key]:
            raise CheckpointError(f"{path}: {label} differ (checkpoint {ckpt[key]}, this run {expected[key]})")


# ---------------------------------------------------------------------------- optimization


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


def _sum_penalties(hooks: Sequence[Any], device: torch.device) -> torch.Tensor | None:
    total = None
    for hook in hooks:
        if hasattr(hook, "penalty"):
            value = hook.penalty()
            value = value if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=device)
            total = value if total is None else total + value
    return total


def _call(hooks: Sequence[Any], method: str, *args: Any) -> None:
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(*args)


def _average_grads(params: Iterable[torch.Tensor], world: int) -> None:
    """DDP averages the model's gradients; hooks' extra tensors live outside it."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


# ------------------------------------------------------------------------------------ train


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
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs; evaluate and checkpoint every epoch.

    ``resume``: ``False`` starts fresh (and overwrites ``checkpoint_path``), ``True`` requires
    the checkpoint and continues from it, ``"auto"`` resumes if it exists (restartable jobs).
    ``log_path``: JSON lines, one ``{"kind": "epoch", ...}`` per epoch (epoch, step, lr,
    train_loss, penalty, train_acc, test_acc, test_loss, seconds, ...) and one
    ``{"kind": "step", ...}`` every ``config.log_every`` steps; appended to on resume.
    ``test_loader=None`` skips evaluation (test figures are then NaN).
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
            penalty = _sum_penalties(hooks, device)
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
                   f"test {task.metric} {task.format(record[test_key])} loss {record['test_loss']:.4f} "
                   f"({record['seconds']:.1f}s, {record['img_per_s']:.0f} img/s)", bar_enabled)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, hooks, epoch + 1, step, history, expected)

    return TrainResult(
        test_metric=last_eval["metric"], test_loss=last_eval["loss"], history=history, steps=step,
        epochs=config.epochs, resumed_from_epoch=resumed_from, seconds=time.perf_counter() - t_start,
    )


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     hooks: Sequence[Any], epoch: int, step: int, history: list[dict[str, Any]],
                     expected: dict[str, Any]) -> None:
    rng = _rng_state()
    if get_world_size() > 1:
        # Every rank's RNG state, so each rank resumes its own stream.
        gathered: list[Any] = [None] * get_world_size()
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]
    if get_rank() != 0:
        return
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "hooks": [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in hooks],
        "rng": rng_states,
        "history": history,
        **expected,
    }
    atomic_torch_save(ckpt, path)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _print(text: str, through_tqdm: bool) -> None:
    if through_tqdm:
        from tqdm import tqdm

        tqdm.write(text)
    else:
        print(text, flush=True)
