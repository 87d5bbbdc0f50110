r"""Pieces every online neuron mode is built from (plain torch, SpikingJelly and snnTorch alike).

An online neuron does two extra things per time step, without changing its numerics:

1. **Cut the state.** Before the step, its state tensors are detached from the previous
   step's graph (:func:`detach_state`), so a per-step ``loss.backward()`` never reaches back
   in time (and never fails with "backward through the graph a second time").
2. **Publish its membrane history for NDOT.** NDOT's trace decay for the layer fed by this
   neuron at step :math:`t` is :math:`e[t-1] = h[t-1] / h[t-2]`, where :math:`h[t]` is the
   membrane after firing and reset (:math:`u[t] - V_{th} s[t]` for a soft reset). At the start
   of step :math:`t` the neuron's state *is* :math:`h[t-1]`, so :func:`membrane_history_step`
   only keeps references (no copy, no arithmetic); :func:`tag_output` attaches the pairs to the
   output spike tensor, and a layer reads them back (``bso_snn.traces.find_membrane_history``) only if
   its input *is* that tensor or a reshaping view of it. Anything in between (MaxPool, Dropout,
   a residual add, the network input) leaves no tag, so NDOT is never applied to the wrong
   neuron. Tags live on the tensor, not the module: no graph is kept alive beyond the
   tensor's own lifetime, and modules stay deep-copyable and picklable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..traces import TAG_ATTR, Membrane, MembraneHistory

_HISTORY_ATTR = "_bso_ndot_h_prev"  # on a neuron: its state at the start of the previous step


def detach_state(module: nn.Module, names: Iterable[str]) -> None:
    """Detach each tensor attribute ``names`` of ``module`` from the autograd graph in place.

    Non-tensor values (``None``, a float initial state) are left as they are.
    """
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            setattr(module, name, value.detach())


def membrane_history_step(neuron: nn.Module, h_before: Membrane) -> tuple[Membrane, Membrane | None]:
    """Call at the start of each time step with the neuron's (detached) membrane ``h[t-1]``.

    Returns the pair ``(h[t-1], h[t-2])`` for this step and remembers ``h[t-1]`` for the next.
    """
    pair = (h_before, getattr(neuron, _HISTORY_ATTR, None))
    setattr(neuron, _HISTORY_ATTR, h_before)
    return pair


def clear_membrane_history(neuron: nn.Module) -> None:
    """Forget the remembered membrane (part of resetting an online neuron)."""
    setattr(neuron, _HISTORY_ATTR, None)


def tag_output(out: torch.Tensor, steps: Sequence[tuple[Membrane, Membrane | None]]) -> torch.Tensor:
    """Attach the membrane pairs of each step of ``out`` (one pair per time step) and return ``out``.

    ``out`` must be the tensor the neuron returns, and not itself a view (a layer finds the
    tag on its input or on its input's ``_base``).
    """
    if out._base is not None:
        raise ValueError(
            "tag_output needs the neuron's output tensor itself, not a view of another tensor; "
            "return a fresh tensor (e.g. torch.stack(...) or .clone()) from the neuron"
        )
    setattr(out, TAG_ATTR, MembraneHistory(tuple(steps)))
    return out
