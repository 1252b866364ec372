"""The ``jointsparse`` command line.

Exit codes: 0 success; 2 usage or input errors (a missing or corrupted file, a checkpoint that
does not fit the model, a bad recipe value, an unknown dataset, an output another run is writing,
a file system that refuses an output: full, read-only, no permission); 1 an internal failure.
Errors print one line; ``--debug`` shows the traceback.

``train``, ``compress``, ``decode`` and ``recode`` lock their output (and ``compress`` its work directory)
for the whole run, see :mod:`jointsparse.output_lock`.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .bench import bench_file, bench_model, format_bench
from .checkpoint import ModelCheckpointError, load_model, save_model
from .codecs import (
    CODERS,
    DEFAULT_CODER,
    FormatError,
    decode,
    decode_state,
    format_report,
    recode,
    winograd_weights,
)
from .codecs.framing import VERSION
from .compress import PipelineError, compress
from .data import DataError, make_loaders
from .data import canonical_name as canonical
from .demo import run_demo
from .export import ExportError, export_onnx, export_safetensors
from .info import InfoError, info_payload, trust_gate
from .layers import LayerKeyError
from .models import ModelError, check_input, get_model, is_user_factory
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
        FileNotFoundError, IsADirectoryError, PermissionError, ChoiceError, ExportError,
    )


def _outputs_of(args: argparse.Namespace) -> dict[str, Any]:
    """What a command writes, for :func:`jointsparse.output_lock.hold_outputs`."""
    if args.command == "train":
        return {"outputs": [args.output], "side_files": (".ckpt", ".jsonl")}
    if args.command == "compress":
        return {"outputs": [args.output], "work_dirs": [args.workdir or f"{args.output}.work"]}
    if args.command in ("decode", "recode"):
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


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} needs comma-separated numbers (one per channel), got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} values must be finite, got {text!r}")
    return values


#: Data options a file records and later commands reuse (flags override them).
_DATA_KEYS = ("name", "resize", "channels", "subset", "batch_size", "eval_batch_size", "root", "mean", "std", "normalize")


def _data_options(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Data options: command-line flags over the given defaults (a recipe's or a file's)."""
    merged = {k: v for k, v in (defaults or {}).items() if k in _DATA_KEYS and v is not None}
    for key in ("name", "resize", "channels", "subset", "batch_size", "eval_batch_size", "root"):
        flag = "data" if key == "name" else key
        value = getattr(args, flag, None)
        if value is not None:
            merged[key] = value
    if getattr(args, "data", None) is not None and args.data != (defaults or {}).get("name"):
        # Another dataset: the recorded statistics were the old one's.
        merged.pop("mean", None), merged.pop("std", None)
    for key in ("mean", "std"):
        if getattr(args, key, None) is not None:
            merged[key] = _floats(getattr(args, key), f"--{key}")
            merged["normalize"] = True
    if getattr(args, "no_normalize", False):
        if getattr(args, "mean", None) is not None or getattr(args, "std", None) is not None:
            raise UsageError("--no-normalize contradicts --mean/--std")
        merged.update(normalize=False, mean=None, std=None)
    if not merged.get("name"):
        raise UsageError("no dataset: give --data NAME (digits, fashion-mnist, mnist, sr-natural, npz:PATH, imagefolder:PATH)")
    return merged


def _loaders(options: dict[str, Any], seed: int, require_test: bool = True):
    return make_loaders(
        options["name"], batch_size=options.get("batch_size") or 128, eval_batch_size=options.get("eval_batch_size") or 256,
        seed=seed, resize=options.get("resize"), channels=options.get("channels"), subset=options.get("subset"),
        root=options.get("root"), normalize=options.get("normalize", True), mean=options.get("mean"), std=options.get("std"),
        require_test=require_test,
    )


def _data_record(options: dict[str, Any], info: Any) -> dict[str, Any]:
    """What a file records about its data: the options, the input size and the normalisation applied."""
    record = {k: v for k, v in options.items() if v is not None and k in _DATA_KEYS}
    record.update(input_size=[info.in_channels, *info.input_size], normalize=info.mean is not None,
                  mean=None if info.mean is None else list(info.mean), std=None if info.std is None else list(info.std))
    return record


