"""What ``jointsparse info`` shows about a ``.jsz`` file: :func:`jointsparse.codecs.report` plus
the multiplications per image in every deployment (:mod:`jointsparse.cost`)."""

from __future__ import annotations

from typing import Any, Sequence

from .codecs import FormatError, decode, decode_state, read_manifest, report
from .codecs.manifest import MAX_MAP_SIDE
from .cost import LayerCost, layer_cost, layer_costs, macs_reduction, total_macs
from .models import check_trusted

__all__ = ["InfoError", "info_payload", "trust_gate"]


class InfoError(ValueError):
    """An input size (given by the caller) for which no MAC table can be computed."""


#: The largest channel count and image side a MAC table is computed for: the bound the manifest
#: reader puts on a recorded layer's map side.
MAX_INPUT_SIDE = MAX_MAP_SIDE


def trust_gate(path: str, trust: bool) -> dict[str, Any]:
    """The file's manifest, once its architecture may be built: a registry model, or ``trust``
    for a file that names its own factory (one message for every command)."""
    manifest = read_manifest(path)
    arch = manifest.get("arch") or {}
    if arch.get("name"):
        check_trusted(arch["name"], trust, path)
    return manifest


def _is_side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_INPUT_SIDE


def _input_size(value: Any, recorded: bool) -> list[int]:
    """``[C, H, W]`` checked; a bad size recorded in the file is a FormatError."""
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_side(v) for v in value)):
        problem = f"input size {str(value)[:60]} is not three integers C, H, W in 1..{MAX_INPUT_SIDE}"
        raise FormatError(f"provenance: recorded {problem}") if recorded else InfoError(problem)
    return list(value)


def _recorded_rows(path: str, entries: list[dict[str, Any]], thresholds: dict[str, float]) -> list[LayerCost]:
    """The MAC rows from the map sizes the encoder recorded (checked by the manifest's
    validation): no model is built, nothing imported."""
    _, state, _ = decode_state(path)
    return [
        layer_cost(entry["module"], state[entry["name"]], None if entry["kind"] == "linear" else tuple(entry["output_size"]),
                   groups=entry.get("groups", 1), winograd_m=(entry["winograd"] or {}).get("m"),
                   winograd_threshold=thresholds.get(entry["module"], 0.0))
        for entry in entries
    ]


def info_payload(path: str, input_size: Sequence[int] | None = None, *, trust: bool = False) -> dict[str, Any]:
    """``codecs.report`` plus MACs in both domains, at ``input_size`` (C, H, W) or else the input
    size the file records (none: no MAC table).

    At the recorded size the MACs come from the per-layer map sizes the file records (no model is
    built, nothing is imported); another size, or a file without them, needs the model built
    (``trust`` for a file naming its own factory).
    """
    rep = report(path)
    manifest = read_manifest(path)
    data = (manifest.get("provenance") or {}).get("data")
    recorded = manifest.get("input_size") or (data.get("input_size") if isinstance(data, dict) else None)
    payload: dict[str, Any] = {"report": rep}
    if input_size is None and recorded is None:
        return payload
    size = _input_size(list(input_size) if input_size is not None else recorded, recorded=input_size is None)
    rows_by_module = {row["name"].removesuffix(".weight"): row for row in rep["layers"]}
    thresholds = {name: row["winograd_threshold"] for name, row in rows_by_module.items() if row["winograd_threshold"] is not None}
    entries = manifest["layers"]
    if recorded is not None and size == list(recorded) and entries and all("output_size" in entry for entry in entries):
        rows = _recorded_rows(path, entries, thresholds)
    else:
        trust_gate(path, trust)
        model = decode(path, domain="spatial", runtime=False, allow_imports=trust)
        tiles = {layer["module"]: layer["winograd"]["m"] for layer in entries if layer["winograd"] is not None}
        try:
            rows = layer_costs(model, (1, *size), m=tiles, winograd_thresholds=thresholds)
        except RuntimeError as error:  # the architecture cannot take this input (too small, wrong channels)
            problem = f"input size {size} does not fit the architecture: {str(error).splitlines()[0][:120]}"
            raise FormatError(f"provenance: recorded {problem}") if input_size is None else InfoError(problem) from None
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
