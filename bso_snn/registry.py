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
_ADAPTERS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class _Table:
    """One exact-type table (layers or neurons): entries, refusals, and how to word errors."""

    kind: str  # "layer" / "neuron"
    parent_word: str  # "" / "the neuron ", before the parent's name in errors
    entries: dict[type, object]
    refused: dict[type, str]
    fix: str  # how to register an entry, "{cls}" is replaced by the class name

    def register(self, cls: type, entry: object) -> None:
        _check_module_class(cls)
        self.refused.pop(cls, None)
        self.entries[cls] = entry

    def refuse(self, cls: type, reason: str, caller: str) -> None:
        _check_module_class(cls)
        if not isinstance(reason, str) or not reason:
            raise TypeError(f"{caller}: reason must be a non-empty string saying why, got {reason!r}")
        self.entries.pop(cls, None)
        self.refused[cls] = reason

    def knows(self, module: nn.Module) -> bool:
        """The module's original class or one of its parents is registered or refused."""
        return any(c in self.entries or c in self.refused for c in original_class(module).__mro__)

    def lookup(self, module: nn.Module, refused_fix: str):
        """The entry of ``module``'s exact (original) class; ``None`` if neither it nor a parent
        is known; raises ``TypeError`` if it is refused or an unregistered subclass of a known one."""
        cls = original_class(module)
        if cls in self.refused:
            raise TypeError(f"{_qualname(cls)} {refused_fix.format(reason=self.refused[cls])}")
        if cls in self.entries:
            return self.entries[cls]
        for parent in cls.__mro__[1:]:
            if parent in self.entries or parent in self.refused:
                raise TypeError(
                    f"{_qualname(cls)} subclasses {self.parent_word}{_qualname(parent)} but has no entry "
                    f"in the bso-snn {self.kind} registry, so it is not treated as its parent. "
                    f"{self.fix.format(cls=cls.__name__, parent=parent.__name__)}"
                )
        return None


_LAYER_TABLE = _Table(
    "layer",
    "",
    _LAYERS,
    _REFUSED,
    "Its forward may differ (e.g. weight standardisation): register it with "
    "bso_snn.register_layer({cls}, bso_snn.layers.binarize_layer) if its forward is a plain "
    "{parent}, exclude it with "
    "convert(..., filter_fn=...), or refuse it with bso_snn.refuse_layer.",
)
_NEURON_TABLE = _Table(
    "neuron",
    "the neuron ",
    _NEURONS,
    _REFUSED_NEURONS,
    "bso-snn cannot tell how to detach or reset its state. Register it with "
    "bso_snn.register_neuron({cls}, support) (see bso_snn.registry.NeuronSupport), or pass "
    "convert(..., online=False).",
)


def register_layer(cls: type, handler: LayerHandler) -> None:
    """Register ``handler`` as the way to binarise layers of exact type ``cls``."""
    if not callable(handler):
        raise TypeError(f"register_layer: handler must be callable as handler(module), got {handler!r}")
    _LAYER_TABLE.register(cls, handler)


def register_neuron(cls: type, support: NeuronSupport) -> None:
    """Register how to put neurons of exact type ``cls`` in online mode, reset them, etc."""
    if not isinstance(support, NeuronSupport):
        raise TypeError(
            f"register_neuron: support must be a bso_snn.registry.NeuronSupport, got {type(support).__name__}"
        )
    _NEURON_TABLE.register(cls, support)


def refuse_neuron(cls: type, reason: str) -> None:
    """Declare that neurons of exact type ``cls`` (and its unregistered subclasses) are not
    supported, and why: :func:`neuron_support` then raises, so ``convert`` fails before changing
    anything."""
    _NEURON_TABLE.refuse(cls, reason, "refuse_neuron")


def refuse_layer(cls: type, reason: str) -> None:
    """Declare that layers of exact type ``cls`` must never be converted, and why."""
    _LAYER_TABLE.refuse(cls, reason, "refuse_layer")


def register_adapter(package: str, module: str) -> None:
    """Tell :func:`bso_snn.convert` to import ``module`` (which registers that library's classes)
    whenever a model holds a module whose class comes from the top-level ``package``.

    ``bso_snn.adapters`` declares its own adapters this way; a third-party adapter calls it too.
    """
    for arg, value in (("package", package), ("module", module)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"register_adapter: {arg} must be a non-empty string, got {value!r}")
    if "." in package:
        raise ValueError(
            f"register_adapter: package={package!r} must be a top-level package name such as "
            f"'spikingjelly', without dots"
        )
    _ADAPTERS[package] = module


def adapter_modules(packages: set[str]) -> list[str]:
    """The adapter modules registered for ``packages`` (top-level package names), sorted by package."""
    return [_ADAPTERS[p] for p in sorted(packages & _ADAPTERS.keys())]


def _check_module_class(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"registry keys must be nn.Module subclasses, got {cls!r}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_weight_layer(module: nn.Module) -> bool:
    """True when ``module`` is a weight layer as far as conversion is concerned: its exact
    (original) class, or one of its parents, is registered or refused. Never raises;
    :func:`layer_handler` says whether it can actually be converted."""
    return _LAYER_TABLE.knows(module)


def unhandled_weights(module: nn.Module) -> list[str]:
    """Names of ``module``'s own parameters that look like weights (two or more dimensions) when
    ``module`` is not a weight layer bso-snn knows (e.g. ``nn.ConvTranspose2d``,
    ``nn.Embedding``): such a layer stays float, and :func:`bso_snn.convert` reports why."""
    if is_weight_layer(module):
        return []
    return [name for name, p in module.named_parameters(recurse=False) if p.dim() >= 2]


def layer_handler(module: nn.Module) -> LayerHandler | None:
    """The handler for ``module``'s exact class, ``None`` if it is not a weight layer we know.

    Raises:
        TypeError: the class is refused, or it subclasses a registered or refused layer
            class without an entry of its own.
    """
    return _LAYER_TABLE.lookup(
        module,
        "cannot be converted: {reason}. Keep it in float with convert(..., filter_fn=...) returning "
        "False for it.",
    )


def neuron_support(module: nn.Module) -> NeuronSupport | None:
    """The registered support for ``module``'s exact (original) class, ``None`` if unknown.

    Raises:
        TypeError: the class is refused (:func:`refuse_neuron`), or it subclasses a registered
            or refused neuron class without an entry of its own.
    """
    return _NEURON_TABLE.lookup(
        module,
        "is not supported by bso-snn: {reason}. Register a bso_snn.registry.NeuronSupport for it "
        "with bso_snn.register_neuron, or pass convert(..., online=False, lam=...) and drive its "
        "state yourself.",
    )


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
