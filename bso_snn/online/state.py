r"""Pieces every online neuron mode is built from (plain torch, SpikingJelly and snnTorch alike).

An online neuron does two extra things per time step, without changing its numerics:

1. **Cut the state.** Before the step, its state tensors are detached from the previous
   step's graph (:func:`detach_state`), so a per-step ``loss.backward()`` never reaches back
   in time (and never fails with "backward through the graph a second time").
2. **Publish its membrane history for NDOT.** NDOT's trace decay for the layer fed by this
   neuron at step :math:`t` is :math:`e[t-1] = h[t-1] / h[t-2]`, where :math:`h[t]` is the
   membrane after firing and reset (:math:`u[t] - V_{th} s[t]` for a soft reset). At the start
   of step :math:`t` the neuron's state *is* :math:`h[t-1]`, so :func:`tag_output` only
   attaches references to it (no copy, no arithmetic) to the output spike tensor, and a layer
   reads them back (``bso_snn.traces.find_membrane_history``) only if its input *is* that
   tensor or a reshaping view of it. Anything in between (MaxPool, Dropout, a residual add,
   the network input) leaves no tag, so NDOT is never applied to the wrong neuron. Tags are
   keyed weakly by the tensor, not stored on the module (which is referenced weakly): no graph
   is kept alive beyond the tensor's own lifetime, modules stay deep-copyable and picklable,
   and a saved or copied spike tensor carries no tag. A neuron
   keeps :math:`h[t-2]` across calls only after an NDOT layer has read its output, so OTTT
   training carries no extra state.

Writing an online mode for another library's neuron: before each step call
:func:`detach_state` on its state attributes and note its membrane (the state before the
step); after the call, :func:`tag_output` the output with those membranes; in its reset, call
:func:`clear_membrane_history`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..traces import HISTORIES, PREVIOUS_ATTR, RECORDING_ATTR, Membrane, MembraneHistory


def detach_state(module: nn.Module, names: Iterable[str]) -> None:
    """Detach each tensor attribute ``names`` of ``module`` from the autograd graph in place.

    Non-tensor values (``None``, a float initial state) are left as they are.
    """
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            setattr(module, name, value.detach())


def tag_output(neuron: nn.Module, out: torch.Tensor, h_before: Sequence[Membrane]) -> torch.Tensor:
    """Attach ``neuron``'s membrane history to its output ``out`` and return ``out``.

    ``h_before[k]`` is the neuron's (detached) membrane at the start of the ``k``-th time step
    of this call, i.e. its state just before that step: one entry for a single-step call,
    ``T`` for a multi-step one. Only references are kept, no copies. A neuron remembers the
    last entry for its next call only once an NDOT layer has read it (OTTT costs nothing).

    ``out`` must be the tensor the neuron returns, and not itself a view (a layer finds the
    tag on its input or on its input's ``_base``).
    """
    if out._base is not None:
        raise ValueError(
            "tag_output needs the neuron's output tensor itself, not a view of another tensor; "
            "return a fresh tensor (e.g. torch.stack(...) or .clone()) from the neuron"
        )
    recording = getattr(neuron, RECORDING_ATTR, False)
    earlier = getattr(neuron, PREVIOUS_ATTR, None) if recording else None
    if recording:
        setattr(neuron, PREVIOUS_ATTR, h_before[-1])
    HISTORIES[out] = MembraneHistory(tuple(h_before), earlier, weakref.ref(neuron))
    return out


def clear_membrane_history(neuron: nn.Module) -> None:
    """Forget the remembered membrane (part of resetting an online neuron)."""
    setattr(neuron, PREVIOUS_ATTR, None)
