"""Winograd F(m x m, r x r): exact Cook-Toom matrices and the tile transforms built on them."""

from .cook_toom import cook_toom, interpolation_points, winograd_matrices
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