def _warn(message: str) -> None:
    print(f"jointsparse: warning: {message}", file=sys.stderr)


def canonical_name(name: str) -> str:

    try:
        return canonical(name)
    except ValueError:
        return name


def _check_data_matches(recorded: dict[str, Any], info: Any, what: str) -> None:
    """Warn when the data differs from what the file was trained on (it would run, quietly, at chance)."""
    size = recorded.get("input_size")
    now = [info.in_channels, *info.input_size]
    if size and list(size) != now:
        _warn(f"{what} was trained on {'x'.join(map(str, size))} inputs, this data gives {'x'.join(map(str, now))}")
    if recorded.get("name") and canonical_name(recorded["name"]) != canonical_name(info.name):
        _warn(f"{what} was trained on {recorded['name']!r}, not {info.name!r}")


def _check_input(model: Any, info: Any, label: str) -> None:

    check_input(model, (info.in_channels, *info.input_size), label)


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _not_input(out: Path, *inputs: str) -> None:
    """No command writes over one of its own inputs."""
    for path in inputs:
        if path and _same_file(out, path):
            raise UsageError(f"output {str(out)!r} is the input {path!r}: choose another output name")


def _write_json(path: str | None, payload: Any) -> None:
    if path:

        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


#: Options that say how a run is driven, not what it makes: left out of the recorded invocation
#: (so a resumed run records what an uninterrupted one does).
_NOT_RECORDED = frozenset({"resume", "quiet", "json", "debug", "workdir", "help", "func", "subparser", "trust"})
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
    if not out.parent.is_dir():  # documented: outputs go into existing directories only
        raise UsageError(f"output directory {str(out.parent)!r} does not exist (create it first)")
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


def _trust_gate(path: str, trust: bool) -> dict[str, Any]:
    """The file's manifest, once its architecture may be built: a registry model, or ``--trust``
    for a file that names its own factory (one message for every command)."""
    return trust_gate(path, trust)


def _decode_file(path: str, domain: str, trust: bool, auto: dict[str, Any] | None = None):
    """``codecs.decode`` behind the trust gate (``auto``: the ``--domain auto`` keywords)."""
    manifest = _trust_gate(path, trust)
    return decode(path, domain=domain, allow_imports=trust, **(auto or {})), manifest


def _load_any(path: str, domain: str | None, model_name: str | None, model_kwargs: dict[str, Any], trust: bool,
              auto: dict[str, Any] | None = None):
    """A runnable model from a .jsz file (decoded to ``domain``) or a checkpoint, where its data
    options are recorded, and a label for what runs (the domain, or the checkpoint's kind)."""
    if path.endswith(".jsz"):
        model, manifest = _decode_file(path, domain or "spatial", trust, auto)
        return model, (manifest.get("provenance") or {}).get("data") or {}, domain or "spatial"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if domain not in (None, "dense"):
        raise UsageError("--domain applies to .jsz files; a checkpoint runs as it was saved")
    model, payload = load_model(path, model_name, model_kwargs, trust=trust)
    _note_layout(path, payload)
    kind = payload.get("domain") or "dense"
    label = "dense checkpoint" if kind == "dense" else f"decoded {kind} checkpoint"
    return model, (payload.get("meta") or {}).get("data") or {}, label


def _note_layout(path: str, payload: dict[str, Any]) -> None:
    if payload.get("layout") not in (None, "jointsparse-model", "state_dict"):
        print(f"jointsparse: {path}: read the model weights from {payload['layout']}", file=sys.stderr)


