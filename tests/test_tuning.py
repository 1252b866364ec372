"""experiments/tuning.py: naming candidate recipes, reusing an earlier run's finished stages, and
the report's section on the candidates."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from jointsparse.compress import run_fingerprint
from jointsparse.recipe import Recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import tuning  # noqa: E402

STAGES = ("retrain", "finetune", "codebook")


def test_a_recipe_digest_survives_a_new_setting_at_its_default():
    recipe = Recipe().to_dict()
    older = json.loads(json.dumps(recipe))
    del older["coding"]["raw_float_dtype"]  # as records written before the setting existed stored it
    assert tuning.recipe_digest(recipe) == tuning.recipe_digest(older)
    recipe["coding"]["raw_float_dtype"] = "float16"
    assert tuning.recipe_digest(recipe) != tuning.recipe_digest(older)
    assert "raw_float_dtype" in recipe["coding"]  # the caller's dict is left as it was


def _finished_run(workdir: Path, recipe: Recipe, fingerprint: dict, stages: tuple[str, ...] = STAGES) -> None:
    workdir.mkdir(parents=True)
    torch.save(run_fingerprint(recipe, fingerprint), workdir / "run.pt")
    for stage in stages:
        torch.save({"stage": stage, "from": workdir.name}, workdir / f"{stage}.done")


def test_a_candidate_reuses_the_longest_matching_run_and_only_finished_stages(tmp_path):
    base = Recipe()
    start = {"start": "abc", "data": "x"}
    # the joint stage trained with the base recipe; a candidate changed the codebook stage only
    _finished_run(tmp_path / "joint.work", base, {**start, "tag": "joint"}, stages=("retrain",))
    codebook_changed = dataclasses.replace(base, codebook=dataclasses.replace(base.codebook, epochs=base.codebook.epochs + 1))
    _finished_run(tmp_path / "tune-aaaa.work", codebook_changed, {**start, "tag": "tune-aaaa"})
    logged: list[str] = []

    # a candidate with the base recipe: tune-aaaa holds retrain and finetune of it (its codebook
    # differs), joint.work only retrain; the longer one wins, and the tag does not count
    target = tmp_path / "tune-bbbb.work"
    reused = tuning.reuse_trained_stages(tmp_path, target, run_fingerprint(base, {**start, "tag": "tune-bbbb"}), logged.append)
    assert reused == {"stages": ["retrain", "finetune"], "from": "tune-aaaa.work"}
    assert sorted(p.name for p in target.iterdir()) == ["finetune.done", "retrain.done", "reused.json"]
    assert torch.load(target / "finetune.done", weights_only=True)["from"] == "tune-aaaa.work" and len(logged) == 1

    # another dense net: nothing is reused; a started candidate keeps its own stages
    other = tmp_path / "tune-cccc.work"
    assert tuning.reuse_trained_stages(tmp_path, other, run_fingerprint(base, {**start, "start": "def", "tag": "tune-cccc"}), logged.append) is None
    assert not other.exists()
    # resumed after compress started in it: its own stages stand, and its record still names their source
    torch.save(run_fingerprint(base, {**start, "tag": "tune-bbbb"}), target / "run.pt")
    again = tuning.reuse_trained_stages(tmp_path, target, run_fingerprint(base, {**start, "tag": "tune-bbbb"}), logged.append)
    assert again == {"stages": ["retrain", "finetune"], "from": "tune-aaaa.work"} and len(logged) == 1
    # once compress has written a seeded stage itself (a new file), the source is no longer claimed
    torch.save({"stage": "finetune", "from": "itself"}, target / "finetune.done")
    assert tuning.reuse_trained_stages(tmp_path, target, run_fingerprint(base, {**start, "tag": "tune-bbbb"}), logged.append) is None


def test_tuning_lines_mark_the_chosen_recipe_and_other_dense_nets():
    base = Recipe().to_dict()
    record = {"recipe_file": "a.toml", "recipe_digest": tuning.recipe_digest(base), "date": "2026-12-03", "file_bytes": 1234,
              "compression_ratio": 40.0, "macs_reduction_winograd": 5.5, "density": 0.1, "winograd_density": 0.2,
              "val_top1_decoded": {"spatial": 88.0, "winograd": 87.5}, "val_top1_stages": {"dense": 90.0, "kept": 88.1},
              "dense_weights_digest": "d1", "reused": {"stages": ["retrain"], "from": "joint.work"}}
    other = {**record, "recipe_file": "b.toml", "recipe_digest": "ffffffff", "dense_weights_digest": "d2", "val_top1_decoded": {}}
    other.pop("reused")
    lines = tuning.tuning_lines([record, other], base, "d1", directory="net_tuning", score="top-1 (%)", decoded_key="val_top1_decoded",
                                stages_key="val_top1_stages", fmt=lambda v: "-" if v is None else f"{v:.2f}",
                                stage_table=lambda rows: [f"{name}: {values}" for name, values in rows])
    text = "\n".join(lines)
    row_a = next(line for line in lines if line.startswith("| a.toml"))
    row_b = next(line for line in lines if line.startswith("| b.toml"))
    assert "**= joint**" in row_a and "| 88.00 | 87.50 | this one |" in row_a
    assert "**= joint**" not in row_b and "| - | - | d2 |" in row_b
    assert "the retrain stage(s) taken from `joint.work`" in text and "`net_tuning/`" in text


def test_reuse_stops_at_a_missing_stage_and_ignores_unreadable_runs(tmp_path):
    base = Recipe()
    start = {"start": "abc"}
    # finetune.done missing: codebook.done after it cannot be used either
    _finished_run(tmp_path / "joint.work", base, {**start, "tag": "joint"}, stages=("retrain", "codebook"))
    (tmp_path / "tune-junk.work").mkdir()
    torch.save(["not", "a", "fingerprint"], tmp_path / "tune-junk.work" / "run.pt")
    target = tmp_path / "tune-new.work"
    reused = tuning.reuse_trained_stages(tmp_path, target, run_fingerprint(base, {**start, "tag": "tune-new"}), lambda line: None)
    assert reused == {"stages": ["retrain"], "from": "joint.work"}
    assert sorted(p.name for p in target.iterdir()) == ["retrain.done", "reused.json"]


def test_tuning_lines_name_each_record_and_show_a_missing_density():
    record = {"recipe_file": "a.toml", "recipe_digest": "12345678", "date": "2026-12-03", "file_bytes": 10, "compression_ratio": 2.0,
              "macs_reduction_winograd": 1.0, "density": 0.5, "winograd_density": None, "val_top1_stages": {}, "dense_weights_digest": "d"}
    twin = {**record, "recipe_file": "copy-of-a.toml"}  # the same settings under another file name
    lines = tuning.tuning_lines([record, twin], None, "d", directory="t", score="top-1 (%)", decoded_key="v", stages_key="val_top1_stages",
                                fmt=lambda v: "-" if v is None else f"{v:.2f}", stage_table=lambda rows: [name for name, _ in rows])
    assert any(line.startswith("| a.toml (12345678) |") and "| 0.500 | - |" in line for line in lines)
    assert any(line.startswith("| copy-of-a.toml (12345678) |") for line in lines)
    assert lines[-2:] == ["a.toml (12345678)", "copy-of-a.toml (12345678)"]


def test_a_record_is_named_by_file_and_settings_and_counts_as_tried_only_when_complete(tmp_path):
    recipe = Recipe().to_dict()
    path, digest = tuning.record_path(tmp_path / "net_tuning", Path("candidates/c.toml"), recipe)
    assert path == tmp_path / "net_tuning" / f"c-{digest}.json" and digest == tuning.recipe_digest(recipe)
    assert not tuning.already_tried(path, "d1", "val_top1_decoded")
    record = {"file": "/scratch/tune.jsz", "layers": [1], "compression_ratio": 3.0, "val_top1_decoded": {"spatial": 1.0, "winograd": 1.0}}
    tuning.write_record(path, record, recipe_file=Path("candidates/c.toml"), recipe=recipe, dense_digest="d1", command="python x.py", code="abc")
    saved = json.loads(path.read_text())
    assert "file" not in saved and "layers" not in saved  # no scratch path of this machine in a committed record
    assert (saved["recipe_file"], saved["recipe_digest"], saved["dense_weights_digest"], saved["command"]) == ("c.toml", digest, "d1", "python x.py")
    assert tuning.already_tried(path, "d1", "val_top1_decoded")
    assert not tuning.already_tried(path, "d2", "val_top1_decoded")  # another dense net
    assert not tuning.already_tried(path, "d1", "val_psnr_decoded")  # a record without the decoded scores


def test_the_joint_run_takes_the_stages_of_the_candidate_that_became_its_recipe(tmp_path):
    old = Recipe()
    new = dataclasses.replace(old, finetune=dataclasses.replace(old.finetune, epochs=old.finetune.epochs + 2))
    start = {"start": "abc"}
    joint = tmp_path / "joint.work"
    _finished_run(joint, old, {**start, "tag": "joint"})
    (joint / "finetune.ckpt").write_bytes(b"the old recipe's fine-tuning")
    _finished_run(tmp_path / "tune-aaaa.work", new, {**start, "tag": "tune-aaaa"})
    logged: list[str] = []

    # joint.work keeps only retrain under the new recipe; the candidate finished every stage of it
    reused = tuning.reuse_trained_stages(tmp_path, joint, run_fingerprint(new, {**start, "tag": "joint"}), logged.append)
    assert reused == {"stages": list(STAGES), "from": "tune-aaaa.work"}
    assert sorted(p.name for p in joint.iterdir()) == sorted([f"{stage}.done" for stage in STAGES] + ["reused.json"])  # stale checkpoint and run.pt gone
    assert {torch.load(joint / f"{stage}.done", weights_only=True)["from"] for stage in STAGES} == {"tune-aaaa.work"}

    # a run whose own finished stages go as far as any other's keeps them (a partly trained stage resumes)
    partial = tmp_path / "tune-bbbb.work"
    _finished_run(partial, new, {**start, "tag": "tune-bbbb"}, stages=())
    (partial / "retrain.ckpt").write_bytes(b"epoch 1 of 2")
    for stage in STAGES:
        (tmp_path / "tune-aaaa.work" / f"{stage}.done").unlink()
    assert not (joint / "run.pt").exists()  # its copied stages count once compress has written the new run.pt
    assert tuning.reuse_trained_stages(tmp_path, partial, run_fingerprint(new, {**start, "tag": "tune-bbbb"}), logged.append) is None
    assert (partial / "retrain.ckpt").read_bytes() == b"epoch 1 of 2"
