"""Deep Compression (Han, Mao & Dally, ICLR 2016), the usual yardstick: iterative magnitude
pruning with retraining, then k-means weight sharing, then Huffman coding with relative indices.

This module holds the pruning schedule (a trainer hook) and the method's constants. The k-means
quantizer is :mod:`jointsparse.codecs`' (use :data:`DEEP_COMPRESSION_BITS`); the entropy stage
is :func:`~.relative_index.relative_index_layer_encode` with :data:`INDEX_BITS`.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..layers import resolve_per_layer
from ._common import BaselineConfigError, BaselineHook, LayerSpec, check_fraction, check_positive_int, keep_largest
from .relative_index import relative_index_layer_encode

#: k-means bits per weight (codebook of 2^b entries, zero included) for conv and FC layers.
DEEP_COMPRESSION_BITS = {"conv": 8, "linear": 5}
#: Relative-index width in bits for conv and FC layers.
INDEX_BITS = {"conv": 8, "linear": 5}


def layer_kind(module: nn.Module) -> str:
    """``"conv"`` or ``"linear"``: the key into :data:`DEEP_COMPRESSION_BITS` / :data:`INDEX_BITS`."""
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    raise BaselineConfigError(f"{type(module).__name__} is neither a Conv2d nor a Linear layer")


class DeepCompression(BaselineHook):
    """Iterative magnitude pruning, each round held by a :class:`PruningMasks` while retraining.

    Give either ``schedule``, a list of ``(step, sparsity)`` pairs (strictly increasing steps;
    ``sparsity`` one value or per layer, names / globs, non-decreasing from round to round per
    layer), or ``sparsity`` (the final target), ``rounds`` and ``every``: round ``i`` (1-based)
    prunes to ``sparsity * i / rounds`` after the optimizer step of step ``i * every - 1``.
    A round zeroes each layer's smallest-magnitude weights among those still kept, so the masks
    only grow. ``finalize()`` applies any rounds not reached yet (the model always ends at the
    final target) and holds the masks for the quantization and fine-tuning stages.
    """

    name = "deep_compression"

    def __init__(
        self,
        model: nn.Module,
        sparsity: LayerSpec = 0.9,
        rounds: int = 3,
        every: int = 1000,
        schedule: Sequence[tuple[int, LayerSpec]] | None = None,
    ) -> None:
        super().__init__(model)
        if schedule is None:
            rounds = check_positive_int(rounds, "rounds")
            every = check_positive_int(every, "every")
            final = resolve_per_layer(sparsity, self.layers, "sparsity", check=check_fraction, default=0.0)
            self.schedule = [(i * every - 1, {name: s * i / rounds for name, s in final.items()}) for i in range(1, rounds + 1)]
        else:
            self.schedule = self._check_schedule(schedule)
        self.rounds_done = 0

    def _check_schedule(self, schedule: Any) -> list[tuple[int, dict[str, float]]]:
        if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or not schedule:
            raise BaselineConfigError("schedule must be a non-empty list of (step, sparsity) pairs")
        checked: list[tuple[int, dict[str, float]]] = []
        for index, entry in enumerate(schedule):
            if not isinstance(entry, Sequence) or len(entry) != 2:
                raise BaselineConfigError(f"schedule[{index}] must be a (step, sparsity) pair, got {entry!r}")
            step, spec = entry
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise BaselineConfigError(f"schedule[{index}] step must be an int >= 0, got {step!r}")
            targets = resolve_per_layer(spec, self.layers, f"schedule[{index}] sparsity", check=check_fraction, default=0.0)
            if checked:
                previous_step, previous = checked[-1]
                if step <= previous_step:
                    raise BaselineConfigError(f"schedule steps must increase, got {previous_step} then {step}")
                lower = [name for name in targets if targets[name] < previous[name]]
                if lower:
                    raise BaselineConfigError(f"schedule[{index}] lowers the sparsity of {', '.join(lower)}; rounds can only prune more")
            checked.append((int(step), targets))
        return checked

    def prune_to(self, targets: dict[str, float]) -> None:
        """Prune every layer to its target sparsity among the weights still kept, and hold it."""
        held = self.pruning.masks if self.pruning is not None else {}
        masks: dict[str, torch.Tensor] = dict(held)
        with torch.no_grad():
            for name, target in targets.items():
                if target <= 0:
                    continue
                weight = self.layers[name].weight
                score = weight.abs()
                if name in held:
                    score = torch.where(held[name], score, torch.full_like(score, -1.0))  # pruned stays pruned
                masks[name] = keep_largest(score, weight.numel() - round(target * weight.numel()))
        if masks:
            self.set_masks(masks)

    def update(self, step: int) -> None:
        while self.rounds_done < len(self.schedule) and step >= self.schedule[self.rounds_done][0]:
            self.prune_to(self.schedule[self.rounds_done][1])
            self.rounds_done += 1

    def final_masks(self) -> None:
        if self.rounds_done < len(self.schedule):
            self.prune_to(self.schedule[-1][1])
            self.rounds_done = len(self.schedule)
        return None  # prune_to already holds them

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rounds_done = int(state["rounds_done"])


def deep_compression_bytes(contents: Any) -> int:
    """The bytes Deep Compression's own coding (Han et al.) gives a decoded file's quantized
    weights: per layer, Huffman-coded relative indices (:data:`INDEX_BITS`: 8-bit conv, 5-bit FC
    gaps) and Huffman-coded codebook indices, plus 4 bytes per codebook entry, and the raw
    float32 tensors (biases, BatchNorm). ``contents`` is what ``jointsparse.codecs.load``
    returns. Not a file format of ours: a byte count to set beside the real ``.jsz``."""
    total = sum(t.numel() * t.element_size() for t in contents.raw.values())
    for stored in contents.layers.values():
        q = stored.quantized
        codes = np.zeros(q.numel, dtype=np.int64)
        codes[q.positions] = q.indices.astype(np.int64) + 1  # 0 marks a pruned weight
        width = INDEX_BITS["conv" if len(q.shape) == 4 else "linear"]
        total += len(relative_index_layer_encode(codes, width)) + 4 * len(q.codebook)
    return total
