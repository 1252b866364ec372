import math

import pytest
import torch
from torch import nn

from jointsparse.sparsity import (
    JointSparsity,
    PruningMasks,
    SparsityConfigError,
    layer_densities,
    magnitude_quantile,
    spatial_prune,
    winograd_thresholds,
)
from jointsparse.layers import LayerKeyError
from jointsparse.transforms import filter_to_winograd, winograd_matrices


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )


def test_quantile_on_known_tensor():
    values = torch.tensor([-5.0, 1.0, -2.0, 3.0, 4.0, 0.5, -0.25, 6.0, 7.0, 8.0])
    assert magnitude_quantile(values, 0.3) == 1.0  # |.| sorted: .25 .5 1 2 3 ...
    assert magnitude_quantile(values, 0.05) == 0.25
    assert magnitude_quantile(values, 0.0) == -math.inf
    assert magnitude_quantile(values, 0.999) == 8.0


def test_sampled_quantile_error_is_small():
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(3_000_000, generator=gen)
    threshold = magnitude_quantile(big, 0.7, torch.Generator().manual_seed(2))
    share = float((big.abs() <= threshold).float().mean())
    assert abs(share - 0.7) < 0.002


def test_sparsity_targets_are_checked_fractions():
    with pytest.raises(SparsityConfigError, match=r"\[0, 1\)"):
        JointSparsity(small_net(), spatial_sparsity=1.5)
    with pytest.raises(SparsityConfigError, match=r"spatial_sparsity\['2'\]"):
        JointSparsity(small_net(), spatial_sparsity={"2": -0.1})


def test_winograd_targets_name_winograd_form_layers_only():
    with pytest.raises(LayerKeyError, match="'4' match no layer; layers are 0$"):
        JointSparsity(small_net(), winograd_sparsity={"4": 0.5})


def test_modes_pick_the_domains():
    model = small_net()
    joint = JointSparsity(model, 0.5, 0.6, mode="joint")
    by_name = {layer.name: layer for layer in joint.layers}
    assert by_name["0"].spatial_sparsity == 0.5 and by_name["0"].winograd_sparsity == 0.6
    assert by_name["2"].winograd_sparsity == 0  # strided: no Winograd form
    wino = {layer.name: layer for layer in JointSparsity(model, 0.5, 0.6, mode="winograd").layers}
    assert wino["0"].spatial_sparsity == 0 and wino["0"].winograd_sparsity == 0.6
    assert wino["4"].spatial_sparsity == 0.5  # spatial-only layers keep their spatial term
    spatial = {layer.name: layer for layer in JointSparsity(model, 0.5, 0.6, mode="spatial").layers}
    assert spatial["0"].winograd_sparsity == 0
    with pytest.raises(SparsityConfigError, match="mode"):
        JointSparsity(model, mode="both")


def test_penalty_gradient_matches_closed_form():
    model = small_net().double()
    reg = JointSparsity(model, 0.5, 0.5, mode="joint", learnable=True, init_log_coefficient=0.3)
    conv = model[0]
    penalty = reg.penalty()
    penalty.backward()
    rho_s, rho_w = (float(v.detach()) for v in reg.log_coefficients.values())
    layer0 = reg.layers[0]
    w = conv.weight.detach()
    _, g, _ = winograd_matrices(2, 3)
    big = filter_to_winograd(w, 2)
    mask_w = big.abs() <= layer0.winograd_threshold
    expected = math.exp(rho_s) * 2 * w * (w.abs() <= layer0.spatial_threshold) / reg.spatial_count
    expected = expected + math.exp(rho_w) * 2 * (g.T @ (big * mask_w) @ g) / reg.winograd_count
    assert torch.allclose(conv.weight.grad, expected, rtol=1e-10, atol=1e-14)
    # dC/drho = exp(rho) R - a
    terms = reg.penalties()
    assert reg.log_coefficients["spatial"].grad.item() == pytest.approx(math.exp(rho_s) * terms["spatial"].item() - 1.0)


def test_fixed_coefficient_mode_and_no_extra_parameters():
    model = small_net()
    reg = JointSparsity(model, 0.5, 0.5, learnable=False, lambda_spatial=2.0, lambda_winograd=3.0)
    terms = reg.penalties()
    assert reg.parameters() == []
    assert reg.penalty().item() == pytest.approx(2.0 * terms["spatial"].item() + 3.0 * terms["winograd"].item())


def near_zero_shares(mode: str) -> tuple[float, float]:
    """Train a toy problem (a weak pull towards the initial weights, plus the regularizer) and
    return the shares of near-zero weights in the spatial and the Winograd domain."""
    model = small_net()
    start = [p.detach().clone() for p in model.parameters()]
    reg = JointSparsity(model, 0.6, 0.6, mode=mode, update_every=5)
    opt = torch.optim.SGD([*model.parameters(), *reg.parameters()], lr=0.05)
    for step in range(400):
        opt.zero_grad()
        data = 0.01 * sum((p - q).square().sum() for p, q in zip(model.parameters(), start))
        (data + reg.penalty()).backward()
        opt.step()
        reg.after_step(step)
    w = model[0].weight.detach()
    tolerance = 1e-2 * start[0].abs().max()
    big = filter_to_winograd(w.double(), 2)
    return float((w.abs() < tolerance).float().mean()), float((big.abs() < tolerance).float().mean())