# ----------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    out = _check_output(args.output)
    options = _data_options(args)
    seed_everything(args.seed)
    train_loader, test_loader, info = _loaders(options, args.seed, require_test=False)
    if test_loader is None:
        print(f"jointsparse: note: {options['name']} has no test split; training without evaluation", file=sys.stderr)
    task = task_for(info)
    model = get_model(args.model, optional=task.model_kwargs(info), **_model_kwargs(args.model_arg))
    _check_input(model, info, args.model)
    stage = StageConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                        weight_decay=args.weight_decay, schedule=args.schedule, max_steps_per_epoch=args.max_steps or 0)
    side_files = [Path(f"{out}.ckpt"), Path(f"{out}.jsonl")]
    try:
        result = train(
            model, train_loader, test_loader, stage.train_config(seed=args.seed, device=args.device, progress=not args.quiet),
            checkpoint_path=side_files[0], resume="auto" if args.resume else False, log_path=side_files[1], stage="dense", task=task,
        )
    except Exception:
        if not side_files[0].exists():  # no epoch finished: nothing to resume, so leave nothing behind
            side_files[1].unlink(missing_ok=True)
        raise
    save_model(out, model.state_dict(), model.jointsparse_arch,
               meta={"data": _data_record(options, info), f"test_{task.metric}": result.test_metric, "epochs": args.epochs})
    side_files[0].unlink(missing_ok=True)
    print(f"dense {args.model}: test {task.metric} {task.format(result.test_metric)} after {args.epochs} epoch(s); wrote {out}")
    return EXIT_OK


def cmd_compress(args: argparse.Namespace) -> int:
    out = _check_output(args.output, ".jsz")
    _not_input(out, args.checkpoint)
    recipe = load_recipe(args.recipe)
    if recipe.quantize.codebook_selection == "best":  # it would choose on the test split, which is all compress scores on
        raise UsageError('quantize.codebook_selection = "best" chooses on the evaluation data, and `jointsparse compress` evaluates on the '
                         'test split; use "last" here (the experiment scripts, which hold out a validation split, can use "best")')
    model, payload = load_model(args.checkpoint, args.model, _model_kwargs(args.model_arg), trust=args.trust)
    _note_layout(args.checkpoint, payload)
    saved_data = {k: v for k, v in ((payload.get("meta") or {}).get("data") or {}).items() if k != "input_size"}
    recipe_data = {k: v for k, v in vars(recipe.data).items() if v is not None}
    options = _data_options(args, {**saved_data, **recipe_data})
    seed_everything(args.seed)
    train_loader, test_loader, info = _loaders(options, args.seed, require_test=False)
    if test_loader is None:
        print(f"jointsparse: note: {options['name']} has no test split; compressing without evaluation (accuracies are '-')", file=sys.stderr)
    _check_data_matches((payload.get("meta") or {}).get("data") or {}, info, args.checkpoint)
    _check_input(model, info, getattr(model, "jointsparse_arch", {}).get("name", "the model"))
    data_record = _data_record(options, info)
    fingerprint = {"checkpoint": os.path.abspath(args.checkpoint), "data": data_record, "seed": args.seed}
    workdir = Path(args.workdir or f"{out}.work")
    existed = workdir.exists()
    try:
        result = compress(
            model, train_loader, test_loader, recipe, out, workdir=workdir, resume=args.resume, device=args.device,
            seed=args.seed, progress=not args.quiet, fingerprint=fingerprint, input_size=data_record["input_size"],
            provenance={"data": _portable_data(data_record, out), "command": normalised_invocation(args, out)}, task=task_for(info),
        )
    except Exception:
        # A run rejected before any stage finished leaves no work directory behind.
        if not existed and workdir.is_dir() and not any(workdir.glob("*.done")) and not any(workdir.glob("*.ckpt")):
            shutil.rmtree(workdir, ignore_errors=True)
        raise
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
        task.metric: {stage: None if math.isnan(value) else value for stage, value in result.scores.items()},
        "seconds": result.seconds,
        "densities": result.densities,
        "regularization": result.regularization,
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
    _not_input(out, args.input)
    auto = _auto_options(args)
    arch, state, manifest = decode_state(args.input)
    if arch and arch.get("name"):

        if is_user_factory(arch["name"]) and not args.trust and args.domain != "auto":
            print(f"jointsparse: note: not checked against {arch['name']!r} (that imports it): pass --trust to check", file=sys.stderr)
        elif args.domain != "auto":
            _decode_file(args.input, "spatial", args.trust)  # builds the architecture: refuses tensors that do not fit
    meta = {"source": os.path.basename(args.input), "data": (manifest.get("provenance") or {}).get("data")}
    if args.domain == "auto":
        choices = _decode_file(args.input, "auto", args.trust, auto)[0].deployment_choices
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
    model, recorded, label = _load_any(args.input, args.domain, args.model, _model_kwargs(args.model_arg), args.trust, auto)
    options = _data_options(args, {k: v for k, v in recorded.items() if k != "input_size"})
    _, test_loader, info = _loaders(options, 0)
    _check_data_matches(recorded, info, args.input)
    _check_input(model, info, args.input)
    task = task_for(info)
    result = evaluate(model, test_loader, args.device, task)
    payload = {"input": args.input, "domain": label, "data": options["name"], **result}
    choices = getattr(model, "deployment_choices", None)
    if choices:
        payload["deployment_choices"] = choices
    if args.json:
        print(json.dumps(payload))
    else:
        _print_choices(model, auto.get("threads"), auto.get("batch", 1))
        print(f"{args.input} [{label}] on {options['name']}: {task.metric} {task.format(result['metric'])}, "
              f"loss {result['loss']:.4f} ({result['n']} images)")
    return EXIT_OK


