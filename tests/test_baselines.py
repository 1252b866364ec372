"""Baseline sparsity methods as trainer hooks, driven by small manual training loops."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jointsparse.baselines import (
    METHODS,
    BaselineConfigError,
    BaselineStateError,
    Bridgeout,
    ChannelSparse,
    DeepCompression,
    GroupProx,
    L0Budget,
    L1Prox,
    ThinningError,
    build_method,
    depth_multiplier,
    method_options,
    scale_channels,
    thin_model,
)
from jointsparse.baselines._common import keep_largest
from jointsparse.models import get_model


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 7),
        nn.ReLU(),
        nn.Linear(7, 4),
    )


def batch(seed: int = 1, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def train_steps(model, hook, steps, lr=0.05, momentum=0.9, weight_decay=1e-3, optimizer=None):
    """The trainer's per-step order, by hand."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    hook.attach_optimizer(optimizer)
    for step in range(steps):
        inputs, targets = batch(step)
        if hasattr(hook, "on_batch_start"):
            hook.on_batch_start(step)
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        hook.after_backward(step)
        optimizer.step()
        hook.after_step(step)
    return optimizer


def roundtrip_state(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# -- shared plumbing ------------------------------------------------------------------------------


def test_keep_largest_is_exact_under_ties():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 1.0]])
    mask = keep_largest(scores, 2)
    assert int(mask.sum()) == 2 and bool(mask[1, 1])
    assert int(keep_largest(torch.ones(10), 4).sum()) == 4


# -- l1_prox --------------------------------------------------------------------------------------


def test_l1_prox_shrinks_by_exactly_lr_lambda_with_the_current_lr():
    model = small_net()
    lam = 0.5
    hook = L1Prox(model, lam={"0": lam, "7": 2 * lam})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    hook.attach_optimizer(optimizer)
    untouched = model[3].weight.detach().clone()
    for step, lr in enumerate((0.01, 0.03)):
        optimizer.param_groups[0]["lr"] = lr  # the hook must read it at call time
        before = {name: model[i].weight.detach().double().clone() for name, i in (("0", 0), ("7", 7))}
        bias_before = model[0].bias.detach().clone()
        hook.after_step(step)
        for name, strength in (("0", lam), ("7", 2 * lam)):
            weight = model[int(name)].weight.detach().double()
            shrink = lr * strength
            expected = before[name].sign() * (before[name].abs() - shrink).clamp_min(0)
            torch.testing.assert_close(weight, expected, rtol=0, atol=1e-7)
            moved = before[name].abs() > shrink
            assert bool((weight[~moved] == 0).all())
            torch.testing.assert_close(before[name].abs()[moved] - weight.abs()[moved], torch.full_like(weight[moved], shrink), rtol=0, atol=1e-7)
        assert torch.equal(model[0].bias, bias_before)
    assert torch.equal(model[3].weight, untouched)


