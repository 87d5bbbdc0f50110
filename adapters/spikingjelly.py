"""SpikingJelly adapter (``bso_snn.adapters.spikingjelly``), for the PyPI releases 0.0.0.0.14 and
2.0.0. ``bso_snn.convert`` imports it when a model contains SpikingJelly modules; importing it
registers SpikingJelly's classes with the bso-snn registry.

What it registers (exact classes; see ``docs/spikingjelly.md``):

* layers ``layer.Linear``, ``layer.Conv1d``, ``layer.Conv2d``, ``layer.Conv3d`` -> sign-weight layers that keep
  ``step_mode`` (``'m'`` takes ``[T, N, *]``); ``layer.WSLinear`` / ``layer.WSConv2d`` (2.0.0)
  are refused: weight standardisation of ±1 weights gives non-binary effective weights;
* neurons ``IFNode`` (``lam = 1``), ``LIFNode`` (``lam = 1 - 1/tau``), ``ParametricLIFNode``
  (learnable tau: no inferred ``lam``) -> online mode that keeps the neuron's backend;
  ``BaseNode`` (and 2.0.0's ``SimpleBaseNode``) is refused, so that any other subclass is refused
  with a message saying how to register it (:func:`memory_neuron_support`); 2.0.0's own
  ``OTTTLIFNode`` / ``SLTTLIFNode`` are refused with the reason.

After conversion (:func:`after_convert`, called by ``bso_snn.convert``): every converted layer's
trace becomes a SpikingJelly memory (``functional.reset_net`` clears it, without warnings),
``SeqToANNContainer`` / ``StepModeContainer`` tell the converted layers inside them how many
time steps are folded into the batch, and 2.0.0's ``reset_net`` cache is invalidated.
"""

from __future__ import annotations

from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from bso_snn._classswap import original_class
from bso_snn.layers import binarize_layer, is_binary_layer
from bso_snn.registry import refuse_layer, refuse_neuron, register_layer, register_neuron
from bso_snn.traces import ORDERED_CONTAINERS

from . import spikingjelly_nir
from .spikingjelly_layers import (
    FlatStepsMixin,
    PerStepMixin,
    ResettableBinaryMixin,
    StepModeStepsMixin,
    TraceMemory,
    VmapRefusedMixin,
    adapt_container,
    contained,
    make_resettable,
    outer_step_mode,
)
from .spikingjelly_neurons import OnlineMixin, check_cupy_device, memory_neuron_support
from .spikingjelly_release import CLASSIC, RELEASE

__all__ = [
    "CLASSIC",
    "RELEASE",
    "OnlineMixin",
    "ResettableBinaryMixin",
    "TraceMemory",
    "WS_REFUSAL",
    "after_convert",
    "check_cupy_device",
    "memory_neuron_support",
    "use_fused_local_kernel",
]

WS_REFUSAL = (
    "weight standardisation ((W - mean) / std * gain, per output channel) of ±1 weights gives "
    "effective weights that are not ±1 (and undefined when a filter's weights are all equal), so "
    "the layer would not be binary; replace it with layer.Conv2d / layer.Linear (and a BatchNorm) "
    "before converting"
)


OTHER_NEURON_REFUSAL = (
    "bso-snn supports SpikingJelly's IFNode, LIFNode and ParametricLIFNode and cannot tell whether "
    "another neuron keeps state outside SpikingJelly's memories or changes when run one step at a "
    "time; if it does neither, register it with "
    "bso_snn.adapters.spikingjelly.memory_neuron_support(decay=...)"
)
OTTT_NEURON_REFUSAL = (
    "SpikingJelly's own OTTT neuron returns [spike, trace] in training, which only OTTTSequential "
    "understands; use neuron.LIFNode(decay_input=False, v_reset=None, detach_reset=True) instead "
    "(converted layers keep their own traces)"
)
SLTT_NEURON_REFUSAL = (
    "SpikingJelly's own SLTT neuron already cuts its state between steps; use neuron.LIFNode "
    "instead (convert puts it in online mode)"
)

PSN_REFUSAL = (
    "a parallel spiking neuron computes all T steps at once from a learnable mixing over time and "
    "carries no membrane from one step to the next, so it cannot run online one step at a time; "
    "replace it with neuron.LIFNode (or neuron.IFNode) before converting"
)
OUTSIDE_BASENODE_REFUSAL = (
    "it is not a subclass of SpikingJelly's BaseNode, so bso-snn cannot tell which state it carries "
    "between steps or how to detach it; replace it with neuron.IFNode / LIFNode / ParametricLIFNode, "
    "or, if its state is only SpikingJelly memories and one-step calls give the same result, "
    "register it with bso_snn.adapters.spikingjelly.memory_neuron_support(decay=...)"
)


def _neurons_outside_basenode() -> list[type]:
    """Every neuron class of the installed release that does not subclass ``BaseNode`` (nor
    2.0.0's ``SimpleBaseNode``): the PSN family, ``GatedLIFNode``, the ``NonSpiking`` and ``ILC``
    nodes, ... (found by walking ``spikingjelly.activation_based.neuron``, so a release's new
    classes are covered too)."""
    bases = tuple(getattr(neuron, n) for n in ("BaseNode", "SimpleBaseNode") if hasattr(neuron, n))
    return [
        cls
        for cls in vars(neuron).values()
        if isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and not issubclass(cls, bases)
        and cls.__module__.startswith("spikingjelly.")
    ]


