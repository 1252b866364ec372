"""Plain model checkpoints: what ``jointsparse train`` and ``jointsparse decode`` write.

A checkpoint is a dict of tensors and plain values, so ``torch.load(path, weights_only=True)``
reads it (never unpickle untrusted input)::

    {"format": "jointsparse-model", "version": 1,
     "arch": {"name": ..., "kwargs": {...}},      # rebuilt with jointsparse.models.get_model
     "domain": "dense" | "spatial" | "winograd",
     "state_dict": {...},                         # every tensor but the Winograd layers' weights
     "winograd": {layer: {"m": int, "weight": Tensor[Cout, Cin/g, t, t]}},   # winograd domain
     "meta": {...}}                               # free-form provenance (data, accuracy, ...)

A plain ``state_dict`` (a dict of tensors, as ``torch.save(model.state_dict())`` writes) also
loads, given the architecture by name.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from .models import get_model
from .nn import WinogradConv2d
from .utils import atomic_torch_save

FORMAT = "jointsparse-model"
VERSION = 1
DOMAINS = ("dense", "spatial", "winograd")


class ModelCheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def save_model(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    arch: Mapping[str, Any],
    *,
    domain: str = "dense",
    winograd: Mapping[str, Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically.

    For ``domain="winograd"``, ``winograd`` maps each Winograd layer to its ``m`` and its
    Winograd-domain weight; those layers' spatial weights must not be in ``state_dict``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if not arch or not arch.get("name"):
        raise ModelCheckpointError("no architecture reference (build models with jointsparse.models.get_model)")
    winograd = {name: {"m": int(v["m"]), "weight": v["weight"].detach().cpu().contiguous()} for name, v in (winograd or {}).items()}
    clash = sorted(f"{name}.weight" for name in winograd if f"{name}.weight" in state_dict)
    if clash:
        raise ValueError(f"{clash[0]} is given in both the spatial and the Winograd domain")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": {"name": str(arch["name"]), "kwargs": dict(arch.get("kwargs", {}))},
        "domain": domain,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "winograd": winograd,
        "meta": dict(meta or {}),
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and sanity-check a checkpoint file (safe: ``weights_only=True``)."""
    if not os.path.isfile(path):
        raise ModelCheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "unreadable"
        raise ModelCheckpointError(f"checkpoint {str(path)!r} cannot be read: {str(error).splitlines()[0][:200]}") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("version") != VERSION:
            raise ModelCheckpointError(f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this jointsparse reads {VERSION}")
        return payload
    if isinstance(payload, dict) and payload and all(isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items()):
        return {"format": FORMAT, "version": VERSION, "arch": None, "domain": "dense", "state_dict": payload, "winograd": {}, "meta": {}}
    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        # A training checkpoint of jointsparse.train: take its model state.
        return {"format": FORMAT, "version": VERSION, "arch": payload.get("arch"), "domain": "dense", "state_dict": payload["model"], "winograd": {}, "meta": {}}
    raise ModelCheckpointError(f"{str(path)!r} is not a jointsparse checkpoint or a state_dict")


def load_model(
    path: str | os.PathLike[str],
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint holds; returns ``(model, payload)``.

    ``model_name``/``model_kwargs`` (the CLI's ``--model``) are required for a bare state_dict
    and, when given for a full checkpoint, must agree with it (kwargs are completed from it).
    """
    payload = read_checkpoint(path)
    arch = payload.get("arch")
    if arch is None and model_name is None:
        raise ModelCheckpointError(f"{str(path)!r} is a bare state_dict: give the architecture with --model")
    if arch is not None and model_name is not None and model_name != arch["name"]:
        raise ModelCheckpointError(f"{str(path)!r} holds a {arch['name']!r} model, not {model_name!r}")
    kwargs = {**(arch or {}).get("kwargs", {}), **(model_kwargs or {})}
    model = get_model(model_name or arch["name"], **kwargs)
    load_state(model, payload, str(path))
    return model, payload


def load_state(model: nn.Module, payload: Mapping[str, Any], where: str) -> None:
    """Load a payload's weights into ``model``, swapping in sparse Winograd layers if needed."""
    winograd = payload.get("winograd") or {}
    expected_missing = {f"{name}.weight" for name in winograd}
    state = payload["state_dict"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - expected_missing)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
            else f"shape of {wrong[0]}: checkpoint {tuple(state[wrong[0]].shape)} vs model {tuple(own[wrong[0]].shape)}"
        )
        raise ModelCheckpointError(f"checkpoint {where!r} does not fit the {type(model).__name__} model: {detail}")
    model.load_state_dict(state, strict=False)
    if winograd:
        for name, entry in winograd.items():
            conv = model.get_submodule(name)
            if not isinstance(conv, nn.Conv2d):
                raise ModelCheckpointError(f"checkpoint {where!r}: {name!r} is not a conv layer of this model")
            model.set_submodule(
                name,
                WinogradConv2d.from_winograd_weights(
                    entry["weight"], conv.bias, m=int(entry["m"]), r=conv.kernel_size[0], padding=conv.padding[0], groups=conv.groups
                ),
            )
