"""SBNN synapses: local reparameterisation vs Monte-Carlo weight samples, conv variance geometry, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from bso_snn.bayes import SBNNConv2d, SBNNLinear


def _set(layer, sigma, seed=0):
    """Deterministic mu, a, c (non-trivial) and sigma for the tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype) * 0.3)
        layer.rho.fill_(sigma + math.log(-math.expm1(-sigma)))  # softplus^-1(sigma)
        layer.a.copy_(1 + 0.2 * torch.randn(layer.a.shape, generator=g, dtype=layer.a.dtype))
        layer.c.copy_(0.1 * torch.randn(layer.c.shape, generator=g, dtype=layer.c.dtype))


def _check_moments(samples, mean, var, k):
    """Sample mean within 5 standard errors; sample variance within 5 x its std sqrt(2/(k-1)) (relative)."""
    emp_mean, emp_var = samples.mean(0), samples.var(0)
    assert torch.all((emp_mean - mean).abs() < 5 * (var / k).sqrt())
    assert torch.all((emp_var / var - 1).abs() < 5 * math.sqrt(2 / (k - 1)))


def test_linear_moments_match_monte_carlo_weight_samples():
    """With a=1, c=0: W ~ N(mu, sigma^2), k = 20000 draws of W x vs the layer's (mean, var)."""
    torch.manual_seed(0)
    layer = SBNNLinear(12, 5, time_steps=1).double()
    _set(layer, sigma=0.4)
    with torch.no_grad():
        layer.a.fill_(1.0), layer.c.fill_(0.0)
    x = torch.rand(3, 12, dtype=torch.float64)
    mean, var, bias_var = layer(x)
    k = 20_000
    W = layer.weight.detach() + layer.sigma.detach() * torch.randn(k, 5, 12, dtype=torch.float64)
    samples = torch.einsum("koi,bi->kbo", W, x)
    _check_moments(samples, mean.detach(), var.detach().expand_as(mean), k)
    assert bias_var == 0.0


def test_linear_mean_and_variance_formulas_per_time_step():
    layer = SBNNLinear(7, 4, time_steps=3).double()
    _set(layer, sigma=0.3)
    x = torch.randn(2, 7, dtype=torch.float64)
    for t in range(3):
        mean, var, _ = layer(x, t)
        for b in range(2):
            sq = sum(x[b, i].item() ** 2 for i in range(7))
            assert var[b, 0].item() == pytest.approx(0.3**2 * sq, rel=1e-12)
            for o in range(4):
                dot = sum(layer.weight[o, i].item() * x[b, i].item() for i in range(7))
                ref = layer.a[t, o].item() * dot + layer.c[t, o].item()
                assert mean[b, o].item() == pytest.approx(ref, rel=1e-12, abs=1e-14)


GEOMETRIES = [  # (kernel, stride, padding, dilation)
    (3, 1, 0, 1),
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    (2, 2, 0, 1),
    ((3, 2), (1, 2), (2, 0), 1),
    (3, 1, 2, 2),
]


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), GEOMETRIES)
def test_conv_variance_is_the_receptive_field_sum_of_squares(kernel, stride, padding, dilation):
    """var = sigma^2 * conv2d(x^2, ones) with the layer's geometry, and a hand loop over the receptive field."""
    layer = SBNNConv2d(2, 3, kernel, stride, padding, dilation).double()
    _set(layer, sigma=0.25)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    mean, var, _ = layer(x)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation}
    ones = torch.ones(1, *layer.weight.shape[1:], dtype=torch.float64)
    torch.testing.assert_close(var, 0.25**2 * F.conv2d(x**2, ones, **geometry), rtol=1e-12, atol=0)
    assert var.shape[2:] == mean.shape[2:] and var.shape[1] == 1
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    padded = F.pad(x, (pw, pw, ph, ph))
    for b in range(2):
        for i in range(var.shape[2]):
            for j in range(var.shape[3]):
                rf = padded[
                    b, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw
                ]
                assert var[b, 0, i, j].item() == pytest.approx(0.25**2 * (rf**2).sum().item(), rel=1e-12)