def _lif_decay(node: nn.Module) -> float:
    return 1.0 - 1.0 / float(node.tau)


def _register() -> None:
    for cls in (layer.Linear, layer.Conv1d, layer.Conv2d, layer.Conv3d):
        register_layer(cls, binarize_layer)
    for name in ("WSConv2d", "WSLinear"):  # only in 2.0.0 (and the unreleased classic master)
        cls = getattr(layer, name, None)
        if cls is not None:
            refuse_layer(cls, WS_REFUSAL)

    register_neuron(neuron.IFNode, memory_neuron_support(decay=lambda node: 1.0))
    register_neuron(neuron.LIFNode, memory_neuron_support(decay=_lif_decay))
    # tau is learnable: a decay read at conversion time would be stale after the first update.
    register_neuron(neuron.ParametricLIFNode, memory_neuron_support(decay=lambda node: None))
    # Refusing the base classes makes the registry refuse every other subclass with a message
    # that says how to register it, instead of leaving it in BPTT mode without a word.
    for name in ("BaseNode", "SimpleBaseNode"):  # SimpleBaseNode: 2.0.0 only
        if hasattr(neuron, name):
            refuse_neuron(getattr(neuron, name), OTHER_NEURON_REFUSAL)
    for cls in _neurons_outside_basenode():
        psn = cls.__name__.endswith("PSN")
        refuse_neuron(cls, PSN_REFUSAL if psn else OUTSIDE_BASENODE_REFUSAL)
    if not CLASSIC:  # SpikingJelly's own online neurons
        refuse_neuron(neuron.OTTTLIFNode, OTTT_NEURON_REFUSAL)
        refuse_neuron(neuron.SLTTLIFNode, SLTT_NEURON_REFUSAL)


def _container_glue() -> dict[type, type]:
    glue = {
        layer.SeqToANNContainer: FlatStepsMixin,
        layer.MultiStepContainer: PerStepMixin,
        layer.StepModeContainer: StepModeStepsMixin,
    }
    if not CLASSIC:
        glue[layer.TLastMultiStepContainer] = PerStepMixin
        glue[layer.TLastSeqToANNContainer] = VmapRefusedMixin
    return glue


_CONTAINER_GLUE = _container_glue()
ORDERED_CONTAINERS.update((layer.SeqToANNContainer, layer.MultiStepContainer, layer.StepModeContainer))


def after_convert(model: nn.Module) -> None:
    """Finish converting a model that contains SpikingJelly modules (``bso_snn.convert`` calls
    this; calling it again changes nothing).

    * each converted layer keeps its trace in a :class:`TraceMemory` child, so
      ``functional.reset_net`` and ``functional.detach_net`` handle it (``state_dict`` keys are
      unchanged), and is a SpikingJelly ``StepModule``: a plain torch layer gets the step mode
      its SpikingJelly neighbours share (``'s'`` inside containers), which
      ``functional.set_step_mode`` changes later like any SpikingJelly layer's;
    * ``SeqToANNContainer`` / ``MultiStepContainer`` / ``StepModeContainer`` holding converted
      layers tell them, on every call, whether they see ``[T*N, *]`` or one step;
    * online neurons learn their qualified name (for error messages);
    * 2.0.0: the ``reset_net`` cache of ``model`` and of each of its submodules is invalidated.
    """
    modules = list(model.named_modules())
    inside = contained(model, tuple(_CONTAINER_GLUE))
    step_mode = outer_step_mode(model, inside)
    for name, module in modules:
        if is_binary_layer(module):  # SpikingJelly's containers require children in 's'
            make_resettable(module, "s" if id(module) in inside else step_mode)
        elif isinstance(module, OnlineMixin):
            module.bso_name = name
        glue = _CONTAINER_GLUE.get(original_class(module))
        if glue is not None:
            adapt_container(module, glue)
    if not CLASSIC:
        for module in model.modules():
            functional.invalidate_reset_cache(module)


def use_fused_local_kernel(model: nn.Module, enabled: bool = True) -> list[str]:
    """Opt in (SpikingJelly 0.0.0.0.14, ``backend='cupy'``, GPU): every converted ``LIFNode`` of
    ``model`` runs each multi-step training call as one CuPy launch with a time-local backward
    kernel (:mod:`bso_snn.adapters.spikingjelly_cupy`) instead of ``T`` slices. Same gradient
    (OTTT, accumulated over time); NDOT traces are not served. Returns the neurons' names.

    Raises:
        RuntimeError: the installed SpikingJelly has no CuPy kernels (2.0.0).
        TypeError / ValueError: a ``LIFNode`` of ``model`` is not converted, not ``backend='cupy'``
            or not multi-step; ``model`` has no ``LIFNode``.
    """
    if not CLASSIC:
        raise RuntimeError(
            f"use_fused_local_kernel needs SpikingJelly's CuPy kernels, which exist only in the classic "
            f"releases (0.0.0.0.x); the installed release is {RELEASE}"
        )
    from .spikingjelly_cupy import check_fusable

    nodes = [(name, m) for name, m in model.named_modules() if original_class(m) is neuron.LIFNode]
    if not nodes:
        raise ValueError(f"use_fused_local_kernel: {type(model).__name__} has no SpikingJelly LIFNode")
    for name, node in nodes:
        check_fusable(node, name)
    for _, node in nodes:
        node.bso_fused_local_kernel = bool(enabled)
    return [name for name, _ in nodes]


_register()
spikingjelly_nir.register()
