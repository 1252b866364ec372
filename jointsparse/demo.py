"""``jointsparse demo``: the whole pipeline on the embedded digits data, in about a minute.

It runs the real commands (the same code paths as typing them), keeps ``dense.pt``,
``recipe.toml`` and ``model.jsz`` in the output directory, and prints the commands that redo
each step by hand.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from pathlib import Path

from .utils import atomic_write_text

#: The demo's recipe; ``experiments/recipes/demo.toml`` carries the same settings with its
#: provenance header (a test keeps the two equal).
DEMO_RECIPE = """\
# jointsparse demo recipe: vgg_small (width 0.5) on the 8x8 scikit-learn digits.
[regularizer]
method = "joint_sparsity"
mode = "joint"
learnable = true
a_spatial = 1.0
a_winograd = 1.0
update_every = 5

[sparsity.spatial]
"*" = 0.6
"fc1" = 0.8

[sparsity.winograd]
"*" = 0.6

[retrain]
epochs = 6
lr = 0.02

[finetune]
epochs = 2
lr = 0.005

[codebook]
epochs = 1
lr = 0.0005

[quantize]
method = "kmeans"
conv_bits = 5
linear_bits = 4

[winograd]
m = 2

[data]
batch_size = 64
"""

DEMO_MODEL = ["--model", "vgg_small", "--model-arg", "width=0.5"]


def run_demo(out: Path, quiet: bool = False) -> int:
    from .cli import main

    out.mkdir(parents=True, exist_ok=True)
    dense, recipe, packed = out / "dense.pt", out / "recipe.toml", out / "model.jsz"
    atomic_write_text(recipe, DEMO_RECIPE)
    progress = ["--quiet"] if quiet else []
    steps = [
        ["train", *DEMO_MODEL, "--data", "digits", "--epochs", "12", "--lr", "0.05", "--batch-size", "64", "-o", str(dense), *progress],
        ["compress", str(dense), "--data", "digits", "--recipe", str(recipe), "-o", str(packed), *progress],
        ["info", str(packed)],
        ["evaluate", str(packed), "--domain", "spatial"],
        ["evaluate", str(packed), "--domain", "winograd"],
    ]
    start = time.perf_counter()
    for number, argv in enumerate(steps[:2], 1):
        print(f"\n== step {number}: jointsparse {shlex.join(argv)}")
        code = main(argv)
        if code:
            return code
    results = {}
    for domain in ("spatial", "winograd"):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = main(["evaluate", str(packed), "--domain", domain, "--json"])
        if code:
            return code
        results[domain] = json.loads(buffer.getvalue())["accuracy"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["info", str(packed), "--json"])
    if code:
        return code
    info = json.loads(buffer.getvalue())
    from .checkpoint import read_checkpoint

    dense_accuracy = read_checkpoint(dense)["meta"]["test_accuracy"]
    total, macs = info["report"]["total"], info["macs"]
    print("\n== demo summary (digits test set)")
    print(f"  dense accuracy            {100 * dense_accuracy:6.2f}%")
    print(f"  spatial-decoded accuracy  {100 * results['spatial']:6.2f}%")
    print(f"  winograd-decoded accuracy {100 * results['winograd']:6.2f}%")
    print(f"  compression ratio         {total['compression_ratio']:6.1f}x  ({packed.stat().st_size:,} bytes; weights only {total['weights_only_ratio']:.1f}x)")
    print(f"  MAC reduction, spatial    {macs['reduction_spatial']:6.2f}x")
    print(f"  MAC reduction, winograd   {macs['reduction_winograd']:6.2f}x")
    print(f"  wall time                 {time.perf_counter() - start:6.1f} s")
    print("\nRedo each step by hand:")
    for argv in steps:
        print(f"  jointsparse {shlex.join(argv)}")
    return 0