def test_joint_mode_sparsifies_both_domains_and_single_modes_do_not():
    joint_spatial, joint_winograd = near_zero_shares("joint")
    assert joint_spatial >= 0.5 and joint_winograd >= 0.5
    spatial_spatial, spatial_winograd = near_zero_shares("spatial")
    assert spatial_spatial >= 0.5 and spatial_winograd < 0.35
    winograd_spatial, winograd_winograd = near_zero_shares("winograd")
    assert winograd_winograd >= 0.5 and winograd_spatial < 0.4


def test_masks_stay_zero_with_momentum_and_weight_decay():
    model = small_net()
    reg = JointSparsity(model, 0.7, 0.0, mode="spatial")
    # momentum built up before pruning must not move pruned weights afterwards
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(8, 2, 7, 7)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    masks = reg.prune()
    reg.attach_optimizer(opt)
    zero_before = {name: (model.get_submodule(name).weight == 0) for name in masks.masks}
    for step in range(5):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    for name, was_zero in zero_before.items():
        weight = model.get_submodule(name).weight
        assert torch.all(weight[was_zero] == 0)
        assert float(was_zero.float().mean()) == pytest.approx(0.7, abs=0.02)
    adam = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=1e-2)
    for step in range(3):
        adam.zero_grad()
        model(x).square().mean().backward()
        adam.step()
    for name, was_zero in zero_before.items():
        assert torch.all(model.get_submodule(name).weight[was_zero] == 0)


def test_state_round_trip_restores_thresholds_coefficients_and_masks():
    model = small_net()
    reg = JointSparsity(model, 0.5, 0.5)
    with torch.no_grad():
        reg.log_coefficients["spatial"].fill_(1.25)
    reg.prune()
    state = reg.state_dict()
    other = JointSparsity(small_net(), 0.5, 0.5)
    other.load_state_dict(state)
    assert other.log_coefficients["spatial"].item() == 1.25
    assert [l.spatial_threshold for l in other.layers] == [l.spatial_threshold for l in reg.layers]
    assert other.pruning is not None and all(torch.equal(other.pruning.masks[k], v) for k, v in reg.pruning.masks.items())
    with pytest.raises(SparsityConfigError, match="lacks"):
        JointSparsity(nn.Sequential(nn.Linear(2, 2)), 0.5, 0.5).load_state_dict(state)


