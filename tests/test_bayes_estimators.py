"""IW-ST spike function: forward sample, backward vs closed forms, S=0 mask, AGR_0 unbiasedness, errors."""

import math

import pytest
import torch

from bso_snn.bayes import importance_weight, iwst_spike, spike_probability


def _inputs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    S = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.05
    S[:10] = 0.0  # masked units
    xi = torch.randn(n, generator=g, dtype=torch.float64)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)
    return u, S, xi, upstream


def _grads(u, S, xi, upstream, p):
    u, S = u.clone().requires_grad_(), S.clone().requires_grad_()
    b = iwst_spike(u, S, xi, p)
    (b * upstream).sum().backward()
    return b.detach(), u.grad, S.grad


def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_forward_is_the_hard_sample(p):
    u, S, xi, _ = _inputs()
    b = iwst_spike(u, S, xi, p)
    expected = [
        1.0 if ui + Si * xii > 0 else 0.0
        for ui, Si, xii in zip(u.tolist(), S.tolist(), xi.tolist(), strict=True)
    ]
    assert b.tolist() == expected


def test_straight_through_backward_is_the_gradient_of_phi():
    """p=0: dL/du = g * d/du Phi(u/S), dL/dS = g * d/dS Phi(u/S), reference by autograd in float64."""
    u, S, xi, upstream = _inputs()
    _, gu, gS = _grads(u, S, xi, upstream, p=0.0)
    live = S > 0
    u_ref, S_ref = u[live].clone().requires_grad_(), S[live].clone().requires_grad_()
    mean = 0.5 * torch.erfc(-(u_ref / S_ref) / math.sqrt(2))  # Phi(u/S)
    (mean * upstream[live]).sum().backward()
    torch.testing.assert_close(gu[live], u_ref.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gS[live], S_ref.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", [0.25, 0.7, 1.0])
def test_importance_weighted_backward_matches_hand_formula(p):
    """dL/du = g phi(z)/S ((1-p) + p/(2 max(P(b), 1e-3))), dL/dS = -z dL/du, a Python loop per unit."""
    u, S, xi, upstream = _inputs(seed=1)
    b, gu, gS = _grads(u, S, xi, upstream, p)
    for i in range(len(u)):
        ui, Si, bi, gi = u[i].item(), S[i].item(), b[i].item(), upstream[i].item()
        if Si == 0:
            continue
        z = ui / Si
        prob_b = _Phi(z) if bi == 1 else 1 - _Phi(z)
        ref_u = gi * _phi(z) / Si * ((1 - p) + p / (2 * max(prob_b, 1e-3)))
        assert gu[i].item() == pytest.approx(ref_u, rel=1e-10, abs=1e-14)
        assert gS[i].item() == pytest.approx(-z * ref_u, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_zero_noise_units_are_deterministic_with_zero_gradient(p):
    u, S, xi, upstream = _inputs()
    b, gu, gS = _grads(u, S, xi, upstream, p)
    dead = S == 0
    assert torch.equal(b[dead], (u[dead] > 0).double())
    assert torch.equal(b[dead], iwst_spike(u[dead], S[dead], -xi[dead] * 100, p))  # noise has no effect
    assert torch.all(gu[dead] == 0) and torch.all(gS[dead] == 0)
    assert torch.equal(spike_probability(u[dead], S[dead]), (u[dead] > 0).double())


@pytest.mark.parametrize("u0", [-0.6, 0.5, 1.1])
def test_agr0_is_unbiased_for_a_quadratic_loss(u0):
    """L(b) = 2(b - 0.3)^2 + 1.5 b: E[g_u] = phi(u/S)/S (L(1) - L(0)) for p=1; ST (p=0) is biased.

    N = 400k samples in float64; tolerance 5 Monte-Carlo standard errors of the estimator's mean.
    """
    S0, n = 0.8, 400_000
    torch.manual_seed(0)
    u = torch.full((n,), u0, dtype=torch.float64, requires_grad=True)
    S = torch.full((n,), S0, dtype=torch.float64, requires_grad=True)
    xi = torch.randn(n, dtype=torch.float64)

    def loss(b):
        return 2 * (b - 0.3) ** 2 + 1.5 * b

    true_u = _phi(u0 / S0) / S0 * (loss(torch.tensor(1.0)) - loss(torch.tensor(0.0))).item()
    true_S = -(u0 / S0) * true_u
    estimates = {}
    for p in (1.0, 0.0):
        u.grad = S.grad = None
        loss(iwst_spike(u, S, xi, p)).sum().backward()
        estimates[p] = (u.grad.clone(), S.grad.clone())
    gu, gS = estimates[1.0]
    assert abs(gu.mean().item() - true_u) < 5 * gu.std().item() / math.sqrt(n)
    assert abs(gS.mean().item() - true_S) < 5 * gS.std().item() / math.sqrt(n)
    st = estimates[0.0][0]
    assert abs(st.mean().item() - true_u) > 10 * st.std().item() / math.sqrt(n)  # the check can fail


def test_importance_weight_endpoints():
    b = torch.tensor([1.0, 0.0])
    u, S = torch.tensor([0.4, 0.4]), torch.tensor([1.0, 1.0])
    assert torch.equal(importance_weight(b, u, S, 0.0), torch.ones(2))
    P1 = spike_probability(u, S)
    torch.testing.assert_close(
        importance_weight(b, u, S, 1.0), torch.stack([1 / (2 * P1[0]), 1 / (2 * (1 - P1[1]))])
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": -0.1}, r"p=-0.1 is outside \[0, 1\]"),
        ({"p": 1.5}, r"p=1.5 is outside \[0, 1\]"),
        ({"p_min": 0.0}, r"p_min=0.0 must be in \(0, 0.5\]"),
    ],
)
def test_bad_arguments(kwargs, message):
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=message):
        iwst_spike(x, x, x, **kwargs)


def test_shape_mismatch_names_shapes_and_fix():
    with pytest.raises(ValueError, match=r"S \(4, 1\).*expand S with S.expand_as\(u\)"):
        iwst_spike(torch.zeros(4, 3), torch.ones(4, 1), torch.zeros(4, 3))


def test_negative_noise_std_is_refused():
    with pytest.raises(
        ValueError, match=r"iwst_spike: S has negative entries \(min -0.5\); S is a noise std"
    ):
        iwst_spike(torch.zeros(2), torch.tensor([1.0, -0.5]), torch.zeros(2))
