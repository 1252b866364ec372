"""What ``jointsparse info`` shows about a ``.jsz`` file: :func:`jointsparse.codecs.report` plus
the multiplications per image in every deployment (:mod:`jointsparse.cost`)."""

from __future__ import annotations

from typing import Any, Sequence

from .codecs import decode, decode_state, read_manifest, report
from .cost import layer_cost, layer_costs, macs_reduction, total_macs
from .models import check_trusted
from .transforms import DEFAULT_M

__all__ = ["InfoError", "info_payload", "trust_gate"]


class InfoError(ValueError):
    """A file whose MAC table cannot be computed (e.g. it mixes Winograd tiles)."""


def trust_gate(path: str, trust: bool) -> dict[str, Any]:
    """The file's manifest, once its architecture may be built: a registry model, or ``trust``
    for a file that names its own factory (one message for every command)."""
    manifest = read_manifest(path)
    arch = manifest.get("arch") or {}
    if arch.get("name"):
        check_trusted(arch["name"], trust, path)
    return manifest


def info_payload(path: str, input_size: Sequence[int] | None = None, *, trust: bool = False) -> dict[str, Any]:
    """``codecs.report`` plus MACs in both domains.

    The MACs come from the per-layer map sizes the file records (no model is built, nothing is
    imported); a file without them, or another ``input_size``, needs the model built (``trust``
    for a file naming its own factory).
    """
    rep = report(path)
    manifest = read_manifest(path)
    recorded = manifest.get("input_size") or ((manifest.get("provenance") or {}).get("data") or {}).get("input_size")
    size = list(input_size or recorded or [])
    payload: dict[str, Any] = {"report": rep}
    if not size:
        return payload
    rows_by_module = {row["name"].removesuffix(".weight"): row for row in rep["layers"]}
    thresholds = {name: row["winograd_threshold"] for name, row in rows_by_module.items() if row["winograd_threshold"] is not None}
    entries = manifest.get("layers", [])
    if list(size) == list(recorded or []) and entries and all("output_size" in entry for entry in entries):
        _, state, _ = decode_state(path)
        rows = [
            layer_cost(entry["module"], state[entry["name"]], None if entry["kind"] == "linear" else tuple(entry["output_size"]),
                       groups=entry.get("groups", 1), winograd_m=(entry.get("winograd") or {}).get("m"),
                       winograd_threshold=thresholds.get(entry["module"], 0.0))
            for entry in entries
        ]
    else:
        trust_gate(path, trust)
        model = decode(path, domain="spatial", runtime=False, allow_imports=trust)
        rows = layer_costs(model, (1, *size), m=_winograd_m(manifest), winograd_thresholds=thresholds)
    payload["macs"] = {
        "input_size": size,
        "layers": [row.as_dict() for row in rows],
        "dense": total_macs(rows, "dense"),
        "spatial": total_macs(rows, "spatial"),
        "winograd": total_macs(rows, "winograd"),
        "winograd_with_transforms": total_macs(rows, "winograd_with_transforms"),
        "reduction_spatial": macs_reduction(rows, "spatial"),
        "reduction_winograd": macs_reduction(rows, "winograd"),
        "reduction_winograd_with_transforms": macs_reduction(rows, "winograd_with_transforms"),
    }
    return payload


def _winograd_m(manifest: dict[str, Any]) -> int:
    """The file's Winograd output tile (one m per file; the cost model takes one)."""
    tiles = {layer["winograd"]["m"] for layer in manifest.get("layers", []) if layer.get("winograd")}
    if len(tiles) > 1:
        raise InfoError(f"the file mixes Winograd tiles {sorted(tiles)}; the MAC table supports one")
    return tiles.pop() if tiles else DEFAULT_M