def test_pruning_masks_validate_shapes():
    model = small_net()
    with pytest.raises(SparsityConfigError, match="shape"):
        PruningMasks(model, {"0": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(SparsityConfigError, match="names no"):
        PruningMasks(model, {"nope": torch.ones(3, dtype=torch.bool)})


def test_densities_and_spatial_prune():
    model = small_net()
    pruned = spatial_prune(model, {"0": 0.75, "4": 0.5})
    dens = layer_densities(pruned)
    assert dens["0"]["spatial"] == pytest.approx(0.25, abs=0.02)
    assert dens["4"]["spatial"] == pytest.approx(0.5, abs=0.02)
    assert dens["2"]["spatial"] == 1.0 and dens["2"]["winograd"] is None
    assert layer_densities(model)["0"]["spatial"] == 1.0  # the original is untouched
    thresholds = winograd_thresholds(model, 0.4)
    assert set(thresholds) == {"0"}
    high = layer_densities(model, winograd_thresholds=thresholds)["0"]["winograd"]
    assert high == pytest.approx(0.6, abs=0.02)


def _sparsifiers():
    from jointsparse.baselines import METHODS, build_method

    yield "joint_sparsity", lambda model: JointSparsity(model, 0.6, 0.5, learnable=False)
    for name in sorted(METHODS):
        yield name, lambda model, name=name: build_method(name, model)


@pytest.mark.parametrize("name,make", list(_sparsifiers()), ids=[name for name, _ in _sparsifiers()])
def test_pruned_weights_stay_zero_under_a_plain_sgd_loop(name, make):
    """After prune(), a user's own loop with a fresh SGD (momentum, weight decay) and no other
    call keeps every pruned weight exactly zero; squash_mask() leaves plain weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    with torch.no_grad():  # prune by magnitude even where a method relies on its training to shrink weights
        for module in (model[0], model[3], model[7]):
            module.weight.mul_(module.weight.abs() > module.weight.abs().median())
        for tensor in (model[0].weight, model[0].bias, model[1].weight, model[1].bias):
            tensor[:2] = 0  # two whole groups (filter, bias, BatchNorm), for the group methods
    sparsifier = make(model)
    masks = sparsifier.prune()
    pruned = {layer: ~keep for layer, keep in masks.masks.items()}
    assert any(bool(p.any()) for p in pruned.values())
    keys = set(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(16, 2, 6, 6), torch.randint(0, 5, (16,))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        for layer, gone in pruned.items():
            assert not model.get_submodule(layer).weight[gone].any(), f"{name}: {layer} revived"
    assert set(model.state_dict()) == keys  # plain weight tensors, no parametrization
    sparsifier.squash_mask()
    assert sparsifier.pruning is None and isinstance(model[0].weight, nn.Parameter)


def test_squash_mask_stops_holding():
    model = small_net()
    sparsifier = JointSparsity(model, 0.7, 0.0, learnable=False)
    gone = ~sparsifier.prune().masks["0"]
    sparsifier.squash_mask()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 2, 7, 7)).square().sum().backward()
    optimizer.step()
    assert bool(model[0].weight[gone].any())


def test_auto_a_puts_the_starting_model_at_equilibrium():
    model = small_net()
    reg = JointSparsity(model, 0.5, 0.5, a_spatial="auto", a_winograd=2.5)
    start = {k: v.detach() for k, v in reg.penalties().items()}
    # a = N R_0 / e with the default rho_0 = ln N - 1: the gradient of the cost in rho is zero.
    assert reg.a["spatial"] == pytest.approx(reg.spatial_count * float(start["spatial"]) / math.e, rel=1e-5)
    assert reg.a["winograd"] == 2.5
    rho = reg.log_coefficients["spatial"]
    grad = float(rho.detach().exp() * start["spatial"] - reg.a["spatial"])
    assert abs(grad) < 1e-6 * reg.a["spatial"]
    with pytest.raises(SparsityConfigError, match="a_spatial must be 'auto' or a number"):
        JointSparsity(model, 0.5, 0.5, a_spatial="big")


def test_spatial_term_is_off_once_pruned_and_winograd_term_stays(monkeypatch):
    """After prune() the mask holds every layer at its spatial target, so the spatial term must be
    exactly zero, even where the threshold would come from a random sample (here forced by a tiny
    QUANTILE_SAMPLE, which can land on a small live weight), while the Winograd term stays on."""
    import jointsparse.sparsity as sparsity

    monkeypatch.setattr(sparsity, "QUANTILE_SAMPLE", 8)
    model = small_net()
    regularizer = JointSparsity(model, 0.5, 0.5, learnable=False)
    regularizer.prune()
    winograd_terms = []
    for step in range(20):  # fresh samples each time
        regularizer.after_step(step * regularizer.update_every + regularizer.update_every - 1)
        terms = regularizer.penalties()
        assert float(terms["spatial"]) == 0.0
        winograd_terms.append(float(terms["winograd"].detach()))
    assert max(winograd_terms) > 0.0  # one 8-value sample may fall on a zero, twenty do not


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5, 3, 3), (70_000,)])  # empty; one block; a conv weight; several 64K blocks
@pytest.mark.parametrize("threshold", [-math.inf, 0.0, 0.5, math.inf])
def test_small_square_sum_matches_the_masked_l2_and_its_gradient(shape, threshold):
    from jointsparse.sparsity import small_square_sum

    generator = torch.Generator().manual_seed(1)
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    if values.numel():
        values.view(-1)[0] = 0.5  # exactly at the threshold: inside, as the mask |v| <= t says
    fused = values.clone().requires_grad_(True)
    plain = values.clone().requires_grad_(True)
    (3 * small_square_sum(fused, threshold)).backward()
    reference = plain.square().mul(plain.detach().abs() <= threshold).sum()
    (3 * reference).backward()
    assert float(small_square_sum(values, threshold)) == pytest.approx(float(reference.detach()), rel=1e-12, abs=1e-12)
    assert torch.allclose(fused.grad, plain.grad, rtol=0, atol=1e-12)


def test_small_square_sum_keeps_float32_accuracy_over_large_tensors():
    from jointsparse.sparsity import small_square_sum

    values = torch.randn(3_000_000, generator=torch.Generator().manual_seed(2))
    exact = float(values.double().square().mul(values.double().abs() <= 1.0).sum())
    assert float(small_square_sum(values, 1.0)) == pytest.approx(exact, rel=1e-6)


def test_small_square_sum_sums_half_precision_in_float32_and_refuses_a_second_derivative():
    from jointsparse.sparsity import small_square_sum

    values = (torch.randn(200_000, generator=torch.Generator().manual_seed(3)) * 0.5).to(torch.bfloat16)
    exact = float(values.double().square().mul(values.double().abs() <= 1.0).sum())
    result = small_square_sum(values, 1.0)
    assert result.dtype == torch.bfloat16 and float(result) == pytest.approx(exact, rel=1e-2)  # one bfloat16 rounding, not 200K
    weights = torch.randn(50, requires_grad=True)
    (grad,) = torch.autograd.grad(small_square_sum(weights, 1.0), weights, create_graph=True)
    with pytest.raises(RuntimeError):  # an error, never a silent zero second derivative
        grad.sum().backward()
