"""SBNN-LIF / binary neurons vs a hand loop; auxiliary loss, KL and the combined loss vs hand values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bso_snn.bayes import (
    DEFAULT_BETA,
    SBNNLIF,
    SBNNBinary,
    SBNNLinear,
    aux_loss,
    aux_term,
    gaussian_kl,
    kl_divergence,
    reset_sbnn,
    sbnn_loss,
    set_noise,
)


def test_default_beta_is_exp_minus_one_over_softplus_10():
    assert DEFAULT_BETA == pytest.approx(math.exp(-1 / math.log1p(math.exp(10.0))), rel=1e-15)


def _hand_lif(means, variances, bias_var, xis, theta, beta):
    """Plain per-unit Python loop of the SBNN-LIF recursion; returns spikes, membranes, V, aux per step."""
    T, B, N = means.shape
    m = [[0.0] * N for _ in range(B)]
    V = [0.0] * B  # var is [B, 1]: one variance per sample
    spikes, aux = torch.zeros(T, B, N, dtype=torch.float64), []
    for t in range(T):
        total_aux = 0.0
        for b in range(B):
            V[b] = beta**2 * V[b] + variances[t, b, 0].item()
            tot = V[b] + bias_var
            S = math.sqrt(max(tot, 1e-6)) if tot > 0 else 0.0
            for i in range(N):
                mi = beta * m[b][i] + means[t, b, i].item()
                u = mi - theta
                s = 1.0 if u + S * xis[t, b, i].item() > 0 else 0.0
                spikes[t, b, i] = s
                total_aux += (u / S) ** 2 if S > 0 else 0.0
                m[b][i] = mi - theta * s
        aux.append(total_aux / B)
    return spikes, torch.tensor(m, dtype=torch.float64), torch.tensor(V, dtype=torch.float64), sum(aux)


@pytest.mark.parametrize(("theta", "bias_var"), [(1.0, 0.0), (1.0, 0.1), (0.5, 0.02)])
def test_lif_matches_hand_loop(theta, bias_var):
    g = torch.Generator().manual_seed(3)
    T, B, N = 6, 3, 5
    means = torch.rand(T, B, N, generator=g, dtype=torch.float64) * 0.8
    variances = torch.rand(T, B, 1, generator=g, dtype=torch.float64) * 0.2
    variances[0, 0, 0] = 0.0  # S = 0 at the first step of sample 0 when there is no bias noise
    xis = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    neuron = SBNNLIF(threshold=theta)
    out = torch.stack([neuron(means[t], variances[t], bias_var, xi=xis[t]) for t in range(T)])
    spikes, m, V, aux = _hand_lif(means, variances, bias_var, xis, theta, DEFAULT_BETA)
    assert torch.equal(out, spikes) and 0 < out.mean() < 1
    torch.testing.assert_close(neuron.state.membrane, m, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(neuron.state.variance[:, 0], V, rtol=1e-12, atol=1e-12)
    assert neuron.aux.item() == pytest.approx(aux, rel=1e-10)
    reset_sbnn(nn.Sequential(neuron))
    assert neuron.state.membrane == 0.0 and neuron.aux == 0.0


def test_fresh_noise_each_step_and_noiseless_mode():
    torch.manual_seed(0)
    neuron = SBNNLIF(threshold=0.0, beta=0.0)  # beta=0: every step sees the same input alone
    mean, var = torch.zeros(1, 20000), torch.ones(1, 1)
    s1, s2 = neuron(mean, var), neuron(mean, var)
    assert 0.48 < s1.mean() < 0.52 and (s1 != s2).float().mean() > 0.45  # independent Bernoulli(1/2) draws
    set_noise(neuron, False)
    neuron.reset_state()
    mean = torch.linspace(-1, 1, 7).view(1, 7)
    assert torch.equal(neuron(mean, torch.ones(1, 1)), (mean > 0).float())


def test_binary_unit_is_stateless_and_equals_the_first_lif_step():
    g = torch.Generator().manual_seed(5)
    mean, var = torch.randn(4, 6, generator=g), torch.rand(4, 1, generator=g)
    xi = torch.randn(4, 6, generator=g)
    binary, lif = SBNNBinary(), SBNNLIF(threshold=0.0)
    expected = (mean + (var + 0.01).sqrt() * xi > 0).float()
    for _ in range(2):  # second call: no state carried over
        assert torch.equal(binary(mean, var, 0.01, xi=xi), expected)
    assert torch.equal(lif(mean, var, 0.01, xi=xi), expected)
    assert binary.aux.item() == pytest.approx(2 * lif.aux.item(), rel=1e-6)  # aux accumulates until reset


def test_gradient_reaches_mean_and_sigma_through_the_neuron():
    layer, neuron = SBNNLinear(5, 3), SBNNBinary()
    neuron(*layer(torch.rand(8, 5))).sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.rho.grad.abs() > 0 and layer.a.grad.abs().sum() > 0


def test_neuron_errors():
    with pytest.raises(ValueError, match=r"SBNNLIF: p=2 is outside \[0, 1\]"):
        SBNNLIF(p=2)
    with pytest.raises(ValueError, match=r"SBNNLIF: beta=1.5 must be in \[0, 1\]"):
        SBNNLIF(beta=1.5)
    neuron = SBNNLIF()
    neuron(torch.zeros(2, 3), torch.ones(2, 1))
    with pytest.raises(
        ValueError, match=r"input shape \(4, 3\) differs from the state's \(2, 3\); call reset_state"
    ):
        neuron(torch.zeros(4, 3), torch.ones(4, 1))


def test_aux_term_against_hand_values():
    u = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.2]])
    S = torch.tensor([[0.5, 2.0, 0.0], [1.0, 1.5, 0.1]])
    expected = ((0.5 / 0.5) ** 2 + (-1.0 / 2.0) ** 2 + 0.0 + 0.0 + (3.0 / 1.5) ** 2 + (-0.2 / 0.1) ** 2) / 2
    assert aux_term(u, S).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"aux_term: u \(2, 3\) and S \(2, 1\) must have one shape"):
        aux_term(u, S[:, :1])


def test_aux_loss_sums_over_neurons_of_a_model():
    model = nn.ModuleList([SBNNLIF(), SBNNBinary()])
    model[0](torch.rand(2, 3), torch.rand(2, 1))
    model[1](torch.rand(2, 4), torch.rand(2, 1))
    assert aux_loss(model).item() == pytest.approx((model[0].aux + model[1].aux).item())


@pytest.mark.parametrize(("sigma", "prior_std"), [(0.1, 0.1), (0.05, 0.2), (0.3, 0.1)])
def test_gaussian_kl_against_per_weight_closed_form_and_torch_distributions(sigma, prior_std):
    mu = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.2
    kl = gaussian_kl(mu, torch.tensor(sigma, dtype=torch.float64), prior_std)
    hand = sum(
        math.log(prior_std / sigma) + (sigma**2 + m**2) / (2 * prior_std**2) - 0.5
        for m in mu.flatten().tolist()
    )
    assert kl.item() == pytest.approx(hand, rel=1e-12)
    q = torch.distributions.Normal(mu, torch.full_like(mu, sigma))
    ref = torch.distributions.kl_divergence(
        q,
        torch.distributions.Normal(
            torch.tensor(0.0, dtype=torch.float64), torch.tensor(prior_std, dtype=torch.float64)
        ),
    ).sum()
    assert kl.item() == pytest.approx(ref.item(), rel=1e-10)
    if sigma == prior_std:
        assert gaussian_kl(torch.zeros(5), torch.tensor(sigma), prior_std).item() == pytest.approx(
            0.0, abs=1e-6
        )


def test_kl_divergence_of_a_model_uses_per_layer_prior():
    model = nn.Sequential(SBNNLinear(16, 4), nn.ReLU(), SBNNLinear(4, 2))
    expected = gaussian_kl(model[0].weight, model[0].sigma, 0.25) + gaussian_kl(
        model[2].weight, model[2].sigma, 0.5
    )
    assert kl_divergence(model).item() == pytest.approx(expected.item(), rel=1e-6)
    kl = kl_divergence(model, prior_std=1.0)
    kl.backward()
    assert model[0].rho.grad is not None and model[0].weight.grad is not None
    with pytest.raises(ValueError, match=r"kl_divergence: model has no SBNNLinear / SBNNConv2d layer"):
        kl_divergence(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"gaussian_kl: prior_std=0.0 must be > 0"):
        gaussian_kl(torch.zeros(2), torch.tensor(0.1), 0.0)


def test_sbnn_loss_combination():
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    loss = sbnn_loss(logits, y, aux=torch.tensor(7.0), lam_aux=0.01, kl=torch.tensor(300.0), kl_weight=1e-3)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item() + 0.07 + 0.3, rel=1e-6)
    assert sbnn_loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    with pytest.raises(ValueError, match=r"lam_aux=-1.0 and kl_weight=0.0 must be >= 0"):
        sbnn_loss(logits, y, lam_aux=-1.0)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_conv_lif_passes_the_estimator_weight(p):
    """Conv synapse (var [B,1,H,W] broadcast over channels) into a LIF: du-gradient = phi(z)/S * w_p(b)."""
    from bso_snn.bayes import SBNNConv2d, importance_weight

    torch.manual_seed(0)
    layer, neuron = SBNNConv2d(2, 3, 3, padding=1).double(), SBNNLIF(threshold=0.1, p=p)
    x = torch.rand(2, 2, 4, 4, dtype=torch.float64)
    mean, var, bias_var = layer(x)
    mean = mean.detach().requires_grad_()
    xi = torch.randn_like(mean)
    s = neuron(mean, var.detach(), bias_var, xi=xi)
    s.sum().backward()
    u, S = mean.detach() - 0.1, var.detach().sqrt().expand_as(mean)
    z = u / S
    expected = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi) / S * importance_weight(s, u, S, p)
    torch.testing.assert_close(mean.grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("time_steps", "threshold"), [(1, 0.0), (3, 1.0)])
def test_straight_through_chain_matches_a_plain_torch_reference(time_steps, threshold):
    """p=0 end to end: parameter gradients equal those of a plain re-implementation in which every spike
    is ``hard + Phi(u/S) - Phi(u/S).detach()`` (forward = sample, backward = gradient of Phi)."""
    torch.manual_seed(0)
    layer = SBNNLinear(6, 4, time_steps=time_steps, bias_noise_std=0.2).double()
    with torch.no_grad():
        layer.a.uniform_(0.5, 1.5), layer.c.uniform_(-0.3, 0.3)
    neuron = SBNNLIF(threshold=threshold)
    x = torch.rand(time_steps, 3, 6, dtype=torch.float64)
    xis = torch.randn(time_steps, 3, 4, dtype=torch.float64)
    upstream = torch.randn(time_steps, 3, 4, dtype=torch.float64)
    out = torch.stack([neuron(*layer(x[t], t), xi=xis[t]) for t in range(time_steps)])
    (out * upstream).sum().backward()
    ours = {n: p.grad.clone() for n, p in layer.named_parameters()}

    layer.zero_grad()
    params = dict(layer.named_parameters())
    sigma, sigma_b = F.softplus(params["rho"]), F.softplus(params["rho_b"])
    m, V, ref = 0.0, 0.0, []
    for t in range(time_steps):
        m = DEFAULT_BETA * m + params["a"][t] * (x[t] @ params["weight"].T) + params["c"][t]
        V = DEFAULT_BETA**2 * V + sigma**2 * (x[t] ** 2).sum(1, keepdim=True)
        S = torch.sqrt(V + sigma_b**2)
        prob = 0.5 * torch.erfc(-((m - threshold) / S) / math.sqrt(2))
        hard = (m - threshold + S * xis[t] > 0).double()
        s = hard + prob - prob.detach()
        ref.append(s)
        m = m - threshold * s
    ref = torch.stack(ref)
    assert torch.equal(ref.detach(), out)
    (ref * upstream).sum().backward()
    for name, prm in layer.named_parameters():
        torch.testing.assert_close(ours[name], prm.grad, rtol=1e-9, atol=1e-12, msg=name)
