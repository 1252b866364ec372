"""Bit-exact resume: seeds and RNG state, and the trainer's checkpoints (written atomically, read with ``weights_only``)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..utils import atomic_torch_save
from .distributed import get_rank, get_world_size

CHECKPOINT_FORMAT = "jointsparse-train-checkpoint"
CHECKPOINT_VERSION = 1
# Config fields that do not change the trajectory: a resume may differ in these.
_RESUME_FREE_FIELDS = frozenset({"progress", "log_every", "device"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another model/config/run."""


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
