"""experiments/alexnet_tables.py and resnet18_tables.py (issue 7): settings errors, the report's
layout, and (slow) both scripts end to end in smoke mode."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import paper_tables  # noqa: E402

TABLE_B_KEYS = {"compression_ratio", "weights_only_ratio", "macs_reduction_spatial", "macs_reduction_winograd", "macs_reduction_winograd_with_transforms",
                "top1_dense", "top1_spatial", "top1_winograd", "command", "date"}


def run_script(name: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPERIMENTS / f"{name}_tables.py"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--stages", "dense,bogus"], "--stages must name some of"),
    (["--stages", "joint,tune"], "--stages tune runs alone"),
    (["--subset", "0"], "--subset must be >= 1"),
    (["--ablation-modes", "spatial,both"], "--ablation-modes: unknown mode(s) both; choose from spatial, winograd, joint"),
    (["--recipe", "no/such/recipe.toml"], "recipe no/such/recipe.toml not found"),
    (["--stages", "highres", "--highres-resolution", "0"], "the highres stages need --highres-resolution"),
    (["--highres-subset", "500", "--highres-validation", "500"], "--highres-validation (500) must leave training images out of --highres-subset (500)"),
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
    result = run_script("resnet18", "--stages", "deepcomp", "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o"), timeout=600)
    assert result.returncode == 2 and "the deepcomp stage is AlexNet's" in result.stderr


_FAKE_JSZ = (b"JSZ" * 412)[:1234]  # a stage's file, as big as _record says


def _record(ratio: float, top1: tuple[float, float], macs: tuple[float, float]) -> dict:
    layer = {"name": "conv2", "params": 100, "density": 0.2, "winograd_density": 0.25, "bits": 6, "coded_bytes": 40,
             "dense_macs": 1e6, "sparse_spatial_macs": 2e5, "sparse_winograd_macs": 1e5}
    return {"command": "python x.py", "date": "2026-12-01", "code": "abc", "resolution": [67, 67], "train_images": 10, "test_images": 5,
            "layers": [layer], "macs": {"dense": 1e6, "spatial": 2e5, "winograd": 1e5, "winograd_with_transforms": 1.6e5, "input_size": [3, 227, 227]},
            "density": 0.2, "winograd_density": 0.25, "file_bytes": len(_FAKE_JSZ), "compression_ratio": ratio, "weights_only_ratio": ratio + 1,
            "macs_reduction_spatial": macs[0], "macs_reduction_winograd": macs[1], "macs_reduction_winograd_with_transforms": 6.25, "top1_dense": 90.0,
            "top1_spatial": top1[0], "top1_winograd": top1[1], "seconds": {"compress": 1.0}}


def test_report_flags_each_missed_target(tmp_path):
    from alexnet_tables import SPEC

    work = tmp_path / "work"
    work.mkdir()
    (work / "dense.json").write_text(json.dumps({"command": "python x.py", "date": "2026-12-01", "code": "abc", "seconds": 5.0, "epochs": 1, "lr": 0.01, "top1": 90.0}))
    (work / "joint.json").write_text(json.dumps(_record(50.0, (89.5, 88.5), (4.0, 5.0))))
    high = _record(60.0, (80.0, 80.5), (4.5, 7.0))
    high.update(resolution=[211, 211], top1_dense=81.0, settings={"retrain": {}})
    (work / "highres.json").write_text(json.dumps(high))
    curve = [_point("first schedule", 78.0), _point("cycle 1", 80.0), _point("cycle 2", 80.05), _point("cycle 3", 79.9)]
    (work / "highres-dense.json").write_text(json.dumps({
        "command": "python x.py", "date": "2026-12-01", "code": "abc", "seconds": 9.0, "top1": 81.0, "val_top1": 80.05, "kept_epoch": 3, "curve": curve,
        "epochs": 1, "epochs_total": 4, "converged": True, "max_epochs": 10, "min_gain": 0.1, "lr": 0.01, "polish_lr": 0.005, "resolution": [211, 211],
        "train_images": 19500, "validation_images": 500, "test_images": 10000, "val_top1_before": 40.0, "validation_seen_by_start": 361}))
    (work / "highres-control.json").write_text(json.dumps({"command": "python x.py", "date": "2026-12-01", "code": "abc", "seconds": 5.0, "top1": 80.9,
                                                            "steps": 10, "epochs": 4.2}))
    dc = _record(35.0, (89.8, 80.0), (4.0, 4.0))
    dc.update(han_bytes=2000, han_ratio=20.0, densities={"conv1": 0.84, "fc6": 0.09})
    (work / "deepcomp.json").write_text(json.dumps(dc))
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
    assert "validation top-1 40.00% at 211 px before training" in md and "19,500 training images" in md
    assert "Of its 500 validation images, 361 are among the 67 px run's training images" in md and "Its test figures are not" in md
    dense = json.loads((work / "highres-dense.json").read_text())
    (work / "highres-dense.json").write_text(json.dumps({**dense, "validation_seen_by_start": 0}))
    again = paper_tables.write_report(SPEC, args).read_text()
    assert "so the model it starts from never trained on any of them" in again and "are among the 67 px run's training images" not in again
    assert "4 epoch(s) in all, met the stopping rule: epochs 3 and 4 raised the best validation top-1 of the epochs before them by +0.05 pt" in md and "compressed with the full recipe" in md
    assert "| 211 px, no copying (10 training images) | 81.00 | 80.90 | 80.00 | 80.50 | 1.00 | 0.50 |" in md
    assert "| Deep Compression | 0.200 | 89.80 | 0.20 | 2,000 | 20.0x | 1,234 | 35.0x |" in md and "conv1 0.84, fc6 0.09" in md
    assert "Our ratio over Deep Compression's: **2.50x** (against its own coding; 1.43x against our coding of its weights)" in md
    assert "Deep Compression's top-1 (89.80%) is above ours (88.50%, the worse domain): at equal accuracy it could prune more, so the ratio above flatters us." in md
    assert paper_tables._accuracy_remark(80.0, 80.01).startswith("The two are at equal accuracy")
    assert "so the ratio above does not flatter us" in paper_tables._accuracy_remark(79.0, 80.0)
    assert "211 px, no copying" in md and "compression 60.0x vs >= 47.7x: met" in md
    assert "47.7x" in md and "Deep Compression" in md and "not measured here" in md
    payload = json.loads((tmp_path / "out" / "alexnet_tables.json").read_text())
    assert TABLE_B_KEYS <= set(payload)
    assert payload["targets_met"] == {"compression": True, "computation": False, "accuracy": False}
    assert payload["highres"]["resolution"] == 211 and payload["highres"]["targets_met"]["computation"] is True
    assert payload["highres"]["dense_converged"] is True and payload["highres"]["dense_control_top1"] == 80.9
    assert payload["deep_compression"]["ours_over_deep_compression"] == pytest.approx(2.5)
    # the earlier code's highres record (capped recipe, no settings) is not shown as the new row
    high.pop("settings")
    (work / "highres.json").write_text(json.dumps(high))
    path = paper_tables.write_report(SPEC, args)  # it lacks the row the finished tables hold: they stay
    assert path.name == "alexnet_tables_pending.md" and json.loads((tmp_path / "out" / "alexnet_tables.json").read_text())["highres"]["resolution"] == 211
    md = path.read_text()
    assert "This report lacks the high-resolution row that `alexnet_tables.md` holds" in md
    assert "211 px, no copying" not in md and "Its compression is pending." in md
    assert ("211 px row (no copying): **pending** (finished: highres-dense, highres-control; `--stages highres-dense,highres-control,highres` "
            "runs and resumes it)") in md
    pending = json.loads((tmp_path / "out" / "alexnet_tables_pending.json").read_text())["highres"]
    assert pending["status"] == "pending" and pending["stages_finished"] == ["highres-dense", "highres-control"] and "text" not in pending
    # one invocation that ran two stages is listed once
    assert md.count("python x.py    #") == 1
    assert "Started, not finished" not in md
    (work / "ablation.started.json").write_text(json.dumps([{"command": "python x.py --stages ablation", "date": "2026-12-01", "code": "abc"}]))
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "Started, not finished (each resumes from its checkpoints in WORK when its `--stages` command is run again): ablation." in md
    (work / "ablation.started.json").unlink()  # WORK lost it; the stage archive keeps the invocation
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "Started, not finished" not in md
    assert "Started in a sitting whose WORK is gone, not finished (their checkpoints went with it; run again, they start over): ablation." in md


def test_a_missed_accuracy_target_says_where_the_points_went(tmp_path):
    from alexnet_tables import SPEC

    work = tmp_path / "work"
    work.mkdir()
    curve = [_point("first schedule", 86.0), _point("cycle 1", 88.6), _point("cycle 2", 88.65), _point("cycle 3", 88.67)]
    (work / "dense.json").write_text(json.dumps({
        "command": "python x.py", "date": "2026-12-01", "code": "abc", "seconds": 5.0, "top1": 88.0, "val_top1": 88.67, "kept_epoch": 4, "curve": curve,
        "epochs": 1, "epochs_total": 4, "converged": True, "max_epochs": 10, "min_gain": 0.1, "lr": 0.01, "polish_lr": 0.005, "validation_images": 6000}))
    (work / "control.json").write_text(json.dumps({"command": "python x.py", "date": "2026-12-01", "code": "abc", "seconds": 5.0, "top1": 89.5,
                                                   "val_top1": 90.0, "steps": 60, "epochs": 6.0, "curve": [_point("retrain", 90.0)]}))
    joint = _record(60.0, (88.2, 87.6), (4.0, 6.0))
    joint.update(top1_dense=88.0, density=0.058, val_top1_stages={"dense": 88.67, "retrain": 87.2, "pruned": 87.3, "finetune": 88.9, "quantized": 88.8, "codebook": 88.85})
    (work / "joint.json").write_text(json.dumps(joint))
    dc = _record(35.0, (89.0, 89.0), (4.0, 4.0))
    dc.update(top1_dense=88.0, density=0.102, han_bytes=2000, han_ratio=20.0, densities={"fc6": 0.09})
    (work / "deepcomp.json").write_text(json.dumps(dc))
    args = paper_tables.parse_args(SPEC, ["--work-dir", str(work), "--out-dir", str(tmp_path / "out")])
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "top-1 drop 1.90 pt (worse domain) vs <= 1.0 pt: **missed**" in md
    assert ("Why the 67 px proxy (full recipe) misses the accuracy target: on test its decoded file scores 88.20% / 87.60% (spatial / Winograd) "
            "against the dense model's 88.00% (+0.20 / -0.40 pt). Of its 1.90 pt drop, 1.50 pt is what the control's extra training adds to the "
            "dense model and 0.40 pt the file's own loss against the dense model; decode-time Winograd pruning costs 0.60 pt") in md
    assert "On validation the control reaches 90.00% and the pipeline 88.85%" in md
    assert "Deep Compression, from the same dense model at density 0.102 (ours 0.058), is 0.50 pt below the same baseline (ours 1.30 pt in the same, spatial, domain)" in md
    # the dense model met its rule by learning-rate decay: the control's gain says so
    assert "met the stopping rule" in md and "It adds **+1.33 pt** of validation top-1 to the kept dense model (+1.50 pt test)" in md
    assert "Like for like (both spatial deployments): 89.00% vs 88.20%, +0.80 pt for Deep Compression." in md
    assert "The rule's 0.1 pt is 6 of the 6,000 validation images; one standard error of a validation top-1 near 89% is 0.41 pt" in md


def test_table_c_rows_of_another_dense_net_or_data_are_run_again(tmp_path, capsys):
    from resnet18_tables import SPEC

    work = tmp_path / "work"
    args = paper_tables.parse_args(SPEC, ["--work-dir", str(work), "--out-dir", str(tmp_path / "out"), "--stages", "ablation"])
    run = paper_tables.Run(SPEC, args)
    key = run._ablation_key(7)
    row = {"top1_spatial": 90.0}
    (work / "ablation.json").write_text(json.dumps({**key, "modes": {"spatial": row}}))
    assert run._ablation_record(7)["modes"] == {"spatial": row}
    legacy = {name: value for name, value in key.items() if name not in ("dense_weights_digest", "data")}  # a record from before these keys
    (work / "ablation.json").write_text(json.dumps({**legacy, "modes": {"spatial": row}}))
    assert run._ablation_record(7)["modes"] == {"spatial": row}
    (work / "ablation.json").write_text(json.dumps({**key, "dense_weights_digest": "0123456789abcdef", "modes": {"spatial": row}}))
    assert run._ablation_record(7) == {"modes": {}}
    assert "the recorded row(s) spatial were made with another dense_weights_digest; they are run again" in capsys.readouterr().out
    (work / "ablation.json").write_text(json.dumps({**key, "data": {**key["data"], "seed": 1}, "modes": {"spatial": row}}))
    assert run._ablation_record(7) == {"modes": {}} and run._ablation_record(8) == {"modes": {}}
    # the per-row lock: a second holder is told at once, not made to wait
    with paper_tables._exclusive(work / ".ablation-spatial.lock") as first:
        with paper_tables._exclusive(work / ".ablation-spatial.lock", wait=False) as second:
            assert first and not second


def test_validation_is_carved_from_training_with_a_fixed_seed():
    import torch

    from jointsparse.data import TensorImageDataset

    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 2, 2).contiguous()
    data = TensorImageDataset(images, torch.arange(50) % 10, num_classes=10, mean=None, std=None)
    train, val = paper_tables.carve_validation(data, 12, seed=3)
    assert (len(train), len(val)) == (38, 12)
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(50))
    again = paper_tables.carve_validation(data, 12, seed=3)[1]
    assert again.indices.tolist() == val.indices.tolist()
    assert paper_tables.carve_validation(data, 12, seed=4)[1].indices.tolist() != val.indices.tolist()
    # batch indexing passes through, and the images are the base's at the carved indices
    x, y = val[[0, 1]]
    assert x.shape == (2, 1, 2, 2) and y.tolist() == [int(i) % 10 for i in val.indices[:2]]
    assert val.batch_indexing
    with pytest.raises(paper_tables.TablesError, match="--validation"):
        paper_tables.carve_validation(data, 50, seed=0)


def test_convergence_rule():
    curve = lambda *tops: [{"val_top1": t} for t in tops]
    assert not paper_tables.converged(curve(80.0, 80.05), 0.1)  # two epochs: nothing before them to judge against
    assert not paper_tables.converged(curve(80.0, 80.5, 80.55), 0.1)  # epoch 2 raised the best by 0.5
    assert paper_tables.converged(curve(80.0, 80.5, 80.55, 80.58), 0.1)  # epochs 3 and 4: +0.08 over 80.5
    # a dip after a warm restart is not convergence when the next epoch gains (the rule's reason)
    assert not paper_tables.converged(curve(90.0, 92.2, 92.07, 92.4), 0.1)
    assert paper_tables.converged(curve(90.0, 92.2, 92.07, 92.25), 0.1)
    assert paper_tables.converged(curve(90.0, 92.2, 91.0, 90.0), 0.1)


def _point(phase: str, top1: float) -> dict:
    return {"phase": phase, "peak_lr": 0.05, "val_top1": top1, "train_loss": 0.3, "train_top1": 90.0, "seconds": 10.0}


def test_report_measures_drops_against_the_better_of_dense_and_control(tmp_path):
    from resnet18_tables import SPEC

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    curve = [_point("first schedule", 88.0), _point("first schedule", 90.0), _point("cycle 1", 90.6)]
    (work / "dense.json").write_text(json.dumps({
        "command": "python x.py --work-dir /somewhere", "date": "2026-12-02", "code": "abc", "seconds": 30.0, "top1": 90.0, "val_top1": 90.6,
        "kept_epoch": 3, "curve": curve, "epochs": 2, "epochs_total": 3, "converged": False, "max_epochs": 3, "min_gain": 0.1, "lr": 0.05,
        "polish_lr": 0.025}))
    (work / "control.json").write_text(json.dumps({
        "command": "python y.py", "date": "2026-12-02", "code": "abc", "seconds": 20.0, "top1": 90.4, "val_top1": 90.7, "steps": 30, "epochs": 3.28,
        "curve": [_point("retrain", 90.7)]}))
    joint = _record(30.0, (89.9, 89.5), (8.0, 8.5))
    joint.update(validation_images=6, file=str(work / "joint.jsz"),
                 val_top1_stages={"dense": 90.6, "retrain": 89.0, "pruned": 88.5, "finetune": 90.1, "quantized": 89.9, "codebook": 89.7, "kept": 89.9})
    (work / "joint.json").write_text(json.dumps(joint))
    (work / "joint.jsz").write_bytes(_FAKE_JSZ)
    args = paper_tables.parse_args(SPEC, ["--work-dir", str(work), "--out-dir", str(out)])
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "**not converged**: the cap of 3 epochs was hit while the last 2 epochs still raised the best validation top-1 by +2.60 pt" in md
    assert "| 3 | cycle 1 | 0.05 | 0.3000 | 90.60 (kept) | +2.60 |" in md  # the rule's measure: epochs 2-3 over epoch 1
    assert "It adds **+0.10 pt** of validation top-1 to the kept dense model (+0.40 pt test)" in md
    assert "test top-1 **90.40%**" in md and "3.28 epochs" in md
    assert "top-1 drop 0.90 pt (worse domain) vs <= 1.0 pt: met" in md  # 90.4 (control) - 89.5
    assert "| 90.00 | 90.40 | 89.90 | 89.50 | 0.50 | 0.90 |" in md
    assert "| dense | retrained | pruned | fine-tuned | quantized | codebook fine-tuned | in the file |" in md
    assert "| joint | 90.60 | 89.00 | 88.50 | 90.10 | 89.90 | 89.70 | 89.90 |" in md
    assert "Training images 10 and validation images 6 (drawn from the 16 training images" in md
    assert "--work-dir WORK" in md and "/somewhere" not in md
    assert paper_tables._shown("python x.py --out-dir /tmp/o --work-dir /w") == "python x.py --out-dir OUT --work-dir WORK"
    assert paper_tables._shown("python x.py --out-dir experiments/results") == "python x.py --out-dir experiments/results"
    assert paper_tables._shown("python x.py --out-dir experiments/work/c/out --threads 1") == "python x.py --out-dir OUT --threads 1"  # a scratch dir in the checkout
    assert paper_tables._shown("python x.py --out-dir=experiments/results-old") == "python x.py --out-dir=OUT"
    payload = json.loads((out / "resnet18_tables.json").read_text())
    assert {"dense_control_top1", "validation_images", "train_images", "file", "file_bytes", "macs_reduction_winograd_with_transforms"} <= set(payload)
    assert payload["dense_control_top1"] == 90.4 and payload["top1_baseline"] == 90.4 and payload["validation_images"] == 6
    assert (out / "resnet18_tables.jsz").read_bytes() == _FAKE_JSZ and payload["file"].endswith("resnet18_tables.jsz")
    assert payload["dense_converged"] is False and payload["dense_curve_val_top1"] == [88.0, 90.0, 90.6]
    assert "## Table C" not in md  # no ablation record and no earlier table in this out dir
    assert payload["dense_weights_digest"] is None and "digest" not in md  # no dense.pt in WORK
    torch.save({"w": torch.arange(4.0)}, work / "dense.pt")
    md = paper_tables.write_report(SPEC, args).read_text()
    digest = json.loads((out / "resnet18_tables.json").read_text())["dense_weights_digest"]
    assert digest == paper_tables._state_digest({"w": torch.arange(4.0)}) and f"digest is `{digest}`" in md
    assert digest != paper_tables._state_digest({"w": torch.arange(4.0) + 1})
    # an earlier run's Table C is shown, and said to be one
    (out / "resnet18_ablation_earlier.json").write_text(json.dumps({
        "note": "the run of some day.", "remark": "Not at equal density.", "top1_dense": 92.0, "date": "2026-12-01",
        "modes": {"joint": {"top1_spatial": 91.0, "top1_winograd": 90.0, "density": 0.1, "winograd_density": 0.2, "compression_ratio": 30.0}}}))
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "**From the earlier run, not re-run in this one:** the run of some day." in md
    assert "| joint | 91.00 | 90.00 | 1.00 | 2.00 | 0.100 | 0.200 | 30.0x |" in md and "Not at equal density." in md
    assert "equal Winograd density" not in md  # one row: no verdict
    assert json.loads((out / "resnet18_tables.json").read_text())["ablation"]["source"] == "earlier run (not re-run)"
    # finished tables that hold a Table C of their own are not replaced by a report without one, nor their file
    finished = json.loads((out / "resnet18_tables.json").read_text())
    (out / "resnet18_tables.json").write_text(json.dumps({**finished, "ablation": {"modes": {}}}))
    committed = (out / "resnet18_tables.jsz").read_bytes()
    (work / "joint.jsz").write_bytes((b"NEW" * 412)[:len(_FAKE_JSZ)])
    path = paper_tables.write_report(SPEC, args)
    assert path.name == "resnet18_tables_pending.md" and "This report lacks Table C that `resnet18_tables.md` holds" in path.read_text()
    assert (out / "resnet18_tables.jsz").read_bytes() == committed and (out / "resnet18_tables_pending.jsz").read_bytes() == (b"NEW" * 412)[:len(_FAKE_JSZ)]


def test_unfinished_run_reports_its_logged_dense_epochs_and_how_to_resume(tmp_path):
    from resnet18_tables import SPEC

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    args = paper_tables.parse_args(SPEC, ["--report-only", "--data", "digits", "--validation", "97", "--dense-max-epochs", "6",
                                          "--work-dir", str(work), "--out-dir", str(out)])
    assert paper_tables.write_report(SPEC, args) is None  # nothing finished yet
    epoch = lambda n, acc: json.dumps({"kind": "epoch", "epoch": n, "step": 10 * n, "test_acc": acc, "train_loss": 0.5, "train_acc": 0.8, "seconds": 100.0})
    (work / "dense.jsonl").write_text("\n".join([epoch(1, 0.80), epoch(2, 0.85), epoch(3, 0.87)]) + "\n")
    (work / "dense-cycle1.jsonl").write_text(epoch(1, 0.874) + "\n" + '{"kind": "epo')  # a line cut short by a kill
    (work / "dense.started.json").write_text(json.dumps([{"command": "python r.py --work-dir /x", "date": "2026-12-02", "code": "abc"}]))
    md = paper_tables.write_report(SPEC, args).read_text()
    assert "**Status: unfinished.** Pending: dense, control, joint." in md and "Later stages, also pending: ablation." in md
    assert "python r.py --work-dir WORK    # dense: 2026-12-02, code abc" in md
    assert "--stages dense,control,joint --threads 1 --dense-max-epochs 6 --work-dir WORK" in md
    assert "4 epoch(s) done in 400 s" in md and "So far the last 2 epochs raised the best by +2.40 pt: not converged yet." in md
    assert "| 4 | cycle 1 | 0.025 | 0.5000 | 87.40 | +2.40 | 100 |" in md
    assert "1,340 training images and 97 validation images" in md  # digits: 1,437 training images
    assert "1 torch thread(s) per run" in md  # the started command names no --threads: the default
    assert re.search(r"pace of 100 s per dense epoch: dense 1-2 more epoch\(s\), the control [0-9.]+, the joint stage [0-9.]+ epochs", md)
    payload = json.loads((out / "resnet18_tables.json").read_text())
    assert payload["status"] == "unfinished" and payload["file"] is None and payload["dense_control_top1"] is None
    assert payload["dense_curve_val_top1"] == [80.0, 85.0, 87.0, 87.4] and payload["train_images"] == 1340


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_committed_results_carry_the_issue_keys(name):
    payload = json.loads((EXPERIMENTS / "results" / f"{name}_tables.json").read_text())
    for key in ("macs_reduction_winograd_with_transforms", "dense_control_top1", "validation_images", "train_images", "file", "file_bytes"):
        assert key in payload, key
    if payload["file"]:
        path = EXPERIMENTS.parent / payload["file"]
        assert path.is_file() and path.stat().st_size == payload["file_bytes"]


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
    assert 0 < payload["position_vs_order0"] < 1.5 and "their order-0 bound" in md
    if name == "alexnet":
        assert "highres" in payload and payload["highres"]["resolution"] == 211 and payload["highres"]["dense_control_top1"] is not None
        assert payload["deep_compression"]["han_bytes"] > 0 and "## Deep Compression on the same proxy" in md
        assert "copies each pool5 value 36 time(s)" in md
    else:  # the same seed gives the same file: densities and bytes
        _, again = _smoke(name, tmp_path, "b")
        assert again["file_bytes"] == payload["file_bytes"]
        assert again["ablation"] == payload["ablation"]
        # Table C's rows run side by side in two processes and land in one record
        work_b = tmp_path / f"{name}-b"
        (work_b / "ablation.json").unlink()
        common = ["--smoke", "--no-progress", "--stages", "ablation", "--work-dir", str(work_b), "--out-dir", str(work_b)]
        runs = [subprocess.Popen([sys.executable, str(EXPERIMENTS / f"{name}_tables.py"), *common, "--ablation-modes", modes],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for modes in ("spatial,winograd", "joint")]
        for run in runs:
            _, err = run.communicate(timeout=900)
            assert run.returncode == 0, err[-2000:]
        merged = json.loads((work_b / f"{name}_tables.json").read_text())
        assert merged["ablation"] == payload["ablation"]
        # one row run again (--no-resume) leaves the others' rows; a row another process holds is skipped
        again = run_script(name, *common, "--no-resume", "--ablation-modes", "joint")
        assert again.returncode == 0 and "ablation joint: 2 retraining steps" in again.stdout, again.stderr[-2000:]
        assert set(json.loads((work_b / "ablation.json").read_text())["modes"]) == {"spatial", "winograd", "joint"}
        with paper_tables._exclusive(work_b / ".ablation-spatial.lock") as held:
            assert held
            busy = run_script(name, *common, "--no-resume", "--ablation-modes", "spatial")
        assert busy.returncode == 0 and "ablation spatial: another process is running this row; skipped" in busy.stdout
        # a candidate recipe that changes only the bits: scored on validation, kept beside the
        # report, and trained no further than its quantization (the joint stage's retrain and
        # fine-tune are reused)
        work = tmp_path / f"{name}-a"
        candidate = tmp_path / "candidate.toml"
        candidate.write_text((EXPERIMENTS / "recipes" / f"{name}.toml").read_text().replace("conv_bits = 5", "conv_bits = 4"))
        result = run_script(name, "--smoke", "--no-progress", "--stages", "tune", "--recipe", str(candidate), "--work-dir", str(work), "--out-dir", str(work))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "reusing the retrain, finetune stage(s) of joint.work" in result.stdout
        (record_path,) = (work / f"{name}_tuning").glob("candidate-*.json")
        record = json.loads(record_path.read_text())
        assert set(record["val_top1_decoded"]) == {"spatial", "winograd"} and record["reused"]["from"] == "joint.work"
        assert "top1_spatial" not in record  # the test split is not touched
        md = (work / f"{name}_tables.md").read_text()
        assert "## Recipes tried on validation" in md and f"candidate.toml ({record['recipe_digest']})" in md
        assert f"Recipe: `{os.path.relpath(EXPERIMENTS / 'recipes' / f'{name}.toml')}`" in md  # the report stays the committed recipe's


def test_a_record_of_other_settings_is_run_again(tmp_path):
    from types import SimpleNamespace

    lines: list[str] = []
    from resnet18_tables import SPEC

    run = SimpleNamespace(args=SimpleNamespace(work_dir=tmp_path, out_dir=tmp_path / "out"), spec=SPEC, code="test", log=lines.append)
    run.record = lambda stage: paper_tables.Run.record(run, stage)
    (tmp_path / "joint.json").write_text(json.dumps({"settings": {"quantize": {"conv_bits": 5}}}))
    (tmp_path / "control.json").write_text(json.dumps({"steps": 3}))  # written before records carried settings
    assert paper_tables.Run._done(run, "joint", {"quantize": {"conv_bits": 5}})
    assert not paper_tables.Run._done(run, "joint", {"quantize": {"conv_bits": 6}})
    assert "joint: the recipe changed since its record; running it again" in lines
    assert json.loads((tmp_path / "joint.started.json").read_text())[-1]["code"] == "test"
    assert (tmp_path / "out" / "resnet18_stages" / "joint.started.json").read_text() == (tmp_path / "joint.started.json").read_text()
    assert paper_tables.Run._done(run, "control", {"finetune": {}}) and not paper_tables.Run._done(run, "highres")


def test_train_control_restarts_a_stage_whose_checkpoint_has_other_settings(tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from jointsparse.recipe import parse_recipe

    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    model = torch.nn.Linear(4, 2)
    lines: list[str] = []

    def control(finetune_lr: float) -> list[tuple[str, int]]:
        recipe = parse_recipe({"retrain": {"epochs": 1, "lr": 0.1}, "finetune": {"epochs": 1, "lr": finetune_lr}, "codebook": {"epochs": 0}})
        return [(stage, result.steps) for stage, _, result in paper_tables.train_control(
            model, data, data, recipe, tmp_path, seed=0, device="cpu", progress=False, resume=True, log=lines.append)]

    assert control(0.1) == [("retrain", 2), ("finetune", 2)]  # the codebook stage has 0 epochs
    settings = paper_tables.control_settings
    assert settings(parse_recipe({"quantize": {"conv_bits": 4}})) == settings(parse_recipe({}))  # the control does not quantize
    assert settings(parse_recipe({"finetune": {"lr": 0.5}})) != settings(parse_recipe({}))
    assert control(0.05) == [("retrain", 2), ("finetune", 2)]
    assert any("training finetune and the later stages again" in line for line in lines)
    assert not any("training retrain" in line for line in lines)  # the retraining checkpoint still fits


def test_table_c_says_whether_rows_are_at_equal_density_and_who_wins():
    row = lambda top1_winograd, winograd_density: {"top1_spatial": 90.0, "top1_winograd": top1_winograd, "density": 0.104,
                                                   "winograd_density": winograd_density, "compression_ratio": 30.0}
    text = " ".join(paper_tables._ablation_verdict({"spatial": row(89.99, 0.197), "winograd": row(87.0, 0.151), "joint": row(88.37, 0.192)}))
    assert "equal spatial density (within 0.000)" in text
    assert "**not** at equal Winograd density: the winograd row lands at 0.151, 0.046 below the spatial row (Winograd pruning" in text
    assert "**Joint regularization does not beat spatial-only in the Winograd domain here** (88.37% vs 89.99%)" in text
    assert "Decode-time Winograd pruning costs spatial 0.01 pt, winograd 3.00 pt, joint 1.63 pt" in text
    assert "does not shrink what Winograd pruning costs either (1.63 vs 0.01 pt)" in text
    both = {"spatial": {**row(87.0, 0.2), "top1_spatial": 90.0}, "joint": {**row(86.5, 0.2), "top1_spatial": 87.0}}
    text = " ".join(paper_tables._ablation_verdict(both))  # joint loses less to Winograd pruning, more before it
    assert "does shrink what Winograd pruning costs (0.50 vs 3.00 pt), but its spatial model is worse (87.00% vs 90.00%)" in text
    text = " ".join(paper_tables._ablation_verdict({"spatial": row(88.0, 0.2), "joint": row(89.0, 0.195)}))
    assert "at equal Winograd density (within 0.005)" in text and "the paper's point." in text
    assert "no difference at this budget" in " ".join(paper_tables._ablation_verdict({"spatial": row(88.0, 0.2), "joint": row(88.1, 0.2)}))
    sparse = lambda density: {**row(88.0, 0.2), "density": density}
    text = " ".join(paper_tables._ablation_verdict({"spatial": sparse(0.060), "joint": sparse(0.051)}))
    assert "**not** at equal spatial density: the joint row lands at 0.051, 0.009 below the spatial row." in text  # relative: 15% of 0.06
    assert paper_tables._ablation_verdict({"spatial": {**row(88.0, None)}, "joint": row(88.0, 0.2)})  # a layerless density: no crash


def test_table_c_weighs_differences_against_the_test_sets_noise():
    def row(top1_spatial, top1_winograd):
        return {"top1_spatial": top1_spatial, "top1_winograd": top1_winograd, "density": 0.058, "winograd_density": 0.25,
                "compression_ratio": 60.0, "test_images": 10_000}
    # AlexNet's Table C: joint far above spatial-only, level with Winograd-only
    text = " ".join(paper_tables._ablation_verdict({"spatial": row(88.29, 35.39), "winograd": row(88.05, 87.04), "joint": row(87.80, 87.22)}))
    assert "Joint regularization keeps a higher Winograd top-1 than spatial-only (87.22% vs 35.39%), the paper's point." in text
    assert ("Against Winograd-only regularization, joint keeps the same Winograd top-1 within 0.95 pt, two standard errors of a difference "
            "on 10,000 test images (87.22% vs 87.04%), and its spatial top-1 is -0.25 pt from Winograd-only's") in text
    # 0.5 pt apart is noise on 10,000 images, and a real gap beyond it is called
    assert "no difference at this budget" in " ".join(paper_tables._ablation_verdict({"spatial": row(88.0, 86.7), "joint": row(88.0, 87.2)}))
    text = " ".join(paper_tables._ablation_verdict({"spatial": row(88.0, 80.0), "winograd": row(88.0, 85.0), "joint": row(88.0, 87.2)}))
    assert "joint's Winograd top-1 is above it beyond 0.98 pt" in text
    assert paper_tables._noise_points(88.0, 87.0, None) == paper_tables.VERDICT_MARGIN_POINTS  # count unknown: the fixed margin


def test_control_is_tied_to_the_dense_weights_it_starts_from(tmp_path, capsys):
    import torch

    from resnet18_tables import SPEC

    args = paper_tables.parse_args(SPEC, ["--smoke", "--data", "digits", "--resolution", "32", "--no-progress",
                                          "--work-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    torch.set_num_threads(1)
    run = paper_tables.Run(SPEC, args)

    def new_dense(seed: int) -> None:
        torch.manual_seed(seed)
        torch.save(run.new_model(10).state_dict(), tmp_path / "dense.pt")
        (tmp_path / "dense.json").write_text(json.dumps({"num_classes": 10, "top1": 10.0}))

    new_dense(0)
    run.run_control()
    first = json.loads((tmp_path / "control.json").read_text())
    assert first["steps"] > 0 and (tmp_path / "control-retrain.ckpt").is_file()
    run.run_control()
    assert "control: already done" in capsys.readouterr().out
    new_dense(1)  # a new dense model: the control's record and checkpoints are stale
    run.run_control()
    out = capsys.readouterr().out
    assert "its checkpoints started from other dense weights; training afresh" in out
    second = json.loads((tmp_path / "control.json").read_text())
    assert second["settings"]["dense_weights"] != first["settings"]["dense_weights"]
    # a record from before the weights were tied (settings without them) still counts as done
    second["settings"] = paper_tables.control_settings(run.recipe)
    (tmp_path / "control.json").write_text(json.dumps(second))
    run.run_control()
    assert "control: already done" in capsys.readouterr().out


def test_a_gain_equal_to_the_bound_is_not_convergence():
    point = lambda images: {"val_top1": 100 * images / 6000}
    assert not paper_tables.converged([point(5567), point(5573), point(5570)], 0.1)  # +0.1 pt exactly: 6 of 6,000 images
    assert paper_tables.converged([point(5567), point(5572), point(5570)], 0.1)
    # a record the rule's earlier form stopped (the last epoch's own gain, no tolerance) is said to be one
    dense = {"curve": [_point("first schedule", 100 * 5567 / 6000), _point("cycle 1", 100 * 5573 / 6000)], "converged": True, "min_gain": 0.1,
             "validation_images": 6000, "epochs_total": 2, "max_epochs": 8, "epochs": 1, "lr": 0.05, "polish_lr": 0.025, "kept_epoch": 2,
             "val_top1": 92.88, "top1": 92.66}
    text = " ".join(paper_tables._dense_lines(dense))
    assert "stopped at epoch 2 by the rule's earlier form" in text and "(6 of 6,000 validation images)" in text
    assert "it is not converged" in text


def test_report_names_a_stage_that_ran_over_several_invocations(tmp_path):
    from resnet18_tables import SPEC

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "dense.json").write_text(json.dumps({"command": "python x.py", "date": "2026-12-02", "code": "ccc", "seconds": 5.0, "epochs": 1, "lr": 0.01, "top1": 90.0}))
    (work / "joint.json").write_text(json.dumps(_record(30.0, (89.9, 89.5), (8.0, 8.5))))
    (work / "dense.started.json").write_text(json.dumps([{"command": "python x.py", "date": "2026-12-01", "code": c} for c in ("aaa", "bbb", "ccc")]))
    md = paper_tables.write_report(SPEC, paper_tables.parse_args(SPEC, ["--work-dir", str(work), "--out-dir", str(out)])).read_text()
    assert "The dense stage ran over 3 invocations (2026-12-01 to 2026-12-01; code aaa, bbb, ccc)" in md
    assert "The joint stage ran over" not in md
    assert "`+modified`" not in md  # every stamp clean: no note
    (work / "dense.json").write_text(json.dumps({"command": "python x.py", "date": "2026-12-02", "code": "ccc+modified", "seconds": 5.0, "epochs": 1, "lr": 0.01, "top1": 90.0}))
    md = paper_tables.write_report(SPEC, paper_tables.parse_args(SPEC, ["--work-dir", str(work), "--out-dir", str(out)])).read_text()
    assert "code ccc+modified" in md and paper_tables.MODIFIED_NOTE in md


def test_torch_threads_come_from_the_stages_commands():
    assert paper_tables._torch_threads(["python a.py --threads 2 --w x", "python a.py --threads=2"], 1) == "2 torch thread(s) per run"
    assert paper_tables._torch_threads(["python a.py --threads 2", "python a.py --threads 1"], 1) == "1 or 2 torch threads per run (each command's --threads)"
    assert paper_tables._torch_threads(["python a.py"], 3) == "3 torch thread(s) per run"


def test_wall_times_name_the_run_reused_stages_came_from():
    seconds = {"compress": 120.4, "quantize": 1.2, "encode": 3.0}
    assert paper_tables._times(seconds) == "compress 120, quantize 1, encode 3"
    line = paper_tables._times(seconds, {"stages": ["retrain", "finetune", "codebook"], "from": "tune-d5ddbbd2.work"})
    assert line.startswith("compress 120, quantize 1, encode 3 (") and "retrain, finetune, codebook stage(s) taken from `tune-d5ddbbd2.work`" in line


def test_validation_seen_by_start_counts_the_highres_validation_images_the_main_run_trained_on():
    # the same split both times: its validation images are the main run's, none of them trained on
    assert paper_tables.validation_seen_by_start(600, 0, None, 60, None, 60) == 0
    # more validation images than the main run held out: the excess at least was trained on
    seen = paper_tables.validation_seen_by_start(600, 0, None, 60, 210, 100)
    assert 40 <= seen <= 100
    # the main run held out everything but 10 images: at most 10 of any validation were trained on
    assert paper_tables.validation_seen_by_start(600, 0, None, 590, 210, 100) <= 10
    # the tables' defaults (60,000 Fashion-MNIST training images, seed 0): none; most of the 1,000 before the
    # highres validation was drawn among the main run's validation images
    assert paper_tables.validation_seen_by_start(60000, 0, None, 6000, 21000, 1000) == 0
    assert paper_tables.validation_seen_by_start(60000, 0, None, 6000, 21000, 1000, drawn_within_main_validation=False) == 722
    # too few of the main run's validation images in the highres subset: the rest come from elsewhere, and are counted
    assert paper_tables.validation_seen_by_start(600, 0, None, 20, 100, 30) == 10


def test_carve_validation_draws_within_the_given_positions_first():
    data = torch.arange(50)
    within = torch.tensor([3, 7, 11, 19, 23, 42])
    train, val = paper_tables.carve_validation(data, 4, seed=0, within=within)
    assert set(val.indices.tolist()) <= set(within.tolist()) and len(val) == 4
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(50))
    train, val = paper_tables.carve_validation(data, 9, seed=0, within=within)
    assert set(within.tolist()) <= set(val.indices.tolist()) and len(val) == 9 and len(train) == 41


def test_run_seconds_count_earlier_invocations_and_leave_out_reused_stages():
    from types import SimpleNamespace

    result = SimpleNamespace(seconds={"retrain": 50.0, "finetune": 70.0, "quantize": 1.0}, earlier_seconds=90.0)
    assert paper_tables.run_seconds(40.0, result, None) == {"compress": 130.0, "retrain": 50.0, "finetune": 70.0, "quantize": 1.0}
    # retraining copied in from another run: its time is that run's, not this one's
    assert paper_tables.run_seconds(40.0, result, {"stages": ["retrain"], "from": "joint.work"}) == {"compress": 80.0, "finetune": 70.0, "quantize": 1.0}


def test_table_c_names_rows_still_to_run(tmp_path):
    from types import SimpleNamespace

    from alexnet_tables import SPEC

    row = {"top1_spatial": 88.0, "top1_winograd": 87.0, "density": 0.06, "winograd_density": 0.2, "compression_ratio": 60.0, "test_images": 10000}
    records = {"ablation": {"steps": 211, "batch_size": 128, "finetune": "as the full run", "top1_dense": 89.0, "modes": {"spatial": row, "joint": row}}}
    lines, payload = paper_tables._ablation_lines(SimpleNamespace(out_dir=tmp_path, recipe=SPEC.recipe), SPEC, records)
    text = "\n".join(lines)
    assert "**Pending:** the winograd row(s) (`--stages ablation --ablation-modes winograd`)." in text
    assert set(payload) == {"spatial", "joint"}


def test_stage_archive_outlives_work_and_is_set_aside_for_other_dense_weights(tmp_path):
    """A lost WORK: the next sitting's report takes the finished stages from the archive beside the
    results when its dense model is the same one, and sets them aside when it is not."""
    from resnet18_tables import SPEC

    out = tmp_path / "out"
    dense = {"command": "python x.py --stages dense", "date": "2026-12-02", "code": "aaa", "seconds": 30.0, "top1": 90.0, "val_top1": 90.6, "kept_epoch": 3,
             "curve": [_point("first schedule", 88.0), _point("first schedule", 90.0), _point("cycle 1", 90.6)], "epochs": 2, "epochs_total": 3,
             "converged": False, "max_epochs": 3, "min_gain": 0.1, "lr": 0.05, "polish_lr": 0.025, "train_images": 1340, "weights_digest": "d1"}
    first = tmp_path / "work1"
    first.mkdir()
    (first / "dense.json").write_text(json.dumps(dense))
    (first / "joint.json").write_text(json.dumps(_record(30.0, (89.9, 89.5), (8.0, 8.5))))
    (first / "joint.started.json").write_text(json.dumps([{"command": "python x.py --stages joint", "date": "2026-12-02", "code": c} for c in ("b1", "b2")]))
    report = lambda work: paper_tables.write_report(SPEC, paper_tables.parse_args(SPEC, ["--data", "digits", "--validation", "97", "--work-dir", str(work), "--out-dir", str(out)]))  # noqa: E731
    tables = report(first).read_text()
    assert (out / "resnet18_stages" / "joint.json").read_text() == (first / "joint.json").read_text()
    assert "stage archive" not in tables.split("## Baselines")[0].replace("its copy in the stage archive", "")

    same = tmp_path / "work2"  # a fresh WORK whose dense stage got the same weights
    same.mkdir()
    (same / "dense.json").write_text(json.dumps({**dense, "date": "2026-12-04", "code": "ccc"}))
    md = report(same).read_text()
    assert "Read from the stage archive" in md and ": joint." in md and "The joint stage ran over 2 invocations" in md
    assert "- joint: compress 1 (the last invocation's time: the record predates counting what earlier invocations trained" in md
    (out / "resnet18_stages" / "joint.json").write_text(json.dumps({**_record(30.0, (89.9, 89.5), (8.0, 8.5)), paper_tables.SECONDS_COVER: True}))
    assert "- joint: compress 1\n" in report(same).read_text()  # a record that counts every invocation needs no caveat
    assert json.loads((out / "resnet18_tables.json").read_text())["compression_ratio"] == 30.0

    other = tmp_path / "work3"  # one whose dense stage got other weights: its joint is still to run
    other.mkdir()
    (other / "dense.json").write_text(json.dumps({**dense, "weights_digest": "d2"}))
    path = report(other)
    assert path.name == "resnet18_tables_pending.md"
    pending = path.read_text()
    assert "digest is `d2`; the finished tables' dense model (`resnet18_tables.json`) has `d1`: other weights" in pending
    assert "Set aside from the stage archive: joint" in pending and "This report lacks Tables A and B that `resnet18_tables.md` holds" in pending
    assert json.loads((out / "resnet18_tables.json").read_text())["compression_ratio"] == 30.0  # the finished tables stay
    assert json.loads((out / "resnet18_tables_pending.json").read_text())["status"] == "unfinished"
    assert not (out / "resnet18_stages" / "joint.json").exists() and json.loads((out / "resnet18_stages" / "dense.json").read_text())["weights_digest"] == "d2"
    again = tmp_path / "work4"  # the finished tables' dense weights once more: said so, while their stages run again
    again.mkdir()
    (again / "dense.json").write_text(json.dumps(dense))
    assert "has `d1`: the same weights." in report(again).read_text()


def test_tuning_candidates_are_compared_with_the_recorded_dense_digest_when_work_has_no_weights(tmp_path):
    """A fresh WORK (or the stage archive) holds the dense record but not its 228 MB weights: the
    candidates tried from that dense net are still "this one", not compared with a digest of None."""
    from resnet18_tables import SPEC

    out = tmp_path / "out"
    dense, control = _dense_and_control_of_the_finished_tables()
    candidate = {"recipe_file": "a.toml", "recipe_digest": "aaaaaaaa", "date": "2026-12-03", "file_bytes": 1234, "compression_ratio": 40.0,
                 "macs_reduction_winograd": 5.5, "macs_reduction_winograd_with_transforms": 5.0, "density": 0.1, "winograd_density": 0.2,
                 "val_top1_decoded": {"spatial": 88.0, "winograd": 87.5}, "val_top1_stages": {"dense": 90.0}, "dense_weights_digest": "d1"}
    (out / "resnet18_tuning").mkdir(parents=True)
    (out / "resnet18_tuning" / "a-aaaaaaaa.json").write_text(json.dumps(candidate))
    (out / "resnet18_tuning" / "b-bbbbbbbb.json").write_text(json.dumps({**candidate, "recipe_file": "b.toml", "recipe_digest": "bbbbbbbb",
                                                                            "dense_weights_digest": "d0"}))
    work = _stage_writer(tmp_path)("work", dense=dense, control=control)
    md = _reporter(SPEC, out)(work).read_text()
    assert "(dense weights digest d1)" in md and "None" not in md.split("## Recipes tried on validation")[1]
    assert "| 88.00 | 87.50 | this one |" in next(line for line in md.splitlines() if line.startswith("| a.toml"))
    assert next(line for line in md.splitlines() if line.startswith("| b.toml")).endswith("| d0 |")


def _dense_and_control_of_the_finished_tables() -> tuple[dict, dict]:
    dense = {"command": "python x.py --stages dense", "date": "2026-12-02", "code": "aaa", "seconds": 30.0, "top1": 90.0, "val_top1": 90.6, "kept_epoch": 3,
             "curve": [_point("first schedule", 88.0), _point("first schedule", 90.0), _point("cycle 1", 90.6)], "epochs": 2, "epochs_total": 3,
             "converged": False, "max_epochs": 3, "min_gain": 0.1, "lr": 0.05, "polish_lr": 0.025, "train_images": 1340, "weights_digest": "d1"}
    control = {"command": "python x.py --stages control", "date": "2026-12-02", "code": "aaa", "seconds": 20.0, "top1": 90.4, "val_top1": 90.7,
               "steps": 30, "epochs": 3.28}
    return dense, control


def _stage_writer(tmp_path: Path):
    """A function that makes a work directory holding the given stage records."""
    def work(name: str, **records: dict) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        for stage, record in records.items():
            (directory / f"{stage}.json").write_text(json.dumps(record))
        return directory
    return work


def _reporter(spec, out: Path):
    """A function that writes the report of a work directory into ``out``."""
    return lambda directory: paper_tables.write_report(spec, paper_tables.parse_args(spec, ["--work-dir", str(directory), "--out-dir", str(out)]))


def test_table_c_is_carried_over_from_finished_tables_of_the_same_dense_weights(tmp_path):
    """A lost WORK whose dense and control stages trained again to the same weights and top-1: the
    report shows the finished tables' Table C, labelled with its date and invocations, rather than
    lacking it; other dense or control figures leave it to be run again."""
    from alexnet_tables import SPEC

    out = tmp_path / "out"
    dense, control = _dense_and_control_of_the_finished_tables()
    row = {"top1_spatial": 88.0, "top1_winograd": 87.0, "density": 0.06, "winograd_density": 0.2, "compression_ratio": 60.0, "test_images": 5,
           "seconds": {"compress": 1.0}, "date": "2026-12-02", "code": "bbb"}
    ablation = {"steps": 211, "batch_size": 128, "finetune": "as the full run", "top1_dense": 90.0, "command": "python x.py --stages ablation",
                "date": "2026-12-02", "code": "bbb",
                "modes": {mode: {**row, "command": f"python x.py --stages ablation --ablation-modes {mode}"} for mode in ("spatial", "joint")}}

    work, report = _stage_writer(tmp_path), _reporter(SPEC, out)

    joint = _record(50.0, (89.5, 89.2), (4.0, 6.0))
    assert report(work("first", dense=dense, control=control, joint=joint, ablation=ablation)).name == "alexnet_tables.md"
    for stage in ("ablation", "joint"):  # the archive went with the machine too
        (out / "alexnet_stages" / f"{stage}.json").unlink()
    lost = work("lost", dense={**dense, "date": "2026-12-04"}, control=control, joint=joint)
    path = report(lost)
    assert path.name == "alexnet_tables.md"
    md = path.read_text()
    assert "**Carried over from the finished tables of 2026-12-01, not re-run in this sitting:** their dense model has this run's weights (digest `d1`)" in md
    assert "python x.py --stages ablation --ablation-modes joint    # ablation joint: 2026-12-02, code bbb" in md
    assert "| joint | 88.00 | 87.00 | 2.40 | 3.40 | 0.060 | 0.200 | 60.0x |" in md  # drops from the control, as the finished tables had them
    assert "- ablation: not run in this sitting (Table C is carried over" in md
    carried = json.loads((out / "alexnet_tables.json").read_text())["ablation"]
    assert carried["source"].startswith("carried over") and carried["dense_weights_digest"] == "d1" and set(carried["modes"]) == {"spatial", "joint"}
    assert report(lost).read_text() == md  # carried again from its own carried copy: one label, the first one
    assert json.loads((out / "alexnet_tables.json").read_text())["ablation"] == carried
    # a control with another top-1 (so other drops), or other dense weights: not carried, the finished tables stay
    for name, records in (("other-control", {"dense": dense, "control": {**control, "top1": 90.5}}),
                          ("other-dense", {"dense": {**dense, "weights_digest": "d2"}, "control": control})):
        path = report(work(name, joint=joint, **records))
        assert path.name == "alexnet_tables_pending.md" and "Table C that `alexnet_tables.md` holds" in path.read_text()
        assert "Carried over" not in path.read_text()
        (out / "alexnet_stages").rename(tmp_path / f"archive-{name}")  # each case starts from an archive of its own
    # the tables again in full: the pending report, its JSON and its file go, so nothing contradicts them
    (tmp_path / "lost" / "joint.jsz").write_bytes(_FAKE_JSZ)
    (tmp_path / "lost" / "joint.json").write_text(json.dumps({**joint, "file": str(tmp_path / "lost" / "joint.jsz")}))
    assert report(work("other-dense-2", joint={**joint, "file": str(tmp_path / "lost" / "joint.jsz")},
                       dense={**dense, "weights_digest": "d2"}, control=control)).name == "alexnet_tables_pending.md"
    assert {path.name for path in out.glob("alexnet_tables_pending.*")} == {"alexnet_tables_pending.md", "alexnet_tables_pending.json", "alexnet_tables_pending.jsz"}
    (out / "alexnet_stages").rename(tmp_path / "archive-last")
    assert report(lost).name == "alexnet_tables.md" and not list(out.glob("alexnet_tables_pending.*"))


def test_deep_compression_row_is_carried_over_from_finished_tables_of_the_same_dense_weights_and_recipe(tmp_path):
    """A lost WORK whose dense and control stages trained again to the same weights and top-1, and
    whose joint row used the finished tables' recipe: the report shows the finished Deep Compression
    row, labelled, with our ratio over its ratio taken from this run's file; another recipe or other
    dense weights leave it to be run again."""
    from alexnet_tables import SPEC

    out = tmp_path / "out"
    dense, control = _dense_and_control_of_the_finished_tables()
    settings = {"retrain": {"epochs": 2}, "finetune": {"epochs": 4}}
    joint = {**_record(50.0, (89.5, 89.2), (4.0, 6.0)), "settings": settings}
    deepcomp = {**_record(25.0, (89.8, 89.8), (3.0, 3.0)), "command": "python x.py --stages deepcomp", "date": "2026-12-02", "code": "ccc",
                "density": 0.102, "han_bytes": 2000, "han_ratio": 20.0, "densities": {"conv1": 0.84, "fc6": 0.09}}

    work, report = _stage_writer(tmp_path), _reporter(SPEC, out)

    assert report(work("first", dense=dense, control=control, joint=joint, deepcomp=deepcomp)).name == "alexnet_tables.md"
    finished = json.loads((out / "alexnet_tables.json").read_text())
    assert finished["recipe_digest"] == paper_tables.recipe_digest(settings) and finished["deep_compression"]["ours_over_deep_compression"] == 2.5
    for stage in ("deepcomp", "joint"):  # the archive went with the machine too
        (out / "alexnet_stages" / f"{stage}.json").unlink()
    lost = work("lost", dense={**dense, "date": "2026-12-04"}, control=control, joint={**joint, "compression_ratio": 60.0, "date": "2026-12-04"})
    path = report(lost)
    assert path.name == "alexnet_tables.md"
    md = path.read_text()
    assert "**Carried over from the finished tables of 2026-12-01, not re-run in this sitting:** their dense model has this run's weights (digest `d1`)" in md
    assert "python x.py --stages deepcomp    # deepcomp: 2026-12-02, code ccc" in md
    assert "| Deep Compression | 0.102 | 89.80 | 0.60 | 2,000 | 20.0x | 1,234 | 25.0x |" in md  # its drop from the same control
    assert "Our ratio over Deep Compression's: **3.00x**" in md  # this run's 60.0x over its 20.0x
    assert "- deepcomp: not run in this sitting (the Deep Compression row is carried over" in md
    assert "Deep Compression, from the same dense model at density 0.102" in md  # the accuracy note weighs it too
    carried = json.loads((out / "alexnet_tables.json").read_text())["deep_compression"]
    assert carried["source"].startswith("carried over") and carried["commands"] == ["python x.py --stages deepcomp    # deepcomp: 2026-12-02, code ccc"]
    assert carried["ours_over_deep_compression"] == 3.0 and carried["jsz_bytes"] == 1234
    assert report(lost).read_text() == md  # carried again from its own carried copy: the same label and commands
    # another recipe, or other dense weights: not carried, the finished tables stay
    for name, records in (("other-recipe", {"dense": dense, "joint": {**joint, "settings": {**settings, "finetune": {"epochs": 2}}}}),
                          ("other-dense", {"dense": {**dense, "weights_digest": "d2"}, "joint": joint})):
        path = report(work(name, control=control, **records))
        assert path.name == "alexnet_tables_pending.md" and "the Deep Compression row that `alexnet_tables.md` holds" in path.read_text()
        assert "Carried over" not in path.read_text()
        (out / "alexnet_stages").rename(tmp_path / f"archive-{name}")  # each case starts from an archive of its own


def test_a_report_commits_its_own_file_never_an_earlier_runs(tmp_path):
    """Once WORK is gone, the file a report commits is a copy of the record's own file (its size
    and sha256), found where an earlier report committed it; an earlier run's file at the target
    is replaced, or removed when no copy of the record's own is left."""
    import hashlib

    ours, theirs = b"OURS" * 4, b"THEM" * 4
    record = {"file": str(tmp_path / "work" / "joint.jsz"), "file_bytes": len(ours), "file_sha256": hashlib.sha256(ours).hexdigest()}
    target, pending = tmp_path / "alexnet_tables.jsz", tmp_path / "alexnet_tables_pending.jsz"
    target.write_bytes(theirs)  # the same size: only the digest tells them apart
    pending.write_bytes(ours)
    assert paper_tables.commit_file(record, target, (target, pending)) == str(target.resolve()) and target.read_bytes() == ours
    target.write_bytes(theirs)
    assert paper_tables.commit_file(record, target, (target,)) is None and not target.exists()
    unhashed = {key: value for key, value in record.items() if key != "file_sha256"}  # a record from before they kept it: the size decides
    target.write_bytes(theirs + b"!")
    assert paper_tables.commit_file(unhashed, target, (pending,)) == str(target.resolve()) and target.read_bytes() == ours
    (tmp_path / "work").mkdir()
    Path(record["file"]).write_bytes(ours)  # WORK's own file first
    pending.write_bytes(theirs)
    assert paper_tables.commit_file(record, pending, (target,)) == str(pending.resolve()) and pending.read_bytes() == ours


def test_a_run_whose_code_moved_on_says_how_to_rewrite_its_report():
    assert paper_tables.code_changed_note("c472037", "c472037") is None
    note = paper_tables.code_changed_note("c472037", "ee7f6a1")
    assert "(c472037 -> ee7f6a1)" in note and "--report-only" in note
