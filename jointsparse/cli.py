"""The ``jointsparse`` command line.

Exit codes: 0 success; 2 usage or input errors (a missing or corrupted file, a checkpoint that
does not fit the model, a bad recipe value, an unknown dataset, an output another run is writing,
a file system that refuses an output: full, read-only, no permission); 1 an internal failure.
Errors print one line; ``--debug`` shows the traceback.

``train``, ``compress`` and ``decode`` lock their output (and ``compress`` its work directory)
for the whole run, see :mod:`jointsparse.output_lock`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .bench import bench_file, bench_model, format_bench
from .checkpoint import ModelCheckpointError, load_model, save_model
from .codecs import FormatError, decode, decode_state, format_report, read_manifest, winograd_weights
from .compress import PipelineError, compress
from .data import DataError, make_loaders
from .demo import run_demo
from .info import InfoError, info_payload
from .layers import LayerKeyError
from .models import ModelError, get_model
from .nn.choice import ChoiceError, format_choices
from .output_lock import OutputInUseError, hold_outputs
from .recipe import RecipeError, StageConfig, load_recipe
from .sparsity import SparsityConfigError
from .tasks import task_for
from .train import CheckpointError, evaluate, seed_everything, train
from .utils import OutputWriteError, atomic_write_text


EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

#: File-system refusals that are the environment's doing, not a bug: exit 2 with the path.
_FILE_SYSTEM_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "ENAMETOOLONG", "ENOTDIR", "EISDIR", "ELOOP")
    if hasattr(errno, name)
)


class UsageError(ValueError):
    """A command-line value the toolkit cannot use."""


def _input_errors() -> tuple[type[BaseException], ...]:
    """Every exception class that means "bad input" rather than a bug."""
    return (
        UsageError, FormatError, DataError, ModelError, RecipeError, SparsityConfigError, CheckpointError,
        ModelCheckpointError, PipelineError, InfoError, LayerKeyError, OutputInUseError, OutputWriteError,
        FileNotFoundError, IsADirectoryError, PermissionError, ChoiceError,
    )


def _outputs_of(args: argparse.Namespace) -> dict[str, Any]:
    """What a command writes, for :func:`jointsparse.output_lock.hold_outputs`."""
    if args.command == "train":
        return {"outputs": [args.output], "side_files": (".ckpt", ".jsonl")}
    if args.command == "compress":
        return {"outputs": [args.output], "work_dirs": [args.workdir or f"{args.output}.work"]}
    if args.command == "decode":
        return {"outputs": [args.output]}
    return {"outputs": []}


def _error_message(error: BaseException) -> str:
    """One line for the user; an OSError names the user's path (never a hidden temp file)."""
    if isinstance(error, OutputWriteError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        reason = "does not exist" if isinstance(error, FileNotFoundError) else (error.strerror or "cannot be used").lower()
        return f"{error.filename} {reason}"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# ------------------------------------------------------------------------------------ helpers


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg needs KEY=VALUE, got {pair!r}")
        kwargs[key] = _parse_value(value)
    return kwargs


def _data_options(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Data options: command-line flags over the given defaults (a recipe's or a file's)."""
    merged = dict(defaults or {})
    for key in ("name", "resize", "channels", "subset", "batch_size", "eval_batch_size", "root"):
        flag = "data" if key == "name" else key
        value = getattr(args, flag, None)
        if value is not None:
            merged[key] = value
    if not merged.get("name"):
        raise UsageError("no dataset: give --data NAME (digits, fashion-mnist, mnist, sr-natural, imagefolder:PATH)")
    return merged


def _loaders(options: dict[str, Any], seed: int):
    return make_loaders(
        options["name"], batch_size=options.get("batch_size") or 128, eval_batch_size=options.get("eval_batch_size") or 256,
        seed=seed, resize=options.get("resize"), channels=options.get("channels"), subset=options.get("subset"),
        root=options.get("root"),
    )


def _data_record(options: dict[str, Any], info: Any) -> dict[str, Any]:
    record = {k: v for k, v in options.items() if v is not None}
    record["input_size"] = [info.in_channels, *info.input_size]
    return record


def _write_json(path: str | None, payload: Any) -> None:
    if path:

        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


#: Options that say how a run is driven, not what it makes: left out of the recorded invocation
#: (so a resumed run records what an uninterrupted one does).
_NOT_RECORDED = frozenset({"resume", "quiet", "json", "debug", "workdir", "help", "func", "subparser"})
_PATH_OPTIONS = frozenset({"checkpoint", "recipe", "root", "input"})


def _portable_path(path: str, out: Path) -> str:
    """``path`` as the output file sees it: relative to the output's (resolved) directory."""
    return os.path.relpath(os.path.realpath(path), os.path.realpath(out.parent))


def _portable_data(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """A data record with its paths (``root``, ``imagefolder:PATH``) as the output sees them."""
    record = dict(record)
    if record.get("root"):
        record["root"] = _portable_path(record["root"], out)
    name = record.get("name") or ""
    if name.startswith("imagefolder:"):
        record["name"] = "imagefolder:" + _portable_path(name.removeprefix("imagefolder:"), out)
    return record


def normalised_invocation(args: argparse.Namespace, out: Path) -> str:
    """The command line that makes ``out``, however this run was spelled: the sub-command, every
    option with its resolved value (defaults included), paths relative to the output's
    directory, the output by its name; never ``--resume`` or other options that do not change
    the result. A resumed run thus records exactly what an uninterrupted one does."""
    words = ["jointsparse", args.command]
    options: list[str] = []
    for action in args.subparser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in _NOT_RECORDED or value is None or value is False or value == []:
            continue
        if action.dest == "output":
            value = out.name
        elif action.dest in _PATH_OPTIONS:
            value = _portable_path(value, out)
        elif action.dest == "data" and value.startswith("imagefolder:"):
            value = _portable_data({"name": value}, out)["name"]
        if not action.option_strings:
            words.append(str(value))
            continue
        flag = max(action.option_strings, key=len)
        for item in (value if isinstance(value, list) else [value]):
            options += [flag] if item is True else [flag, str(item)]
    return shlex.join(words + options)


def _check_output(path: str, suffix: str | None = None) -> Path:
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"output {path!r} is a directory")
    if suffix and out.suffix != suffix:
        raise UsageError(f"output {path!r} should end in {suffix}")
    return out


def _force_map(items: Sequence[str] | None) -> dict[str, str]:
    """``--force LAYER=FORM`` options (LAYER a name or glob) as a dict."""
    forced: dict[str, str] = {}
    for item in items or []:
        name, sep, form = item.partition("=")
        if not sep or not name or not form:
            raise UsageError(f"--force takes LAYER=FORM (FORM: dense, spatial or winograd), got {item!r}")
        forced[name] = form
    return forced


def _auto_options(args: argparse.Namespace) -> dict[str, Any]:
    """decode() keywords for ``--domain auto`` from --batch/--threads/--force/--input-size."""
    if getattr(args, "domain", None) != "auto":
        if getattr(args, "force", None):
            raise UsageError("--force applies to --domain auto")
        return {}
    if args.batch < 1 or (args.threads is not None and args.threads < 1):
        raise UsageError("--batch and --threads must be >= 1")
    size = [int(v) for v in args.input_size.split(",")] if getattr(args, "input_size", None) else None
    return {"batch": args.batch, "threads": args.threads, "force": _force_map(args.force), "input_size": size}


def _print_choices(model: Any, threads: int | None, batch: int) -> None:
    choices = getattr(model, "deployment_choices", None)
    if choices:
        print(f"per-layer deployment (timed at batch {batch}, {threads or 'current'} thread(s)):")
        for line in format_choices(choices):
            print(f"  {line}")


def _print_choices_dict(choices: dict[str, Any], auto: dict[str, Any]) -> None:
    class _Holder:
        deployment_choices = choices

    _print_choices(_Holder(), auto.get("threads"), auto.get("batch", 1))


def _load_any(path: str, domain: str | None, model_name: str | None, model_kwargs: dict[str, Any], auto: dict[str, Any] | None = None):
    """A runnable model from a .jsz file (decoded to ``domain``) or a checkpoint, plus where
    its data options are recorded."""
    if path.endswith(".jsz"):

        manifest = read_manifest(path)
        model = decode(path, domain=domain or "spatial", **(auto or {}))
        data = (manifest.get("provenance") or {}).get("data") or {}
        return model, data
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if domain not in (None, "dense"):
        raise UsageError("--domain applies to .jsz files; a checkpoint runs as it was saved")
    model, payload = load_model(path, model_name, model_kwargs)
    return model, (payload.get("meta") or {}).get("data") or {}


# ----------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    out = _check_output(args.output)
    options = _data_options(args)
    seed_everything(args.seed)
    train_loader, test_loader, info = _loaders(options, args.seed)
    task = task_for(info)
    kwargs = {**task.model_kwargs(info), **_model_kwargs(args.model_arg)}
    model = get_model(args.model, **kwargs)
    stage = StageConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                        weight_decay=args.weight_decay, schedule=args.schedule, max_steps_per_epoch=args.max_steps or 0)
    result = train(
        model, train_loader, test_loader, stage.train_config(seed=args.seed, device=args.device, progress=not args.quiet),
        checkpoint_path=f"{out}.ckpt", resume="auto" if args.resume else False, log_path=f"{out}.jsonl", stage="dense", task=task,
    )
    save_model(out, model.state_dict(), model.jointsparse_arch,
               meta={"data": _data_record(options, info), f"test_{task.metric}": result.test_metric, "epochs": args.epochs})
    Path(f"{out}.ckpt").unlink(missing_ok=True)
    print(f"dense {args.model}: test {task.metric} {task.format(result.test_metric)} after {args.epochs} epoch(s); wrote {out}")
    return EXIT_OK


def cmd_compress(args: argparse.Namespace) -> int:
    out = _check_output(args.output, ".jsz")
    recipe = load_recipe(args.recipe)
    model, payload = load_model(args.checkpoint, args.model, _model_kwargs(args.model_arg))
    saved_data = {k: v for k, v in ((payload.get("meta") or {}).get("data") or {}).items() if k != "input_size"}
    recipe_data = {k: v for k, v in vars(recipe.data).items() if v is not None}
    options = _data_options(args, {**saved_data, **recipe_data})
    seed_everything(args.seed)
    train_loader, test_loader, info = _loaders(options, args.seed)
    data_record = _data_record(options, info)
    fingerprint = {"checkpoint": os.path.abspath(args.checkpoint), "data": data_record, "seed": args.seed}
    result = compress(
        model, train_loader, test_loader, recipe, out, workdir=args.workdir, resume=args.resume, device=args.device,
        seed=args.seed, progress=not args.quiet, fingerprint=fingerprint,
        provenance={"data": _portable_data(data_record, out), "command": normalised_invocation(args, out)}, task=task_for(info),
    )
    summary = _compress_summary(result, out, task_for(info))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, task_for(info))
    return EXIT_OK


