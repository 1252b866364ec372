"""Quantization, entropy coding and the ``.jsz`` file (SPEC sections 4 and 5).

Public API: :func:`quantize_model` / :class:`QuantizedLayer`, :class:`CodebookFinetuner`,
:func:`encode` / :func:`decode` / :func:`decode_state` / :func:`winograd_weights`,
:func:`save` / :func:`load` / :func:`read_manifest` / :func:`recode`,
:func:`report` / :func:`format_report`, and :class:`FormatError` for bad files.
"""

from .container import DEFAULT_MAX_EXPANSION, JszContents, load, loads, read_manifest, recode, save
from .entropy import CODERS, DEFAULT_CODER
from .errors import FormatError
from .finetune import CodebookFinetuner
from .model_codec import decode, decode_state, encode, winograd_weights
from .quantize import QUANTIZERS, QuantizedLayer, kmeans_1d, quantize_model, quantize_weight
from .report import format_report, report

__all__ = [
    "CODERS",
    "DEFAULT_CODER",
    "DEFAULT_MAX_EXPANSION",
    "QUANTIZERS",
    "CodebookFinetuner",
    "FormatError",
    "JszContents",
    "QuantizedLayer",
    "decode",
    "decode_state",
    "encode",
    "format_report",
    "kmeans_1d",
    "load",
    "loads",
    "quantize_model",
    "quantize_weight",
    "read_manifest",
    "recode",
    "report",
    "save",
    "winograd_weights",
]