INFO_LEGEND = """legend: dense = multiplications of the dense layer; sparse spatial = of the non-zero spatial weights;
sparse winograd = of the non-zero Winograd-domain weights per tile ('-' for layers without a Winograd
form, which run spatially); reduction = dense total / sparse total, products only unless it says
"with the input and output tile transforms"."""


def _input_size(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        size = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-size needs C,H,W (three integers), got {text!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise UsageError(f"--input-size needs C,H,W (three positive integers), got {text!r}")
    return size


def cmd_info(args: argparse.Namespace) -> int:
    auto = _auto_options(args)
    payload = info_payload(args.input, _input_size(args.input_size), trust=args.trust)
    if auto:
        payload["deployment_choices"] = _decode_file(args.input, "auto", args.trust, auto)[0].deployment_choices
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
        print(INFO_LEGEND)
    else:
        print("(no input size recorded: pass --input-size C,H,W for the MAC table)")
    if auto:
        print()
        _print_choices_dict(payload["deployment_choices"], auto)
    return EXIT_OK


def cmd_recode(args: argparse.Namespace) -> int:
    out = _check_output(args.output, ".jsz")
    _not_input(out, args.input)
    before, after = recode(args.input, out, coder=args.coder, contexts=not args.order0)
    print(f"wrote {out}: {before:,} -> {after:,} bytes ({after / before:.4f}x), format version {VERSION}, the same weights")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    if min(args.batch, args.repeats, args.threads) < 1:
        raise UsageError("--batch, --repeats and --threads must be >= 1")
    trust_gate(args.input, args.trust)
    options = dict(batch=args.batch, repeats=args.repeats, threads=args.threads, input_size=_input_size(args.input_size),
                   allow_imports=args.trust)
    rows = bench_file(args.input, **options)
    whole = bench_model(args.input, **options)
    if args.json:
        print(json.dumps({"layers": rows, "model": whole}, indent=2))
    else:
        print(format_bench(rows, threads=args.threads, batch=args.batch, whole=whole))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:

    out = _check_output(args.output or str(Path(args.input).with_suffix(f".{args.format}")), f".{args.format}")
    _not_input(out, args.input)
    if args.format == "onnx":
        _trust_gate(args.input, args.trust)
        result = export_onnx(args.input, out, trust=args.trust, input_size=_input_size(args.input_size))
        print(f"wrote {out} ({result['bytes']:,} bytes; spatial deployment, input 'input' [N, {', '.join(map(str, result['input_size']))}], output 'output')")
    else:
        result = export_safetensors(args.input, out)
        print(f"wrote {out} ({result['bytes']:,} bytes; {result['tensors']} tensors, {result['winograd_layers']} Winograd layer(s) in CSR; layout in docs/format.md)")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out), quiet=args.quiet)