def _compress_summary(result: Any, out: Path, task: Any) -> dict[str, Any]:
    """The run's figures; the per-stage scores under the task's metric name (``accuracy``, ``psnr``)."""
    total = result.report["total"]
    return {
        "file": str(out),
        "bytes": out.stat().st_size,
        "compression_ratio": total["compression_ratio"],
        "weights_only_ratio": total["weights_only_ratio"],
        "metric": task.metric,
        task.metric: result.scores,
        "seconds": result.seconds,
        "densities": result.densities,
    }


def _print_summary(summary: dict[str, Any], task: Any) -> None:
    print()
    print(f"{'stage':<12} {'test ' + task.metric:>14}")
    for stage, value in summary[task.metric].items():
        print(f"{stage:<12} {task.format(value):>14}")
    print()
    print(f"{'layer':<24} {'spatial density':>16} {'winograd density':>17}")
    for name, dens in summary["densities"].items():
        wino = "-" if dens["winograd"] is None else f"{dens['winograd']:.3f}"
        print(f"{name:<24} {dens['spatial']:>16.3f} {wino:>17}")
    print()
    print(f"wrote {summary['file']}: {summary['bytes']:,} bytes, compression {summary['compression_ratio']:.1f}x "
          f"(weights only {summary['weights_only_ratio']:.1f}x)")


