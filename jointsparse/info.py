"""What ``jointsparse info`` shows about a ``.jsz`` file: :func:`jointsparse.codecs.report` plus
the multiplications per image in every deployment (:mod:`jointsparse.cost`)."""

from __future__ import annotations

from typing import Any, Sequence

from .codecs import decode, read_manifest, report
from .cost import layer_costs, macs_reduction, total_macs
from .transforms import DEFAULT_M

__all__ = ["InfoError", "info_payload"]


class InfoError(ValueError):
    """A file whose MAC table cannot be computed (e.g. it mixes Winograd tiles)."""


def info_payload(path: str, input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """``codecs.report`` plus MACs in both domains from ``cost.layer_costs``."""
    rep = report(path)
    manifest = read_manifest(path)
    size = list(input_size or ((manifest.get("provenance") or {}).get("data") or {}).get("input_size") or [])
    payload = {"report": rep}
    if size:
        model = decode(path, domain="spatial", runtime=False)
        rows_by_module = {row["name"].removesuffix(".weight"): row for row in rep["layers"]}
        thresholds = {name: row["winograd_threshold"] for name, row in rows_by_module.items() if row["winograd_threshold"] is not None}
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
