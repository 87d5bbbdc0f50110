"""SpikingJelly glue for converted (sign-weight) layers: traces that ``reset_net`` clears, a
``step_mode`` that ``set_step_mode`` drives, and the input layout of layers inside containers.

Imported through :mod:`bso_snn.adapters.spikingjelly`, which detects the release; nothing here
depends on the release (``base.MemoryModule``, ``base.StepModule`` and the containers used here
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


class ResettableBinaryMixin(BinaryLayerMixin, base.StepModule):
    """A converted layer in a SpikingJelly model (the rest is :class:`bso_snn.layers.BinaryLayerMixin`).

    * Its trace lives in its :class:`TraceMemory` child (``bso_trace_memory``), so
      ``functional.reset_net`` clears it.
    * It is a SpikingJelly ``StepModule``: a plain ``nn.Linear`` / ``nn.Conv*`` gets a
      ``step_mode`` that ``functional.set_step_mode`` updates like any SpikingJelly layer
      (``'m'``: input ``[T, N, *]``).
    """

    @property
    def bso_trace(self) -> torch.Tensor | None:
        return self._modules[TRACE_CHILD].trace

    @bso_trace.setter
    def bso_trace(self, value: torch.Tensor | None) -> None:
        self._modules[TRACE_CHILD].trace = value


def make_resettable(layer: nn.Module, step_mode: str) -> None:
    """Turn a converted layer into a :class:`ResettableBinaryMixin` one: the trace moves into a
    :class:`TraceMemory` child, and a layer without a SpikingJelly step mode gets ``step_mode``.
    Idempotent; layers converted by another mixin than bso-snn's core one are left as they are."""
    if getattr(type(layer), "_bso_mixin", None) is not BinaryLayerMixin:
        return
    trace = layer.__dict__.pop("bso_trace", None)
    layer.add_module(TRACE_CHILD, TraceMemory())
    # Replace (not stack) the generated class: (ResettableBinaryMixin, original class) pickles.
    layer.__class__ = swapped_class(ResettableBinaryMixin, original_class(layer))
    if "_step_mode" not in layer.__dict__:
        layer.step_mode = step_mode
    layer.bso_trace = trace


def _binary_descendants(container: nn.Module) -> list[nn.Module]:
    return [m for m in container.modules() if is_binary_layer(m)]


class StepsGlueMixin:
    """For SpikingJelly's containers: while the container runs, tell each converted layer inside
    it how its input is laid out (``bso_flat_steps``), whatever that layer's own ``step_mode``
    says: ``T`` when the container folds ``[T, N, *]`` into ``[T*N, *]``, ``1`` when it calls its
    children once per time step."""

    def _bso_steps_per_call(self, x_seq: torch.Tensor) -> int:
        raise NotImplementedError

    def forward(self, x_seq, *args, **kwargs):
        steps = self._bso_steps_per_call(x_seq[0] if isinstance(x_seq, tuple) else x_seq)
        layers = _binary_descendants(self)
        previous = [layer.bso_flat_steps for layer in layers]  # restored after: containers may nest
        for layer in layers:
            layer.bso_flat_steps = steps
        try:
            return super().forward(x_seq, *args, **kwargs)
        finally:
            for layer, steps_before in zip(layers, previous, strict=True):
                layer.bso_flat_steps = steps_before


class FlatStepsMixin(StepsGlueMixin):
    """``SeqToANNContainer``: its children see ``[T*N, *]``."""

    def _bso_steps_per_call(self, x_seq: torch.Tensor) -> int:
        return int(x_seq.shape[0])


class PerStepMixin(StepsGlueMixin):
    """``MultiStepContainer`` / ``TLastMultiStepContainer``: its children see one step per call
    (0.0.0.0.14's ``set_step_mode`` may still have given them ``step_mode='m'``)."""

    def _bso_steps_per_call(self, x_seq: torch.Tensor) -> int:
        return 1


class StepModeStepsMixin(StepsGlueMixin):
    """``StepModeContainer``: folds ``[T, N, *]`` in multi-step mode unless stateful; otherwise
    its children see one step per call."""

    def _bso_steps_per_call(self, x_seq: torch.Tensor) -> int:
        return int(x_seq.shape[0]) if self.step_mode == "m" and not self.stateful else 1


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
    """Give ``container`` the layout glue ``mixin`` if it holds converted layers. Idempotent."""
    if _binary_descendants(container):
        swap_class(container, mixin)


def contained(model: nn.Module, containers: tuple[type, ...]) -> set[int]:
    """``id`` of every module of ``model`` that sits inside one of ``containers``."""
    inside: set[int] = set()
    for module in model.modules():
        if isinstance(module, containers):
            inside.update(id(m) for m in module.modules() if m is not module)
    return inside


def outer_step_mode(model: nn.Module, inside: set[int]) -> str:
    """The step mode shared by ``model``'s SpikingJelly step modules outside containers
    (``inside``), i.e. what a plain layer among them receives: ``'s'`` when there are none or
    they disagree."""
    modes = {
        getattr(m, "step_mode", None)  # None on a StepModule without one (e.g. 2.0.0 containers)
        for m in model.modules()
        if id(m) not in inside and isinstance(m, base.StepModule)
    }
    return "m" if modes - {None} == {"m"} else "s"
