"""``bso_snn.convert``: one call that turns an SNN into a binary-weight, online-trainable one."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import numbers
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from . import registry, traces
from .layers import guard_state_dict_loads, is_binary_layer

FilterFn = Callable[[nn.Module, str], bool]

_TRACE_MODES = ("ottt", "ndot")


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did.

    Attributes:
        converted: qualified names of the layers now holding ±1 weights (definition order),
            including those that were already binary before this call.
        already_binary: the subset of ``converted`` that was binary before this call (their
            weights are untouched; their ``lam`` and trace mode are set to this call's).
        skipped: qualified name -> reason, for weight layers left in float.
        online_neurons: qualified names of neurons put in online mode.
        lam: the trace decay given to the converted layers.
        trace: ``'ottt'`` or ``'ndot'``.
        model: the converted model (the argument itself unless ``inplace=False``).
    """

    converted: list[str] = dataclasses.field(default_factory=list)
    already_binary: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    online_neurons: list[str] = dataclasses.field(default_factory=list)
    lam: float | None = None
    trace: str = "ottt"
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        lines = [f"bso-snn conversion (trace={self.trace}, lam={self.lam})"]
        lines += [
            f"  binary   {name}" + ("  (already binary)" if name in self.already_binary else "")
            for name in self.converted
        ]
        lines += [f"  float    {name}  ({why})" for name, why in self.skipped.items()]
        lines += [f"  online   {name}" for name in self.online_neurons]
        return "\n".join(lines)


def load_adapters(model: nn.Module) -> list[ModuleType]:
    """Import (and return) the adapter of every library whose modules appear in ``model``, as
    declared with :func:`bso_snn.registry.register_adapter` (``bso_snn.adapters`` declares the
    SpikingJelly and snnTorch ones)."""
    roots = {type(m).__module__.split(".")[0] for m in model.modules()}
    return [importlib.import_module(name) for name in registry.adapter_modules(roots)]


WEIGHT_READERS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
"""Modules that read their child layers' weights directly rather than calling them
(``nn.MultiheadAttention`` passes ``out_proj.weight`` to ``F.multi_head_attention_forward``):
the layers inside them stay float, and the report says why."""


def _weight_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Weight layers (registered, refused, unregistered subclasses of registered ones, or already
    converted) in definition order; a module shared in several places is listed once. Also the
    layers with weights that no handler knows (name -> why they stay float)."""
    readers = [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_READERS)]
    layers, unhandled = [], {}
    for name, module in model.named_modules():
        if not registry.is_weight_layer(module):
            continue
        reader = next(((n, r) for n, r in readers if name.startswith(f"{n}.")), None)
        if reader is None:
            layers.append((name, module))
        else:
            unhandled[name] = (
                f"inside {type(reader[1]).__name__} {reader[0]!r}, which computes with this layer's "
                f"weight directly instead of calling the layer, so a binary layer there would never "
                f"see its input: it stays float"
            )
    for name, module in model.named_modules():
        weights = registry.unhandled_weights(module)
        if weights:
            cls = type(module).__name__
            unhandled[name] = (
                f"no handler for {cls} (weights {', '.join(weights)}): register one with "
                f"bso_snn.register_layer({cls}, handler); bso_snn.layers.binarize_layer serves plain "
                f"Linear and non-transposed Conv layers only"
            )
    if not layers:
        known = ", ".join(c.__name__ for c in registry.registered_layer_types())
        also = f" (it has weight layers without a handler: {', '.join(unhandled)})" if unhandled else ""
        raise ValueError(
            f"convert found no weight layer in {type(model).__name__}{also}: the registered layer "
            f"types are {known}. Register your layer class with bso_snn.register_layer(cls, handler)."
        )
    return layers, unhandled


def _keep(filter_fn: FilterFn, module: nn.Module, name: str) -> bool:
    try:
        keep = filter_fn(module, name)
    except Exception as exc:
        raise RuntimeError(
            f"filter_fn raised {type(exc).__name__} on layer {name!r} ({type(module).__name__}): "
            f"{exc}; nothing was converted"
        ) from exc
    if not isinstance(keep, bool):
        raise TypeError(
            f"filter_fn must return True (convert) or False (keep float), got {keep!r} for layer {name!r}"
        )
    return keep


@dataclasses.dataclass
class _Plan:
    convert: list[tuple[str, nn.Module, registry.LayerHandler]]
    binary: list[nn.Module]  # every layer that is binary once the plan is carried out
    report: ConversionReport


def _plan(model: nn.Module, skip_first_last: bool, filter_fn: FilterFn | None) -> _Plan:
    """Decide every layer's fate without touching the model (errors leave it unchanged)."""
    layers, unhandled = _weight_layers(model)
    plan = _Plan([], [], ConversionReport())
    last = len(layers) - 1
    for index, (name, module) in enumerate(layers):
        if is_binary_layer(module):
            plan.report.converted.append(name)
            plan.report.already_binary.append(name)
            plan.binary.append(module)
        elif skip_first_last and index in (0, last):
            plan.report.skipped[name] = "first weight layer" if index == 0 else "last weight layer"
        elif filter_fn is not None and not _keep(filter_fn, module, name):
            plan.report.skipped[name] = "filter_fn returned False"
        else:
            plan.convert.append((name, module, registry.layer_handler(module)))
            plan.binary.append(module)
            plan.report.converted.append(name)
    if unhandled:  # report every float layer, in definition order
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        skipped = {**plan.report.skipped, **unhandled}
        plan.report.skipped = dict(sorted(skipped.items(), key=lambda item: order[item[0]]))
    if not plan.report.converted:
        reasons = "; ".join(f"{n}: {why}" for n, why in plan.report.skipped.items())
        raise ValueError(
            f"convert would leave every weight layer in float ({reasons}). Pass "
            f"skip_first_last=False to convert the first/last layers, or change filter_fn."
        )
    _check_no_tied_float_weight(model, plan.convert)
    return plan


