"""Winograd F(m x m, r x r): exact Cook-Toom matrices, the tile transforms built on them, and
the Winograd pruning rule."""

from .cook_toom import cook_toom, interpolation_points, winograd_matrices
from .pruning import (
    DEFAULT_M,
    pruned_count,
    winograd_kept_count,
    winograd_magnitudes,
    winograd_mask,
    winograd_pruned,
    winograd_pruned_weight,
    winograd_threshold,
)
from .tiling import (
    extract_tiles,
    has_winograd_form,
    filter_to_winograd,
    input_to_winograd,
    output_from_winograd,
    tile_count,
    untile,
    winograd_conv2d_reference,
)

__all__ = [
    "DEFAULT_M",
    "pruned_count",
    "winograd_kept_count",
    "winograd_magnitudes",
    "winograd_mask",
    "winograd_pruned",
    "winograd_pruned_weight",
    "winograd_threshold",
    "cook_toom",
    "interpolation_points",
    "winograd_matrices",
    "extract_tiles",
    "has_winograd_form",
    "filter_to_winograd",
    "input_to_winograd",
    "output_from_winograd",
    "tile_count",
    "untile",
    "winograd_conv2d_reference",
]
