"""experiments/ctsrcnn_tables.py (issue 14): settings errors in-process, and (slow) the whole
script in smoke mode: every stage, the report, the JSON keys, the committed-file copy, resume."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from jointsparse import superres
from jointsparse.models import get_model

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import ctsrcnn_tables  # noqa: E402
from tuning import load_records  # noqa: E402

ISSUE_KEYS = {"compression_ratio", "macs_reduction_spatial", "macs_reduction_winograd", "macs_reduction_winograd_with_transforms",
              "psnr_dense", "psnr_dense_control", "psnr_spatial", "psnr_winograd", "psnr_bicubic", "test_images", "file", "file_bytes",
              "command", "date"}


@pytest.mark.parametrize("args, message", [
    (["--stages", "dense,bogus"], "--stages must name some of"),
    (["--cascade", "2,5"], "--cascade must be increasing depths"),
    (["--cascade", "3,5", "--cascade-steps", "10"], "one positive step count per cascade depth"),
    (["--cascade", "3,x"], "comma-separated integers"),
    (["--recipe", "no/such.toml"], "recipe no/such.toml not found"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = ctsrcnn_tables.main([*args, "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_drop_breakdown_parts_add_up_to_the_gap():
    joint = {"val_psnr_stages": {"dense": 37.0, "retrain": 36.0, "pruned": 35.9, "finetune": 36.7},
             "val_psnr_decoded": {"spatial": 36.6, "winograd": 36.5}}
    text = ctsrcnn_tables.drop_breakdown(joint, {"val_psnr": 37.2})
    worst, gap, reference, control_part, pruned_part, finetuned_part, coding_part = (float(x) for x in re.findall(r"(\d+\.\d+) dB", text))
    assert (worst, reference) == (36.50, 37.20)
    assert (gap, control_part, finetuned_part, coding_part) == (0.70, 0.20, 0.30, 0.20)
    assert pruned_part == 1.10 and math.isclose(control_part + finetuned_part + coding_part, gap)
    # without a control record (or one written before it kept its validation score) the reference is the dense net
    assert "0.50 dB below the dense net (37.00 dB)" in ctsrcnn_tables.drop_breakdown(joint, None)
    assert "0.50 dB below the dense net (37.00 dB)" in ctsrcnn_tables.drop_breakdown(joint, {"psnr": 31.0})


@pytest.mark.slow
@pytest.mark.skipif(not superres.images_available(), reason="scikit-image's bundled photographs are not installed")
def test_ablation_verdict_says_when_the_rows_cannot_separate_the_regularizers():
    dense = {"psnr_bicubic": 30.37, "psnr": 31.47}
    row = lambda spatial, winograd, density: {"psnr_spatial": spatial, "psnr_winograd": winograd, "winograd_density": density}
    text = ctsrcnn_tables.ablation_verdict({"spatial": row(30.31, 30.13, 0.198), "winograd": row(30.39, 30.29, 0.185), "joint": row(30.50, 30.42, 0.198)}, dense)
    assert text.startswith("At this budget every mode ends near bicubic (30.13 to 30.50 dB against bicubic 30.37 dB and dense 31.47 dB)")
    assert "not at equal Winograd density: the winograd row lands at 0.185, 0.013 below the spatial row." in text
    text = ctsrcnn_tables.ablation_verdict({"spatial": row(31.2, 31.0, 0.2), "joint": row(31.3, 31.25, 0.199)}, dense)
    assert text == "The rows span 31.00 to 31.30 dB (bicubic 30.37, dense 31.47)."


def test_smoke_run_writes_the_tables_and_resumes(tmp_path, capsys):
    argv = ["--smoke", "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")]
    assert ctsrcnn_tables.main(argv) == 0
    payload = json.loads((tmp_path / "o" / "ctsrcnn_tables.json").read_text())
    assert ISSUE_KEYS <= set(payload)
    assert payload["test_images"] == list(superres.TEST_IMAGES)
    for key in ("psnr_dense", "psnr_dense_control", "psnr_spatial", "psnr_winograd", "psnr_bicubic"):
        assert 15 < payload[key] < 60, (key, payload[key])
    assert payload["macs_reduction_winograd"] > payload["macs_reduction_winograd_with_transforms"] > 0
    jsz = tmp_path / "o" / "ctsrcnn.jsz"
    assert jsz.is_file() and jsz.stat().st_size == payload["file_bytes"]
    parameters = sum(p.numel() for p in get_model("ctsrcnn", depth=9).parameters())
    assert math.isclose(payload["compression_ratio"], 4 * parameters / payload["file_bytes"], rel_tol=1e-9)
    assert set(payload["ablation"]) == {"spatial", "winograd", "joint"} and set(payload["targets_met"]) == {"compression", "computation", "psnr", "dense_vs_bicubic"}
    report = (tmp_path / "o" / "ctsrcnn_tables.md").read_text()
    for heading in ("## Dense baseline", "## Per layer", "## Summary (measured)", "## Regularization ablation", "Wall time per stage", "Machine:"):
        assert heading in report
    assert "| conv9 |" in report and "| conv10 |" not in report  # the recipe's depth-9 net, cascaded from depth 3
    capsys.readouterr()
    assert ctsrcnn_tables.main(argv) == 0  # every stage is reused
    out = capsys.readouterr().out
    assert all(f"{stage}: already done" in out for stage in ("dense", "control", "joint"))
    assert json.loads((tmp_path / "o" / "ctsrcnn_tables.json").read_text())["file_bytes"] == payload["file_bytes"]
    other = tmp_path / "o2"  # a finished run reported into another directory takes its file along
    assert ctsrcnn_tables.main(["--smoke", "--work-dir", str(tmp_path / "w"), "--out-dir", str(other)]) == 0
    assert (other / "ctsrcnn.jsz").read_bytes() == jsz.read_bytes()
    assert json.loads((other / "ctsrcnn_tables.json").read_text())["file"] == str(other / "ctsrcnn.jsz")
    capsys.readouterr()
    # a recipe with other bits and a longer fine-tune: the retraining is kept, the rest follows the recipe
    recipe = tmp_path / "r.toml"
    text = ctsrcnn_tables.parse_args([]).recipe.read_text()
    text = re.sub(r"conv_bits = \d+", "conv_bits = 4", text)
    text = re.sub(r"(\[finetune\][^\[]*?lr = )[0-9.e-]+", r"\g<1>0.000123", text)
    assert "conv_bits = 4" in text and "lr = 0.000123" in text
    recipe.write_text(text)
    assert ctsrcnn_tables.main(argv + ["--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "dense: already done" in out and "control: the recipe's training settings changed" in out and "joint: the recipe changed" in out
    assert "keeping the earlier stages, running finetune and later again" in out and "[retrain] already done" in out
    assert not any(f"ablation {mode}: already done" in out for mode in ("spatial", "winograd", "joint"))  # other bits: every row again
    rerun = json.loads((tmp_path / "o" / "ctsrcnn_tables.json").read_text())
    assert rerun["file_bytes"] != payload["file_bytes"] and rerun["psnr_dense"] == payload["psnr_dense"]
    assert "## Where the PSNR goes" in (tmp_path / "o" / "ctsrcnn_tables.md").read_text()
    # a candidate recipe tried on validation only: recorded beside the report, listed in it, never scored on the test images
    capsys.readouterr()
    assert ctsrcnn_tables.main(argv + ["--stages", "tune", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "validation patches only" in out
    # the joint stage ran this very recipe: every trained stage is taken from it
    assert "reusing the retrain, finetune, codebook stage(s) of joint.work" in out
    (tried,) = load_records(tmp_path / "o" / ctsrcnn_tables.TUNING_DIR)
    assert tried["reused"] == {"stages": ["retrain", "finetune", "codebook"], "from": "joint.work"}
    assert tried["recipe_file"] == "r.toml" and "psnr_spatial" not in tried and "per_image" not in tried
    assert set(tried["val_psnr_stages"]) >= {"dense", "retrain", "kept"} and tried["file_bytes"] == rerun["file_bytes"]
    # the file decoded in both domains, on validation: spatial is the in-memory model exactly (weights and biases stored as they were)
    assert set(tried["val_psnr_decoded"]) == {"spatial", "winograd"}
    assert math.isclose(tried["val_psnr_decoded"]["spatial"], tried["val_psnr_stages"]["kept"], abs_tol=1e-3)
    report = (tmp_path / "o" / "ctsrcnn_tables.md").read_text()
    assert "## Recipes tried on validation" in report and f"r.toml ({tried['recipe_digest']}) **= joint**" in report and "| this one |" in report
    assert json.loads((tmp_path / "o" / "ctsrcnn_tables.json").read_text())["tuning"][0]["recipe_digest"] == tried["recipe_digest"]
    assert ctsrcnn_tables.main(argv + ["--stages", "tune", "--recipe", str(recipe)]) == 0
    assert "tune r.toml: already done" in capsys.readouterr().out
    # a candidate that changes only the bits takes the trained stages of a run before it (the
    # joint run and the first candidate hold the same ones; the first in name order is taken)
    other = tmp_path / "r5.toml"
    other.write_text(text.replace("conv_bits = 4", "conv_bits = 5"))
    assert ctsrcnn_tables.main(argv + ["--stages", "tune", "--recipe", str(other)]) == 0
    out = capsys.readouterr().out
    assert "reusing the retrain, finetune stage(s) of joint.work" in out and "[finetune] already done" in out
    (second,) = [r for r in load_records(tmp_path / "o" / ctsrcnn_tables.TUNING_DIR) if r["recipe_file"] == "r5.toml"]
    assert second["reused"] == {"stages": ["retrain", "finetune"], "from": "joint.work"}
    assert second["val_psnr_stages"]["finetune"] == tried["val_psnr_stages"]["finetune"]
    assert "the retrain, finetune stage(s) taken from" in (tmp_path / "o" / "ctsrcnn_tables.md").read_text()
