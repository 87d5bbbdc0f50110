"""Exact-type registry: which layer becomes a sign-weight layer, which neuron gets an online mode.

Entries are keyed by the module's **exact** class. A subclass of a registered class that has
no entry of its own (for example a weight-standardised ``Conv2d``) is refused with an error,
never silently converted as its parent: its ``forward`` may compute something the parent
does not. Adapters (``bso_snn.adapters.*``) add their libraries' classes here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ._classswap import original_class

LayerHandler = Callable[[nn.Module], None]
"""Turns a float layer into its sign-weight version in place."""


@dataclasses.dataclass(frozen=True)
class NeuronSupport:
    """How bso-snn drives one neuron class.

    Attributes:
        make_online: switches a neuron to online mode in place (its state is detached from
            the previous time step before every step). Must be idempotent.
        is_online: tells whether a neuron is already in online mode.
        decay: the OTTT trace decay ``lam`` implied by the neuron's dynamics (e.g.
            ``1 - 1/tau`` for a LIF neuron), or ``None`` when it cannot be told.
        reset: clears the neuron's state (membrane, synaptic current, ...).
        membrane: the membrane potential after firing and reset at the current step
            (``u[t] - V_th * s[t]`` for a soft reset), used by NDOT traces; ``None`` when
            the neuron cannot provide it.
    """

    make_online: Callable[[nn.Module], None]
    is_online: Callable[[nn.Module], bool]
    decay: Callable[[nn.Module], float | None]
    reset: Callable[[nn.Module], None]
    membrane: Callable[[nn.Module], torch.Tensor] | None = None


_LAYERS: dict[type, LayerHandler] = {}
_NEURONS: dict[type, NeuronSupport] = {}
_REFUSED: dict[type, str] = {}
_REFUSED_NEURONS: dict[type, str] = {}


def register_layer(cls: type, handler: LayerHandler) -> None:
    """Register ``handler`` as the way to binarise layers of exact type ``cls``."""
    _check_module_class(cls)
    if not callable(handler):
        raise TypeError(f"register_layer: handler must be callable as handler(module), got {handler!r}")
    _REFUSED.pop(cls, None)
    _LAYERS[cls] = handler


def register_neuron(cls: type, support: NeuronSupport) -> None:
    """Register how to put neurons of exact type ``cls`` in online mode, reset them, etc."""
    _check_module_class(cls)
    if not isinstance(support, NeuronSupport):
        raise TypeError(
            f"register_neuron: support must be a bso_snn.registry.NeuronSupport, got {type(support).__name__}"
        )
    _REFUSED_NEURONS.pop(cls, None)
    _NEURONS[cls] = support


def refuse_neuron(cls: type, reason: str) -> None:
    """Declare that neurons of exact type ``cls`` (and its unregistered subclasses) are not
    supported, and why: :func:`neuron_support` then raises, so ``convert`` fails before changing
    anything."""
    _check_module_class(cls)
    if not isinstance(reason, str) or not reason:
        raise TypeError(f"refuse_neuron: reason must be a non-empty string saying why, got {reason!r}")
    _NEURONS.pop(cls, None)
    _REFUSED_NEURONS[cls] = reason


def refuse_layer(cls: type, reason: str) -> None:
    """Declare that layers of exact type ``cls`` must never be converted, and why."""
    _check_module_class(cls)
    if not isinstance(reason, str) or not reason:
        raise TypeError(f"refuse_layer: reason must be a non-empty string saying why, got {reason!r}")
    _LAYERS.pop(cls, None)
    _REFUSED[cls] = reason


def _check_module_class(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"registry keys must be nn.Module subclasses, got {cls!r}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_weight_layer(module: nn.Module) -> bool:
    """True when ``module`` is a weight layer as far as conversion is concerned: its exact
    (original) class, or one of its parents, is registered or refused. Never raises;
    :func:`layer_handler` says whether it can actually be converted."""
    return any(c in _LAYERS or c in _REFUSED for c in original_class(module).__mro__)


def layer_handler(module: nn.Module) -> LayerHandler | None:
    """The handler for ``module``'s exact class, ``None`` if it is not a weight layer we know.

    Raises:
        TypeError: the class is refused, or it subclasses a registered or refused layer
            class without an entry of its own.
    """
    cls = original_class(module)
    if cls in _REFUSED:
        raise TypeError(
            f"{_qualname(cls)} cannot be converted: {_REFUSED[cls]}. Keep it in float with "
            f"convert(..., filter_fn=...) returning False for it."
        )
    if cls in _LAYERS:
        return _LAYERS[cls]
    for parent in cls.__mro__[1:]:
        if parent in _LAYERS or parent in _REFUSED:
            raise TypeError(
                f"{_qualname(cls)} subclasses {_qualname(parent)} but has no entry in the "
                f"bso-snn layer registry, so it is not converted as its parent (its forward may "
                f"differ, e.g. weight standardisation). Register it with "
                f"bso_snn.register_layer({cls.__name__}, bso_snn.layers.binarize_layer) if its "
                f"forward is a plain {parent.__name__}, exclude it with "
                f"convert(..., filter_fn=...), or refuse it with bso_snn.refuse_layer."
            )
    return None


def neuron_support(module: nn.Module) -> NeuronSupport | None:
    """The registered support for ``module``'s exact (original) class, ``None`` if unknown.

    Raises:
        TypeError: the class is refused (:func:`refuse_neuron`), or it subclasses a registered
            or refused neuron class without an entry of its own.
    """
    cls = original_class(module)
    if cls in _REFUSED_NEURONS:
        raise TypeError(
            f"{_qualname(cls)} is not supported by bso-snn: {_REFUSED_NEURONS[cls]}. Register a "
            f"bso_snn.registry.NeuronSupport for it with bso_snn.register_neuron, or pass "
            f"convert(..., online=False, lam=...) and drive its state yourself."
        )
    if cls in _NEURONS:
        return _NEURONS[cls]
    for parent in cls.__mro__[1:]:
        if parent in _NEURONS or parent in _REFUSED_NEURONS:
            raise TypeError(
                f"{_qualname(cls)} subclasses the neuron {_qualname(parent)} but has no entry in "
                f"the bso-snn neuron registry, so bso-snn cannot tell how to detach or reset its "
                f"state. Register it with bso_snn.register_neuron({cls.__name__}, support) "
                f"(see bso_snn.registry.NeuronSupport), or pass convert(..., online=False)."
            )
    return None


def registered_neuron_support(module: nn.Module) -> NeuronSupport | None:
    """The support registered for ``module``'s exact (original) class, else ``None`` (never raises;
    refused and unregistered classes give ``None``). For walks over a model that only act on the
    neurons bso-snn drives, such as :func:`bso_snn.reset`."""
    return _NEURONS.get(original_class(module))


def registered_layer_types() -> tuple[type, ...]:
    """The layer classes that have a binarising handler, in registration order."""
    return tuple(_LAYERS)


def registered_neuron_types() -> tuple[type, ...]:
    """The neuron classes that have a :class:`NeuronSupport`, in registration order."""
    return tuple(_NEURONS)
