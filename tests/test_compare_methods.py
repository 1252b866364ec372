"""Smoke test of experiments/compare_methods.py: the --quick run writes real .jsz files and a
table whose numbers agree with the files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jointsparse.codecs import report

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "compare_methods.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_files_and_table(tmp_path):
    script = _load_script()
    argv = ["--quick", "--out-dir", str(tmp_path), "--methods", "joint_sparsity,deep_compression,channel_sparse"]
    assert script.main(argv) == 0
    payload = json.loads((tmp_path / "compare_methods.json").read_text())
    records = payload["results"]["lenet5"]
    assert [r["method"] for r in records] == ["joint_sparsity", "deep_compression", "channel_sparse"]
    for record in records:
        jsz = tmp_path / "lenet5" / f"{record['method']}.jsz"
        total = report(jsz)["total"]
        assert record["file_bytes"] == jsz.stat().st_size == total["file_bytes"]
        assert record["spatial_density"] == pytest.approx(total["density"])
        assert record["macs"]["spatial"] < record["macs"]["dense"]
        for key in ("dense", "compressed", "decoded_spatial", "decoded_winograd"):
            assert 0.0 <= record["accuracy"][key] <= 1.0
        # the spatial decode runs the same quantized weights the pipeline ended with
        assert record["accuracy"]["decoded_spatial"] == pytest.approx(record["accuracy"]["compressed"], abs=0.02)
        assert record["huffman_relative_index_bytes"] > 0
    # the target-driven methods reach their 80% target; channel_sparse leaves FC layers dense
    by_method = {r["method"]: r for r in records}
    assert by_method["deep_compression"]["spatial_density"] == pytest.approx(0.2, abs=0.01)
    assert by_method["deep_compression"]["bits"] == {"conv": 8, "linear": 5}
    assert by_method["channel_sparse"]["spatial_density"] > 0.5
    table = (tmp_path / "compare_methods.md").read_text()
    assert "| joint_sparsity |" in table and "Winograd target" in table
    assert (tmp_path / "compare_methods.png").stat().st_size > 1000

    # a second run with the same settings reuses the per-method results
    stamp = (tmp_path / "lenet5" / "joint_sparsity.jsz").stat().st_mtime_ns
    assert script.main(argv[:3] + ["--methods", "joint_sparsity"]) == 0
    assert (tmp_path / "lenet5" / "joint_sparsity.jsz").stat().st_mtime_ns == stamp


def test_unknown_method_and_model_are_named():
    script = _load_script()
    with pytest.raises(script.CompareError, match="unknown method 'nope'"):
        script.parse_args(["--methods", "nope"])
    with pytest.raises(script.CompareError, match="unknown model 'resnet9'"):
        script.parse_args(["--models", "resnet9"])


def test_per_model_strengths():
    script = _load_script()
    assert script.per_model("0.03", "lenet5", "--l1-lam") == 0.03
    assert script.per_model("lenet5=0.02,vgg_small=0.04", "vgg_small", "--l1-lam") == 0.04
    with pytest.raises(script.CompareError, match="names no value for vgg_small"):
        script.parse_args(["--l1-lam", "lenet5=0.02"])
    with pytest.raises(script.CompareError, match="give a number"):
        script.parse_args(["--group-lam", "lenet5=big"])