# ------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit 2, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every flag's default shown (unless its help names it already,
    or it is a switch or a required flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or action.required or not action.option_strings:
            return text
        if isinstance(action.default, list) and not action.default:
            return text
        return f"{text} (default: %(default)s)"


def _add_data(parser: argparse.ArgumentParser, required: bool = False, recorded: bool = False) -> None:
    group = parser.add_argument_group("data" + (" (default: as recorded in the file)" if recorded else ""))
    group.add_argument("--data", required=required, default=None, metavar="NAME",
                       help="digits, fashion-mnist, mnist, npz:PATH (x_train, y_train[, x_test, y_test]) or imagefolder:PATH")
    group.add_argument("--data-root", dest="root", metavar="DIR", help="where fashion-mnist/mnist IDX files are (default: the system location)")
    group.add_argument("--resize", type=int, metavar="PX", help="resize images to PX x PX (default: native size)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="replicate grey images to 3 channels (default: native)")
    group.add_argument("--subset", type=int, metavar="N", help="use only N training images (default: all)")
    group.add_argument("--batch-size", type=int, metavar="N", help="training batch size (default: 128)")
    group.add_argument("--eval-batch-size", type=int, metavar="N", help="evaluation batch size (default: 256)")
    group.add_argument("--mean", metavar="M[,M,...]", help="normalisation mean, one value per channel (default: the dataset's training-split statistics)")
    group.add_argument("--std", metavar="S[,S,...]", help="normalisation std, one value per channel (default: as --mean)")
    group.add_argument("--no-normalize", action="store_true", help="feed images scaled to [0, 1] without normalisation")


def _add_auto(parser: argparse.ArgumentParser, input_size: bool = True) -> None:
    group = parser.add_argument_group("--domain auto (per-layer choice, timed on this machine; timings cached in ~/.cache/jointsparse)")
    group.add_argument("--batch", type=int, default=1, help="batch size to choose for (default 1)")
    group.add_argument("--threads", type=int, help="torch threads to choose for (default: torch's current setting)")
    group.add_argument("--force", action="append", metavar="LAYER=FORM",
                       help="force a layer (name or glob, e.g. 'features.*') to dense, spatial or winograd (repeatable)")
    if input_size:
        group.add_argument("--input-size", help="C,H,W to time at (default: recorded in the file)")


def _add_model(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", required=required, default=None, metavar="NAME",
                        help="lenet5, alexnet, resnet18, resnet20, vgg_small or module:factory (modules in the current directory import)")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="extra model argument (repeatable), e.g. width=0.5")


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust", action="store_true",
                        help="allow importing and running the model factory (module:factory) or pickled objects the input file names")


