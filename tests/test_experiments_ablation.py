"""Smoke test of the two-domain ablation script (experiments/ablation_domains.py --quick)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ablation_domains.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("ablation_domains", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_consistent_table_and_json(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(out), "--work-dir", str(work), "--modes", "spatial,joint"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((out / "ablation_domains.json").read_text())
    markdown = (out / "ablation_domains.md").read_text()

    assert set(report["modes"]) == {"spatial", "joint"}
    assert report["settings"]["dataset"] == "digits" and report["machine"]["torch"]
    for name, entry in [("dense", report["dense"]), *report["modes"].items()]:
        for key in ("retrained_unpruned", "spatial", "winograd", "one_file_winograd"):
            assert 0.0 <= entry["accuracy"][key] <= 1.0, (name, key)
        # Pruning hits the targets: 0.7 sparsity per layer in the domain that deploys it.
        for layer in entry["layers"]:
            assert layer["spatial_density"] == pytest.approx(0.3, abs=0.01), (name, layer["name"])
            if layer["winograd_params"] is not None:
                assert layer["winograd_density"] == pytest.approx(0.3, abs=0.01), (name, layer["name"])
        assert entry["macs_reduction"]["spatial"] > 1 and entry["macs_reduction"]["winograd"] > entry["macs_reduction"]["spatial"]
    assert "spatial_finetuned" in report["modes"]["joint"]["accuracy"]
    assert "joint_within_tolerance" in report["criteria"] and "spatial" in report["criteria"]["single_domain_gap_points"]

    # The table shows the JSON's figures, one row per model, and states how it was made.
    assert "`python " in markdown and "torch " in markdown and "UTC" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and line.count("|") == 9]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["dense", "spatial-only", "joint"]
    joint_spatial = 100 * report["modes"]["joint"]["accuracy"]["spatial"]
    assert f"{joint_spatial:.2f}" in rows[-1]

    # A second run resumes every finished stage from the work dir instead of retraining.
    again = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    assert json.loads((out / "ablation_domains.json").read_text())["modes"]["joint"]["accuracy"] == report["modes"]["joint"]["accuracy"]
    assert "[dense] epoch" not in again.stdout


def test_bad_settings_are_one_line_errors():
    ablation = _load_script()
    with pytest.raises(ablation.AblationError, match="--modes"):
        ablation.parse_args(["--modes", "spatial,bogus"])
    with pytest.raises(ablation.AblationError, match="--sparsity"):
        ablation.parse_args(["--sparsity", "1.0"])


def test_criteria_judge_drops_in_points():
    ablation = _load_script()
    modes = {
        "joint": {"accuracy": {"spatial": 0.905, "winograd": 0.902}},
        "spatial": {"accuracy": {"spatial": 0.905, "winograd": 0.60}},
        "winograd": {"accuracy": {"spatial": 0.89, "winograd": 0.905}},
    }
    verdict = ablation.judge(0.91, modes)
    assert verdict["joint_within_tolerance"] is True
    assert verdict["single_domain_gap_points"]["spatial"] == pytest.approx(30.5)
    assert verdict["single_domain_gap_points"]["winograd"] == pytest.approx(1.5)
    assert verdict["single_domain_loses_clearly_more"] is True
    modes["joint"]["accuracy"]["winograd"] = 0.89
    assert ablation.judge(0.91, modes)["joint_within_tolerance"] is False
