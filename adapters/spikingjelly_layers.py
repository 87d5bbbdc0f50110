"""SpikingJelly glue for converted (sign-weight) layers: traces that ``reset_net`` clears, and the
time-step count for layers that see ``[T*N, *]`` inside ``SeqToANNContainer``.

Imported through :mod:`bso_snn.adapters.spikingjelly`, which detects the release; nothing here
depends on the release (``base.MemoryModule``, ``SeqToANNContainer`` and ``StepModeContainer``
behave alike in 0.0.0.0.14 and 2.0.0).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import base
from torch import nn

from bso_snn._classswap import original_class, swap_class, swapped_class
from bso_snn.layers import BinaryLayerMixin, is_binary_layer

TRACE_CHILD = "bso_trace_memory"
"""Name of the child module that holds a converted layer's trace in a SpikingJelly model."""


class TraceMemory(base.MemoryModule):
    """Holds one converted layer's presynaptic trace as a SpikingJelly memory named ``trace``.

    Being a ``MemoryModule``, it is reset by ``functional.reset_net`` (trace -> ``None``) and
    detached by ``functional.detach_net`` without warnings, in both releases. It has no
    parameters or buffers, so ``state_dict`` keys are unchanged. It is never called.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_memory("trace", None)

    @property
    def supported_backends(self) -> tuple[str, ...]:
        # Read only by 0.0.0.0.14's functional.set_backend: a stored tensor fits every backend,
        # so switching a whole net to 'cupy' does not log a warning for this module.
        return ("torch", "cupy")

    def detach(self) -> None:
        """Detach the trace by rebinding it (it may be a view, which the in-place ``detach_`` of
        ``MemoryModule.detach`` rejects). The trace never carries a graph anyway."""
        if isinstance(self.trace, torch.Tensor):
            self.trace = self.trace.detach()

    def forward(self, *args, **kwargs):
        raise RuntimeError("TraceMemory only stores a converted layer's trace; it is never called")


class ResettableBinaryMixin(BinaryLayerMixin):
    """A converted layer whose trace lives in its :class:`TraceMemory` child (``bso_trace_memory``),
    so SpikingJelly's ``functional.reset_net`` clears it. Everything else is
    :class:`bso_snn.layers.BinaryLayerMixin`."""

    @property
    def bso_trace(self) -> torch.Tensor | None:
        return self._modules[TRACE_CHILD].trace

    @bso_trace.setter
    def bso_trace(self, value: torch.Tensor | None) -> None:
        self._modules[TRACE_CHILD].trace = value


def make_resettable(layer: nn.Module) -> None:
    """Move a converted layer's trace into a :class:`TraceMemory` child. Idempotent; layers
    converted by another mixin than bso-snn's core one are left as they are."""
    if (
        isinstance(layer, ResettableBinaryMixin)
        or getattr(type(layer), "_bso_mixin", None) is not BinaryLayerMixin
    ):
        return
    trace = layer.__dict__.pop("bso_trace", None)
    layer.add_module(TRACE_CHILD, TraceMemory())
    # Replace (not stack) the generated class: (ResettableBinaryMixin, original class) pickles.
    layer.__class__ = swapped_class(ResettableBinaryMixin, original_class(layer))
    layer.bso_trace = trace


def _binary_descendants(container: nn.Module) -> list[nn.Module]:
    return [m for m in container.modules() if is_binary_layer(m)]


class FlatStepsMixin:
    """For ``SeqToANNContainer``: its children see ``[T*N, *]``; tell the converted layers among
    them ``T`` (``bso_flat_steps``) for the duration of the call, so their traces run over time."""

    def _bso_flattens(self) -> bool:
        return True

    def forward(self, x_seq, *args, **kwargs):
        if not self._bso_flattens():
            return super().forward(x_seq, *args, **kwargs)
        first = x_seq[0] if isinstance(x_seq, tuple) else x_seq
        layers = _binary_descendants(self)
        for layer in layers:
            layer.bso_flat_steps = int(first.shape[0])
        try:
            return super().forward(x_seq, *args, **kwargs)
        finally:
            for layer in layers:
                layer.bso_flat_steps = None


class StepModeFlatStepsMixin(FlatStepsMixin):
    """For ``StepModeContainer``: it flattens ``[T, N, *]`` only in multi-step mode when not
    stateful (stateful multi-step calls its children once per step, which needs nothing)."""

    def _bso_flattens(self) -> bool:
        return self.step_mode == "m" and not self.stateful


class VmapRefusedMixin:
    """For 2.0.0's ``TLastSeqToANNContainer``, which runs its children under ``torch.vmap``: the
    trace-based backward of a converted layer cannot run there, so say so instead of failing
    inside vmap."""

    def forward(self, x_seq, *args, **kwargs):
        tracing = [m for m in _binary_descendants(self) if m.bso_tracing and m.training]
        if tracing and torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(self).__name__} runs its children under torch.vmap, where the trace-based "
                f"weight gradient of converted layers cannot be computed. Use SeqToANNContainer with "
                f"[T, N, ...] input (or layer.* modules with step_mode='m') instead, or keep the layers "
                f"inside it float with bso_snn.convert(..., filter_fn=...)."
            )
        return super().forward(x_seq, *args, **kwargs)


def adapt_container(container: nn.Module, mixin: type) -> None:
    """Give ``container`` the time-step glue ``mixin`` if it holds converted layers. Idempotent."""
    if _binary_descendants(container):
        swap_class(container, mixin)
