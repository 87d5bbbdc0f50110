"""IW-ST spike function: hard Bernoulli sample forward, importance-weighted straight-through backward.

A unit spikes when ``u + S*xi > 0`` with ``u = m - theta`` (noiseless membrane minus threshold),
``S >= 0`` the noise std and ``xi ~ N(0, 1)``; so ``P(b=1) = Phi(u/S)``. With ``d = phi(u/S)/S`` (the
noise density at the threshold) and ``g = dL/db`` at the sampled ``b``, the backward is

    dL/du = g * d * w_p(b),        dL/dS = -(u/S) * dL/du,
    w_p(b) = (1 - p) + p / (2 * max(P(b), p_min)),

where ``P(b)`` is the probability of the sampled outcome. ``p = 0`` is straight-through (the gradient
of ``Phi(u/S)``, the only member in the released code); ``p = 1`` is the zero-temperature analytical
Gumbel-Rao weight ``1/(2 P(b))``, unbiased when the loss is quadratic in ``b``. This
``p``-parameterisation is a reconstruction (research/sbnn.md §2.2), not verified against the paper.
Units with ``S == 0`` are deterministic (``b = H(u)``) and get zero gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
S_MIN = 1e-6  # S is clamped here before dividing (units with S == 0 are masked anyway)


def spike_probability(u: Tensor, S: Tensor) -> Tensor:
    """``P(b=1) = Phi(u/S)`` for ``S > 0``; ``H(u)`` (1 for ``u > 0``) where ``S == 0``."""
    z = u / S.clamp_min(S_MIN)
    return torch.where(S > 0, 0.5 * torch.erfc(-z / _SQRT2), (u > 0).to(u.dtype))


def importance_weight(b: Tensor, u: Tensor, S: Tensor, p: float, p_min: float = 1e-3) -> Tensor:
    """``w_p(b) = (1 - p) + p / (2 max(P(b), p_min))`` with ``P(b)`` the probability of the sample ``b``."""
    z = u / S.clamp_min(S_MIN)
    prob_b = torch.where(b > 0, 0.5 * torch.erfc(-z / _SQRT2), 0.5 * torch.erfc(z / _SQRT2))
    return (1.0 - p) + p / (2.0 * prob_b.clamp_min(p_min))


class IWSTSpike(torch.autograd.Function):
    """Autograd Function ``(u, S, xi, p, p_min) -> b``; call it through :func:`iwst_spike`."""

    @staticmethod
    def forward(ctx, u: Tensor, S: Tensor, xi: Tensor, p: float, p_min: float) -> Tensor:
        b = (u + S * xi > 0).to(u.dtype)
        ctx.save_for_backward(u, S, b)
        ctx.p, ctx.p_min = p, p_min
        return b

    @staticmethod
    def backward(ctx, g: Tensor):
        u, S, b = ctx.saved_tensors
        S_safe = S.clamp_min(S_MIN)
        z = u / S_safe
        density = (S > 0).to(u.dtype) * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI / S_safe
        grad_u = g * density
        if ctx.p > 0:
            grad_u = grad_u * importance_weight(b, u, S, ctx.p, ctx.p_min)
        grad_S = -z * grad_u
        return grad_u, grad_S, None, None, None


def iwst_spike(u: Tensor, S: Tensor, xi: Tensor, p: float = 0.0, p_min: float = 1e-3) -> Tensor:
    """Spike ``b = H(u + S*xi)`` with the IW-ST(p) backward (module docstring).

    ``u``, ``S``, ``xi`` must have one shape (expand a broadcast ``S`` first); ``S >= 0``; ``xi`` is the
    standard-normal noise (zeros for a noiseless pass) and gets no gradient.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"iwst_spike: p={p} is outside [0, 1]; use p=0 (straight-through) to p=1 (AGR_0)")
    if not 0.0 < p_min <= 0.5:
        raise ValueError(f"iwst_spike: p_min={p_min} must be in (0, 0.5]; it floors P(b) in 1/(2 P(b))")
    if u.shape != S.shape or u.shape != xi.shape:
        raise ValueError(
            f"iwst_spike: u {tuple(u.shape)}, S {tuple(S.shape)} and xi {tuple(xi.shape)} must have one "
            "shape; expand S with S.expand_as(u)"
        )
    if bool((S < 0).any()):
        raise ValueError(
            f"iwst_spike: S has negative entries (min {S.min().item():.3g}); S is a noise std, >= 0"
        )
    return IWSTSpike.apply(u, S, xi.detach(), float(p), float(p_min))
