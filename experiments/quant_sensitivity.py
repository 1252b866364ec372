"""Which layers does quantization hurt? From a compress stage's saved model (``<stage>.done`` in a
``compress`` work directory, e.g. ``finetune.done``: the masked, fine-tuned weights just before
k-means), quantize one layer at a time at each of ``--bits`` and score the net on the validation
split, then every layer at once; the rest stay as they were. Validation only: the test split is
never loaded, and a dataset without a ``val`` split (today all but ``sr-natural``) is refused.

    python experiments/quant_sensitivity.py WORK/tune-<digest>.work/finetune.done --model ctsrcnn --data sr-natural --bits 6 7

It prints one line per layer (metric with that layer quantized, and the change from the
unquantized net) and writes nothing. Used to choose per-layer bits in a recipe
(``[quantize] bits``); the recipe's comment quotes the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from jointsparse.codecs import quantize_weight
from jointsparse.data import DataError, make_loaders
from jointsparse.layers import prunable_layers
from jointsparse.models import get_model
from jointsparse.tasks import task_for
from jointsparse.train import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("done", type=Path, help="a compress stage's <stage>.done file, or a plain state dict (.pt)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bits", type=int, nargs="+", default=[6])
    parser.add_argument("--quantizer", default="kmeans", choices=("kmeans", "universal"))
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--val-subset", type=int, default=None, help="score on the first N validation items only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.done.is_file():
        parser.error(f"{args.done}: no such file")
    saved = torch.load(args.done, map_location="cpu", weights_only=True)
    state = saved["model"] if isinstance(saved, dict) and "model" in saved else saved  # a stage marker or a plain state dict
    try:
        _, val_loader, info = make_loaders(args.data, eval_batch_size=args.eval_batch_size, eval_split="val", test_subset=args.val_subset)
    except DataError as error:  # e.g. a dataset without a validation split
        parser.error(str(error))
    task = task_for(info)
    model = get_model(args.model, optional=task.model_kwargs(info))
    model.load_state_dict(state)
    model.eval()
    layers = prunable_layers(model)
    originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}

    def score(quantize: list[str], bits: int) -> float:
        with torch.no_grad():
            for name, layer in layers.items():
                weight = originals[name]
                if name in quantize:
                    kind = "conv" if weight.dim() == 4 else "linear"
                    weight = quantize_weight(weight, args.quantizer, bits, kind=kind).dequantize().view_as(weight)
                layer.weight.copy_(weight)
        return evaluate(model, val_loader, "cpu", task)["metric"]

    base = score([], 0)
    print(f"unquantized: validation {task.metric} {task.format(base)}")
    for bits in args.bits:
        for name in [*layers, "all"]:
            value = score(list(layers) if name == "all" else [name], bits)
            print(f"{bits} bits  {name:<12} {task.format(value)}  ({value - base:+.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
