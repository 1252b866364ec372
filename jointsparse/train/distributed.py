"""Data-parallel set-up under ``torchrun``: ranks, the process group, devices, gradient averaging."""

from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist


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


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _average_grads(params: Iterable[torch.Tensor], world: int) -> None:
    """DDP averages the model's gradients; hooks' extra tensors live outside it."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
