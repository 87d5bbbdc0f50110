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

Writing an online mode for another library's neuron: before each step call
:func:`detach_state` on its state attributes; after each step, when :func:`records_ndot`,
collect ``ndot_p(membrane_after_reset, spike, v_threshold)``; at the end of the call set
``neuron.bso_steps_run`` to the number of steps it ran and return
``publish_step(neuron, output, ps_or_None)``; give the mixin class ``bso_publishes_membrane =
True``; in its reset, call :func:`clear_published`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..traces import clear_published, ndot_p, publish_step, records_ndot

__all__ = ["clear_published", "detach_state", "ndot_p", "publish_step", "records_ndot"]


def detach_state(module: nn.Module, names: Iterable[str]) -> None:
    """Detach each tensor attribute ``names`` of ``module`` from the autograd graph in place.

    Non-tensor values (``None``, a float initial state) are left as they are.
    """
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            setattr(module, name, value.detach())
