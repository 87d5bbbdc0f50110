"""``bso_snn.convert``: one call that turns an SNN into a binary-weight, online-trainable one."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import torch
from torch import nn

from . import registry
from .layers import is_binary_layer

FilterFn = Callable[[nn.Module, str], bool]

# Root package of a module's class -> the adapter that registers that library's classes.
_ADAPTERS = {
    "spikingjelly": "bso_snn.adapters.spikingjelly",
    "snntorch": "bso_snn.adapters.snntorch",
}
_TRACE_MODES = ("ottt", "ndot")


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did.

    Attributes:
        converted: qualified names of the layers now holding ±1 weights.
        skipped: qualified name -> reason, for weight layers left in float.
        online_neurons: qualified names of neurons put in online mode.
        lam: the trace decay given to the converted layers.
        trace: ``'ottt'`` or ``'ndot'``.
    """

    converted: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    online_neurons: list[str] = dataclasses.field(default_factory=list)
    lam: float | None = None
    trace: str = "ottt"

    def __str__(self) -> str:
        lines = [f"bso-snn conversion (trace={self.trace}, lam={self.lam})"]
        lines += [f"  binary   {name}" for name in self.converted]
        lines += [f"  float    {name}  ({why})" for name, why in self.skipped.items()]
        lines += [f"  online   {name}" for name in self.online_neurons]
        return "\n".join(lines)


def load_adapters(model: nn.Module) -> None:
    """Import the adapter of every neuron library whose modules appear in ``model``."""
    roots = {type(m).__module__.split(".")[0] for m in model.modules()}
    for root in sorted(roots & _ADAPTERS.keys()):
        importlib.import_module(_ADAPTERS[root])


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Weight layers (registered or already converted) in definition order, shared ones once."""
    found = []
    for name, module in model.named_modules():  # named_modules yields a shared module once
        if is_binary_layer(module) or registry.layer_handler(module) is not None:
            found.append((name, module))
    return found


def _neurons(model: nn.Module) -> list[tuple[str, nn.Module, registry.NeuronSupport]]:
    found = []
    for name, module in model.named_modules():
        support = registry.neuron_support(module)
        if support is not None:
            found.append((name, module, support))
    return found


def _infer_lam(neurons: list[tuple[str, nn.Module, registry.NeuronSupport]]) -> float:
    decays = {name: support.decay(module) for name, module, support in neurons}
    known = {d for d in decays.values() if d is not None}
    if not neurons or not known:
        raise ValueError(
            "lam=None but the trace decay cannot be inferred: the model has no neuron whose "
            "leak bso-snn knows. Pass lam explicitly, e.g. convert(model, lam=0.5) for a LIF "
            "neuron with tau=2 (lam = 1 - 1/tau), lam=1.0 for IF neurons."
        )
    if len(known) > 1:
        detail = ", ".join(f"{n}: {d}" for n, d in decays.items())
        raise ValueError(
            f"lam=None but the neurons imply different trace decays ({detail}); pass lam "
            f"explicitly, e.g. convert(model, lam={min(known)})"
        )
    unknown = [n for n, d in decays.items() if d is None]
    if unknown:
        raise ValueError(
            f"lam=None but the decay of neurons {unknown} cannot be told (e.g. a learnable "
            f"leak); pass lam explicitly"
        )
    return float(known.pop())


def convert(
    model: nn.Module,
    *,
    lam: float | None = None,
    trace: str = "ottt",
    skip_first_last: bool = True,
    filter_fn: FilterFn | None = None,
    online: bool = True,
) -> ConversionReport:
    """Convert ``model`` in place to binary (±1) weights with online, trace-based gradients.

    Args:
        model: any ``nn.Module`` built from torch, SpikingJelly or snnTorch parts.
        lam: OTTT trace decay; inferred from the neurons (``1 - 1/tau`` for LIF, ``1`` for IF,
            ``beta`` for snnTorch ``Leaky``) when they all agree, else required.
        trace: ``'ottt'`` (constant decay ``lam``) or ``'ndot'`` (decay from the presynaptic
            neuron's dynamics).
        skip_first_last: keep the first and last weight layers (in definition order) in
            float, as in the BSO paper.
        filter_fn: ``filter_fn(module, qualified_name) -> bool``; layers for which it
            returns False stay float.
        online: also put every known neuron in online mode (state detached between steps).

    Returns:
        A :class:`ConversionReport`. Parameter names, ``state_dict`` keys, hooks, device,
        dtype, training mode and ``step_mode`` are kept; converting twice changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module as model, got {type(model).__name__}")
    if trace not in _TRACE_MODES:
        raise ValueError(f"trace={trace!r} is not supported; use one of {_TRACE_MODES}")
    if lam is not None and not (isinstance(lam, (int, float)) and 0.0 <= lam <= 1.0):
        raise ValueError(f"lam={lam!r} must be a number in [0, 1] (the trace decay per time step)")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable as filter_fn(module, name), got {filter_fn!r}")
    load_adapters(model)

    layers = _weight_layers(model)
    neurons = _neurons(model)
    if lam is None:
        lam = _infer_lam(neurons)
    report = ConversionReport(lam=float(lam), trace=trace)
    edge = {0, len(layers) - 1} if skip_first_last else set()
    with torch.no_grad():
        for index, (name, module) in enumerate(layers):
            if is_binary_layer(module):
                report.converted.append(name)
                continue
            if index in edge:
                report.skipped[name] = "first weight layer" if index == 0 else "last weight layer"
                continue
            if filter_fn is not None and not filter_fn(module, name):
                report.skipped[name] = "filter_fn returned False"
                continue
            registry.layer_handler(module)(module)
            module.bso_lam = float(lam)
            module.bso_trace_mode = trace
            report.converted.append(name)
    if online:
        for name, module, support in neurons:
            support.make_online(module)
            report.online_neurons.append(name)
    return report
