"""The real command line, driven end to end as a user would (subprocesses), on digits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jointsparse.demo import DEMO_RECIPE
from jointsparse.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "vgg_small", "--model-arg", "width=0.25"]
QUICK_RECIPE = """\
[regularizer]
update_every = 5
[sparsity.spatial]
"*" = 0.5
[sparsity.winograd]
"*" = 0.5
[retrain]
epochs = 4
lr = 0.02
[finetune]
epochs = 1
lr = 0.005
[codebook]
epochs = 1
lr = 0.0005
[quantize]
conv_bits = 5
linear_bits = 5
[data]
batch_size = 64
"""


def run(*args, check=True, timeout=900):  # generous: CI machines are shared
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "jointsparse.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """train -> compress on digits, shared by the tests below."""
    work = tmp_path_factory.mktemp("cli")
    dense, recipe, packed = work / "dense.pt", work / "recipe.toml", work / "model.jsz"
    recipe.write_text(QUICK_RECIPE)
    run("train", *MODEL, "--data", "digits", "--epochs", "6", "--batch-size", "64", "--quiet", "-o", dense)
    out = run("compress", dense, "--data", "digits", "--recipe", recipe, "--quiet", "--json", "-o", packed)
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    return work, dense, recipe, packed, summary


def test_end_to_end_decoded_domains_match_the_compressed_model(pipeline):
    work, dense, recipe, packed, summary = pipeline
    before = summary["accuracy"]["codebook"]
    info = json.loads(run("info", packed, "--json").stdout)
    original_params = info["report"]["total"]["original_parameter_count"]
    assert info["report"]["total"]["compression_ratio"] == pytest.approx(32 * original_params / (8 * os.path.getsize(packed)))
    assert info["macs"]["reduction_spatial"] > 1.0
    for domain in ("spatial", "winograd"):
        target = work / f"{domain}.pt"
        run("decode", packed, "--domain", domain, "-o", target)
        payload = torch.load(target, weights_only=True)
        assert payload["domain"] == domain
        from_file = json.loads(run("evaluate", packed, "--domain", domain, "--json").stdout)
        from_checkpoint = json.loads(run("evaluate", target, "--json").stdout)
        assert abs(from_file["accuracy"] - before) <= 0.01, (domain, from_file, before)
        assert from_checkpoint["accuracy"] == pytest.approx(from_file["accuracy"], abs=1e-9)


def test_info_text_and_bench(pipeline):
    _, _, _, packed, _ = pipeline
    text = run("info", packed).stdout
    assert "compression" in text and "winograd" in text.lower()
    bench = json.loads(run("bench", packed, "--repeats", "2", "--json").stdout)
    assert any(row["winograd_ms"] is not None for row in bench["layers"])
    assert set(bench["model"]["models"]) == {"dense", "spatial", "winograd", "auto"}
    assert all(entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"] for entry in bench["model"]["models"].values())
    assert "whole model" in run("bench", packed, "--repeats", "2").stdout


def test_domain_auto_in_evaluate_decode_and_info(pipeline, tmp_path, monkeypatch):
    work, _, _, packed, summary = pipeline
    monkeypatch.setenv("JOINTSPARSE_CACHE_DIR", str(tmp_path / "cache"))
    result = json.loads(run("evaluate", packed, "--domain", "auto", "--threads", "1", "--force", "*=spatial", "--json").stdout)
    spatial = json.loads(run("evaluate", packed, "--domain", "spatial", "--json").stdout)
    assert result["domain"] == "auto" and result["accuracy"] == pytest.approx(spatial["accuracy"], abs=1e-9)
    assert {entry["choice"] for entry in result["deployment_choices"].values()} == {"spatial"}
    text = run("evaluate", packed, "--domain", "auto", "--batch", "2").stdout
    assert "per-layer deployment" in text and (tmp_path / "cache" / "layer_timings.json").is_file()
    target = work / "auto.pt"
    run("decode", packed, "--domain", "auto", "--threads", "1", "-o", target)
    payload = torch.load(target, weights_only=True)
    choices = payload["meta"]["deployment_choices"]
    assert set(payload["winograd"]) == {name for name, choice in choices.items() if choice == "winograd"}
    info = json.loads(run("info", packed, "--domain", "auto", "--json").stdout)
    assert set(info["deployment_choices"]) == set(choices)
    message = expect_usage_error(run("evaluate", packed, "--domain", "auto", "--force", "nosuch*=dense", check=False))
    assert "match no layer" in message
    assert "LAYER=FORM" in expect_usage_error(run("evaluate", packed, "--domain", "auto", "--force", "dense", check=False))


def expect_usage_error(result, *, no_file=None):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    if no_file is not None:
        assert not Path(no_file).exists()
    return lines[0]


def test_bad_input_gives_exit_2_and_one_line(pipeline, tmp_path):
    work, dense, recipe, packed, _ = pipeline
    out = tmp_path / "out.pt"
    assert "does not exist" in expect_usage_error(run("decode", tmp_path / "missing.jsz", "--domain", "spatial", "-o", out, check=False), no_file=out)

    corrupt = tmp_path / "corrupt.jsz"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    expect_usage_error(run("decode", corrupt, "--domain", "spatial", "-o", out, check=False), no_file=out)
    truncated = tmp_path / "truncated.jsz"
    truncated.write_bytes(packed.read_bytes()[:100])
    expect_usage_error(run("evaluate", truncated, "--json", check=False))

    jsz = tmp_path / "x.jsz"
    assert "lenet5" in expect_usage_error(run("compress", dense, "--model", "lenet5", "--data", "digits", "-o", jsz, check=False), no_file=jsz)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sparsity.spatial]\nconv1 = 1.5\n")
    assert "sparsity.spatial" in expect_usage_error(run("compress", dense, "--recipe", bad, "-o", jsz, check=False), no_file=jsz)
    assert "unknown dataset" in expect_usage_error(run("train", *MODEL, "--data", "cifar-1000", "-o", out, check=False), no_file=out).lower()
    expect_usage_error(run("train", "--model", "nonet", "--data", "digits", "-o", out, check=False), no_file=out)
    assert ">= 1" in expect_usage_error(run("bench", packed, "--batch", "0", check=False))


def test_compress_resume_continues_after_a_kill(pipeline, tmp_path):
    _, dense, _, _, _ = pipeline
    recipe = tmp_path / "slow.toml"
    recipe.write_text(QUICK_RECIPE.replace("epochs = 4", "epochs = 30\nmax_steps_per_epoch = 2"))
    packed = tmp_path / "model.jsz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "jointsparse.cli", "compress", str(dense), "--recipe", str(recipe), "--quiet", "-o", str(packed)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = Path(f"{packed}.work") / "retrain.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.2)
    assert checkpoint.exists(), "no epoch checkpoint appeared"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not packed.exists()
    saved_epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert saved_epoch < 30, "the run finished before it was killed; nothing was resumed"
    resumed = run("compress", dense, "--recipe", recipe, "--quiet", "--resume", "-o", packed, timeout=600)
    assert packed.exists()
    log = [json.loads(line) for line in (Path(f"{packed}.work") / "retrain.jsonl").read_text().splitlines()]
    epochs = [entry["epoch"] for entry in log if entry.get("kind") == "epoch"]
    assert epochs == list(range(1, 31)), epochs  # no epoch redone or skipped
    assert f"resuming after epoch {saved_epoch}" in resumed.stdout


def test_demo_recipe_matches_the_shipped_example():
    shipped = load_recipe(ROOT / "experiments" / "recipes" / "demo.toml")
    import tomllib

    assert shipped == parse_recipe(tomllib.loads(DEMO_RECIPE))


def test_cli_polish_in_process(pipeline, tmp_path, capsys, monkeypatch):
    from jointsparse import __version__
    from jointsparse.cli import main

    _, dense, _, packed, _ = pipeline
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    # --debug works before the command as well as after it.
    missing = tmp_path / "missing.jsz"
    for argv in (["--debug", "info", str(missing)], ["info", str(missing), "--debug"]):
        with pytest.raises(Exception):
            main(argv)
    assert main(["info", str(missing)]) == 2
    # No command writes over its own input; a missing output directory is an error.
    before = packed.read_bytes()
    assert main(["decode", str(packed), "--domain", "spatial", "-o", str(packed)]) == 2
    assert packed.read_bytes() == before
    assert "is the input" in capsys.readouterr().err
    assert main(["decode", str(packed), "--domain", "spatial", "-o", str(tmp_path / "no" / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()
    # A usage error is one line.
    with pytest.raises(SystemExit) as exit_info:
        main(["decode", str(packed), "-o", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "--domain" in err
    # A reader that goes away mid-output is not an error.

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(packed), "--json"]) == 0


def test_model_input_mismatch_is_exit_2_with_a_hint_and_leaves_nothing(tmp_path, capsys):
    from jointsparse.cli import main

    out = tmp_path / "lenet.pt"
    assert main(["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--quiet", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lenet5 needs at least 16 px inputs" in err and "--resize 16" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert main(["train", "--model", "vgg_small", "--model-arg", "in_channels=3", "--data", "digits", "--epochs", "1",
                 "--quiet", "-o", str(out)]) == 2
    assert "--channels 3" in capsys.readouterr().err


def test_rejected_compress_leaves_no_work_directory(pipeline, tmp_path, capsys):
    from jointsparse.cli import main

    _, dense, _, _, _ = pipeline
    recipe = tmp_path / "baseline.toml"
    recipe.write_text("[regularizer]\noptions = { strength = 1.0 }\n")  # options are for baselines only
    packed = tmp_path / "m.jsz"
    assert main(["compress", str(dense), "--recipe", str(recipe), "--quiet", "-o", str(packed)]) == 2
    assert "baseline methods" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.toml"]
    recipe.write_text('[quantize]\ncodebook_selection = "best"\n')  # it would pick codebooks on the test split
    assert main(["compress", str(dense), "--recipe", str(recipe), "--quiet", "-o", str(packed)]) == 2
    assert "evaluates on the test split" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.toml"]


# ---------------------------------------------------- in-process: locks, debris, file-system errors


@pytest.fixture
def small_file(tmp_path):
    """A real .jsz file (LeNet-5, random weights, half pruned) in a directory of its own."""
    from jointsparse.codecs import encode
    from jointsparse.models import get_model

    torch.manual_seed(0)
    model = get_model("lenet5")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(module.weight.abs() > module.weight.abs().median())
    path = tmp_path / "model.jsz"
    encode(model, path, bits=4, winograd_sparsity=0.5)
    return path


def cli_error(capsys, *argv):
    from jointsparse import cli

    code = cli.main([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_decode_refuses_an_output_another_run_holds(small_file, capsys):
    out = small_file.parent / "model.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom jointsparse.output_lock import OutputLock\nwith OutputLock(sys.argv[1]):\n"
         "    print('locked', flush=True)\n    sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, lines = cli_error(capsys, "decode", small_file, "--domain", "spatial", "-o", out)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert code == 2 and len(lines) == 1, lines
    assert f"PID {holder.pid}" in lines[0] and "in use" in lines[0]
    assert not out.exists()


def test_decode_removes_debris_of_killed_writers_and_leaves_only_its_output(small_file, capsys, monkeypatch):
    directory = small_file.parent
    debris = directory / f".model.pt.{dead_pid()}.abcd1234.tmp"
    debris.write_bytes(b"half a checkpoint")
    temp_names = []
    real_replace = os.replace

    def spy_replace(source, target):
        temp_names.append(Path(source).name)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy_replace)
    code, lines = cli_error(capsys, "decode", small_file, "--domain", "winograd", "-o", directory / "model.pt")
    assert code == 0, lines
    assert sorted(os.listdir(directory)) == ["model.jsz", "model.pt"]
    assert temp_names and all(name.startswith(f".model.pt.{os.getpid()}.") for name in temp_names)


@pytest.mark.parametrize(
    "failing, code, reason",
    [("write", "ENOSPC", "No space left on device"), ("fsync", "ENOSPC", "No space left on device"),
     ("replace", "EROFS", "Read-only file system"), ("open", "EACCES", "Permission denied")],
)
def test_a_file_system_refusal_exits_2_naming_the_output_and_leaves_nothing(small_file, capsys, monkeypatch, failing, code, reason):
    import errno

    directory = small_file.parent
    out = directory / "model.pt"
    number = getattr(errno, code)
    real = getattr(os, failing)

    def refuse(*args, **kwargs):
        if failing == "open" and not str(args[0]).startswith(str(directory)):
            return real(*args, **kwargs)  # reading the input and imports still work
        if failing == "write" and args[0] in (1, 2):
            return real(*args, **kwargs)
        raise OSError(number, os.strerror(number), *(args[:1] if failing in ("open", "replace") else ()))

    monkeypatch.setattr(os, failing, refuse)
    status, lines = cli_error(capsys, "decode", small_file, "--domain", "spatial", "-o", out)
    monkeypatch.undo()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0] == f"jointsparse decode: error: cannot write {out}: {reason}"
    assert os.listdir(directory) == ["model.jsz"]


TINY_RECIPE = """\
[sparsity.spatial]
"*" = 0.5
[sparsity.winograd]
"*" = 0.5
[retrain]
epochs = 1
max_steps_per_epoch = 3
[finetune]
epochs = 1
max_steps_per_epoch = 3
[codebook]
epochs = 1
max_steps_per_epoch = 3
[data]
batch_size = 32
"""


def test_a_resumed_compress_writes_the_bytes_of_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """Provenance records the normalised invocation: not --resume, not how paths were spelled."""
    from jointsparse import cli
    from jointsparse.checkpoint import save_model
    from jointsparse.codecs import read_manifest
    from jointsparse.models import get_model
    from jointsparse.sparsity import JointSparsity

    torch.manual_seed(0)
    model = get_model("vgg_small", width=0.125, hidden=32)
    save_model(tmp_path / "dense.pt", model.state_dict(), model.jointsparse_arch)
    (tmp_path / "recipe.toml").write_text(TINY_RECIPE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = ["--data", "digits", "--subset", "256", "--quiet"]
    uninterrupted = tmp_path / "a" / "model.jsz"

    def run_cli(*argv: str) -> int:
        monkeypatch.setattr(sys, "argv", ["jointsparse", *argv])  # as if typed in a shell
        return cli.main(list(argv))

    assert run_cli("compress", str(tmp_path / "dense.pt"), *common, "--recipe", str(tmp_path / "recipe.toml"), "-o", str(uninterrupted)) == 0

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path / "b")
    with monkeypatch.context() as patch:
        patch.setattr(JointSparsity, "prune", killed)  # killed right after the retraining stage
        assert run_cli("compress", "../dense.pt", *common, "--recipe", "../recipe.toml", "-o", "model.jsz") == 130
    assert not (tmp_path / "b" / "model.jsz").exists() and (tmp_path / "b" / "model.jsz.work" / "retrain.done").is_file()
    resumed = tmp_path / "b" / "model.jsz"
    assert run_cli("compress", str(tmp_path / "b" / ".." / "dense.pt"), *common, "--recipe", "./../recipe.toml", "--resume",
                   "--output", "./model.jsz") == 0
    assert "already done" in capsys.readouterr().out
    assert resumed.read_bytes() == uninterrupted.read_bytes()
    command = read_manifest(resumed)["provenance"]["command"]
    assert "--resume" not in command and "--output model.jsz" in command and " ../dense.pt " in command, command


def test_recode_writes_an_older_file_in_this_version_and_refuses_bad_input(tmp_path, capsys):
    from jointsparse import cli
    from jointsparse.codecs import decode_state, load
    from jointsparse.codecs.framing import VERSION

    source = Path(__file__).parent / "data" / "format_v4.jsz"
    out = tmp_path / "recoded.jsz"
    assert cli.main(["recode", str(source), "-o", str(out)]) == 0
    assert f"-> {out.stat().st_size:,} bytes" in capsys.readouterr().out
    assert load(out).manifest["version"] == VERSION
    old, new = decode_state(source)[1], decode_state(out)[1]
    assert all(torch.equal(old[name], new[name]) for name in old)
    truncated = tmp_path / "cut.jsz"
    truncated.write_bytes(source.read_bytes()[:100])
    for argv, message in (([str(truncated), "-o", str(tmp_path / "a.jsz")], "truncated"),
                          ([str(out), "-o", str(out)], "is the input"),
                          ([str(source), "-o", str(tmp_path / "a.pt")], "should end in .jsz")):
        code, lines = cli_error(capsys, "recode", *argv)
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "a.jsz").exists()
