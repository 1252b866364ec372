"""jointsparse.codecs.quantize and codebook fine-tuning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from jointsparse.codecs import CodebookFinetuner, kmeans_1d, quantize_model, quantize_weight
from jointsparse.codecs.quantize import dither, layer_bits
from jointsparse.layers import LayerKeyError


def _naive_lloyd(values: np.ndarray, centroids: np.ndarray, iterations: int = 1000) -> np.ndarray:
    """O(n K) Lloyd with full distance matrices: the reference for the sorted-prefix-sum version."""
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
        new = np.array([values[assign == k].mean() if np.any(assign == k) else centroids[k] for k in range(len(centroids))])
        if np.array_equal(new, centroids):
            break
        centroids = new
    return centroids[np.bincount(assign, minlength=len(centroids)) > 0]


def _sparse_weight(shape, density, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    return weight * (torch.rand(shape, generator=generator) < density)


def test_kmeans_1d_matches_naive_lloyd():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-1, 0.3, 700), rng.normal(0.8, 0.2, 500), rng.uniform(-3, 3, 100)])
    fast = kmeans_1d(values, 15)
    reference = _naive_lloyd(values, np.linspace(values.min(), values.max(), 15))
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-9)


def test_kmeans_1d_few_distinct_values_are_exact_and_empty_is_empty():
    values = np.array([0.5, -1.0, 0.5, 2.0, -1.0, 3.0])
    np.testing.assert_array_equal(kmeans_1d(values, 7), [-1.0, 0.5, 2.0, 3.0])
    assert kmeans_1d(np.zeros(0), 3).size == 0


def test_kmeanspp_init_is_seeded_and_no_worse_than_random_centroids():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(-2, 0.1, 3000), rng.normal(2, 0.1, 3000), rng.normal(0, 0.05, 50)])
    first = kmeans_1d(values, 3, init="kmeans++", seed=3)
    np.testing.assert_array_equal(first, kmeans_1d(values, 3, init="kmeans++", seed=3))
    sse = np.min((values[:, None] - first[None, :]) ** 2, axis=1).sum()
    assert sse < 0.1 * values.var() * values.size  # found the three modes
    with pytest.raises(ValueError, match="init"):
        kmeans_1d(values, 3, init="random")


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(1, 8),
    density=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    shape=st.sampled_from([(1,), (3, 5), (4, 2, 3, 3), (0, 4)]),
    seed=st.integers(0, 100),
)
def test_kmeans_quantization_keeps_zeros_and_assigns_nearest(bits, density, shape, seed):
    weight = _sparse_weight(shape, density, seed)
    layer = quantize_weight(weight, "kmeans", bits)
    np.testing.assert_array_equal(layer.positions, np.flatnonzero(weight.numpy()))
    assert len(layer.codebook) <= 2**bits - 1
    assert layer.codebook.dtype == np.float32 and np.all(np.diff(layer.codebook) > 0)
    decoded = layer.dequantize()
    assert decoded.shape == weight.shape and decoded.dtype == torch.float32
    assert torch.all(decoded[weight == 0] == 0)
    nonzero = weight.numpy().ravel()[layer.positions].astype(np.float64)
    if nonzero.size:
        chosen = np.abs(nonzero - layer.codebook[layer.indices].astype(np.float64))
        best = np.min(np.abs(nonzero[:, None] - layer.codebook[None, :].astype(np.float64)), axis=1)
        np.testing.assert_allclose(chosen, best, rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 12), density=st.sampled_from([0.1, 0.7, 1.0]), seed=st.integers(0, 2**31))
def test_universal_quantization_error_is_at_most_half_a_step(bits, density, seed):
    weight = _sparse_weight((6, 5, 3, 3), density, seed % 1000)
    layer = quantize_weight(weight, "universal", bits, seed=seed)
    decoded = layer.dequantize().numpy()
    original = weight.numpy()
    assert np.all(decoded[original == 0] == 0)  # pruned weights get no dither
    error = np.abs(decoded[original != 0].astype(np.float64) - original[original != 0])
    assert error.max(initial=0) <= layer.dither_step * (0.5 + 1e-5)
    assert len(layer.codebook) == 2**bits - 1 and layer.indices.max(initial=0) < 2**bits - 1


def test_dither_follows_the_documented_generator():
    step = 0.125
    u = dither(1234, 1000, step)
    raw = np.random.PCG64(1234).random_raw(1000)
    expected = ((raw >> np.uint64(40)).astype(np.float64) / 2**24 - 0.5) * step  # exact in float32 here
    np.testing.assert_array_equal(u, expected.astype(np.float32))
    assert u.dtype == np.float32 and u.min() >= -step / 2 and u.max() < step / 2
    assert abs(float(u.mean())) < 0.05 * step
    assert not np.array_equal(u, dither(1235, 1000, step))


def test_quantize_weight_rejects_bad_input():
    weight = torch.randn(4, 4)
    for bits in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="bits"):
            quantize_weight(weight, "kmeans", bits)
    with pytest.raises(ValueError, match="universal quantization needs bits >= 2"):
        quantize_weight(weight, "universal", 1)
    with pytest.raises(ValueError, match="unknown quantizer"):
        quantize_weight(weight, "lloyd", 4)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_weight(torch.tensor([1.0, float("nan")]), "kmeans", 4)


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def _pruned_small(seed: int = 0, density: float = 0.4) -> _Small:
    torch.manual_seed(seed)
    model = _Small()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                p.mul_(torch.rand_like(p) < density)
    return model


def test_quantize_model_covers_every_conv_and_linear_with_per_kind_bits():
    model = _pruned_small()
    before = copy.deepcopy(model.state_dict())
    layers = quantize_model(model)
    assert list(layers) == ["features.0.weight", "features.3.weight", "fc.weight"]
    assert [layers[n].bits for n in layers] == [6, 6, 5]
    assert [layers[n].kind for n in layers] == ["conv", "conv", "linear"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not modified
    assert [q.bits for q in quantize_model(model, bits=3).values()] == [3, 3, 3]
    mixed = quantize_model(model, bits={"features.0": 2, "fc": 7})
    assert [q.bits for q in mixed.values()] == [2, 6, 7]
    universal = quantize_model(model, "universal", seed=10)
    assert [q.dither_seed for q in universal.values()] == [10, 11, 12]
    with pytest.raises(LayerKeyError, match="match no layer; layers are features.0, features.3, fc"):
        quantize_model(model, bits={"classifier": 4})
    with pytest.raises(LayerKeyError, match="match no layer"):  # keys are module names, not parameter names
        quantize_model(model, bits={"fc.weight": 7})


def test_layer_bits_exact_name_beats_a_glob_in_any_order():
    model = _pruned_small()
    for spec in ({"features.*": 4, "features.0": 8}, {"features.0": 8, "features.*": 4}):
        assert layer_bits(model, spec) == {"features.0": 8, "features.3": 4, "fc": 5}
    assert layer_bits(model, {"*": 3, "f*": 7}) == {"features.0": 3, "features.3": 3, "fc": 3}  # first glob wins


# -- codebook fine-tuning -------------------------------------------------------------------
def _train_steps(model, hooks, steps, optimizer, x, y):
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y) + sum(h.penalty() for h in hooks)
        optimizer.zero_grad()
        loss.backward()
        for hook in hooks:
            if hasattr(hook, "after_backward"):  # a sparsifier's masks need no call
                hook.after_backward(step)
        optimizer.step()
        for hook in hooks:
            hook.after_step(step)


@pytest.mark.parametrize("quantizer", ["kmeans", "universal"])
def test_finetuner_keeps_weights_tied_and_pruned_weights_zero(quantizer):
    model = _pruned_small()
    pruned = {n: p.detach() == 0 for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    layers = quantize_model(model, quantizer, bits=4)
    dithers = {n: q.dither().copy() for n, q in layers.items()}
    start = {n: q.codebook.copy() for n, q in layers.items()}
    tuner = CodebookFinetuner(model, layers, lr=0.5, momentum=0.5)
    # Momentum and weight decay in the main optimizer must not move the tied weights either.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(8, 3, 4, 4), torch.randn(8, 10)
    _train_steps(model, [tuner], 5, optimizer, x, y)
    params = dict(model.named_parameters())
    for name, layer in layers.items():
        assert torch.equal(params[name].detach(), layer.dequantize())  # bit-exact
        assert torch.all(params[name].detach()[pruned[name]] == 0)
        np.testing.assert_array_equal(layer.dither(), dithers[name])  # the dither stays put
    assert any(not np.array_equal(start[n], layers[n].codebook) for n in layers)  # centroids moved


def test_finetuner_moves_each_centroid_by_the_mean_gradient_of_its_members():
    model = _pruned_small()
    layers = quantize_model(model, "kmeans", bits=3)
    tuner = CodebookFinetuner(model, layers, lr=0.25)
    x, y = torch.randn(8, 3, 4, 4), torch.randn(8, 10)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    grads = {n: p.grad.detach().clone().reshape(-1) for n, p in model.named_parameters() if n in layers}
    before = {n: q.codebook.copy() for n, q in layers.items()}
    tuner.after_backward(0)
    assert all(p.grad is None or not p.grad.any() for n, p in model.named_parameters() if n in layers)
    tuner.after_step(0)
    for name, layer in layers.items():
        member_grads = grads[name].numpy()[layer.positions]
        for k in range(len(layer.codebook)):
            members = member_grads[layer.indices == k]
            expected = before[name][k] - 0.25 * members.mean() if members.size else before[name][k]
            assert layer.codebook[k] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_finetuner_state_dict_round_trip_and_errors():
    model = _pruned_small()
    layers = quantize_model(model, bits=4)
    tuner = CodebookFinetuner(model, layers, lr=0.5)
    x, y = torch.randn(8, 3, 4, 4), torch.randn(8, 10)
    _train_steps(model, [tuner], 3, torch.optim.SGD(model.parameters(), lr=0.0), x, y)
    state = tuner.state_dict()
    other_model = _pruned_small()
    other = CodebookFinetuner(other_model, quantize_model(other_model, bits=4), lr=0.5)
    other.load_state_dict(state)
    assert torch.equal(other_model.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match="not conv/linear weights"):
        CodebookFinetuner(model, {"nope.weight": layers["fc.weight"]})
    with pytest.raises(ValueError, match="learning rate"):
        CodebookFinetuner(model, layers, lr=0.0)
    diverging = CodebookFinetuner(model, layers, lr=1e30)
    with pytest.raises(FloatingPointError, match="diverged"):
        _train_steps(model, [diverging], 3, torch.optim.SGD(model.parameters(), lr=0.0), x, y * 1e30)


def test_winograd_density_survives_quantization_with_the_regularizer_in_fine_tuning():
    """Issue #4: with JointSparsity in the loss during codebook fine-tuning, the Winograd density
    (at the regularizer's thresholds from before quantization) stays within 2 points; the same
    fine-tuning without it drifts by more than that (the control that makes this test able to
    fail). Checked robust over seeds 0-3: 0.2-0.6 points with, 4.5-5.7 points without."""
    from jointsparse.sparsity import JointSparsity, layer_densities

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster and deterministic
    try:
        torch.manual_seed(0)

        def net():
            return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

        teacher, student = net(), net()
        x = torch.randn(64, 4, 6, 6)
        y = teacher(x).detach()

        def regularizer(model):
            return JointSparsity(model, spatial_sparsity=0.5, winograd_sparsity=0.6, learnable=False, lambda_spatial=50.0, lambda_winograd=50.0, update_every=20)

        reg = regularizer(student)
        _train_steps(student, [reg], 150, torch.optim.Adam(student.parameters(), lr=1e-2), x, y)
        reg.prune()
        _train_steps(student, [reg], 40, torch.optim.Adam(student.parameters(), lr=3e-3), x, y)
        thresholds = {layer.name: layer.winograd_threshold for layer in reg.layers}

        def winograd_density(model):
            return np.array([d["winograd"] for d in layer_densities(model, 2, thresholds).values()])

        before = winograd_density(student)

        def fine_tune(with_regularizer):
            model = copy.deepcopy(student)
            tuner = CodebookFinetuner(model, quantize_model(model, "kmeans", bits=6), lr=3.0)
            hooks = [tuner]
            if with_regularizer:
                frozen = regularizer(model)
                frozen.update_every = 10**9  # keep the pre-quantization thresholds
                for layer, trained in zip(frozen.layers, reg.layers):
                    layer.spatial_threshold, layer.winograd_threshold = trained.spatial_threshold, trained.winograd_threshold
                hooks = [frozen, tuner]
            _train_steps(model, hooks, 150, torch.optim.SGD(model.parameters(), lr=0.0), x, y)
            return winograd_density(model)

        with_reg, without_reg = fine_tune(True), fine_tune(False)
    finally:
        torch.set_num_threads(threads)
    print("Winograd density before, with, without the regularizer:", before, with_reg, without_reg)
    assert np.all(np.abs(with_reg - before) <= 0.02), (before, with_reg)
    assert np.max(np.abs(without_reg - before)) > 0.02, (before, without_reg)