def build_parser() -> argparse.ArgumentParser:

    parser = _Parser(prog="jointsparse", description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"jointsparse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str, example: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=f"{help_text}\n\nexample:\n  {example}", formatter_class=_HelpFormatter)
        # SUPPRESS: an unset flag here must not undo `jointsparse --debug COMMAND`.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.set_defaults(func=func, subparser=p)
        return p

    p = command("train", "train a dense baseline", "jointsparse train --model vgg_small --data digits --epochs 10 -o dense.pt", cmd_train)
    _add_model(p, required=True)
    _add_data(p, required=True)
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (its directory must exist)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimizer")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine", help="learning-rate schedule")
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps per epoch, for quick runs (default: no cap)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("compress", "retrain under joint sparsity, prune, quantize and code into one .jsz file",
                "jointsparse compress dense.pt --data digits --recipe experiments/recipes/demo.toml -o model.jsz", cmd_compress)
    p.add_argument("checkpoint", help="the trained dense model: a `jointsparse train` checkpoint, a state_dict, or one under "
                                      "'state_dict', 'model_state_dict' or 'model'")
    _add_model(p)
    _add_data(p, recorded=True)
    _add_trust(p)
    p.add_argument("--recipe", default=None, help="TOML recipe (default: built-in defaults, a = \"auto\")")
    p.add_argument("-o", "--output", required=True, help="the .jsz file to write (its directory must exist)")
    p.add_argument("--workdir", default=None, help="stage checkpoints (default: OUTPUT.work)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished epoch (stages the recipe change does not touch are kept)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("decode", "decode a .jsz file into a PyTorch checkpoint of one domain",
                "jointsparse decode model.jsz --domain winograd -o model-winograd.pt", cmd_decode)
    p.add_argument("input", help="the .jsz file")
    p.add_argument("--domain", choices=("spatial", "winograd", "auto"), required=True,
                   help="the deployment to write; auto: per layer, the fastest of dense, spatial and Winograd, timed on this machine")
    _add_auto(p)
    p.add_argument("-o", "--output", required=True, help="the checkpoint to write (not the input; its directory must exist)")
    _add_trust(p)

    p = command("evaluate", "accuracy and loss of a .jsz file (decoded) or a checkpoint",
                "jointsparse evaluate model.jsz --domain winograd --json", cmd_evaluate)
    p.add_argument("input", help="a .jsz file or a checkpoint")
    p.add_argument("--domain", choices=("spatial", "winograd", "auto"), default=None, help="for .jsz files (default: spatial)")
    _add_auto(p, input_size=False)
    _add_model(p)
    _add_data(p, recorded=True)
    _add_trust(p)
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("info", "per-layer sizes, densities, entropy bounds and MACs of a .jsz file", "jointsparse info model.jsz --json", cmd_info)
    p.add_argument("input", help="the .jsz file")
    p.add_argument("--input-size", default=None, metavar="C,H,W", help="input size for the MAC table (default: recorded in the file)")
    p.add_argument("--domain", choices=("auto",), help="also choose and report each layer's deployment (timed on this machine; builds the model)")
    _add_auto(p, input_size=False)
    _add_trust(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command("bench", "time each decoded layer, and the whole model (dense, spatial, Winograd, auto), against dense",
                "jointsparse bench model.jsz --batch 1 --threads 1", cmd_bench)
    p.add_argument("input", help="the .jsz file")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per layer (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--input-size", default=None, metavar="C,H,W", help="input size (default: recorded in the file)")
    _add_trust(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = command("recode", "write a .jsz file again in this version's format and coders: the same weights, usually fewer bytes",
                "jointsparse recode old.jsz -o new.jsz", cmd_recode)
    p.add_argument("input", help="the .jsz file (any format version this tool reads)")
    p.add_argument("-o", "--output", required=True, help="the .jsz file to write (not the input; its directory must exist)")
    p.add_argument("--coder", choices=CODERS, default=DEFAULT_CODER, help="entropy coder of the streams")
    p.add_argument("--order0", action="store_true", help="order-0 codings only (no context-modelled positions or indices)")

    p = command("export", "export a .jsz file as ONNX (spatial deployment) or safetensors (state_dict + CSR Winograd weights)",
                "jointsparse export model.jsz --format onnx -o model.onnx", cmd_export)
    p.add_argument("input", help="the .jsz file")
    p.add_argument("--format", choices=("onnx", "safetensors"), required=True, help="output format")
    p.add_argument("-o", "--output", default=None, help="the file to write (default: INPUT with the format's suffix)")
    p.add_argument("--input-size", default=None, metavar="C,H,W", help="ONNX input size (default: recorded in the file)")
    _add_trust(p)

    p = command("demo", "the whole pipeline on the embedded digits data, in about a minute", "jointsparse demo --out demo-out", cmd_demo)
    p.add_argument("--out", default="demo-out", help="directory for dense.pt, recipe.toml and model.jsz (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        outputs = _outputs_of(args)
        for out in outputs["outputs"]:
            _check_output(out)  # before the lock, which would create a missing directory
        with hold_outputs(**outputs):
            return args.func(args)
    except KeyboardInterrupt:
        print("jointsparse: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`jointsparse bench --json | head`): stop quietly, and keep
        # Python's shutdown flush from raising again on the closed pipe.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout is not a real file (tests, embedding)
            pass
        return EXIT_OK
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
