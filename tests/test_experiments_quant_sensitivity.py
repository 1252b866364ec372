"""experiments/quant_sensitivity.py: per-layer quantization on the validation split."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import quant_sensitivity  # noqa: E402

from jointsparse.models import get_model  # noqa: E402


def test_each_layer_then_all_and_enough_bits_change_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    model = get_model("ctsrcnn", optional={"in_channels": 1})
    path = tmp_path / "finetune.done"
    torch.save({"model": model.state_dict(), "score": 0.0}, path)  # the shape of a compress stage marker
    assert quant_sensitivity.main([str(path), "--model", "ctsrcnn", "--data", "sr-natural", "--val-subset", "8", "--bits", "1", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [f"conv{i}" for i in range(1, 10)] + ["all"]
    rows = {(int(bits), name): float(change) for bits, name, change in
            (re.match(r"(\d+) bits\s+(\S+)\s+\S+ dB\s+\(([-+]\d+\.\d+)\)", line).groups() for line in lines[1:])}
    assert set(rows) == {(bits, name) for bits in (1, 16) for name in names}
    assert all(rows[(16, name)] == 0.0 for name in names)  # 2^16 - 1 centroids: every weight exact
    assert rows[(1, "all")] != 0.0  # one centroid per layer: the net is another net


def test_a_missing_file_or_a_dataset_without_validation_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        quant_sensitivity.main(["/nonexistent/finetune.done", "--model", "ctsrcnn", "--data", "sr-natural"])
    assert error.value.code == 2
    path = tmp_path / "dense.pt"
    torch.save(get_model("lenet5", optional={"num_classes": 10, "in_channels": 1}).state_dict(), path)
    with pytest.raises(SystemExit) as error:
        quant_sensitivity.main([str(path), "--model", "lenet5", "--data", "digits"])
    assert error.value.code == 2 and "no 'val' split" in capsys.readouterr().err