def cmd_decode(args: argparse.Namespace) -> int:
    out = _check_output(args.output)
    auto = _auto_options(args)
    arch, state, manifest = decode_state(args.input)
    meta = {"source": os.path.abspath(args.input), "data": (manifest.get("provenance") or {}).get("data")}
    if args.domain == "auto":

        choices = decode(args.input, domain="auto", **auto).deployment_choices
        _print_choices_dict(choices, auto)
        meta["deployment_choices"] = {name: entry["choice"] for name, entry in choices.items()}
        winograd = {k: v for k, v in winograd_weights(args.input).items() if choices[k]["choice"] == "winograd"}
        for module in winograd:
            del state[f"{module}.weight"]
        save_model(out, state, arch, domain="winograd" if winograd else "spatial", winograd=winograd, meta=meta)
    elif args.domain == "winograd":
        winograd = winograd_weights(args.input)
        for module in winograd:
            del state[f"{module}.weight"]
        save_model(out, state, arch, domain="winograd", winograd=winograd, meta=meta)
    else:
        save_model(out, state, arch, domain="spatial", meta=meta)
    print(f"wrote {out} ({args.domain} domain; load with jointsparse.checkpoint.load_model)")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    auto = _auto_options(args)
    model, recorded = _load_any(args.input, args.domain, args.model, _model_kwargs(args.model_arg), auto)
    recorded = {k: v for k, v in recorded.items() if k != "input_size"}
    options = _data_options(args, recorded)
    _, test_loader, info = _loaders(options, 0)
    task = task_for(info)
    result = evaluate(model, test_loader, args.device, task)
    payload = {"input": args.input, "domain": args.domain or ("spatial" if args.input.endswith(".jsz") else "dense"),
               "data": options["name"], **result}
    choices = getattr(model, "deployment_choices", None)
    if choices:
        payload["deployment_choices"] = choices
    if args.json:
        print(json.dumps(payload))
    else:
        _print_choices(model, auto.get("threads"), auto.get("batch", 1))
        print(f"{args.input} [{payload['domain']}] on {options['name']}: {task.metric} {task.format(result['metric'])}, "
              f"loss {result['loss']:.4f} ({result['n']} images)")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    size = [int(v) for v in args.input_size.split(",")] if args.input_size else None
    auto = _auto_options(args)
    payload = info_payload(args.input, size)
    if auto:

        payload["deployment_choices"] = decode(args.input, domain="auto", **auto).deployment_choices
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
        return EXIT_OK
    print(format_report(payload["report"]))
    macs = payload.get("macs")
    if macs:
        print()
        print(f"MACs per image at {'x'.join(map(str, macs['input_size']))}:")
        print(f"{'layer':<24} {'dense':>14} {'sparse spatial':>15} {'sparse winograd':>16}")
        for row in macs["layers"]:
            wino = "-" if row["sparse_winograd_macs"] is None else f"{row['sparse_winograd_macs']:,}"
            print(f"{row['name']:<24} {row['dense_macs']:>14,} {row['sparse_spatial_macs']:>15,} {wino:>16}")
        print(f"computation reduction: spatial {macs['reduction_spatial']:.2f}x, winograd {macs['reduction_winograd']:.2f}x "
              f"(products only, the paper's convention), winograd {macs['reduction_winograd_with_transforms']:.2f}x "
              "with the input and output tile transforms")
    else:
        print("(no input size recorded: pass --input-size C,H,W for the MAC table)")
    if auto:
        print()
        _print_choices_dict(payload["deployment_choices"], auto)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    options = dict(batch=args.batch, repeats=args.repeats, threads=args.threads,
                   input_size=[int(v) for v in args.input_size.split(",")] if args.input_size else None)
    rows = bench_file(args.input, **options)
    whole = bench_model(args.input, **options)
    if args.json:
        print(json.dumps({"layers": rows, "model": whole}, indent=2))
    else:
        print(format_bench(rows, threads=args.threads, batch=args.batch, whole=whole))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out), quiet=args.quiet)


