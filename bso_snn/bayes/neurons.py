"""SBNN neurons: a LIF on the mean membrane with Gaussian noise, and the binary (T=1, theta=0) unit.

One step (research/sbnn.md §1.5, from the released code), with the synapse's ``mean_t``, ``var_t``
and bias-noise variance ``sigma_b^2``:

    m_t = beta * m~_{t-1} + mean_t             (noiseless mean membrane; m~ = value after reset)
    V_t = beta^2 * V_{t-1} + var_t             (accumulated weight-noise variance; sigma_b^2 not leaked)
    S_t = sqrt(max(V_t + sigma_b^2, 1e-6)) * 1[V_t + sigma_b^2 > 0]
    s_t = H(m_t - theta + S_t * xi_t)          (xi_t ~ N(0, 1) drawn fresh each step; IW-ST backward)
    m~_t = m_t - theta * s_t                   (soft reset on the mean)

The fresh noise per step gives the right marginal at every t but no autocorrelation over time.
Each neuron adds the auxiliary term ``sum_i ((m_t - theta)/S_t)^2`` (mean over batch) of every step
to ``aux`` (see :func:`bso_snn.bayes.losses.aux_term`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .estimators import iwst_spike
from .losses import aux_term

DEFAULT_BETA = math.exp(-1.0 / F.softplus(torch.tensor(10.0, dtype=torch.float64)).item())  # 0.904838


class LIFState(NamedTuple):
    membrane: Tensor | float  # mean membrane after reset, m~
    variance: Tensor | float  # accumulated variance V


class StepOutput(NamedTuple):
    spikes: Tensor
    state: LIFState
    u: Tensor  # m_t - theta (before reset)
    S: Tensor  # total noise std, expanded to u's shape


def sbnn_lif_step(
    state: LIFState,
    mean: Tensor,
    var: Tensor,
    bias_var: Tensor | float,
    xi: Tensor,
    threshold: float,
    beta: float,
    p: float = 0.0,
) -> StepOutput:
    """One SBNN-LIF step (module docstring); ``var`` may broadcast against ``mean`` (e.g. ``[B, 1]``)."""
    m = beta * state.membrane + mean
    V = beta**2 * state.variance + var
    total = V + bias_var
    S = ((total > 0).to(m.dtype) * total.clamp_min(1e-6).sqrt()).expand_as(m)
    u = m - threshold
    s = iwst_spike(u, S, xi, p)
    return StepOutput(s, LIFState(m - threshold * s, V), u, S)


def _check_common(name: str, p: float, beta: float | None = None) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p={p} is outside [0, 1]; use p=0 (straight-through) to p=1 (AGR_0)")
    if beta is not None and not 0.0 <= beta <= 1.0:
        raise ValueError(f"{name}: beta={beta} must be in [0, 1] (membrane leak per step)")


class SBNNLIF(nn.Module):
    """Stateful SBNN-LIF: ``neuron(mean, var, bias_var=0.0, xi=None) -> spikes``.

    Call ``neuron(*synapse(x, t))`` once per step; ``reset_state()`` (or :func:`reset_sbnn`) before
    each sequence. ``noisy=False`` uses ``xi = 0`` (the deterministic mode). ``aux`` accumulates the
    auxiliary-loss term of every step since the last reset.
    """

    def __init__(
        self, threshold: float = 1.0, beta: float = DEFAULT_BETA, p: float = 0.0, noisy: bool = True
    ):
        super().__init__()
        _check_common("SBNNLIF", p, beta)
        self.threshold, self.beta, self.p, self.noisy = threshold, beta, p, noisy
        self.reset_state()

    def reset_state(self) -> None:
        self.state = LIFState(0.0, 0.0)
        self.aux: Tensor | float = 0.0

    def forward(
        self, mean: Tensor, var: Tensor, bias_var: Tensor | float = 0.0, xi: Tensor | None = None
    ) -> Tensor:
        if isinstance(self.state.membrane, Tensor) and self.state.membrane.shape != mean.shape:
            raise ValueError(
                f"{type(self).__name__}: input shape {tuple(mean.shape)} differs from the state's "
                f"{tuple(self.state.membrane.shape)}; call reset_state() (or reset_sbnn(model)) between sequences"
            )
        if xi is None:
            xi = torch.randn_like(mean) if self.noisy else torch.zeros_like(mean)
        out = sbnn_lif_step(self.state, mean, var, bias_var, xi, self.threshold, self.beta, self.p)
        self.state = out.state
        self.aux = self.aux + aux_term(out.u, out.S)
        return out.spikes


class SBNNBinary(SBNNLIF):
    """Stochastic binary unit ``b = H(mean + S*xi)``, ``S = sqrt(var + sigma_b^2)``: the T=1, theta=0 case.

    Stateless: every call starts from a zero membrane and variance (so no reset is needed between
    batches); ``aux`` still accumulates until ``reset_state()``.
    """

    def __init__(self, p: float = 0.0, noisy: bool = True):
        super().__init__(threshold=0.0, beta=0.0, p=p, noisy=noisy)

    def forward(
        self, mean: Tensor, var: Tensor, bias_var: Tensor | float = 0.0, xi: Tensor | None = None
    ) -> Tensor:
        self.state = LIFState(0.0, 0.0)
        return super().forward(mean, var, bias_var, xi)


def reset_sbnn(model: nn.Module) -> None:
    """``reset_state()`` on every SBNN neuron in ``model`` (membrane, variance and ``aux``)."""
    for module in model.modules():
        if isinstance(module, SBNNLIF):
            module.reset_state()


def set_noise(model: nn.Module, noisy: bool) -> None:
    """Turn the forward noise of every SBNN neuron in ``model`` on (sampling) or off (``xi = 0``)."""
    for module in model.modules():
        if isinstance(module, SBNNLIF):
            module.noisy = noisy
