"""SBNN neurons: a LIF on the mean membrane with Gaussian noise, and the binary (T=1, theta=0) unit.

One step (research/sbnn.md §1.5, from the released code), with the synapse's ``mean_t``, ``var_t``
and bias-noise variance ``sigma_b^2``:

    m_t = beta * m~_{t-1} + mean_t             (noiseless mean membrane; m~ = value after reset)
    V_t = beta^2 * V_{t-1} + var_t             (accumulated weight-noise variance; sigma_b^2 not leaked)
    S_t = sqrt(max(V_t + sigma_b^2, 1e-6)) * 1[V_t + sigma_b^2 > 0]
    s_t = H(m_t - theta + S_t * xi_t)          (xi_t ~ N(0, 1) drawn fresh each step; IW-ST backward)
    m~_t = m_t - theta * s_t                   (soft reset on the mean)

The fresh noise per step gives the right marginal at every t but no autocorrelation over time.
Each neuron adds the auxiliary term ``sum_i (numerator/denominator)^2`` (mean over batch) of every
step to ``aux`` (see :func:`bso_snn.bayes.losses.aux_term`). ``aux_form`` picks numerator and
denominator (:data:`AUX_FORMS`): ours, ``(m_t - theta)/S_t``, or one of the three released scripts'.

:class:`SurrogateLIF` is the deterministic baseline of the same step (no noise, ``S`` unused): the
released code's Gaussian surrogate ``phi(u/0.4)/0.4`` (``surrogate="gaussian"``) or plain
straight-through (``surrogate="straight-through"``, gradient 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .estimators import iwst_spike
from .losses import aux_term

AUX_FORMS = {
    "membrane": "(m_t - theta) / S_t, the membrane before reset minus the threshold (ours, the canonical form)",
    "input": "I_t / S_t, the step's input current (train_cifar.py: reg_mems = new_input, reg_sd = total_sd)",
    "membrane-no-threshold": "m_t / S_t, the membrane before reset without subtracting theta "
    "(train_dvs.py: reg_mems = mem_poten_noiseless)",
    "input-step-std": "I_t / sqrt(max(var_t + sigma_b^2, 1e-6) + sigma_b^2), the input over this step's std "
    "with sigma_b^2 counted twice (train_shd.py: reg_sd = added_sd)",
}

DEFAULT_BETA = math.exp(-1.0 / F.softplus(torch.tensor(10.0, dtype=torch.float64)).item())  # 0.904838


class LIFState(NamedTuple):
    membrane: Tensor | float  # mean membrane after reset, m~
    variance: Tensor | float  # accumulated variance V


class StepOutput(NamedTuple):
    spikes: Tensor
    state: LIFState
    u: Tensor  # m_t - theta (before reset)
    S: Tensor  # total noise std, expanded to u's shape


def aux_ratio(form: str, out: StepOutput, mean: Tensor, var: Tensor, bias_var, threshold: float):
    """``(numerator, denominator)`` of the auxiliary term for ``form`` (see :data:`AUX_FORMS`)."""
    if form == "membrane":
        return out.u, out.S
    if form == "input":
        return mean, out.S
    if form == "membrane-no-threshold":
        return out.u + threshold, out.S
    step_total = var + bias_var
    step_std = (step_total > 0).to(mean.dtype) * (step_total.clamp_min(1e-6) + bias_var).sqrt()
    return mean, step_std.expand_as(mean)


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


def _check_common(name: str, p: float, beta: float | None = None, aux_form: str = "membrane") -> None:
    if aux_form not in AUX_FORMS:
        raise ValueError(f"{name}: aux_form={aux_form!r} is not one of {', '.join(AUX_FORMS)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p={p} is outside [0, 1]; use p=0 (straight-through) to p=1 (AGR_0)")
    if beta is not None and not 0.0 <= beta <= 1.0:
        raise ValueError(f"{name}: beta={beta} must be in [0, 1] (membrane leak per step)")


class SBNNLIF(nn.Module):
    """Stateful SBNN-LIF: ``neuron(mean, var, bias_var=0.0, xi=None) -> spikes``.

    Call ``neuron(*synapse(x, t))`` once per step; ``reset_state()`` (or :func:`reset_sbnn`) before
    each sequence. ``noisy=False`` uses ``xi = 0`` (the deterministic mode). ``aux`` accumulates the
    auxiliary-loss term of every step since the last reset, in the form ``aux_form`` (:data:`AUX_FORMS`).
    """

    def __init__(
        self,
        threshold: float = 1.0,
        beta: float = DEFAULT_BETA,
        p: float = 0.0,
        noisy: bool = True,
        aux_form: str = "membrane",
    ):
        super().__init__()
        _check_common(type(self).__name__, p, beta, aux_form)
        self.threshold, self.beta, self.p, self.noisy = threshold, beta, p, noisy
        self.aux_form = aux_form
        self.reset_state()

    def reset_state(self) -> None:
        self.state = LIFState(0.0, 0.0)
        self.aux: Tensor | float = 0.0
        self.last_spikes: Tensor | float = 0.0  # s_{t-1}, read by recurrent layers

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
        self.aux = self.aux + aux_term(*aux_ratio(self.aux_form, out, mean, var, bias_var, self.threshold))
        self.last_spikes = out.spikes
        return out.spikes


class SBNNBinary(SBNNLIF):
    """Stochastic binary unit ``b = H(mean + S*xi)``, ``S = sqrt(var + sigma_b^2)``: the T=1, theta=0 case.

    Stateless: every call starts from a zero membrane and variance (so no reset is needed between
    batches); ``aux`` still accumulates until ``reset_state()``.
    """

    def __init__(self, p: float = 0.0, noisy: bool = True, aux_form: str = "membrane"):
        super().__init__(threshold=0.0, beta=0.0, p=p, noisy=noisy, aux_form=aux_form)

    def forward(
        self, mean: Tensor, var: Tensor, bias_var: Tensor | float = 0.0, xi: Tensor | None = None
    ) -> Tensor:
        self.state = LIFState(0.0, 0.0)
        return super().forward(mean, var, bias_var, xi)


SURROGATES = ("gaussian", "straight-through")
SG_WIDTH = 0.4  # the released code's Activation_SG: phi(u/0.4)/0.4


class SurrogateSpike(torch.autograd.Function):
    """``b = H(u)``; backward ``g * phi(u/width)/width`` (Gaussian) or ``g`` (``width=None``: straight-through)."""

    @staticmethod
    def forward(ctx, u: Tensor, width: float | None) -> Tensor:
        ctx.save_for_backward(u)
        ctx.width = width
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        (u,) = ctx.saved_tensors
        if ctx.width is None:
            return g, None
        z = u / ctx.width
        return g * torch.exp(-0.5 * z * z) / (math.sqrt(2.0 * math.pi) * ctx.width), None


class SurrogateLIF(SBNNLIF):
    """Deterministic baseline of the same LIF step: ``m_t = beta*m~ + mean_t``, ``s_t = H(m_t - theta)``,
    soft reset; ``var`` and ``bias_var`` are ignored and ``aux`` stays 0. The backward is the released
    code's Gaussian surrogate ``phi(u/0.4)/0.4`` (``surrogate="gaussian"``) or the identity
    (``"straight-through"``). ``beta=0`` with ``threshold=0`` is the binary (T=1) unit.
    """

    def __init__(
        self,
        threshold: float = 1.0,
        beta: float = DEFAULT_BETA,
        surrogate: str = "gaussian",
        width: float = SG_WIDTH,
    ):
        if surrogate not in SURROGATES:
            raise ValueError(f"SurrogateLIF: surrogate={surrogate!r} is not one of {', '.join(SURROGATES)}")
        if not width > 0:
            raise ValueError(f"SurrogateLIF: width={width} must be > 0 (the released code uses 0.4)")
        super().__init__(threshold=threshold, beta=beta, noisy=False)
        self.surrogate, self.width = surrogate, width

    def forward(
        self,
        mean: Tensor,
        var: Tensor | None = None,
        bias_var: Tensor | float = 0.0,
        xi: Tensor | None = None,
    ) -> Tensor:
        if isinstance(self.state.membrane, Tensor) and self.state.membrane.shape != mean.shape:
            raise ValueError(
                f"SurrogateLIF: input shape {tuple(mean.shape)} differs from the state's "
                f"{tuple(self.state.membrane.shape)}; call reset_state() (or reset_sbnn(model)) between sequences"
            )
        m = self.beta * self.state.membrane + mean
        width = self.width if self.surrogate == "gaussian" else None
        s = SurrogateSpike.apply(m - self.threshold, width)
        self.state = LIFState(m - self.threshold * s, 0.0)
        self.last_spikes = s
        return s


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