# ------------------------------------------------------------------------------------- parser


def _add_data(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", required=required, help="digits, fashion-mnist, mnist or imagefolder:PATH")
    group.add_argument("--data-root", dest="root", help="where the dataset's files are (default: the system location)")
    group.add_argument("--resize", type=int, help="resize images to this side (pixels)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="replicate grey images to 3 channels")
    group.add_argument("--subset", type=int, help="use only this many training images")
    group.add_argument("--batch-size", type=int, help="training batch size (default 128)")
    group.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default 256)")


def _add_auto(parser: argparse.ArgumentParser, input_size: bool = True) -> None:
    group = parser.add_argument_group("--domain auto (per-layer choice, timed on this machine; timings cached in ~/.cache/jointsparse)")
    group.add_argument("--batch", type=int, default=1, help="batch size to choose for (default 1)")
    group.add_argument("--threads", type=int, help="torch threads to choose for (default: torch's current setting)")
    group.add_argument("--force", action="append", metavar="LAYER=FORM",
                       help="force a layer (name or glob, e.g. 'features.*') to dense, spatial or winograd (repeatable)")
    if input_size:
        group.add_argument("--input-size", help="C,H,W to time at (default: recorded in the file)")


def _add_model(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", required=required, help="lenet5, alexnet, resnet18, resnet20, vgg_small or package.module:factory")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="extra model argument (repeatable), e.g. width=0.5")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="jointsparse", description=__doc__.split("\n\n")[0], formatter_class=raw)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, example: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=f"{help_text}\n\nexample:\n  {example}", formatter_class=raw)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(func=func, subparser=p)
        return p

    p = command("train", "train a dense baseline", "jointsparse train --model vgg_small --data digits --epochs 10 -o dense.pt", cmd_train)
    _add_model(p, required=True)
    _add_data(p, required=True)
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    p.add_argument("--max-steps", type=int, help="cap the steps per epoch (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("compress", "retrain under joint sparsity, prune, quantize and code into one .jsz file",
                "jointsparse compress dense.pt --data digits --recipe experiments/recipes/demo.toml -o model.jsz", cmd_compress)
    p.add_argument("checkpoint", help="the trained dense model (from `jointsparse train` or a state_dict)")
    _add_model(p)
    _add_data(p)
    p.add_argument("--recipe", help="TOML recipe (default: built-in defaults)")
    p.add_argument("-o", "--output", required=True, help="the .jsz file to write")
    p.add_argument("--workdir", help="stage checkpoints (default OUTPUT.work)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("decode", "decode a .jsz file into a PyTorch checkpoint of one domain",
                "jointsparse decode model.jsz --domain winograd -o model-winograd.pt", cmd_decode)
    p.add_argument("input")
    p.add_argument("--domain", choices=("spatial", "winograd", "auto"), default="spatial",
                   help="auto: per layer, the fastest of dense, spatial and Winograd, timed on this machine")
    _add_auto(p)
    p.add_argument("-o", "--output", required=True)

    p = command("evaluate", "accuracy and loss of a .jsz file (decoded) or a checkpoint",
                "jointsparse evaluate model.jsz --domain winograd --json", cmd_evaluate)
    p.add_argument("input", help="a .jsz file or a checkpoint")
    p.add_argument("--domain", choices=("spatial", "winograd", "auto"), help="for .jsz files (default spatial)")
    _add_auto(p, input_size=False)
    _add_model(p)
    _add_data(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")

    p = command("info", "per-layer sizes, densities, entropy bounds and MACs of a .jsz file", "jointsparse info model.jsz --json", cmd_info)
    p.add_argument("input")
    p.add_argument("--input-size", help="C,H,W for the MAC table (default: recorded in the file)")
    p.add_argument("--domain", choices=("auto",), help="also choose and report each layer's deployment (timed on this machine)")
    _add_auto(p, input_size=False)
    p.add_argument("--json", action="store_true")

    p = command("bench", "time each decoded layer, and the whole model (dense, spatial, Winograd, auto), against dense", "jointsparse bench model.jsz --batch 1 --threads 1", cmd_bench)
    p.add_argument("input")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--input-size", help="C,H,W (default: recorded in the file)")
    p.add_argument("--json", action="store_true")

    p = command("demo", "the whole pipeline on the embedded digits data, in about a minute", "jointsparse demo --out demo-out", cmd_demo)
    p.add_argument("--out", default="demo-out", help="directory for dense.pt, recipe.toml and model.jsz")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with hold_outputs(**_outputs_of(args)):
            return args.func(args)
    except KeyboardInterrupt:
        print("jointsparse: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into exit codes
        if args.debug:
            raise
        message = _error_message(error)
        if isinstance(error, _input_errors()) or (isinstance(error, OSError) and error.errno in _FILE_SYSTEM_ERRNOS):
            print(f"jointsparse {args.command}: error: {message}", file=sys.stderr)
            return EXIT_USAGE
        print(f"jointsparse {args.command}: internal error: {type(error).__name__}: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
