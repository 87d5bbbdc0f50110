"""Recurrent SBNN-LIF layer (train_shd.py): feed-forward and recurrent Gaussian weights, each with its own std.

At step ``t`` with input ``x_t`` and the layer's own previous spikes ``s_{t-1}`` (0 at ``t = 0``):

    I_t   = a_t * (x_t W^T + s_{t-1} (R * (1 - eye))^T) + c_t      (no self-connection in the mean)
    var_t = sigma^2 * sum_i x_{t,i}^2 + sigma_rec^2 * sum_k s_{t-1,k}^2   (inputs detached)

then the SBNN-LIF step (leaky variance, bias noise ``sigma_b^2`` added unleaked, fresh noise).
``sigma = softplus(rho)``, ``sigma_rec = softplus(rho_rec)``, ``sigma_b = softplus(rho_b)``; init
``0.5/sqrt(in_features)``, ``0.5/sqrt(hidden)`` and ``softplus(-2) = 0.1269`` as in the script.
As there, the recurrent variance sums over every unit, the diagonal included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import inverse_softplus
from .neurons import DEFAULT_BETA, SBNNLIF

SHD_BIAS_NOISE_STD = math.log1p(math.exp(-2.0))  # train_shd.py: scales_biases init -2


class SBNNRecurrent(nn.Module):
    """``forward(x_t, t) -> spikes [B, hidden]``; call once per step after :func:`reset_sbnn`."""

    def __init__(
        self,
        in_features: int,
        hidden: int,
        time_steps: int,
        threshold: float = 1.0,
        beta: float = DEFAULT_BETA,
        p: float = 0.0,
        sigma_init: float = 0.5,
        bias_noise_std: float = SHD_BIAS_NOISE_STD,
        aux_form: str = "membrane",
    ):
        super().__init__()
        if time_steps < 1 or in_features < 1 or hidden < 1:
            raise ValueError(
                f"SBNNRecurrent: in_features={in_features}, hidden={hidden}, time_steps={time_steps} must be >= 1"
            )
        if not sigma_init > 0 or not bias_noise_std > 0:
            raise ValueError(
                f"SBNNRecurrent: sigma_init={sigma_init} and bias_noise_std={bias_noise_std} must be > 0"
            )
        self.in_features, self.hidden, self.time_steps = in_features, hidden, time_steps
        b_in, b_rec = 1.0 / math.sqrt(in_features), 1.0 / math.sqrt(hidden)
        self.weight = nn.Parameter(torch.empty(hidden, in_features).uniform_(-b_in, b_in))
        self.recurrent_weight = nn.Parameter(torch.empty(hidden, hidden).uniform_(-b_rec, b_rec))
        self.rho = nn.Parameter(torch.tensor(inverse_softplus(sigma_init * b_in)))
        self.rho_rec = nn.Parameter(torch.tensor(inverse_softplus(sigma_init * b_rec)))
        self.rho_b = nn.Parameter(torch.tensor(inverse_softplus(bias_noise_std)))
        self.a = nn.Parameter(torch.ones(time_steps, hidden))
        self.c = nn.Parameter(torch.zeros(time_steps, hidden))
        self.register_buffer("off_diagonal", 1.0 - torch.eye(hidden), persistent=False)
        self.neuron = SBNNLIF(threshold=threshold, beta=beta, p=p, aux_form=aux_form)

    def forward(self, x: Tensor, t: int, xi: Tensor | None = None) -> Tensor:
        """Spikes at step ``t``; ``xi`` (standard normal, ``[B, hidden]``) overrides the neuron's draw."""
        if not 0 <= t < self.time_steps:
            raise IndexError(f"SBNNRecurrent: time step t={t} is outside [0, {self.time_steps})")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"SBNNRecurrent: input shape {tuple(x.shape)} is not [batch, {self.in_features}]"
            )
        prev = self.neuron.last_spikes
        if not isinstance(prev, Tensor):
            prev = x.new_zeros(x.shape[0], self.hidden)
        current = F.linear(x, self.weight) + F.linear(prev, self.recurrent_weight * self.off_diagonal)
        mean = current * self.a[t] + self.c[t]
        var = F.softplus(self.rho) ** 2 * x.detach().pow(2).sum(1, keepdim=True) + F.softplus(
            self.rho_rec
        ) ** 2 * prev.detach().pow(2).sum(1, keepdim=True)
        return self.neuron(mean, var, F.softplus(self.rho_b) ** 2, xi)


class SHDNet(nn.Module):
    """train_shd.py's net: ``len(hidden)`` recurrent SBNN layers and a bias-free readout averaged over T.

    ``forward(x [B, T, in_features] or [T, B, in_features]) -> logits``; ``batch_first`` picks which.
    """

    def __init__(
        self,
        in_features: int = 700,
        hidden: tuple[int, ...] = (256, 256),
        num_classes: int = 20,
        time_steps: int = 100,
        batch_first: bool = True,
        **layer_kwargs,
    ):
        super().__init__()
        sizes = (in_features, *hidden)
        self.layers = nn.ModuleList(
            SBNNRecurrent(n_in, n_out, time_steps, **layer_kwargs)
            for n_in, n_out in zip(sizes, sizes[1:], strict=False)
        )
        bound = 1.0 / math.sqrt(hidden[-1])
        self.readout = nn.Parameter(torch.empty(num_classes, hidden[-1]).uniform_(-bound, bound))
        self.time_steps, self.batch_first = time_steps, batch_first

    def forward(self, x: Tensor) -> Tensor:
        from .neurons import reset_sbnn

        seq = x.transpose(0, 1) if self.batch_first else x
        if seq.dim() != 3 or seq.shape[0] != self.time_steps:
            raise ValueError(
                f"SHDNet: input shape {tuple(x.shape)} needs {self.time_steps} time steps on dim "
                f"{1 if self.batch_first else 0} ([B, T, C] with batch_first=True)"
            )
        reset_sbnn(self)
        logits = 0.0
        for t in range(self.time_steps):
            out = seq[t]
            for layer in self.layers:
                out = layer(out, t)
            logits = logits + F.linear(out, self.readout)
        return logits / self.time_steps