def test_l1_prox_uses_the_lr_of_the_step_taken_not_the_scheduled_next_one():
    model = small_net()
    hook = L1Prox(model, lam=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    hook.attach_optimizer(optimizer)
    before = model[0].weight.detach().clone()
    hook.after_backward(0)
    optimizer.param_groups[0]["lr"] = 10.0  # a scheduler stepping between optimizer.step and after_step
    hook.after_step(0)
    torch.testing.assert_close(model[0].weight.detach(), before.sign() * (before.abs() - 0.002).clamp_min(0))


def test_l1_prox_needs_the_optimizer_and_finalize_holds_zeros():
    model = small_net()
    hook = L1Prox(model, lam=0.05)
    with pytest.raises(BaselineStateError, match="attach_optimizer"):
        hook.after_step(0)
    optimizer = train_steps(model, hook, 6)
    zeros = (model[0].weight == 0).sum()
    assert zeros > 0
    hook.finalize()
    mask = model[0].weight != 0
    before = model[0].weight.detach().clone()
    train_steps(model, hook, 4, optimizer=optimizer)
    assert bool((model[0].weight[~mask] == 0).all())
    kept_moved = (model[0].weight[mask] != before[mask]).any()
    assert kept_moved  # finalized: no more prox, but training goes on


# -- l0_budget ------------------------------------------------------------------------------------


def test_l0_budget_keeps_exactly_k_every_t_steps_and_holds_the_final_mask():
    model = small_net()
    hook = L0Budget(model, keep={"0": 50, "3": 0.25, "7": 0.5}, every=3)
    assert hook.counts == {"0": 50, "3": round(0.25 * 432), "7": 0.5 * 378}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_steps(model, hook, 2, optimizer=optimizer)
    assert int((model[0].weight != 0).sum()) == model[0].weight.numel()  # not projected before step 2
    train_steps(model, hook, 3, optimizer=optimizer)  # step 2 projects
    for name, index in (("0", 0), ("3", 3), ("7", 7)):
        assert int((model[index].weight != 0).sum()) == hook.counts[name]
    assert int((model[9].weight != 0).sum()) == model[9].weight.numel()  # no budget given
    pruning = hook.finalize()
    train_steps(model, hook, 4, lr=0.1, optimizer=optimizer)
    for name, index in (("0", 0), ("3", 3), ("7", 7)):
        assert int((model[index].weight != 0).sum()) == hook.counts[name]
        assert torch.equal(model[index].weight != 0, pruning.masks[name])


@pytest.mark.parametrize("keep, message", [(0, "int >= 1"), (1.5, r"\(0, 1\]"), (True, "finite number"), (10_000, "has only 216")])
def test_l0_budget_rejects_bad_budgets(keep, message):
    with pytest.raises(BaselineConfigError, match=message):
        L0Budget(small_net(), keep={"0": keep})


# -- channel_sparse -------------------------------------------------------------------------------


def test_channel_masks_density_taps_no_dead_filters_fc_dense_and_survive_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
    hook = ChannelSparse(model, alpha=0.3, seed=5)
    masks = hook.pruning.masks
    assert set(masks) == {"0", "2"}  # the Linear layer stays dense
    for name, inputs in (("0", 3), ("2", 16)):
        mask = masks[name]
        pairs = mask[:, :, 0, 0]
        assert bool((mask == pairs[:, :, None, None]).all())  # the same on every tap
        per_output = pairs.sum(1)
        assert bool((per_output == max(1, round(0.3 * inputs))).all())  # exact density, no dead filter
    assert not torch.equal(masks["2"][0], masks["2"][1])  # random, not one pattern
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    hook.attach_optimizer(optimizer)
    for step in range(5):
        inputs = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(inputs), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        hook.after_backward(step)
        optimizer.step()
        hook.after_step(step)
    for name, index in (("0", 0), ("2", 2)):
        weight = model[index].weight
        assert bool((weight[~masks[name]] == 0).all()) and bool((weight[masks[name]] != 0).all())
    assert bool((model[6].weight != 0).all())


def test_channel_masks_are_seeded_per_layer():
    a = ChannelSparse(small_net(), alpha=0.5, seed=1).pruning.masks["3"]
    b = ChannelSparse(small_net(), alpha={"3": 0.5}, seed=1).pruning.masks["3"]  # conv "0" now dense
    c = ChannelSparse(small_net(), alpha=0.5, seed=2).pruning.masks["3"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(BaselineConfigError, match="alpha"):
        ChannelSparse(small_net(), alpha=0.0)
    with pytest.raises(BaselineConfigError, match="nothing"):
        ChannelSparse(small_net(), alpha=1.0)


def conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def test_depth_multiplier_scales_conv_widths_by_sqrt_alpha():
    torch.manual_seed(0)
    narrow = depth_multiplier("lenet5", 0.25)
    assert (narrow.conv1.out_channels, narrow.conv2.out_channels) == (10, 25)
    assert (narrow.fc1.in_features, narrow.fc1.out_features, narrow.fc2.out_features) == (25 * 16, 500, 10)
    assert narrow(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    rebuilt = get_model(narrow.jointsparse_arch["name"], **narrow.jointsparse_arch["kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in narrow.state_dict().items()}
    vgg = depth_multiplier("vgg_small", 0.25)
    full = get_model("vgg_small")
    assert vgg.features.conv1.out_channels == 16 and vgg.fc1.out_features == full.fc1.out_features
    ratio = conv_weights(vgg) / conv_weights(full)
    assert 0.2 < ratio < 0.3
    resnet = depth_multiplier("resnet20", 0.25)  # the generic transform, residual widths kept consistent
    assert resnet.layer3[0].conv1.out_channels == 32 and resnet.fc.in_features == 32
    assert resnet(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_scale_channels_reports_models_it_cannot_scale():
    class Reshaping(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).reshape(x.shape[0], 64))  # hard-coded width

    with pytest.raises(BaselineConfigError, match="does not run"):
        scale_channels(Reshaping(), 0.5, example_input=torch.zeros(1, 1, 6, 6))
    with pytest.raises(BaselineConfigError, match="no Conv2d"):
        scale_channels(nn.Sequential(nn.Linear(3, 3)), 0.5)


# -- bridgeout ------------------------------------------------------------------------------------


def test_bridgeout_noise_has_the_clt_mean_and_variance_only_on_the_tau_share():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3)
    model = nn.Sequential(conv)
    p, q, tau, draws = 0.3, 1.6, 0.75, 3000
    hook = Bridgeout(model, p=p, q=q, tau=tau, seed=3)
    weight = conv.weight.detach().double()
    samples = torch.empty(draws, *weight.shape, dtype=torch.float64)
    for step in range(draws):
        hook.on_batch_start(step)
        samples[step] = hook.perturbed_weight("0").detach()
    selected = hook.selection("0")
    # tau = 0.75 of 8 input kernels per filter: the 6 smallest norms.
    assert bool((selected.flatten(2)[:, :, 0].sum(1) == 6).all())
    norms = weight.flatten(2).norm(dim=2)
    for out in range(4):
        chosen = selected[out, :, 0, 0]
        assert norms[out][chosen].max() <= norms[out][~chosen].min()
    assert bool((samples[:, ~selected] == weight[~selected].float().double()).all())
    w = weight[selected]
    mean, variance = samples[:, selected].mean(0), samples[:, selected].var(0)
    sigma2 = p / (1 - p)  # variance of m / (1 - p) - 1
    mu4 = (1 - p) * (p / (1 - p)) ** 4 + p  # its fourth central moment
    scale = w.abs() ** q
    z_mean = (mean - w) / (sigma2 * scale / draws).sqrt()
    z_var = (variance - sigma2 * scale) / ((mu4 - sigma2**2) * scale**2 / draws).sqrt()
    # 144 noisy weights: P(max |z| > 4.5) is about 144 * 7e-6 under the stated law.
    assert float(z_mean.abs().max()) < 4.5, float(z_mean.abs().max())
    assert float(z_var.abs().max()) < 4.5, float(z_var.abs().max())
    assert abs(float(z_mean.square().mean()) - 1) < 0.35 and abs(float(z_var.square().mean()) - 1) < 0.35


def test_bridgeout_forward_uses_the_noisy_weight_and_gradients_reach_w():
    model = small_net()
    keys = list(model.state_dict())
    hook = Bridgeout(model, p=0.4, q=1.5, seed=1)
    assert list(model.state_dict()) == keys
    x, _ = batch(0)
    hook.on_batch_start(7)
    noise = {name: model[i]._bridgeout_noise.clone() for name, i in (("0", 0), ("3", 3))}
    output = model(x)
    weight = model[3].weight
    reference_weight = weight.detach().clone().requires_grad_(True)
    tilde = reference_weight + reference_weight.abs() ** 0.75 * noise["3"]
    manual = F.conv2d(F.relu(model[1](model[0](x))), tilde, model[3].bias, padding=1)
    torch.testing.assert_close(model[3](F.relu(model[1](model[0](x)))), manual)
    model.zero_grad()
    manual.sum().backward()
    model[3](F.relu(model[1](model[0](x)))).sum().backward()
    torch.testing.assert_close(weight.grad, reference_weight.grad)
    assert float(weight.grad.abs().sum()) > 0
    hook.on_batch_start(7)
    torch.testing.assert_close(model(x), output)  # the draw depends on (seed, step) only
    model.eval()
    plain = model[3]
    torch.testing.assert_close(plain(torch.ones(1, 8, 3, 3)), F.conv2d(torch.ones(1, 8, 3, 3), plain.weight, plain.bias, padding=1))


def test_bridgeout_finalize_prunes_filters_without_fine_tuning():
    model = small_net()
    hook = Bridgeout(model, sparsity={"0": 0.25, "3": 0.5, "9": 0.5})
    train_steps(model, hook, 3)
    norms = model[0].weight.detach().flatten(1).norm(dim=1)
    pruning = hook.finalize()
    assert "forward" not in model[0].__dict__
    rows = model[0].weight.flatten(1).abs().sum(1) == 0
    assert int(rows.sum()) == 2 and float(norms[rows].max()) <= float(norms[~rows].min())
    assert int((model[3].weight.flatten(1).abs().sum(1) == 0).sum()) == 3
    assert "9" not in pruning.masks  # the output layer's neurons are the classes
    magnitude = Bridgeout(small_net(), prune="magnitude", sparsity=0.5)
    magnitude.finalize()
    assert int((magnitude.model[7].weight == 0).sum()) == 378 // 2
    state = roundtrip_state(hook.state_dict())
    again = Bridgeout(small_net())
    again.load_state_dict(state)
    assert again.finalized and "forward" not in again.model[0].__dict__


# -- group_prox -----------------------------------------------------------------------------------


def test_group_prox_zeroes_small_groups_scales_the_others_and_resets_their_momentum():
    model = small_net()
    hook = GroupProx(model, lam=0.3)
    assert "9" not in hook.strengths  # the output layer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_steps(model, _NoHook(), 2, optimizer=optimizer)  # some momentum to reset
    hook.attach_optimizer(optimizer)
    conv, bn = model[0], model[1]
    members = [conv.weight, conv.bias, bn.weight, bn.bias]
    before = [m.detach().clone() for m in members]
    norms = torch.sqrt(sum(m.reshape(8, -1).square().sum(1) for m in before))
    size = 27 + 3
    threshold = 0.05 * 0.3 * math.sqrt(size)
    with torch.no_grad():  # push two groups under the threshold
        for m in members:
            m[[2, 5]] *= 0.5 * threshold / norms[[2, 5]].view(-1, *([1] * (m.dim() - 1)))
    before = [m.detach().clone() for m in members]
    norms = torch.sqrt(sum(m.reshape(8, -1).square().sum(1) for m in before))
    hook.after_step(0)
    removed = norms <= threshold
    assert removed.tolist() == [i in (2, 5) for i in range(8)]
    scale = 1 - threshold / norms
    for member, old in zip(members, before):
        shape = (-1, *([1] * (old.dim() - 1)))
        assert bool((member[removed] == 0).all())
        torch.testing.assert_close(member[~removed], old[~removed] * scale[~removed].view(shape))
        buffer = optimizer.state[member]["momentum_buffer"]
        assert bool((buffer[removed] == 0).all()) and bool((buffer[~removed] != 0).any())


class _NoHook:
    def attach_optimizer(self, optimizer):
        pass

    def after_backward(self, step):
        pass

    def after_step(self, step):
        pass


def test_group_prox_finalize_holds_removed_groups_with_their_bias_and_batchnorm():
    model = small_net()
    hook = GroupProx(model, lam=2.0)
    optimizer = train_steps(model, hook, 3)
    removed = hook.removed_groups()
    assert int(removed["0"].sum()) > 0
    hook.finalize()
    train_steps(model, hook, 3, optimizer=optimizer)
    rows = removed["0"]
    for member in (model[0].weight, model[0].bias, model[1].weight, model[1].bias):
        assert bool((member[rows] == 0).all())


def test_thin_model_removes_silent_channels_and_keeps_the_outputs():
    model = small_net()
    with torch.no_grad():  # three strong groups per layer, so that the prox removes only some
        for index in (0, 3, 7):
            model[index].weight[:3] *= 4
            model[index].bias[:3] *= 4
        model[1].weight[:3] *= 4
    hook = GroupProx(model, lam={"0": 1.0, "3": 0.3, "7": 0.3})
    train_steps(model, hook, 4, lr=0.1)
    removed = {name: int(r.sum()) for name, r in hook.removed_groups().items()}
    assert max(removed.values()) < 6
    assert removed["0"] > 0 and removed["3"] > 0 and removed["7"] > 0
    model.eval()
    thin = thin_model(model)
    assert thin[0].out_channels == 8 - removed["0"] and thin[1].num_features == 8 - removed["0"]
    assert thin[3].in_channels == 8 - removed["0"] and thin[7].in_features == 9 * (6 - removed["3"])
    assert thin[9].in_features == 7 - removed["7"] and thin[9].out_features == 4
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(16, 3, 6, 6)
    torch.testing.assert_close(thin(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lenet5", "vgg_small"])
def test_thin_model_on_the_zoo_models(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=5)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer in layers[:-1]:  # silence every third channel by hand, with what a BatchNorm needs
            layer.weight[::3] = 0
            if layer.bias is not None:
                layer.bias[::3] = 0
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight[::3] = 0
            bn.bias[::3] = 0
    model.eval()
    thin = thin_model(model)
    assert not hasattr(thin, "jointsparse_arch")
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(thin(x), model(x), rtol=1e-5, atol=1e-5)


def test_thin_model_refuses_what_it_cannot_thin_exactly():
    with pytest.raises(ThinningError, match="ResNet"):
        thin_model(get_model("resnet20"))
    with pytest.raises(ThinningError, match="grouped"):
        thin_model(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)))
    with pytest.raises(ThinningError, match="Sigmoid"):
        thin_model(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)))


# -- deep_compression -----------------------------------------------------------------------------


def test_deep_compression_bytes_counts_han_coding_of_a_decoded_file(tmp_path):
    from jointsparse.baselines import deep_compression_bytes, relative_index_layer_decode, relative_index_layer_encode
    from jointsparse.codecs import encode, load

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        for module in (model[0], model[3]):
            module.weight[torch.rand_like(module.weight) < 0.7] = 0
    path = tmp_path / "m.jsz"
    encode(model, path, allow_no_arch=True)
    contents = load(path)
    raw = sum(t.numel() * t.element_size() for t in contents.raw.values())
    assert raw == 4 * (4 + 3)  # the two biases, float32
    streams = 0
    for name, module in (("0.weight", model[0]), ("3.weight", model[3])):
        q = contents.layers[name].quantized
        codes = np.zeros(q.numel, dtype=np.int64)
        codes[q.positions] = q.indices.astype(np.int64) + 1
        stream = relative_index_layer_encode(codes, 8 if name == "0.weight" else 5)
        # the stream holds the layer's pruning pattern: exactly the model's non-zeros
        np.testing.assert_array_equal(relative_index_layer_decode(stream) != 0, module.weight.detach().flatten().numpy() != 0)
        streams += len(stream) + 4 * len(q.codebook)
    assert deep_compression_bytes(contents) == raw + streams


def test_deep_compression_prunes_in_rounds_and_masks_only_grow():
    model = small_net()
    hook = DeepCompression(model, sparsity={"*": 0.6, "7": 0.9}, rounds=3, every=2)
    assert [s for s, _ in hook.schedule] == [1, 3, 5]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    densities, previous = [], None
    for step in range(6):
        train_steps_from(model, hook, optimizer, step)
        density = float((model[7].weight != 0).float().mean())
        densities.append(density)
        if hook.pruning is not None:
            mask = hook.pruning.masks["7"]
            if previous is not None:
                assert bool((mask <= previous).all())  # pruned stays pruned
            previous = mask.clone()
    assert densities[0] == 1.0
    assert [round(d, 3) for d in densities[1::2]] == [round(1 - round(0.3 * 378) / 378, 3), round(1 - round(0.6 * 378) / 378, 3), round(1 - round(0.9 * 378) / 378, 3)]
    assert int((model[0].weight == 0).sum()) == round(0.6 * 216)


def train_steps_from(model, hook, optimizer, step):
    if step == 0:
        hook.attach_optimizer(optimizer)
    inputs, targets = batch(step)
    loss = F.cross_entropy(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    hook.after_backward(step)
    optimizer.step()
    hook.after_step(step)


def test_deep_compression_finalize_reaches_the_target_and_resumes():
    model = small_net()
    hook = DeepCompression(model, schedule=[(0, 0.5), (100, {"*": 0.8})])
    train_steps(model, hook, 2)
    assert hook.rounds_done == 1
    state = roundtrip_state(hook.state_dict())
    hook.finalize()
    assert int((model[3].weight == 0).sum()) == round(0.8 * 432)
    other = DeepCompression(small_net(), schedule=[(0, 0.5), (100, {"*": 0.8})])
    other.load_state_dict(state)
    assert other.rounds_done == 1 and set(other.pruning.masks) == set(hook.pruning.masks)


@pytest.mark.parametrize(
    "schedule, message",
    [
        ([], "non-empty"),
        ([(5, 0.5), (5, 0.6)], "must increase"),
        ([(1, 0.5), (2, 0.4)], "lowers the sparsity"),
        ([(1, 1.0)], r"\[0, 1\)"),
        ([(-1, 0.5)], "int >= 0"),
        ([(1, {"conv9": 0.5})], "match no layer"),
    ],
)
def test_deep_compression_rejects_bad_schedules(schedule, message):
    with pytest.raises(ValueError, match=message):
        DeepCompression(small_net(), schedule=schedule)


# -- build_method ---------------------------------------------------------------------------------


def test_build_method_by_name_and_its_errors():
    for name in METHODS:
        options = {"channel_sparse": {"alpha": 0.5}}.get(name, {})
        hook = build_method(name, small_net(), **options)
        assert hook.name == name
        state = roundtrip_state(hook.state_dict())
        assert isinstance(state, dict)
    with pytest.raises(ValueError, match="unknown method 'l2_prox'; known: .*bridgeout.*l1_prox"):
        build_method("l2_prox", small_net())
    with pytest.raises(BaselineConfigError, match="does not accept option.*lamda.*accepts lam"):
        build_method("l1_prox", small_net(), lamda=0.1)
    assert method_options("l0_budget") == {"keep": 0.25, "every": 100}


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("l1_prox", {"lam": -1.0}, ">= 0"),
        ("l1_prox", {"lam": float("nan")}, "finite"),
        ("l1_prox", {"lam": 0.0}, "nothing"),
        ("l0_budget", {"every": 0}, "every must be an int >= 1"),
        ("channel_sparse", {"alpha": 1.5}, r"\(0, 1\]"),
        ("channel_sparse", {"seed": "x"}, "seed"),
        ("bridgeout", {"p": 1.0}, r"p must be in \[0, 1\)"),
        ("bridgeout", {"q": 2.5}, r"q must be in \(0, 2\]"),
        ("bridgeout", {"tau": 0.0}, "tau"),
        ("bridgeout", {"prune": "l1"}, "prune must be one of filter_norm, magnitude, none"),
        ("group_prox", {"lam": "big"}, "finite number"),
        ("group_prox", {"include_bias": 1}, "bool"),
        ("deep_compression", {"rounds": 0}, "rounds"),
        ("deep_compression", {"sparsity": {"fc": 0.5}}, "match no layer"),
    ],
)
def test_build_method_rejects_bad_option_values(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_method(name, small_net(), **options)
