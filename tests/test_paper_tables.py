"""experiments/alexnet_tables.py and resnet18_tables.py (issue 7): settings errors, the report's
layout, and (slow) both scripts end to end in smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import paper_tables  # noqa: E402

TABLE_B_KEYS = {"compression_ratio", "weights_only_ratio", "macs_reduction_spatial", "macs_reduction_winograd", "macs_reduction_winograd_with_transforms",
                "top1_dense", "top1_spatial", "top1_winograd", "command", "date"}


def run_script(name: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPERIMENTS / f"{name}_tables.py"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--stages", "dense,bogus"], "--stages must name some of"),
    (["--subset", "0"], "--subset must be >= 1"),
    (["--recipe", "no/such/recipe.toml"], "recipe no/such/recipe.toml not found"),
    (["--stages", "highres", "--highres-resolution", "0"], "the highres stage needs --highres-resolution"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, message):
    result = run_script("alexnet", *args, "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o"), timeout=600)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_later_stage_without_dense_is_a_clear_error(tmp_path):
    result = run_script("resnet18", "--stages", "joint", "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o"), timeout=600)
    assert result.returncode == 2
    assert "run the dense stage first" in result.stderr


def _record(ratio: float, top1: tuple[float, float], macs: tuple[float, float]) -> dict:
    layer = {"name": "conv2", "params": 100, "density": 0.2, "winograd_density": 0.25, "bits": 6, "coded_bytes": 40,
             "dense_macs": 1e6, "sparse_spatial_macs": 2e5, "sparse_winograd_macs": 1e5}
    return {"command": "python x.py", "date": "2026-12-01", "code": "abc", "resolution": [67, 67], "train_images": 10, "test_images": 5,
            "layers": [layer], "macs": {"dense": 1e6, "spatial": 2e5, "winograd": 1e5, "winograd_with_transforms": 1.6e5, "input_size": [3, 227, 227]},
            "density": 0.2, "winograd_density": 0.25, "file_bytes": 1234, "compression_ratio": ratio, "weights_only_ratio": ratio + 1,
            "macs_reduction_spatial": macs[0], "macs_reduction_winograd": macs[1], "macs_reduction_winograd_with_transforms": 6.25, "top1_dense": 90.0,
            "top1_spatial": top1[0], "top1_winograd": top1[1], "seconds": {"compress": 1.0}}


def test_report_flags_each_missed_target(tmp_path):
    from alexnet_tables import SPEC

    work = tmp_path / "work"
    work.mkdir()
    (work / "dense.json").write_text(json.dumps({"command": "python x.py", "date": "2026-12-01", "code": "abc", "seconds": 5.0, "epochs": 1, "lr": 0.01, "top1": 90.0}))
    (work / "joint.json").write_text(json.dumps(_record(50.0, (89.5, 88.5), (4.0, 5.0))))
    high = _record(60.0, (80.0, 80.5), (4.5, 7.0))
    high.update(resolution=[211, 211], adaptation_epochs=3, adaptation_lr=0.01, top1_dense_before_adaptation=40.0, top1_dense=81.0, dense_seconds=9.0)
    (work / "highres.json").write_text(json.dumps(high))
    args = paper_tables.parse_args(SPEC, ["--work-dir", str(work), "--out-dir", str(tmp_path / "out")])
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "compression 50.0x vs >= 47.7x: met" in md
    assert "computation 5.00x (better domain) vs >= 5.1x: **missed**" in md
    assert "top-1 drop 1.50 pt (worse domain) vs <= 1.0 pt: **missed**" in md
    assert "| conv2 | 100 | 0.200 | 0.250 | 6 | 40 |" in md
    # the MAC conventions are the cost model's own words, and both Winograd figures are shown
    from jointsparse.cost import WINOGRAD_PRODUCTS_CONVENTION, WINOGRAD_TRANSFORMS_CONVENTION
    assert f"Winograd-sparse MACs: {WINOGRAD_PRODUCTS_CONVENTION}" in md
    assert f"Counting {WINOGRAD_TRANSFORMS_CONVENTION}, the Winograd deployment needs 0.2M (6.25x fewer than dense)" in md
    assert "| 5.00x | 6.25x |" in md
    assert "adapted to 211 px for 3 epoch(s)" in md and "top-1 40.00% before, 81.00% after" in md
    assert "211 px, no copying" in md and "compression 60.0x vs >= 47.7x: met" in md
    assert "47.7x" in md and "Deep Compression" in md and "not measured here" in md
    payload = json.loads((tmp_path / "out" / "alexnet_tables.json").read_text())
    assert TABLE_B_KEYS <= set(payload)
    assert payload["targets_met"] == {"compression": True, "computation": False, "accuracy": False}
    assert payload["highres"]["resolution"] == 211 and payload["highres"]["targets_met"]["computation"] is True
    # one invocation that ran two stages is listed once
    assert md.count("python x.py    #") == 1


def _smoke(name: str, tmp_path: Path, tag: str) -> tuple[str, dict]:
    work = tmp_path / f"{name}-{tag}"
    result = run_script(name, "--smoke", "--no-progress", "--work-dir", str(work), "--out-dir", str(work))
    assert result.returncode == 0, result.stderr[-2000:]
    return (work / f"{name}_tables.md").read_text(), json.loads((work / f"{name}_tables.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_smoke_run_writes_every_table(tmp_path, name):
    md, payload = _smoke(name, tmp_path, "a")
    for heading in ("## Table A: per layer", "## Table B: summary (measured)", "## Table C: regularization ablation", "Quoted from the papers"):
        assert heading in md
    assert TABLE_B_KEYS <= set(payload)
    assert payload["compression_ratio"] > 1 and payload["macs_reduction_winograd"] > 1
    assert set(payload["ablation"]) == {"spatial", "winograd", "joint"}
    if name == "alexnet":
        assert "highres" in payload and payload["highres"]["resolution"] == 211
        assert "copies each pool5 value 36 time(s)" in md
    else:  # the same seed gives the same file: densities and bytes
        _, again = _smoke(name, tmp_path, "b")
        assert again["file_bytes"] == payload["file_bytes"]
        assert again["ablation"] == payload["ablation"]
