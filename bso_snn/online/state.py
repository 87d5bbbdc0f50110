r"""Pieces every online neuron mode is built from (plain torch, SpikingJelly and snnTorch alike).

An online neuron does two extra things per call, without changing its numerics:

1. **Cut the state.** Before each step, its state tensors are detached from the previous
   step's graph (:func:`detach_state`), so a per-step ``loss.backward()`` never reaches back
   in time (and never fails with "backward through the graph a second time").
2. **Publish what NDOT layers read** (:func:`publish_step`): a detached alias of its output
   (how a converted layer recognises its presynaptic neuron) and, when it records for NDOT
   (:func:`records_ndot`, switched on by ``convert(..., trace='ndot')`` or a layer's link),
   :math:`p[t] = h[t] - V_{th} s[t]` for each step of the call (:func:`ndot_p`), with
   :math:`h[t]` the membrane after firing and reset. Both are plain attributes of the neuron:
   they follow ``copy.deepcopy``, pickling, DDP and ``torch.compile``. See
   :mod:`bso_snn.traces` for the rule.

The contract is :class:`OnlineNeuron`; bso-snn's ``LIF``, SpikingJelly's and snnTorch's online
modes are its subclasses. Writing an online mode for another library's neuron: subclass it; before
each step call :func:`detach_state` on the neuron's state attributes; after each step, when
:func:`records_ndot`, collect ``ndot_p(membrane_after_reset, spike, v_threshold)``; at the end of
the call return ``self._bso_finish(output, steps, ps_or_None)``; set ``bso_publishes_membrane =
True``; in the neuron's reset, call :func:`clear_published`. Register it with
``NeuronSupport(make_online=lambda n: make_online(n, YourMixin), is_online=is_online, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .._classswap import swap_class
from ..traces import clear_published, ndot_p, publish_step, records_ndot

__all__ = [
    "OnlineNeuron",
    "clear_published",
    "detach_state",
    "is_online",
    "make_online",
    "ndot_p",
    "publish_step",
    "records_ndot",
]


class OnlineNeuron:
    """Base of every online neuron mode: a mixin that :func:`make_online` puts in front of a
    neuron's class, leaving its numerics unchanged (see the module docstring for what a mode does).

    Attributes:
        bso_publishes_membrane: the mode publishes ``p[t]`` for NDOT layers (class attribute;
            ``False``: NDOT layers after this neuron are refused).
        bso_steps_run: set by :meth:`_bso_finish`: how many time steps the last call ran.
    """

    bso_publishes_membrane = False

    def _bso_finish(self, output: torch.Tensor, steps: int, ps: list[torch.Tensor] | None = None):
        """End of one call that ran ``steps`` time steps: returns ``output`` as published for NDOT
        layers (:func:`publish_step`), with ``ps`` the per-step ``p`` when recording."""
        self.bso_steps_run = steps
        return publish_step(self, output, ps)


def is_online(module: nn.Module) -> bool:
    """True for a neuron in an online mode (an :class:`OnlineNeuron`)."""
    return isinstance(module, OnlineNeuron)


def make_online(module: nn.Module, mode: type) -> None:
    """Put ``module`` in the online mode ``mode`` (an :class:`OnlineNeuron` subclass) in place,
    by a class swap that keeps pickling and deepcopy working; idempotent."""
    if not (isinstance(mode, type) and issubclass(mode, OnlineNeuron)):
        raise TypeError(f"make_online: mode must be an OnlineNeuron subclass, got {mode!r}")
    if not isinstance(module, mode):
        swap_class(module, mode)


def detach_state(module: nn.Module, names: Iterable[str]) -> None:
    """Detach each tensor attribute ``names`` of ``module`` from the autograd graph in place.

    Non-tensor values (``None``, a float initial state) are left as they are.
    """
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            setattr(module, name, value.detach())
