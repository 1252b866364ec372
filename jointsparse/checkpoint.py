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
import pickle
from typing import Any, Mapping

import torch
from torch import nn

from .models import check_trusted, get_model
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


#: Keys under which training scripts commonly wrap a model's state_dict, in the order tried.
WRAPPED_KEYS = ("state_dict", "model_state_dict", "model")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())


def _plain(state: Mapping[str, torch.Tensor], *, arch: Any = None, layout: str = "state_dict") -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "arch": arch, "domain": "dense", "state_dict": dict(state),
            "winograd": {}, "meta": {}, "layout": layout}


def _torch_load(path: str, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise ModelCheckpointError(f"{path!r} is not a PyTorch checkpoint (cannot be unpickled)") from None
        if not trust:
            raise ModelCheckpointError(
                f"{path!r} holds pickled Python objects (e.g. a whole nn.Module), which loading would run: pass --trust if you trust the file"
            ) from None
    except Exception:  # torch raises KeyError, RuntimeError, EOFError ... for files it cannot parse
        raise ModelCheckpointError(f"{path!r} is not a PyTorch checkpoint (torch.load cannot read it)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # the pickle names code that is not importable here, for example
        raise ModelCheckpointError(f"{path!r} cannot be unpickled: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}") from None


def read_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> dict[str, Any]:
    """Load and sanity-check a checkpoint file.

    Reads a jointsparse checkpoint, a bare ``state_dict``, or one wrapped under a key of
    :data:`WRAPPED_KEYS` (the payload's ``layout`` says which). Loading is safe
    (``weights_only=True``); a file that needs unpickling (a whole ``nn.Module``) loads only with
    ``trust=True``, and a module found there is returned as ``payload["module"]``.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ModelCheckpointError(f"checkpoint {path!r} does not exist")
    payload = _torch_load(path, trust)
    if isinstance(payload, nn.Module):
        return read_checkpoint_module(payload, "pickled module")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("version") != VERSION:
            raise ModelCheckpointError(f"checkpoint {path!r} has version {payload.get('version')!r}; this jointsparse reads {VERSION}")
        return {**payload, "layout": FORMAT}
    if _is_state_dict(payload):
        return _plain(payload)
    if isinstance(payload, dict):
        for key in WRAPPED_KEYS:
            if _is_state_dict(payload.get(key)):
                # jointsparse.train's own training checkpoints keep the model under "model" with an "arch".
                arch = payload.get("arch") if isinstance(payload.get("arch"), dict) else None
                return _plain(payload[key], arch=arch, layout=f"[{key!r}]")
        if isinstance(payload.get("model"), nn.Module):
            return read_checkpoint_module(payload["model"], "['model'] (pickled module)")
    kinds = ", ".join(repr(k) for k in WRAPPED_KEYS)
    raise ModelCheckpointError(f"{path!r} is neither a jointsparse checkpoint, a state_dict, nor a dict holding one under {kinds}")


def read_checkpoint_module(module: nn.Module, layout: str) -> dict[str, Any]:
    """A payload for an unpickled ``nn.Module`` (trusted): its state plus the module itself."""
    cls = type(module)
    result = _plain(module.state_dict(), layout=layout)
    result["module"] = module
    result["module_class"] = f"{cls.__module__}:{cls.__qualname__}"
    return result


def load_model(
    path: str | os.PathLike[str],
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    trust: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint holds; returns ``(model, payload)``.

    ``model_name``/``model_kwargs`` (the CLI's ``--model``) are required for a bare state_dict
    and, when given for a full checkpoint, must agree with it (kwargs are completed from it).
    A factory named by the file (``package.module:factory``) is imported only with
    ``trust=True`` or when ``model_name`` names it too; the same goes for unpickling.
    """
    payload = read_checkpoint(path, trust=trust)
    arch = payload.get("arch")
    module = payload.get("module")
    if module is not None and model_name is None:
        # A trusted pickled module is the model; its class is the only architecture reference there is.
        module.jointsparse_arch = {"name": payload["module_class"], "kwargs": {}}
        return module, payload
    if arch is None and model_name is None:
        raise ModelCheckpointError(f"{str(path)!r} is a bare state_dict: give the architecture with --model")
    if arch is not None and model_name is not None and model_name != arch["name"]:
        raise ModelCheckpointError(f"{str(path)!r} holds a {arch['name']!r} model, not {model_name!r}")
    if model_name is None:
        check_trusted(arch["name"], trust, f"checkpoint {str(path)!r}")
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
