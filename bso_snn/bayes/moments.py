"""Exact mean and variance of the IW-ST(p) gradient, by enumerating the binary outcomes.

Each outcome's gradient is computed by :func:`iwst_spike` itself (a noise draw ``xi`` that gives
that outcome), so these are the moments of the implemented estimator, not of a formula.

One unit: ``b ~ Bernoulli(Phi(u/S))``, loss ``L(b)`` with derivative ``dL(b)`` at the sampled ``b``:

    g(b) = phi(u/S)/S * w_p(b) * dL(b),   E[g] = sum_b P(b) g(b),   Var[g] = sum_b P(b) g(b)^2 - E[g]^2
    true = phi(u/S)/S * (L(1) - L(0))

Two units in sequence: ``b1 ~ Bernoulli(Phi(u1/S1))``, ``u2 = v*b1 + c``,
``b2 ~ Bernoulli(Phi(u2/S2))``, loss ``L(b2)``; the estimator back-propagates through both spikes,

    g(b1, b2) = phi(u1/S1)/S1 * w_p(b1) * v * phi(u2/S2)/S2 * w_p(b2) * dL(b2)
    true = d/du1 E[L(b2)] = phi(u1/S1)/S1 * (E[L | b1=1] - E[L | b1=0]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .estimators import iwst_spike


class Moments(NamedTuple):
    mean: float
    variance: float
    true: float

    @property
    def bias(self) -> float:
        return self.mean - self.true


def _phi_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _spike_grad(u: float, S: float, b: int, p: float, upstream: float) -> float:
    """d(upstream * b)/du of :func:`iwst_spike` for the draw that gives outcome ``b``."""
    ut = torch.tensor([u], dtype=torch.float64, requires_grad=True)
    St = torch.tensor([S], dtype=torch.float64)
    xi = torch.tensor([50.0 if b else -50.0], dtype=torch.float64)  # forces the outcome
    spike = iwst_spike(ut, St, xi, p)
    assert int(spike.item()) == b
    (spike * upstream).sum().backward()
    return ut.grad.item()


def one_unit(
    u: float, S: float, p: float, L: Callable[[float], float], dL: Callable[[float], float]
) -> Moments:
    """Moments of the one-unit estimator (module docstring)."""
    P1 = _phi_cdf(u / S)
    g = {b: _spike_grad(u, S, b, p, dL(float(b))) for b in (0, 1)}
    mean = P1 * g[1] + (1 - P1) * g[0]
    var = P1 * g[1] ** 2 + (1 - P1) * g[0] ** 2 - mean**2
    true = math.exp(-0.5 * (u / S) ** 2) / (math.sqrt(2 * math.pi) * S) * (L(1.0) - L(0.0))
    return Moments(mean, var, true)


def two_units(
    u1: float,
    S1: float,
    v: float,
    c: float,
    S2: float,
    p: float,
    L: Callable[[float], float],
    dL: Callable[[float], float],
) -> Moments:
    """Moments of the estimator through two stochastic units in sequence (module docstring)."""
    P1 = _phi_cdf(u1 / S1)
    mean = second = 0.0
    expected_loss = {}
    for b1 in (0, 1):
        u2 = v * b1 + c
        P2 = _phi_cdf(u2 / S2)
        expected_loss[b1] = P2 * L(1.0) + (1 - P2) * L(0.0)
        for b2 in (0, 1):
            g2 = _spike_grad(u2, S2, b2, p, dL(float(b2)))  # dL/du2 at this outcome
            g1 = _spike_grad(u1, S1, b1, p, v * g2)  # then through u2 = v*b1 + c and spike 1
            prob = (P1 if b1 else 1 - P1) * (P2 if b2 else 1 - P2)
            mean += prob * g1
            second += prob * g1**2
    d1 = math.exp(-0.5 * (u1 / S1) ** 2) / (math.sqrt(2 * math.pi) * S1)
    return Moments(mean, second - mean**2, d1 * (expected_loss[1] - expected_loss[0]))
