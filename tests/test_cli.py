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
    assert any(row["winograd_ms"] is not None for row in bench)


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
