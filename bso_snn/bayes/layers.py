"""SBNN synapses with local reparameterisation: Gaussian weights ``W ~ N(mu, sigma^2)``, never sampled.

For a layer input ``x`` at time step ``t`` the pre-activation ``W ⊛ x`` is Gaussian with

    mean_t = a_t * (mu ⊛ x) + c_t          (a_t, c_t: one gain / offset per output channel and step)
    var_t  = sigma^2 * (1 ⊛ x.detach()^2)   (the all-ones kernel sums x^2 over each receptive field)

``sigma = softplus(rho)`` is one scalar per layer. The variance ignores the gain ``a_t`` and does not
back-propagate into ``x``, as in the released code. Unlike that code (which hard-codes padding=1 in
the variance convolution), the all-ones kernel uses the layer's own stride, padding and dilation.
An optional bias-noise std ``sigma_b = softplus(rho_b)`` adds a constant variance ``sigma_b^2``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair


class SynapseOutput(NamedTuple):
    """Mean and variance of the pre-activation, and the bias-noise variance (a 0-d tensor or 0.0)."""

    mean: Tensor
    var: Tensor
    bias_var: Tensor | float


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (``y > 0``)."""
    return y + math.log(-math.expm1(-y))


class _SBNNSynapse(nn.Module):
    """Shared parameters: ``mu`` (``weight``), ``rho`` (sigma), per-step ``a``, ``c``, optional ``rho_b``."""

    def _init_sbnn(
        self,
        weight_shape: tuple[int, ...],
        fan_in: int,
        out_channels: int,
        time_steps: int,
        sigma_init: float,
        learn_sigma: bool,
        bias_noise_std: float | None,
    ) -> None:
        name = type(self).__name__
        if time_steps < 1:
            raise ValueError(f"{name}: time_steps={time_steps} must be >= 1 (1 for a binary network)")
        if not sigma_init > 0:
            raise ValueError(
                f"{name}: sigma_init={sigma_init} must be > 0 (the std is sigma_init/sqrt(fan_in); "
                "the released code uses 0.5)"
            )
        if bias_noise_std is not None and not bias_noise_std > 0:
            raise ValueError(f"{name}: bias_noise_std={bias_noise_std} must be > 0 or None (no bias noise)")
        self.fan_in, self.time_steps = fan_in, time_steps
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(weight_shape).uniform_(-bound, bound))
        rho = torch.tensor(inverse_softplus(sigma_init / math.sqrt(fan_in)))
        if learn_sigma:
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("rho", rho)
        self.a = nn.Parameter(torch.ones(time_steps, out_channels))
        self.c = nn.Parameter(torch.zeros(time_steps, out_channels))
        self.rho_b = (
            None if bias_noise_std is None else nn.Parameter(torch.tensor(inverse_softplus(bias_noise_std)))
        )

    @property
    def sigma(self) -> Tensor:
        """Posterior weight std ``softplus(rho)`` shared by the layer."""
        return F.softplus(self.rho)

    def _check_step(self, t: int) -> None:
        if not 0 <= t < self.time_steps:
            raise IndexError(
                f"{type(self).__name__}: time step t={t} is outside [0, {self.time_steps}); "
                f"build the layer with time_steps >= {t + 1} or reset t each sequence"
            )

    def _bias_var(self) -> Tensor | float:
        return 0.0 if self.rho_b is None else F.softplus(self.rho_b) ** 2


class SBNNLinear(_SBNNSynapse):
    """``x [B, in_features] -> SynapseOutput(mean [B, out], var [B, 1], bias_var)`` at step ``t``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        time_steps: int = 1,
        sigma_init: float = 0.5,
        learn_sigma: bool = True,
        bias_noise_std: float | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_sbnn(
            (out_features, in_features),
            in_features,
            out_features,
            time_steps,
            sigma_init,
            learn_sigma,
            bias_noise_std,
        )

    def forward(self, x: Tensor, t: int = 0) -> SynapseOutput:
        self._check_step(t)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"SBNNLinear: input shape {tuple(x.shape)} is not [batch, {self.in_features}]; flatten it first"
            )
        mean = F.linear(x, self.weight) * self.a[t] + self.c[t]
        var = self.sigma**2 * x.detach().pow(2).sum(1, keepdim=True)
        return SynapseOutput(mean, var, self._bias_var())


class SBNNConv2d(_SBNNSynapse):
    """``x [B, C_in, H, W] -> SynapseOutput(mean [B, C_out, H', W'], var [B, 1, H', W'], bias_var)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        time_steps: int = 1,
        sigma_init: float = 0.5,
        learn_sigma: bool = True,
        bias_noise_std: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_sbnn(
            (out_channels, in_channels, *self.kernel_size),
            fan_in,
            out_channels,
            time_steps,
            sigma_init,
            learn_sigma,
            bias_noise_std,
        )
        self.register_buffer("ones_kernel", torch.ones(1, in_channels, *self.kernel_size), persistent=False)

    def forward(self, x: Tensor, t: int = 0) -> SynapseOutput:
        self._check_step(t)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SBNNConv2d: input shape {tuple(x.shape)} is not [batch, {self.in_channels}, H, W]"
            )
        geometry = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}
        mean = F.conv2d(x, self.weight, **geometry) * self.a[t].view(1, -1, 1, 1) + self.c[t].view(
            1, -1, 1, 1
        )
        var = self.sigma**2 * F.conv2d(x.detach().pow(2), self.ones_kernel.to(x.dtype), **geometry)
        return SynapseOutput(mean, var, self._bias_var())
