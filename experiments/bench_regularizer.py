"""Training-step cost of the joint sparsity regularizer (issue #3: target <= 1.2x a plain step).

A *plain* step is forward + cross-entropy + backward + SGD (momentum 0.9, weight decay 5e-4) on
``vgg_small``; a *regularized* step adds the joint ``JointSparsity`` penalty (0.7 / 0.7) to the
loss and calls its ``after_step``, as the trainer does. The threshold update (two quantiles per
layer) runs every ``update_every`` steps, so its cost is timed on its own and amortized:

    regularized (amortized) = regularized step without an update + update / update_every

Each round times one plain and one regularized step back to back (so load from other jobs hits
both alike), on one pinned thread; the figures are medians over the rounds. The input is a fixed
random batch (timing does not depend on the pixel values).

    python experiments/bench_regularizer.py                     # widths 1.0 and 0.5
    python experiments/bench_regularizer.py --out experiments/results/bench_regularizer.md
    python experiments/bench_regularizer.py --profile           # where the extra time goes
    python experiments/bench_regularizer.py --alexnet           # also AlexNet at the tables' 67 px proxy

AlexNet's 58M weights sit mostly in FC layers whose forward is cheap at 67 px, so its step is
where the penalty's passes over memory weigh most.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from jointsparse.models import get_model
from jointsparse.provenance import command_line, machine_info
from jointsparse.sparsity import JointSparsity
from jointsparse.utils import atomic_write_text

TARGET_RATIO = 1.2


#: AlexNet's row: the paper-table proxy's input (3 replicated channels at 67 px, 10 classes).
ALEXNET_INPUT = (3, 67)


def _build(width: float | None) -> torch.nn.Module:
    """``vgg_small`` at ``width``; None: AlexNet."""
    if width is None:
        return get_model("alexnet", in_channels=ALEXNET_INPUT[0], num_classes=10)
    return get_model("vgg_small", in_channels=1, num_classes=10, width=width)


def make_steps(width: float | None, batch: int, size: int, update_every: int, seed: int) -> tuple[Callable[[], None], ...]:
    """(plain step, regularized step without a threshold update, threshold update, the penalty's
    forward + backward alone); the two steps train two identical copies of the model so neither
    perturbs the other. ``width`` None: AlexNet at its proxy input (``size`` is not used)."""
    torch.manual_seed(seed)
    plain_model, reg_model = _build(width), _build(width)
    reg_model.load_state_dict(plain_model.state_dict())
    reg = JointSparsity(reg_model, 0.7, 0.7, mode="joint", update_every=update_every, seed=seed)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # Mirrors the trainer: the coefficients are one extra param group without weight decay.
    reg_opt = torch.optim.SGD([{"params": list(reg_model.parameters())}, {"params": reg.parameters(), "weight_decay": 0.0}],
                              lr=0.01, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    channels, size = (1, size) if width is not None else ALEXNET_INPUT
    inputs = torch.randn(batch, channels, size, size, generator=generator)
    targets = torch.randint(0, 10, (batch,), generator=generator)

    def plain() -> None:
        loss = F.cross_entropy(plain_model(inputs), targets)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def regularized() -> None:
        loss = F.cross_entropy(reg_model(inputs), targets) + reg.penalty()
        reg_opt.zero_grad(set_to_none=True)
        loss.backward()
        reg_opt.step()
        reg.after_step(0)  # step 0: the clamp only, no threshold update (timed apart below)

    def penalty_only() -> None:
        reg_opt.zero_grad(set_to_none=True)
        reg.penalty().backward()
        reg.after_step(0)

    return plain, regularized, reg.update_thresholds, penalty_only


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(width: float | None, batch: int, size: int, update_every: int, rounds: int, warmup: int, seed: int) -> dict:
    plain, regularized, update, penalty_only = make_steps(width, batch, size, update_every, seed)
    for _ in range(warmup):
        plain(), regularized(), update(), penalty_only()
    samples: dict[str, list[float]] = {"plain": [], "regularized": [], "update": [], "penalty": []}
    for _ in range(rounds):
        samples["plain"].append(timed(plain))
        samples["regularized"].append(timed(regularized))
        samples["update"].append(timed(update))
        samples["penalty"].append(timed(penalty_only))
    med = {key: statistics.median(values) for key, values in samples.items()}
    amortized = med["regularized"] + med["update"] / update_every
    return {"width": width, "plain_s": med["plain"], "regularized_s": med["regularized"], "update_s": med["update"],
            "penalty_s": med["penalty"], "amortized_s": amortized, "ratio": amortized / med["plain"],
            "step_ratio": med["regularized"] / med["plain"],
            # The same ratio from the isolated extra work: less exposed to the noise of two big steps.
            "isolated_ratio": (med["plain"] + med["penalty"] + med["update"] / update_every) / med["plain"]}


def profile_regularized(width: float, batch: int, size: int, update_every: int, seed: int) -> str:
    """torch.profiler tables of the plain and regularized steps, for comparing op by op."""
    from torch.profiler import profile

    plain, regularized, update, _ = make_steps(width, batch, size, update_every, seed)
    for _ in range(2):
        plain(), regularized()
    out = []
    for name, fn in (("plain step", plain), ("regularized step", regularized), ("threshold update", update)):
        with profile() as prof:
            for _ in range(3):
                fn()
        out.append(f"== {name} (3 calls) ==\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return "\n".join(out)


def markdown(rows: list[dict], args: argparse.Namespace, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    m = machine_info()
    lines = [
        "# Regularizer step cost",
        "",
        f"- command: `{command_line()}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%a %b %d %H:%M:%S UTC %Y')}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['device']}, torch {m['torch']}, torch threads {args.threads} (pinned)",
        f"- load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load[0])}, after: {'/'.join(f'{v:.2f}' for v in load[1])} "
        "(other jobs share the machine; each round times both steps back to back)",
        f"- vgg_small (by width), batch {args.batch}, 1x{args.size}x{args.size} input"
        + (f"; AlexNet (10 classes), {ALEXNET_INPUT[0]}x{ALEXNET_INPUT[1]}x{ALEXNET_INPUT[1]} input" if args.alexnet else "")
        + "; SGD momentum 0.9; joint JointSparsity 0.7/0.7, "
        f"learnable coefficients, update_every {args.update_every}; median of {args.rounds} rounds after {args.warmup} warm-up rounds",
        f"- amortized = regularized step + threshold update / {args.update_every}; amortized ratio = amortized / plain step; "
        f"target ratio <= {TARGET_RATIO} (judged on the amortized ratio)",
        "- isolated ratio = (plain step + penalty forward/backward alone + update / update_every) / plain step: the same "
        "overhead measured without differencing two large, noisy step times",
        "",
        "| model | plain step (ms) | regularized step (ms) | threshold update (ms) | amortized (ms) | step ratio | amortized ratio | penalty fwd+bwd alone (ms) | isolated ratio | target met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {_label(row['width'])} | {1e3 * row['plain_s']:.1f} | {1e3 * row['regularized_s']:.1f} | {1e3 * row['update_s']:.2f} | "
                     f"{1e3 * row['amortized_s']:.1f} | {row['step_ratio']:.3f} | {row['ratio']:.3f} | "
                     f"{1e3 * row['penalty_s']:.1f} | {row['isolated_ratio']:.3f} | "
                     f"{'yes' if row['ratio'] <= TARGET_RATIO else 'no'} |")
    return "\n".join(lines) + "\n"


def _label(width: float | None) -> str:
    return f"vgg_small width {width:g}" if width is not None else "AlexNet"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="1.0,0.5", help="vgg_small width multipliers, comma-separated")
    parser.add_argument("--alexnet", action="store_true", help="add a row for AlexNet at the tables' 67 px proxy input")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--update-every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print profiler tables for the first width instead of timing")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    try:
        args.widths = [float(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--widths must be comma-separated numbers, got {args.widths!r}")
    if not args.widths or min(args.widths) <= 0:
        parser.error("--widths needs at least one positive width")
    for name in ("batch", "size", "update_every", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        print(profile_regularized(args.widths[0], args.batch, args.size, args.update_every, args.seed))
        return 0
    load_before = os.getloadavg()
    rows = []
    for width in args.widths + ([None] if args.alexnet else []):
        rows.append(bench(width, args.batch, args.size, args.update_every, args.rounds, args.warmup, args.seed))
        row = rows[-1]
        print(f"{_label(width)}: plain {1e3 * row['plain_s']:.1f} ms, regularized {1e3 * row['regularized_s']:.1f} ms, "
              f"update {1e3 * row['update_s']:.2f} ms, penalty alone {1e3 * row['penalty_s']:.1f} ms -> amortized ratio "
              f"{row['ratio']:.3f}, isolated ratio {row['isolated_ratio']:.3f}", flush=True)
    text = markdown(rows, args, (load_before, os.getloadavg()))
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
