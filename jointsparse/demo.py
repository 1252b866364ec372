"""``jointsparse demo``: the whole pipeline on the embedded digits data, in about a minute.

It makes the library calls that ``jointsparse train``, ``compress``, ``evaluate`` and ``info``
make, with the same settings, keeps ``dense.pt``, ``recipe.toml`` and ``model.jsz`` in the output
directory, and prints the commands that redo each step by hand.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from .checkpoint import save_model
from .codecs import decode
from .compress import compress
from .data import make_loaders
from .info import info_payload
from .models import get_model
from .recipe import StageConfig, load_recipe
from .train import evaluate, seed_everything, train
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
DEMO_SEED = 0  # the commands' default --seed
DEMO_BATCH = 64


def run_demo(out: Path, quiet: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    dense, recipe_path, packed = out / "dense.pt", out / "recipe.toml", out / "model.jsz"
    atomic_write_text(recipe_path, DEMO_RECIPE)
    progress = ["--quiet"] if quiet else []
    steps = [
        ["train", *DEMO_MODEL, "--data", "digits", "--epochs", "12", "--lr", "0.05", "--batch-size", str(DEMO_BATCH), "-o", str(dense), *progress],
        ["compress", str(dense), "--data", "digits", "--recipe", str(recipe_path), "-o", str(packed), *progress],
        ["info", str(packed)],
        ["evaluate", str(packed), "--domain", "spatial"],
        ["evaluate", str(packed), "--domain", "winograd"],
    ]
    start = time.perf_counter()
    print(f"\n== step 1: jointsparse {shlex.join(steps[0])}")
    seed_everything(DEMO_SEED)
    train_loader, test_loader, info = make_loaders("digits", batch_size=DEMO_BATCH, eval_batch_size=256, seed=DEMO_SEED)
    data = {"name": "digits", "batch_size": DEMO_BATCH, "input_size": [info.in_channels, *info.input_size]}
    model = get_model("vgg_small", num_classes=info.num_classes, in_channels=info.in_channels, width=0.5)
    # The settings of `jointsparse train`'s defaults with --epochs 12 --lr 0.05.
    stage = StageConfig(epochs=12, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine")
    trained = train(model, train_loader, test_loader, stage.train_config(seed=DEMO_SEED, device="cpu", progress=not quiet), stage="dense")
    save_model(dense, model.state_dict(), model.jointsparse_arch, meta={"data": data, "test_accuracy": trained.test_accuracy, "epochs": stage.epochs})
    print(f"dense vgg_small: test accuracy {100 * trained.test_accuracy:.2f}% after {stage.epochs} epoch(s); wrote {dense}")

    print(f"\n== step 2: jointsparse {shlex.join(steps[1])}")
    seed_everything(DEMO_SEED)
    result = compress(
        model, train_loader, test_loader, load_recipe(recipe_path), packed, seed=DEMO_SEED, progress=not quiet,
        provenance={"data": data, "command": f"jointsparse {shlex.join(steps[1])}"},
    )
    accuracy = {domain: evaluate(decode(packed, domain=domain), test_loader)["accuracy"] for domain in ("spatial", "winograd")}
    macs = info_payload(str(packed))["macs"]
    total = result.report["total"]
    print("\n== demo summary (digits test set)")
    print(f"  dense accuracy            {100 * trained.test_accuracy:6.2f}%")
    print(f"  spatial-decoded accuracy  {100 * accuracy['spatial']:6.2f}%")
    print(f"  winograd-decoded accuracy {100 * accuracy['winograd']:6.2f}%")
    print(f"  compression ratio         {total['compression_ratio']:6.1f}x  ({packed.stat().st_size:,} bytes; weights only {total['weights_only_ratio']:.1f}x)")
    print(f"  MAC reduction, spatial    {macs['reduction_spatial']:6.2f}x")
    print(f"  MAC reduction, winograd   {macs['reduction_winograd']:6.2f}x")
    print(f"  wall time                 {time.perf_counter() - start:6.1f} s")
    print("\nRedo each step by hand:")
    for argv in steps:
        print(f"  jointsparse {shlex.join(argv)}")
    return 0
