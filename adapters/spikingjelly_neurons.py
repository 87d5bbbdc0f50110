r"""Online mode for SpikingJelly neurons, in both releases, keeping each neuron's own backend.

A neuron in online mode is the same object with a generated class ``(OnlineMixin, original)``:

* single step: its memories (``v`` and any other) are detached from the previous step's graph
  before the step, then SpikingJelly's own ``single_step_forward`` runs;
* multi step (``[T, N, *]``, with autograd on): the sequence is run as ``T`` slices of length 1
  through the neuron's **own** ``multi_step_forward`` (CuPy kernels in 0.0.0.0.14, the automatic
  Torch/Triton/CUDA selection in 2.0.0), with a detach before each slice. One ``backward`` over
  the whole sequence then gives the OTTT-accumulated gradient
  :math:`\sum_t \partial L/\partial W\,|_{\text{step } t}` with no gradient through time;
* each output carries the membrane history NDOT traces read (``bso_snn.online.state``).

Numerics of the forward pass are SpikingJelly's. In 2.0.0 the mixin must not override
``single_step_functional_forward`` (``LIFNode.multi_step_forward`` would silently drop to a
Python loop), and it does not.

CuPy (0.0.0.0.14): a neuron with ``backend='cupy'`` keeps it. SpikingJelly runs those kernels
only on CUDA tensors (IF/LIF in training mode, ParametricLIF always) and has no CPU fallback;
before such a call on a non-CUDA input, :func:`check_cupy_device` raises a ``RuntimeError`` that
names the neuron and the fix, instead of SpikingJelly's bare ``AssertionError``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bso_snn._classswap import original_class
from bso_snn.online.state import (
    OnlineNeuron,
    clear_published,
    detach_state,
    is_online,
    make_online,
    ndot_p,
    records_ndot,
)
from bso_snn.registry import NeuronSupport

from .spikingjelly_release import CLASSIC


def _uses_cupy(neuron: nn.Module) -> bool:
    """Whether SpikingJelly 0.0.0.0.14 would run this multi-step call with its CuPy kernels."""
    if not CLASSIC or getattr(neuron, "backend", "torch") != "cupy":
        return False
    from spikingjelly.activation_based import neuron as sj_neuron

    # IF/LIF use CuPy only in training (eval runs TorchScript); ParametricLIF uses it always.
    return neuron.training or isinstance(neuron, sj_neuron.ParametricLIFNode)


def check_cupy_device(neuron: nn.Module, x_seq: torch.Tensor) -> None:
    """Raise a clear ``RuntimeError`` when ``neuron`` would run CuPy kernels on a non-CUDA input.

    SpikingJelly has no CPU fallback for ``backend='cupy'`` and bso-snn never switches a
    neuron's backend, so training on another backend can never happen silently.
    """
    if not _uses_cupy(neuron) or x_seq.is_cuda:
        return
    cls = original_class(neuron).__name__
    name = getattr(neuron, "bso_name", None)
    label = cls if name is None else f"{name!r} ({cls})"
    where = "" if torch.cuda.is_available() else " (and this machine has no CUDA GPU)"
    raise RuntimeError(
        f"SpikingJelly neuron {label} has backend='cupy', whose kernels run only on CUDA tensors, "
        f"but its input is on {x_seq.device}{where}. bso-snn keeps each neuron's backend and never "
        f"falls back to another one: move the model and the data to a GPU (model.cuda(), x.cuda()), "
        f"or select the torch backend (functional.set_backend(model, 'torch') or backend='torch')."
    )


def _detach_memories(neuron: nn.Module) -> None:
    detach_state(neuron, tuple(neuron._memories))


def _p(neuron: nn.Module, spike: torch.Tensor) -> torch.Tensor:
    """NDOT's ``p[t] = h[t] - V_th s[t]``: ``v`` is the membrane after firing and reset."""
    return ndot_p(neuron.v, spike, neuron.v_threshold)


class OnlineMixin(OnlineNeuron):
    """Online mode for a SpikingJelly neuron (see the module docstring)."""

    _bso_in_multi_step = False  # True while multi_step_forward runs (its steps are published there)
    bso_publishes_membrane = True
    bso_fused_local_kernel = False  # 0.0.0.0.14 CuPy LIF: one call with a time-local backward kernel

    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        if self._bso_in_multi_step:  # a multi-step implementation looping over single steps
            return super().single_step_forward(x, *args, **kwargs)
        _detach_memories(self)
        spike = super().single_step_forward(x, *args, **kwargs)
        return self._bso_finish(spike, 1, [_p(self, spike)] if records_ndot(self) else None)

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        check_cupy_device(self, x_seq)
        _detach_memories(self)
        if not torch.is_grad_enabled():  # no graph: nothing to cut between steps
            return super().multi_step_forward(x_seq, *args, **kwargs)
        if self.bso_fused_local_kernel and self.training:  # see spikingjelly_cupy (opt-in)
            from .spikingjelly_cupy import fused_forward

            return fused_forward(self, super().multi_step_forward, x_seq)
        outputs, ps, v_seqs = [], [], []
        record = records_ndot(self)
        self._bso_in_multi_step = True
        try:
            for t in range(x_seq.shape[0]):
                _detach_memories(self)
                step_args = tuple(a[t : t + 1] if isinstance(a, torch.Tensor) else a for a in args)
                outputs.append(super().multi_step_forward(x_seq[t : t + 1], *step_args, **kwargs))
                if record:
                    ps.append(_p(self, outputs[-1][0]))
                if self.store_v_seq:
                    v_seqs.append(self.v_seq)
        finally:
            self._bso_in_multi_step = False
        if v_seqs:
            self.v_seq = torch.cat(v_seqs)
        return self._bso_finish(torch.cat(outputs), len(outputs), ps if record else None)

    def reset(self) -> None:
        super().reset()
        clear_published(self)


def memory_neuron_support(decay: Callable[[nn.Module], float | None] = lambda neuron: None) -> NeuronSupport:
    """A :class:`~bso_snn.registry.NeuronSupport` for a SpikingJelly neuron whose whole state is
    in its SpikingJelly memories (``register_memory``), whose membrane after reset is ``v``, and
    whose multi-step forward is the step-by-step recurrence (so running ``T`` slices of length 1
    is the same computation).

    Register your own ``BaseNode`` subclass with it, e.g.
    ``bso_snn.register_neuron(MyNode, memory_neuron_support(decay=lambda n: 1 - 1 / n.tau))``.
    ``decay(neuron)`` gives the OTTT trace decay implied by the neuron, or ``None``.
    """
    return NeuronSupport(
        make_online=lambda neuron: make_online(neuron, OnlineMixin),
        is_online=is_online,
        decay=decay,
        reset=lambda neuron: neuron.reset(),
        membrane=lambda neuron: neuron.v,
    )
