r"""A plain-PyTorch leaky integrate-and-fire neuron, registered with bso-snn.

For users who build SNNs from plain ``torch.nn`` parts. Dynamics per time step (the LIF of
OTTT / NDOT / BSO, with :math:`\lambda = 1 - 1/\tau`):

.. math::
    u[t] &= \lambda\, h[t-1] + x[t] \\
    s[t] &= \Theta(u[t] - V_{th}) \\
    h[t] &= u[t] - V_{th}\, s[t] \quad\text{(soft reset, ``v_reset=None``)} \\
    h[t] &= u[t]\,(1 - s[t]) + V_{reset}\, s[t] \quad\text{(hard reset)}

with :math:`h[0] = 0` (soft) or :math:`V_{reset}` (hard), :math:`\Theta(z) = 1` for
:math:`z \ge 0`. The spike's surrogate gradient is the arctangent one (as SpikingJelly's
``surrogate.ATan``):

.. math:: \frac{\partial s}{\partial u} = \frac{\alpha / 2}{1 + (\tfrac{\pi}{2} \alpha (u - V_{th}))^2}

Un-converted, the neuron keeps its state in the graph (backprop through time).
``bso_snn.convert`` switches it to online mode (:class:`OnlineMixin`), which detaches the
state before every step and publishes the membrane history NDOT traces need.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .online.state import (
    OnlineNeuron,
    clear_published,
    detach_state,
    is_online,
    make_online,
    ndot_p,
    records_ndot,
)
from .registry import NeuronSupport, register_neuron

__all__ = ["LIF", "atan_spike"]


class _ATanSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        alpha = ctx.alpha
        return grad * (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2), None


def atan_spike(z: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Heaviside step ``z >= 0`` forward, arctangent surrogate gradient backward."""
    return _ATanSpike.apply(z, alpha)


class LIF(nn.Module):
    """Leaky integrate-and-fire neuron (see the module docstring for the equations).

    Args:
        tau: membrane time constant, ``>= 1``; the leak is ``1 - 1/tau`` (``tau=2`` gives the
            papers' decay 0.5).
        v_threshold: firing threshold.
        v_reset: ``None`` for a soft reset (subtract the threshold), else the hard-reset value.
        alpha: sharpness of the arctangent surrogate gradient.
        step_mode: ``'s'`` (input ``[N, *]``, one step per call) or ``'m'`` (input
            ``[T, N, *]``, all steps in one call).
        detach_reset: detach the spike in the reset term (no gradient through the reset).
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = None,
        alpha: float = 2.0,
        step_mode: str = "s",
        detach_reset: bool = False,
    ) -> None:
        super().__init__()
        if not tau >= 1.0:
            raise ValueError(f"tau={tau!r} must be >= 1 (the leak 1 - 1/tau must lie in [0, 1))")
        if not alpha > 0:
            raise ValueError(f"alpha={alpha!r} must be > 0 (surrogate gradient sharpness)")
        if step_mode not in ("s", "m"):
            raise ValueError(f"step_mode={step_mode!r} must be 's' (single step) or 'm' (multi step)")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.alpha = float(alpha)
        self.step_mode = step_mode
        self.detach_reset = bool(detach_reset)
        self.v: torch.Tensor | float = self.v_initial

    @property
    def decay(self) -> float:
        """The leak ``lambda = 1 - 1/tau`` (the OTTT trace decay)."""
        return 1.0 - 1.0 / self.tau

    @property
    def v_initial(self) -> float:
        """The membrane after a reset: 0 (soft reset) or ``v_reset``."""
        return 0.0 if self.v_reset is None else self.v_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "m":
            if x.dim() < 2:
                raise ValueError(f"LIF in step_mode='m' expects [T, N, ...] input, got {tuple(x.shape)}")
            return self.multi_step_forward(x)
        return self.single_step_forward(x)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time step: ``x`` is ``[N, *]``; returns the spikes, updates ``self.v``."""
        if isinstance(self.v, torch.Tensor) and self.v.shape != x.shape:
            raise RuntimeError(
                f"LIF state has shape {tuple(self.v.shape)} but the input is {tuple(x.shape)}; call "
                f"bso_snn.reset(model) before each new sequence/batch"
            )
        # u = decay * v + x in one op, and drop the old state before this step allocates more:
        # no neuron-sized temporaries, so online training memory stays flat in T.
        if isinstance(self.v, torch.Tensor):
            u = torch.add(x, self.v, alpha=self.decay)
        else:
            u = x + self.decay * self.v
        self.v = self.v_initial
        spike = atan_spike(u - self.v_threshold, self.alpha)
        s = spike.detach() if self.detach_reset else spike
        if self.v_reset is None:
            self.v = torch.sub(u, s, alpha=self.v_threshold)
        else:
            self.v = u * (1.0 - s) + self.v_reset * s
        return spike

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """All time steps of ``x_seq`` (``[T, N, *]``); returns spikes ``[T, N, *]``."""
        return torch.stack([self.single_step_forward(x) for x in x_seq])

    def reset(self) -> None:
        """Back to rest: ``v = v_initial``, no NDOT history."""
        self.v = self.v_initial
        clear_published(self)

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"hard({self.v_reset})"
        return (
            f"tau={self.tau}, v_threshold={self.v_threshold}, reset={reset}, alpha={self.alpha}, "
            f"step_mode={self.step_mode!r}, detach_reset={self.detach_reset}"
        )


class OnlineMixin(OnlineNeuron):
    """Online mode for :class:`LIF`: the state is detached before every time step (also inside
    a multi-step call, so one backward over ``[T, N, *]`` gives the OTTT-accumulated gradient),
    and each call publishes what NDOT layers read (``p[t] = h[t] - V_th s[t]`` per step, with
    ``h[t]`` the membrane after firing and reset, when recording). Numerics are unchanged."""

    bso_publishes_membrane = True

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        detach_state(self, ("v",))
        spike = super().single_step_forward(x)
        detach_state(self, ("v",))  # the next step starts from it detached anyway (also deep-copyable)
        p = [ndot_p(self.v, spike, self.v_threshold)] if records_ndot(self) else None
        return self._bso_finish(spike, 1, p)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        spikes, ps = [], []
        record = records_ndot(self)
        for x in x_seq:
            detach_state(self, ("v",))
            spike = super().single_step_forward(x)
            detach_state(self, ("v",))
            spikes.append(spike)
            if record:
                ps.append(ndot_p(self.v, spike, self.v_threshold))
        return self._bso_finish(torch.stack(spikes), len(spikes), ps if record else None)


register_neuron(
    LIF,
    NeuronSupport(
        make_online=lambda neuron: make_online(neuron, OnlineMixin),
        is_online=is_online,
        decay=lambda neuron: neuron.decay,
        reset=lambda neuron: neuron.reset(),
        membrane=lambda neuron: neuron.v,
    ),
)