@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 0)])
def test_conv_moments_match_monte_carlo_weight_samples(stride, padding):
    """k = 20000 weight draws as the output channels of one conv2d call; a_t and c_t applied."""
    torch.manual_seed(1)
    layer = SBNNConv2d(2, 2, 3, stride, padding, time_steps=2).double()
    _set(layer, sigma=0.3)
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    mean, var, _ = layer(x, t=1)
    k = 20_000
    W = layer.weight.detach() + layer.sigma.detach() * torch.randn(k, 2, 2, 3, 3, dtype=torch.float64)
    out = F.conv2d(x, W.flatten(0, 1), stride=stride, padding=padding).view(k, 2, *mean.shape[2:])
    a, c = layer.a[1].detach().view(1, 2, 1, 1), layer.c[1].detach().view(1, 2, 1, 1)
    samples = a * out + c
    # the released model's variance ignores a: compare against var * a^2 to test the mean/var pair exactly
    _check_moments(samples, mean.detach()[0], (var.detach() * a**2)[0].expand_as(mean[0]), k)


def test_variance_path_does_not_backpropagate_into_the_input():
    layer = SBNNConv2d(1, 2, 3, padding=1)
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    layer(x).var.sum().backward()
    assert x.grad is None
    assert layer.rho.grad is not None and layer.rho.grad.item() > 0
    layer(x).mean.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_initialisation(learn_sigma):
    layer = SBNNConv2d(4, 8, 3, time_steps=5, learn_sigma=learn_sigma, bias_noise_std=0.3133)
    n = 4 * 9
    assert layer.sigma.item() == pytest.approx(0.5 / math.sqrt(n), rel=1e-6)
    assert layer.weight.abs().max() <= 1 / math.sqrt(n)
    assert layer.a.shape == layer.c.shape == (5, 8) and torch.all(layer.a == 1) and torch.all(layer.c == 0)
    assert ("rho" in dict(layer.named_parameters())) == learn_sigma
    assert ("rho" in dict(layer.named_buffers())) == (not learn_sigma)
    assert layer(torch.rand(1, 4, 5, 5)).bias_var.item() == pytest.approx(0.3133**2, rel=1e-5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SBNNLinear(3, 2, sigma_init=-0.5), r"sigma_init=-0.5 must be > 0"),
        (lambda: SBNNConv2d(3, 2, 3, sigma_init=0.0), r"sigma_init=0.0 must be > 0"),
        (lambda: SBNNLinear(3, 2, time_steps=0), r"time_steps=0 must be >= 1"),
        (lambda: SBNNLinear(3, 2, bias_noise_std=0.0), r"bias_noise_std=0.0 must be > 0 or None"),
    ],
)
def test_bad_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_time_index_and_shapes():
    lin, conv = SBNNLinear(3, 2, time_steps=4), SBNNConv2d(3, 2, 3)
    with pytest.raises(IndexError, match=r"SBNNLinear: time step t=4 is outside \[0, 4\); build the layer"):
        lin(torch.zeros(1, 3), 4)
    with pytest.raises(IndexError, match=r"t=-1 is outside"):
        lin(torch.zeros(1, 3), -1)
    with pytest.raises(ValueError, match=r"SBNNLinear: input shape \(1, 5\) is not \[batch, 3\]; flatten"):
        lin(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"SBNNConv2d: input shape \(1, 2, 5, 5\) is not \[batch, 3, H, W\]"):
        conv(torch.zeros(1, 2, 5, 5))


def test_binarize_means_sets_alpha_times_sign_per_layer():
    from bso_snn.bayes import binarize_means_

    model = torch.nn.Sequential(SBNNConv2d(2, 3, 3), torch.nn.Flatten(), SBNNLinear(12, 4))
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    assert binarize_means_(model) == 2
    for w0, layer in zip(before, (model[0], model[2]), strict=True):
        alpha = w0.abs().mean()
        expected = torch.where(w0 >= 0, alpha, -alpha)
        assert torch.equal(layer.weight.detach(), expected)
    with pytest.raises(ValueError, match=r"binarize_means_: model has no SBNNLinear / SBNNConv2d layer"):
        binarize_means_(torch.nn.Linear(2, 2))
