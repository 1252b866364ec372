"""What ``jointsparse info`` shows about a ``.jsz`` file: :func:`jointsparse.codecs.report` plus
the multiplications per image in every deployment (:mod:`jointsparse.cost`)."""

from __future__ import annotations

from typing import Any, Sequence

from .codecs import FormatError, decode, read_manifest, report
from .cost import layer_costs, macs_reduction, total_macs

__all__ = ["InfoError", "info_payload"]


class InfoError(ValueError):
    """An input size (given by the caller) for which no MAC table can be computed."""


#: The largest channel count and image side a MAC table is computed for.
MAX_INPUT_SIDE = 1 << 16


def _input_size(value: Any, recorded: bool) -> list[int]:
    """``[C, H, W]`` checked; a bad size recorded in the file is a FormatError."""
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT_SIDE for v in value)):
        problem = f"input size {str(value)[:60]} is not three integers C, H, W in 1..{MAX_INPUT_SIDE}"
        raise FormatError(f"provenance: recorded {problem}") if recorded else InfoError(problem)
    return list(value)


def info_payload(path: str, input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """``codecs.report`` plus MACs in both domains from ``cost.layer_costs``, at ``input_size``
    (C, H, W) or else the input size the file records (none: no MAC table)."""
    rep = report(path)
    manifest = read_manifest(path)
    data = (manifest["provenance"] or {}).get("data")
    recorded = data.get("input_size") if isinstance(data, dict) else None
    payload = {"report": rep}
    if input_size is None and recorded is None:
        return payload
    size = _input_size(list(input_size) if input_size is not None else recorded, recorded=input_size is None)
    model = decode(path, domain="spatial", runtime=False)
    rows_by_module = {row["name"].removesuffix(".weight"): row for row in rep["layers"]}
    thresholds = {name: row["winograd_threshold"] for name, row in rows_by_module.items() if row["winograd_threshold"] is not None}
    tiles = {layer["module"]: layer["winograd"]["m"] for layer in manifest["layers"] if layer["winograd"] is not None}
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
