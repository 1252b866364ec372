import pytest
import torch

from jointsparse.models import ModelError, alexnet_pool_copy_factor, get_model


@pytest.mark.parametrize(
    "name, kwargs, size, classes",
    [
        ("lenet5", {}, (2, 1, 28, 28), 10),
        ("alexnet", {"num_classes": 10}, (1, 3, 67, 67), 10),
        ("resnet18", {"num_classes": 7}, (1, 3, 32, 32), 7),
        ("resnet20", {"in_channels": 1}, (2, 1, 28, 28), 10),
        ("vgg_small", {"width": 0.5}, (2, 1, 8, 8), 10),
    ],
)
def test_models_run_and_record_their_architecture(name, kwargs, size, classes):
    model = get_model(name, **kwargs)
    model.eval()
    assert model(torch.randn(size)).shape == (size[0], classes)
    assert model.jointsparse_arch == {"name": name, "kwargs": kwargs}


def test_alexnet_has_caffe_shapes():
    model = get_model("alexnet")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")}
    assert shapes["conv2.weight"] == (256, 48, 5, 5)
    assert shapes["conv4.weight"] == (384, 192, 3, 3)
    assert shapes["fc6.weight"] == (4096, 9216)
    assert sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight")) == 60_954_656


def test_resnet18_imagenet_layout():
    model = get_model("resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's count


def test_copy_factor_matches_spec():
    assert alexnet_pool_copy_factor(67) == 36
    assert alexnet_pool_copy_factor(211) == 1 and alexnet_pool_copy_factor(227) == 1
    assert 1 < alexnet_pool_copy_factor(195) < 36
    with pytest.raises(ValueError):
        alexnet_pool_copy_factor(40)


def tiny_factory(num_classes: int = 3) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))


def test_user_factory_and_errors():
    model = get_model("tests.test_models:tiny_factory", num_classes=5)
    assert model(torch.zeros(1, 4)).shape == (1, 5)
    with pytest.raises(ModelError, match="unknown model"):
        get_model("alexnot")
    with pytest.raises(ModelError, match="cannot import"):
        get_model("no_such_pkg.mod:f")
    with pytest.raises(ModelError, match="no callable"):
        get_model("tests.test_models:nothing_here")
    with pytest.raises(ModelError, match="does not accept"):
        get_model("lenet5", depth=3)


def test_ctsrcnn_layout_same_padding_and_residual():
    model = get_model("ctsrcnn")
    shapes = [tuple(conv.weight.shape) for conv in model.convs()]
    assert shapes == [(64, 1, 9, 9), (32, 64, 5, 5)] + [(32, 32, 3, 3)] * 6 + [(1, 32, 5, 5)]
    x = torch.rand(2, 1, 17, 23)
    assert model(x).shape == x.shape  # 'same' padding at an odd size
    plain = get_model("ctsrcnn", depth=3, residual=False)
    for conv in plain.convs():
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    assert torch.equal(plain(x), torch.zeros_like(x))
    with pytest.raises(ModelError):
        get_model("ctsrcnn", depth=2)


def test_cascade_insertion_keeps_the_function_and_the_trained_layers():
    from jointsparse.models import ctsrcnn_insert_layers

    torch.manual_seed(0)
    shallow = get_model("ctsrcnn", depth=5)
    x = torch.rand(1, 1, 20, 20)
    deeper = ctsrcnn_insert_layers(shallow, 2, noise=0.0)
    assert deeper.depth == 7 and deeper.jointsparse_arch == {"name": "ctsrcnn", "kwargs": {"depth": 7}}
    assert torch.allclose(deeper(x), shallow(x), atol=1e-6)  # identity layers between ReLUs
    assert torch.equal(deeper.conv7.weight, shallow.conv5.weight) and torch.equal(deeper.conv4.weight, shallow.conv4.weight)
    noisy = ctsrcnn_insert_layers(shallow, 2, noise=1e-3, generator=torch.Generator().manual_seed(1))
    assert 0 < (noisy(x) - shallow(x)).abs().max() < 0.05
    with pytest.raises(ValueError):
        ctsrcnn_insert_layers(shallow, 0)
