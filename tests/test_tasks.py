"""Tasks: one object supplies loss and metric to the trainer, evaluate, compress and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from jointsparse.data import DataInfo
from jointsparse.models import get_model
from jointsparse.tasks import CLASSIFICATION, SUPER_RESOLUTION, get_task, task_for
from jointsparse.train import CheckpointError, TrainConfig, evaluate, train


def test_task_metrics_and_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert CLASSIFICATION.metric_sum(logits, labels) == 2 and CLASSIFICATION.count(labels) == 3
    assert CLASSIFICATION.format(0.875) == "87.50%" and CLASSIFICATION.drop(0.9, 0.88) == pytest.approx(2.0)
    target = torch.full((2, 1, 10, 10), 100 / 255)
    output = target.clone()
    output[1, 0, 5, 5] += 2 / 255
    psnr = SUPER_RESOLUTION.metric_sum(output, target)
    exact = 10 * math.log10(255**2 / 1e-10)  # a perfect image scores the clamped mse
    assert psnr == pytest.approx(exact + 10 * math.log10(255**2 / (4 / 16)), abs=1e-6)
    assert SUPER_RESOLUTION.loss_sum(output, target) == pytest.approx(float((output - target).pow(2).mean()) * 2)
    assert SUPER_RESOLUTION.drop(30.0, 29.9) == pytest.approx(0.1)
    info = DataInfo("sr-natural", 0, 1, (32, 32), 10, 5, task="super-resolution")
    assert task_for(info) is SUPER_RESOLUTION and SUPER_RESOLUTION.model_kwargs(info) == {"in_channels": 1}
    assert task_for(DataInfo("digits", 10, 1, (8, 8), 1, 1)) is CLASSIFICATION
    with pytest.raises(ValueError, match="unknown task"):
        get_task("segmentation")


def _sr_loader(n: int = 8, side: int = 12) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    targets = torch.rand(n, 1, side, side, generator=generator)
    inputs = (targets + 0.05 * torch.randn(targets.shape, generator=generator)).clamp(0, 1)
    return DataLoader(TensorDataset(inputs, targets), batch_size=4)


def test_trainer_and_evaluate_run_a_regression_task(tmp_path):
    loader = _sr_loader()
    model = get_model("ctsrcnn", depth=3)
    before = evaluate(model, loader, task=SUPER_RESOLUTION)
    assert set(before) == {"metric", "psnr", "loss", "n"} and before["n"] == 8
    config = TrainConfig(epochs=2, lr=1e-3, optimizer="adam", progress=False, log_every=0)
    result = train(model, loader, loader, config, task=SUPER_RESOLUTION, checkpoint_path=tmp_path / "sr.ckpt")
    assert set(result.history[-1]) >= {"train_psnr", "test_psnr"} and result.test_metric == result.history[-1]["test_psnr"]
    assert result.history[-1]["test_loss"] < before["loss"]
    # a checkpoint of one task does not resume another
    with pytest.raises(CheckpointError, match="task"):
        train(model, loader, loader, config, task=CLASSIFICATION, checkpoint_path=tmp_path / "sr.ckpt", resume=True)


def test_compress_runs_a_regression_task_into_a_file_both_domains_decode(tmp_path):
    from jointsparse.codecs import decode
    from jointsparse.compress import compress
    from jointsparse.recipe import parse_recipe

    torch.manual_seed(0)
    loader = _sr_loader(n=8, side=16)
    model = get_model("ctsrcnn", depth=4)
    recipe = parse_recipe({
        "sparsity": {"spatial": {"*": 0.5}, "winograd": {"*": 0.0}}, "winograd": {"m": 4},  # no Winograd pruning: decodes must agree
        "retrain": {"epochs": 1, "optimizer": "adam", "lr": 1e-3}, "finetune": {"epochs": 1, "optimizer": "adam", "lr": 1e-3},
        "codebook": {"epochs": 1}, "quantize": {"conv_bits": 6},
    })
    result = compress(model, loader, loader, recipe, tmp_path / "sr.jsz", progress=False, log=lambda _: None, task=SUPER_RESOLUTION)
    assert result.metric == "psnr" and set(result.scores) >= {"dense", "pruned", "quantized", "codebook"}
    spatial, winograd = (evaluate(decode(tmp_path / "sr.jsz", domain=domain), loader, task=SUPER_RESOLUTION)["psnr"] for domain in ("spatial", "winograd"))
    assert spatial == pytest.approx(result.scores["codebook"], abs=1e-3)  # the file holds the compressed model
    assert winograd == pytest.approx(spatial, abs=0.05)  # F(4, r) numerics only


def test_classification_distill_loss_is_a_scaled_kl_that_vanishes_on_the_teacher():
    from jointsparse.tasks import CLASSIFICATION

    torch.manual_seed(0)
    teacher = torch.randn(8, 10)
    assert float(CLASSIFICATION.distill_loss(teacher.clone(), teacher, 4.0)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(8, 10)
    expected = torch.nn.functional.kl_div(torch.log_softmax(student / 2, 1), torch.softmax(teacher / 2, 1), reduction="batchmean") * 4
    assert float(CLASSIFICATION.distill_loss(student, teacher, 2.0)) == pytest.approx(float(expected), rel=1e-5)
    assert float(CLASSIFICATION.distill_loss(student, teacher, 2.0)) > 0


def test_regression_distills_with_its_own_loss():
    from jointsparse.tasks import SUPER_RESOLUTION

    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert float(SUPER_RESOLUTION.distill_loss(a, b, 4.0)) == pytest.approx(1.0)  # MSE, temperature unused
