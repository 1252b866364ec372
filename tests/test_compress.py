"""The compression pipeline's work directory: a resumed run keeps the stages a recipe change does
not touch, and refuses a directory of another run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from jointsparse.compress import PipelineError, compress
from jointsparse.models import get_model
from jointsparse.recipe import parse_recipe

BASE = {
    "sparsity": {"spatial": {"*": 0.5}, "winograd": {"*": 0.0}},
    "retrain": {"epochs": 1, "optimizer": "adam", "lr": 1e-3},
    "finetune": {"epochs": 1, "optimizer": "adam", "lr": 1e-3},
    "codebook": {"epochs": 1},
    "quantize": {"conv_bits": 4, "linear_bits": 4},
}


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def _run(tmp_path, changes: dict, *, resume: bool) -> tuple[list[str], bytes]:
    settings = copy.deepcopy(BASE)
    for section, values in changes.items():
        settings.setdefault(section, {}).update(values)
    torch.manual_seed(0)
    model = get_model("lenet5")
    lines: list[str] = []
    out = tmp_path / "m.jsz"
    compress(model, _loader(), _loader(), parse_recipe(settings), out, workdir=tmp_path / "work", resume=resume,
             progress=False, log=lines.append)
    return lines, out.read_bytes()


def _started(lines: list[str]) -> set[str]:
    return {stage for stage in ("retrain", "finetune", "codebook") if any(line.startswith(f"[{stage}]") and "epoch(s)" in line for line in lines)}


def test_a_resumed_run_with_a_new_finetune_keeps_the_retraining(tmp_path):
    first, _ = _run(tmp_path, {}, resume=False)
    assert _started(first) == {"retrain", "finetune", "codebook"}
    retrained = (tmp_path / "work" / "retrain.done").read_bytes()
    again, _ = _run(tmp_path, {"finetune": {"lr": 5e-4}}, resume=True)
    assert _started(again) == {"finetune", "codebook"}
    assert any("changed from the finetune stage" in line for line in again)
    assert (tmp_path / "work" / "retrain.done").read_bytes() == retrained


def test_new_bits_rerun_only_the_codebook_stage_and_new_coding_no_stage(tmp_path):
    _, first_file = _run(tmp_path, {}, resume=False)
    bits, bits_file = _run(tmp_path, {"quantize": {"conv_bits": 5, "linear_bits": 5}}, resume=True)
    assert _started(bits) == {"codebook"} and bits_file != first_file
    coding, coding_file = _run(tmp_path, {"quantize": {"conv_bits": 5, "linear_bits": 5}, "coding": {"coder": "zstd"}}, resume=True)
    assert _started(coding) == set() and coding_file != bits_file
    # an unchanged recipe reruns nothing and writes the same bytes
    same, same_file = _run(tmp_path, {"quantize": {"conv_bits": 5, "linear_bits": 5}, "coding": {"coder": "zstd"}}, resume=True)
    assert _started(same) == set() and same_file == coding_file


@pytest.mark.parametrize("changes", [
    {"retrain": {"lr": 5e-4}},
    {"sparsity": {"spatial": {"*": 0.6}}},
    {"quantize": {"seed": 1}},  # the regularizer draws from it
])
def test_a_change_the_retraining_reads_is_refused(tmp_path, changes):
    _run(tmp_path, {}, resume=False)
    with pytest.raises(PipelineError, match="belongs to another run"):
        _run(tmp_path, changes, resume=True)


def test_stage_times_of_a_resumed_run_count_the_earlier_calls(tmp_path):
    settings = parse_recipe({**BASE, "finetune": {"epochs": 2, "optimizer": "adam", "lr": 1e-3}})
    run = lambda: compress(get_model("lenet5"), _loader(), _loader(), settings, tmp_path / "m.jsz", workdir=tmp_path / "work",  # noqa: E731
                           resume=True, progress=False, log=lambda line: None)
    first = run()
    assert first.earlier_seconds == 0.0 and {"retrain", "finetune", "codebook"} <= set(first.seconds)
    # stopped after their last epochs, before their .done files: the next call resumes them from the checkpoints
    trained = {}
    for stage in ("finetune", "codebook"):
        (tmp_path / "work" / f"{stage}.done").unlink()
        epochs = [json.loads(line) for line in (tmp_path / "work" / f"{stage}.jsonl").read_text().splitlines()]
        trained[stage] = sum(record["seconds"] for record in epochs if record["kind"] == "epoch")
    again = run()
    assert again.seconds["retrain"] == first.seconds["retrain"]  # read from its .done
    assert again.seconds["finetune"] >= trained["finetune"] > 0 and again.seconds["codebook"] >= trained["codebook"] > 0
    assert again.earlier_seconds == pytest.approx(first.seconds["retrain"] + sum(trained.values()))


def test_without_resume_the_work_directory_starts_over(tmp_path):
    _run(tmp_path, {}, resume=False)
    lines, _ = _run(tmp_path, {"retrain": {"lr": 5e-4}}, resume=False)
    assert _started(lines) == {"retrain", "finetune", "codebook"}


@pytest.mark.parametrize("selection", ["last", "best"])
def test_codebook_selection_decides_which_codebooks_the_file_keeps(tmp_path, selection):
    from jointsparse.codecs import decode
    from jointsparse.train import evaluate

    settings = copy.deepcopy(BASE)
    settings["quantize"].update(codebook_selection=selection, centroid_lr=1e4)  # a step that wrecks the codebooks
    torch.manual_seed(0)
    lines: list[str] = []
    result = compress(get_model("lenet5"), _loader(), _loader(), parse_recipe(settings), tmp_path / "m.jsz",
                      workdir=tmp_path / "work", progress=False, log=lines.append)
    scores = result.scores
    assert scores["codebook"] < scores["quantized"]  # the premise: fine-tuning made it worse
    decoded_score = evaluate(decode(tmp_path / "m.jsz", domain="spatial"), _loader())["accuracy"]
    reverted = any("the file keeps those" in line for line in lines)
    if selection == "best":
        assert reverted and scores["kept"] == scores["quantized"]
        assert decoded_score == pytest.approx(scores["quantized"])
        first = (tmp_path / "m.jsz").read_bytes()
        torch.manual_seed(0)
        again: list[str] = []  # resumed: every stage reloaded, the same choice made
        compress(get_model("lenet5"), _loader(), _loader(), parse_recipe(settings), tmp_path / "m.jsz",
                 workdir=tmp_path / "work", resume=True, progress=False, log=again.append)
        assert not _started(again) and any("the file keeps those" in line for line in again)
        assert (tmp_path / "m.jsz").read_bytes() == first
    else:
        assert not reverted and "kept" not in scores
        assert decoded_score == pytest.approx(scores["codebook"])


def test_reusable_stages_end_at_the_first_stage_whose_settings_changed():
    from jointsparse.compress import reusable_stages, run_fingerprint

    base = parse_recipe({"finetune": {"epochs": 1}})
    saved = run_fingerprint(base, {"tag": "a", "start": "abc"})
    assert reusable_stages(saved, run_fingerprint(base, {"tag": "a", "start": "abc"})) == ("retrain", "finetune", "codebook")
    assert reusable_stages(saved, run_fingerprint(base, {"tag": "b", "start": "abc"})) == ()  # another run, unless the tag is ignored
    assert reusable_stages(saved, run_fingerprint(base, {"tag": "b", "start": "abc"}), ignore=("tag",)) == ("retrain", "finetune", "codebook")
    bits = parse_recipe({"finetune": {"epochs": 1}, "quantize": {"conv_bits": 4}})
    assert reusable_stages(saved, run_fingerprint(bits, {"tag": "a", "start": "abc"})) == ("retrain", "finetune")
    coding = parse_recipe({"finetune": {"epochs": 1}, "coding": {"codebook_dtype": "float16"}})
    assert reusable_stages(saved, run_fingerprint(coding, {"tag": "a", "start": "abc"})) == ("retrain", "finetune", "codebook")
    finetune = parse_recipe({"finetune": {"epochs": 2}})
    assert reusable_stages(saved, run_fingerprint(finetune, {"tag": "a", "start": "abc"})) == ("retrain",)
    assert reusable_stages(saved, run_fingerprint(base, {"tag": "a", "start": "other"})) == ()
    assert reusable_stages("not a fingerprint", saved) == ()


def test_eval_name_labels_the_log_lines_and_leaves_the_logs_keys(tmp_path, capsys):
    torch.manual_seed(0)
    lines: list[str] = []
    compress(get_model("lenet5"), _loader(), _loader(), parse_recipe(BASE), tmp_path / "m.jsz", workdir=tmp_path / "work",
             progress=True, log=lines.append, eval_name="validation")
    scored = [line for line in lines if line.startswith(("[dense]", "[prune]", "[quantize]"))]
    assert len(scored) == 3 and all(" validation accuracy " in line and " test " not in line for line in scored)
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if "epoch 1/1" in line]
    assert epoch_lines and all("| validation accuracy" in line for line in epoch_lines)
    record = json.loads((tmp_path / "work" / "retrain.jsonl").read_text().splitlines()[-1])
    assert "test_acc" in record and not any(key.startswith("validation") for key in record)  # older readers keep working


def test_distilling_finetune_reruns_from_the_finetune_with_the_teacher_hook(tmp_path):
    _run(tmp_path, {}, resume=False)
    work = tmp_path / "work"
    retrained, plain = (work / "retrain.done").read_bytes(), torch.load(work / "finetune.done", weights_only=True)["model"]
    lines, _ = _run(tmp_path, {"finetune": {"distill": 1.0, "distill_temperature": 2.0}}, resume=True)
    assert _started(lines) == {"finetune", "codebook"}  # the retraining does not read the fine-tuning's keys
    assert (work / "retrain.done").read_bytes() == retrained
    hooks = {stage: torch.load(work / f"{stage}.ckpt", weights_only=True)["hook_names"] for stage in ("finetune", "codebook")}
    assert "Distillation" in hooks["finetune"] and "Distillation" not in hooks["codebook"]  # only the stage that asks distils
    distilled = torch.load(work / "finetune.done", weights_only=True)["model"]
    assert any(not torch.equal(plain[name], distilled[name]) for name in plain)  # the teacher term moved the weights


def test_a_stage_of_no_epochs_asking_to_distil_runs_without_a_teacher(tmp_path):
    # distills() keeps no teacher for a 0-epoch stage; the stage must not ask for one either
    lines, _ = _run(tmp_path, {"codebook": {"epochs": 0, "distill": 1.0}}, resume=False)
    assert any(line.startswith("[codebook] skipped (0 epochs)") for line in lines)
