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


def third_party_net(width: int = 4) -> torch.nn.Module:
    """A factory that takes neither num_classes nor in_channels."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, width))


def test_factory_receives_only_the_optional_keywords_it_accepts():
    model = get_model("tests.test_models:third_party_net", optional={"num_classes": 10, "in_channels": 1}, width=6)
    assert model(torch.zeros(1, 4)).shape == (1, 6)
    assert model.jointsparse_arch == {"name": "tests.test_models:third_party_net", "kwargs": {"width": 6}}
    assert get_model("lenet5", optional={"num_classes": 7}).jointsparse_arch["kwargs"] == {"num_classes": 7}
    # An explicit keyword the factory does not take is an error that shows the signature.
    with pytest.raises(ModelError, match=r"third_party_net\(width: int = 4\)"):
        get_model("tests.test_models:third_party_net", depth=2)


def test_factory_in_the_current_directory_imports_without_pythonpath(tmp_path, monkeypatch):
    import sys

    (tmp_path / "cwd_models_for_test.py").write_text(
        "import torch\ndef net(num_classes=2):\n    return torch.nn.Linear(3, num_classes)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = get_model("cwd_models_for_test:net", optional={"num_classes": 5})
    assert model.out_features == 5


def test_trust_gate_names_the_factory_and_the_flag():
    from jointsparse.models import UntrustedModelError, check_trusted

    check_trusted("lenet5", False, "x.jsz")
    check_trusted("pkg.mod:f", True, "x.jsz")
    with pytest.raises(UntrustedModelError, match=r"'pkg.mod:f'.*--trust"):
        check_trusted("pkg.mod:f", False, "x.jsz")


@pytest.mark.parametrize("size, beta, shape", [(5, 0.75, (2, 7, 5, 3)), (4, 0.6, (1, 3, 4, 4)), (1, 0.75, (1, 1, 3, 3)), (6, 0.75, (2, 2, 3, 2))])
def test_local_response_norm_matches_pytorch_in_value_and_gradient(size, beta, shape):
    from jointsparse.models import LocalResponseNorm

    torch.manual_seed(0)
    reference = torch.nn.LocalResponseNorm(size, alpha=0.3, beta=beta, k=1.5)
    fast = LocalResponseNorm(size, alpha=0.3, beta=beta, k=1.5)
    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(fast, (x,))
    torch.testing.assert_close(fast(x), reference(x))
    grad = torch.randn(*shape, dtype=torch.double)
    (mine,) = torch.autograd.grad(fast(x), x, grad)
    (theirs,) = torch.autograd.grad(reference(x), x, grad)
    torch.testing.assert_close(mine, theirs)
    # float32 at AlexNet's settings, and the inputs it hands to PyTorch's own path (3-D)
    alexnet = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    x = torch.randn(2, 96, 9, 9) * 30
    torch.testing.assert_close(alexnet(x), torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alexnet(x[0]), torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(x[0]))


def test_alexnet_trains_with_the_fast_lrn_and_swaps_to_the_compiled_one():
    from jointsparse.models import LocalResponseNorm
    from jointsparse.nn.fast import can_swap

    model = get_model("alexnet", num_classes=10)
    assert isinstance(model.norm, LocalResponseNorm) and can_swap(model.norm)