def _check_no_tied_float_weight(model: nn.Module, to_convert: list) -> None:
    """A weight tied to a parameter that stays float would silently become ±1 there too."""
    targets = {id(m): name for name, m, _ in to_convert}
    tied = {id(m.weight): name for name, m, _ in to_convert}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in targets:
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in tied and not is_binary_layer(module):
                where = f"{name}.{pname}" if name else pname
                raise ValueError(
                    f"the weight of {tied[id(p)]!r} is shared with {where!r}, which stays float; "
                    f"converting it would make {where!r} ±1 too. Keep both float (filter_fn) or untie them."
                )


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
    inplace: bool = True,
) -> ConversionReport:
    """Convert ``model`` to binary (±1) weights with online, trace-based gradients.

    Args:
        model: any ``nn.Module`` built from torch, SpikingJelly or snnTorch parts.
        lam: OTTT trace decay in ``[0, 1]``; inferred from the neurons (``1 - 1/tau`` for LIF,
            ``1`` for IF, ``beta`` for snnTorch ``Leaky``) when they all agree, else required.
            Layers that are already binary get this ``lam`` too.
        trace: ``'ottt'`` (constant decay ``lam``) or ``'ndot'`` (decay from the presynaptic
            neuron's dynamics).
        skip_first_last: keep the first and last weight layers (in definition order, i.e. the
            order of ``model.named_modules()``) in float, as in the BSO paper.
        filter_fn: ``filter_fn(module, qualified_name) -> bool``, asked for every weight layer
            that ``skip_first_last`` did not already keep float; ``False`` keeps it float.
        online: also put every known neuron in online mode (state detached between steps).
        inplace: convert ``model`` itself (default) or a ``copy.deepcopy`` of it
            (``report.model``).

    Returns:
        A :class:`ConversionReport`; ``report.model`` is the converted model. Parameter names,
        ``state_dict`` keys, hooks, device, dtype, ``requires_grad``, training mode and
        ``step_mode`` are kept; converting twice with the same arguments changes nothing.
        Everything is checked before anything is changed: on an error the model is untouched.
    """
    _check_arguments(model, lam, trace, skip_first_last, filter_fn, online, inplace)
    if not inplace:
        model = copy.deepcopy(model)
    adapters = load_adapters(model)
    plan = _plan(model, skip_first_last, filter_fn)
    neurons = _neurons(model) if online or lam is None else []
    lam = float(lam) if lam is not None else _infer_lam(neurons)
    report = plan.report
    report.lam, report.trace, report.model = lam, trace, model
    snapshot = _Snapshot(model, [module for _, module, _ in plan.convert])
    try:
        for _, module, handler in plan.convert:
            handler(module)
        for module in plan.binary:
            module.bso_lam = lam
            module.bso_trace_mode = trace
        if online:
            for name, module, support in neurons:
                support.make_online(module)
                report.online_neurons.append(name)
        guard_state_dict_loads(model)  # a refused load_state_dict changes nothing
        for adapter in adapters:  # library-specific finishing touches (e.g. SpikingJelly's reset_net)
            finish = getattr(adapter, "after_convert", None)
            if finish is not None:
                finish(model)
        traces.set_recording(model, trace == "ndot")  # neurons compute p[t] only for NDOT
        if trace == "ndot":
            traces.link_sequential(model)
    except BaseException:
        snapshot.restore()
        raise
    return report


class _Snapshot:
    """Enough of a model's state to undo a failed conversion: every module's class and attribute
    dictionary (with its parameter, buffer and child tables copied), and the values of the
    parameters and buffers of the layers about to be converted (handlers write them in place)."""

    _TABLES = ("_parameters", "_buffers", "_modules")

    def __init__(self, model: nn.Module, layers: list[nn.Module]) -> None:
        self.modules = [(m, type(m), self._copy_dict(m.__dict__)) for m in model.modules()]
        self.values = [
            (t, t.detach().clone())
            for layer in layers
            for t in (*layer.parameters(recurse=False), *layer.buffers(recurse=False))
        ]

    @classmethod
    def _copy_dict(cls, attributes: dict) -> dict:
        copied = dict(attributes)
        for table in cls._TABLES:
            if table in copied:
                copied[table] = dict(copied[table])
        return copied

    def restore(self) -> None:
        for module, cls, attributes in self.modules:
            module.__class__ = cls
            module.__dict__.clear()
            module.__dict__.update(self._copy_dict(attributes))
        with torch.no_grad():
            for tensor, value in self.values:
                tensor.copy_(value)


def _check_arguments(model, lam, trace, skip_first_last, filter_fn, online, inplace) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module as model, got {type(model).__name__}")
    if trace not in _TRACE_MODES:
        raise ValueError(f"trace={trace!r} is not supported; use one of {_TRACE_MODES}")
    if lam is not None and not (
        isinstance(lam, numbers.Real) and not isinstance(lam, bool) and 0.0 <= lam <= 1.0
    ):
        raise ValueError(f"lam={lam!r} must be a number in [0, 1] (the trace decay per time step)")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable as filter_fn(module, name), got {filter_fn!r}")
    for arg, value in (("skip_first_last", skip_first_last), ("online", online), ("inplace", inplace)):
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be True or False, got {value!r}")
