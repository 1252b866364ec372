"""What a ``.jsz`` file holds and what it costs: per layer and in total (SPEC sections 5, 6).

Compression ratio = 32 x (every parameter of the original model: weights, biases, BatchNorm) /
(8 x the file size on disk). The weights-only ratio, which papers quote, is
32 x (compressed weight count) / (8 x (position + index stream bytes + the codebooks' bytes: each entry
at its stored width, 4 bytes for float32 and 2 for version 4's float16)).
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from ..transforms import winograd_kept_count
from .codebooks import CODEBOOK_DTYPES
from .container import DEFAULT_MAX_EXPANSION, load

__all__ = ["report", "format_report"]


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator > 0 else None


def report(path: Union[str, os.PathLike], *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> dict:
    """Per-layer and total statistics of a ``.jsz`` file (decodes it; raises ``FormatError``).

    Each layer row: ``params``, spatial ``nnz``/``density``, for Winograd-form layers
    ``winograd_params``/``winograd_nnz``/``winograd_density`` after the stored threshold, ``bits``,
    stream bytes (``position_bytes``, ``index_bytes``, the stored-model part of each, and
    ``codebook_bytes``: entries times their stored width, before the codebook section's zstd), each stream's order-0 entropy bound in bytes and the ratio to it, and
    ``bits_per_nonzero`` (position + index stream bits per non-zero).
    """
    contents = load(path, max_expansion=max_expansion)
    file_bytes = os.path.getsize(path)
    # the width each codebook entry is stored at (version 4 may store float16): counting 4 bytes
    # regardless understated the weights-only ratio of float16-codebook files
    entry_bytes = CODEBOOK_DTYPES[contents.manifest.get("codebook_dtype", "float32")].itemsize
    rows = []
    for stored in contents.layers.values():
        quantized = stored.quantized
        weight = quantized.dequantize()
        nnz = int(torch.count_nonzero(weight))
        row = {
            "name": stored.name,
            "kind": stored.kind,
            "shape": list(quantized.shape),
            "params": quantized.numel,
            "nnz": nnz,
            "density": _ratio(nnz, quantized.numel),
            "quantizer": quantized.quantizer,
            "bits": quantized.bits,
            "codebook_size": int(len(quantized.codebook)),
            "position_coding": stored.positions.coding,
            "position_coder": stored.positions.coder,
            "index_coder": stored.indices.coder,
            "index_coding": stored.indices.coding or "ord0",  # ord0: order-0
            "position_bytes": stored.positions.nbytes,
            "position_model_bytes": stored.positions.model_bytes,
            "position_entropy_bytes": stored.positions.entropy_bytes,
            "position_vs_entropy": _ratio(stored.positions.nbytes, stored.positions.entropy_bytes),
            "index_bytes": stored.indices.nbytes,
            "index_model_bytes": stored.indices.model_bytes,
            "index_entropy_bytes": stored.indices.entropy_bytes,
            "index_vs_entropy": _ratio(stored.indices.nbytes, stored.indices.entropy_bytes),
            "index_payload_vs_entropy": _ratio(stored.indices.nbytes - stored.indices.model_bytes, stored.indices.entropy_bytes),
            "codebook_bytes": entry_bytes * len(quantized.codebook),
            "bits_per_nonzero": _ratio(8 * (stored.positions.nbytes + stored.indices.nbytes), quantized.nnz),
            "winograd_threshold": None,
            "winograd_params": None,
            "winograd_nnz": None,
            "winograd_density": None,
        }
        if stored.winograd is not None:
            m, r = stored.winograd["m"], stored.winograd["r"]
            params = quantized.numel // (r * r) * (m + r - 1) ** 2
            kept = winograd_kept_count(weight, m, stored.winograd["threshold"])
            row.update(
                winograd_threshold=stored.winograd["threshold"],
                winograd_params=params,
                winograd_nnz=kept,
                winograd_density=_ratio(kept, params),
            )
        rows.append(row)
    weight_params = sum(row["params"] for row in rows)
    stream_bytes = sum(row["position_bytes"] + row["index_bytes"] for row in rows)
    codebook_bytes = sum(row["codebook_bytes"] for row in rows)
    raw_bytes = sum(t.numel() * t.element_size() for t in contents.raw.values())
    original = contents.manifest["original_parameter_count"]
    winograd_rows = [row for row in rows if row["winograd_nnz"] is not None]
    total = {
        "params": weight_params,
        "nnz": sum(row["nnz"] for row in rows),
        "position_bytes": sum(row["position_bytes"] for row in rows),
        "position_entropy_bytes": sum(row["position_entropy_bytes"] for row in rows),
        "index_bytes": sum(row["index_bytes"] for row in rows),
        "index_model_bytes": sum(row["index_model_bytes"] for row in rows),
        "index_entropy_bytes": sum(row["index_entropy_bytes"] for row in rows),
        "codebook_bytes": codebook_bytes,
        "raw_params": sum(t.numel() for t in contents.raw.values()),
        "raw_bytes": raw_bytes,
        "file_bytes": file_bytes,
        "original_parameter_count": original,
        "compression_ratio": _ratio(32 * original, 8 * file_bytes),
        "weights_only_ratio": _ratio(32 * weight_params, 8 * (stream_bytes + codebook_bytes)),
        "winograd_params": sum(row["winograd_params"] for row in winograd_rows),
        "winograd_nnz": sum(row["winograd_nnz"] for row in winograd_rows),
    }
    total["density"] = _ratio(total["nnz"], weight_params)
    total["winograd_density"] = _ratio(total["winograd_nnz"], total["winograd_params"])
    total["bits_per_nonzero"] = _ratio(8 * stream_bytes, total["nnz"])
    total["position_vs_entropy"] = _ratio(total["position_bytes"], total["position_entropy_bytes"])
    total["index_vs_entropy"] = _ratio(total["index_bytes"], total["index_entropy_bytes"])
    return {"path": str(path), "arch": contents.arch, "layers": rows, "total": total}


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_report(rep: dict) -> str:
    """A fixed-width text table of :func:`report`'s result."""
    header = f"{'layer':<24} {'params':>10} {'nnz':>9} {'dens':>6} {'W dens':>6} {'b':>2} {'pos':>4} {'pos B':>9} {'(H0)':>9} {'idx':>4} {'idx B':>9} {'(H0)':>9} {'bits/nz':>7}"
    lines = [header, "-" * len(header)]
    for row in rep["layers"]:
        lines.append(
            f"{row['name'][:24]:<24} {row['params']:>10} {row['nnz']:>9} {_fmt(row['density'], '.3f'):>6} "
            f"{_fmt(row['winograd_density'], '.3f'):>6} {row['bits']:>2} {row['position_coding'][:4]:>4} "
            f"{row['position_bytes']:>9} {row['position_entropy_bytes']:>9.0f} {row['index_coding'][:4]:>4} {row['index_bytes']:>9} "
            f"{row['index_entropy_bytes']:>9.0f} {_fmt(row['bits_per_nonzero'], '.2f'):>7}"
        )
    t = rep["total"]
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<24} {t['params']:>10} {t['nnz']:>9} {_fmt(t['density'], '.3f'):>6} {_fmt(t['winograd_density'], '.3f'):>6} "
        f"{'':>2} {'':>4} {t['position_bytes']:>9} {t['position_entropy_bytes']:>9.0f} {'':>4} {t['index_bytes']:>9} "
        f"{t['index_entropy_bytes']:>9.0f} {_fmt(t['bits_per_nonzero'], '.2f'):>7}"
    )
    lines.append(
        f"file {t['file_bytes']} B (raw tensors {t['raw_bytes']} B, codebooks {t['codebook_bytes']} B); "
        f"compression {_fmt(t['compression_ratio'], '.1f')}x of {t['original_parameter_count']} parameters, "
        f"weights only {_fmt(t['weights_only_ratio'], '.1f')}x"
    )
    return "\n".join(lines)
