"""Model checkpoints: wrapped layouts, pickled modules behind --trust, the factory trust gate."""

from __future__ import annotations

import pytest
import torch

from jointsparse.checkpoint import ModelCheckpointError, load_model, read_checkpoint, save_model
from jointsparse.models import UntrustedModelError, get_model


class PickledNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)


def lenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return get_model("lenet5").state_dict()


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_wrapped_layouts_load_and_say_which_key(tmp_path, key):
    state = lenet_state()
    path = tmp_path / "wrapped.pt"
    torch.save({key: state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    model, payload = load_model(path, "lenet5")
    assert payload["layout"] == f"[{key!r}]"
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_bare_state_dict_and_own_format_layouts(tmp_path):
    state = lenet_state()
    torch.save(state, tmp_path / "bare.pt")
    assert read_checkpoint(tmp_path / "bare.pt")["layout"] == "state_dict"
    save_model(tmp_path / "own.pt", state, {"name": "lenet5", "kwargs": {}})
    assert read_checkpoint(tmp_path / "own.pt")["layout"] == "jointsparse-model"


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "module.pt"
    net = PickledNet()
    torch.save(net, path)
    with pytest.raises(ModelCheckpointError, match="pickled Python objects.*--trust"):
        read_checkpoint(path)
    model, payload = load_model(path, trust=True)
    assert payload["layout"] == "pickled module"
    assert torch.equal(model.fc.weight, net.fc.weight)
    assert model.jointsparse_arch["name"].endswith("test_checkpoint:PickledNet")


def test_text_file_is_one_clear_line(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello world\n")
    with pytest.raises(ModelCheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "is not a PyTorch checkpoint" in message and "\n" not in message and "weights_only" not in message


def user_net(num_classes: int = 2) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))


def test_factory_named_by_a_checkpoint_needs_trust_or_the_same_model_flag(tmp_path):
    model = get_model("tests.test_checkpoint:user_net", num_classes=3)
    path = tmp_path / "user.pt"
    save_model(path, model.state_dict(), model.jointsparse_arch)
    with pytest.raises(UntrustedModelError, match="tests.test_checkpoint:user_net.*--trust"):
        load_model(path)
    assert load_model(path, trust=True)[0][1].out_features == 3
    assert load_model(path, "tests.test_checkpoint:user_net")[0][1].out_features == 3
