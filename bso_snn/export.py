r"""``bso_snn.export_nir``: a converted network as a NIR graph (Neuromorphic Intermediate
Representation, the ``nir`` package), for neuromorphic hardware and other simulators.

The graph is found by running the model once on ``sample`` with forward hooks on its leaf
modules: each call becomes a node, and an edge joins two calls when one's output tensor is the
other's input. Only modules with an entry in the export table become nodes (exact classes, as in
:mod:`bso_snn.registry`); ``bso_snn.adapters`` add SpikingJelly's and snnTorch's. Core entries:

* ``nn.Linear`` -> ``nir.Affine`` (``nir.Linear`` without bias); ``nn.Conv1d`` / ``nn.Conv2d`` ->
  ``nir.Conv1d`` / ``nir.Conv2d``; ``nn.Flatten`` -> ``nir.Flatten``; ``nn.AvgPool2d`` ->
  ``nir.AvgPool2d``; ``nn.Identity`` / ``nn.Dropout`` (eval) are left out (their input is
  passed on); binary weights are written exactly as ±1 (float32), float layers as they are;
* ``bso_snn.neurons.LIF`` with a hard reset to 0 -> ``nir.LIF`` (below).

**Neurons in discrete time.** NIR's LIF is ``tau dv/dt = (v_leak - v) + R I``, spike when
``v > v_threshold``, then ``v = v_reset``; both readers discretise it with forward Euler at
step ``dt``: ``v[t] = v + dt/tau (v_leak - v + R I[t])``. A neuron with leak ``lambda`` per step
(``v[t] = lambda v[t-1] + I[t]``) is therefore written as ``tau = dt / (1 - lambda)``,
``R = 1 / (1 - lambda)`` (so ``dt R / tau = 1``), ``v_leak = v_reset = 0``. ``dt`` (default
``1e-4``) must match the reader's: snnTorch's ``import_from_nir`` assumes ``1e-4``, SpikingJelly's
``import_from_nir(graph, dt=...)`` takes it. Soft (subtractive) resets have no NIR equivalent and
are refused.

Shapes in NIR carry no batch (and no time) dimension: ``sample`` is one step's input ``[N, ...]``
for a single-step model, ``[T, N, ...]`` for a multi-step one (a module with ``step_mode='m'``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._classswap import original_class
from .layers import is_binary_layer
from .online.reset import reset


@dataclasses.dataclass(frozen=True)
class NodeContext:
    """What an export function learns about one call of its module.

    Attributes:
        name: the module's qualified name in the model.
        input_shape / output_shape: per-sample shapes (no batch or time dimension).
        lead: how many leading dimensions (batch, time) the traced tensors had.
        dt: the time step the graph is written for.
    """

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    lead: int
    dt: float


NodeFn = Callable[[nn.Module, NodeContext], Any]
"""Returns the NIR node of one module call, or ``None`` to pass its input on unchanged."""

_EXPORTERS: dict[type, NodeFn] = {}


def register_nir(cls: type, fn: NodeFn) -> None:
    """Register how modules of exact class ``cls`` become a NIR node (``fn(module, context)``)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_nir: cls must be an nn.Module subclass, got {cls!r}")
    if not callable(fn):
        raise TypeError(f"register_nir: fn must be callable as fn(module, context), got {fn!r}")
    _EXPORTERS[cls] = fn


class ExportError(ValueError):
    """The model (or one of its modules) cannot be written as a NIR graph; the message says why."""


def _nir():
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - nir is installed wherever the tests run
        raise ImportError(
            "bso_snn.export_nir needs the nir package: pip install 'bso-snn[nir]' (nir==1.0.8)"
        ) from exc
    return nir


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def _full(shape: tuple[int, ...], value: float) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def leaky_node(shape: tuple[int, ...], leak: float, v_threshold: float, dt: float, who: str):
    """``nir.LIF`` for ``v[t] = leak * v[t-1] + I[t]``, fire above ``v_threshold``, reset to 0
    (see the module docstring); ``leak == 1`` gives ``nir.IF`` with ``R = 1/dt``."""
    nir = _nir()
    if not 0.0 <= leak <= 1.0:
        raise ExportError(f"{who}: leak {leak!r} per step is outside [0, 1]; NIR cannot express it")
    if leak == 1.0:
        return nir.IF(
            r=_full(shape, 1.0 / dt), v_threshold=_full(shape, v_threshold), v_reset=_full(shape, 0.0)
        )
    tau = dt / (1.0 - leak)
    return nir.LIF(
        tau=_full(shape, tau),
        r=_full(shape, 1.0 / (1.0 - leak)),
        v_leak=_full(shape, 0.0),
        v_threshold=_full(shape, v_threshold),
        v_reset=_full(shape, 0.0),
    )


def _linear(layer: nn.Linear, ctx: NodeContext):
    nir = _nir()
    if layer.bias is None:
        return nir.Linear(weight=_array(layer.weight))
    return nir.Affine(weight=_array(layer.weight), bias=_array(layer.bias))


def _conv(layer: nn.Module, ctx: NodeContext):
    nir = _nir()
    who = f"{ctx.name} ({type(layer).__name__})"
    if layer.padding_mode != "zeros":
        raise ExportError(f"{who}: padding_mode={layer.padding_mode!r}; NIR convolutions pad with zeros only")
    padding = layer.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * len(layer.kernel_size)
        else:  # 'same': symmetric only
            totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
            if any(t % 2 for t in totals):
                raise ExportError(f"{who}: padding='same' is asymmetric here; NIR pads symmetrically")
            padding = tuple(t // 2 for t in totals)
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
    one_d = len(layer.kernel_size) == 1
    node = nir.Conv1d if one_d else nir.Conv2d
    spatial = ctx.input_shape[1:]
    return node(
        input_shape=spatial[0] if one_d else tuple(spatial),
        weight=_array(layer.weight),
        stride=layer.stride[0] if one_d else tuple(layer.stride),
        padding=padding[0] if one_d else tuple(padding),
        dilation=layer.dilation[0] if one_d else tuple(layer.dilation),
        groups=layer.groups,
        bias=_array(bias),
    )


def _flatten(layer: nn.Flatten, ctx: NodeContext):
    nir = _nir()
    start, end = layer.start_dim, layer.end_dim
    if 0 <= start < ctx.lead or 0 <= end < ctx.lead:
        raise ExportError(
            f"{ctx.name} (Flatten): start_dim={start}, end_dim={end} flatten the batch/time dimensions, "
            f"which NIR does not have; flatten from dimension {ctx.lead} on"
        )
    start = start - ctx.lead if start >= 0 else start
    end = end - ctx.lead if end >= 0 else end
    return nir.Flatten(input_type={"input": np.array(ctx.input_shape)}, start_dim=start, end_dim=end)


def _pair(value) -> np.ndarray:
    return np.array(value if isinstance(value, (tuple, list)) else (value, value))


def _avgpool(layer: nn.AvgPool2d, ctx: NodeContext):
    nir = _nir()
    if layer.ceil_mode or not layer.count_include_pad or layer.divisor_override is not None:
        raise ExportError(
            f"{ctx.name} (AvgPool2d): ceil_mode, count_include_pad=False and divisor_override have no NIR "
            f"equivalent; use the defaults"
        )
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    return nir.AvgPool2d(
        kernel_size=_pair(layer.kernel_size), stride=_pair(stride), padding=_pair(layer.padding)
    )


def _passthrough(layer: nn.Module, ctx: NodeContext):
    return None


def _bso_lif(node: nn.Module, ctx: NodeContext):
    if node.v_reset != 0.0:
        raise ExportError(
            f"{ctx.name} (LIF): v_reset={node.v_reset!r}; NIR's LIF resets to v_reset and leaks towards "
            f"v_leak, which equals bso_snn.neurons.LIF's dynamics only for a hard reset to 0 "
            f"(v_reset=0.0); a soft reset (v_reset=None) has no NIR equivalent"
        )
    return leaky_node(ctx.output_shape, node.decay, node.v_threshold, ctx.dt, ctx.name)


def _register_core() -> None:
    from .neurons import LIF

    register_nir(nn.Linear, _linear)
    register_nir(nn.Conv1d, _conv)
    register_nir(nn.Conv2d, _conv)
    register_nir(nn.Flatten, _flatten)
    register_nir(nn.AvgPool2d, _avgpool)
    for cls in (nn.Identity, nn.Dropout):
        register_nir(cls, _passthrough)
    register_nir(LIF, _bso_lif)


_register_core()


@dataclasses.dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]  # snnTorch neurons return (spk, mem): the spikes travel on
    return None


def _leaf_calls(model: nn.Module, sample: torch.Tensor) -> tuple[list[_Call], torch.Tensor]:
    """Run ``model(sample)`` once and record every leaf module's call in order."""
    calls: list[_Call] = []
    hooks = []

    def record(name):
        def hook(module, args, output):
            x, out = _first_tensor(args), _first_tensor(output)
            if x is not None and out is not None:
                calls.append(_Call(name, module, x, out))

        return hook

    inside: set[int] = set()  # descendants of exported modules (e.g. a neuron's surrogate function)
    for name, module in model.named_modules():
        if id(module) in inside:
            continue
        exported = original_class(module) in _EXPORTERS
        if exported:
            inside.update(id(m) for m in module.modules() if m is not module)
        if exported or not any(True for _ in module.children()):
            hooks.append(module.register_forward_hook(record(name)))
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        reset(model)
        with torch.no_grad():
            out = _first_tensor(model(sample))
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in training:
            module.training = mode
        reset(model)
    if out is None:
        raise ExportError(f"export_nir: {type(model).__name__} returned no tensor for the sample")
    return calls, out


def _lead(model: nn.Module) -> int:
    return 2 if any(getattr(m, "step_mode", None) == "m" for m in model.modules()) else 1


def export_nir(model: nn.Module, sample: torch.Tensor, *, dt: float = 1e-4):
    """Write ``model`` (usually converted with :func:`bso_snn.convert`) as a ``nir.NIRGraph``.

    Args:
        model: a feed-forward network of modules in the export table (torch, SpikingJelly or
            snnTorch parts; see the module docstring).
        sample: one input the model accepts: ``[N, ...]`` (single-step model) or ``[T, N, ...]``
            (multi-step); only its shape matters. The model is run once on it in eval mode,
            under ``torch.no_grad()``, and reset before and after.
        dt: the simulation time step written into neuron time constants (seconds); use the
            reader's (``1e-4`` for snnTorch's ``import_from_nir``).

    Returns:
        The graph, with nodes ``input``, one per module call (its qualified name with ``.``
        replaced by ``_``) and ``output``; save it with ``nir.write(path, graph)``.

    Raises:
        ExportError: a module has no NIR mapping, a parameter cannot be expressed in NIR, a value
            reaches a module without passing through a known module (a functional op such as
            ``x.flatten(1)`` or a residual ``+`` in ``forward``), or a module is called twice.
    """
    nir = _nir()
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_nir expects an nn.Module as model, got {type(model).__name__}")
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"export_nir: sample must be a tensor the model accepts, got {type(sample).__name__}")
    if not (isinstance(dt, float) and dt > 0):
        raise ValueError(f"export_nir: dt={dt!r} must be a positive float (the time step in seconds)")
    from .convert import load_adapters

    load_adapters(model)  # the adapters register their libraries' export functions
    lead = _lead(model)
    if sample.dim() <= lead:
        raise ExportError(
            f"export_nir: sample {tuple(sample.shape)} has no dimension after the {lead} leading one(s)"
        )
    calls, out = _leaf_calls(model, sample)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(sample.shape[lead:])})}
    edges: list[tuple[str, str]] = []
    producer = {id(sample): "input"}
    seen: set[int] = set()
    for call in calls:
        cls = original_class(call.module)
        fn = _EXPORTERS.get(cls)
        who = f"{call.name or type(model).__name__} ({cls.__name__})"
        if fn is None:
            raise ExportError(
                f"export_nir: no NIR mapping for {who}; NIR readers accept Linear/Affine, Conv1d/Conv2d, "
                f"Flatten, AvgPool2d and IF/LIF/CubaLIF neurons. Register one with "
                f"bso_snn.export.register_nir({cls.__name__}, fn) or export a part of the model"
            )
        if id(call.module) in seen:
            raise ExportError(
                f"export_nir: {who} is called twice in one forward; NIR graphs hold each node once"
            )
        seen.add(id(call.module))
        source = producer.get(id(call.inputs))
        if source is None:
            raise ExportError(
                f"export_nir: the input of {who} is not the output of an exported module nor the sample: the "
                f"model's forward computes it with something else (a functional op such as x.flatten(1), a "
                f"residual '+', a module without a NIR mapping); use modules (nn.Flatten, ...) for a "
                f"feed-forward chain"
            )
        context = NodeContext(
            name=call.name,
            input_shape=tuple(call.inputs.shape[lead:]),
            output_shape=tuple(call.output.shape[lead:]),
            lead=lead,
            dt=dt,
        )
        node = fn(call.module, context)
        if node is None:  # pass-through
            producer[id(call.output)] = source
            continue
        if is_binary_layer(call.module) and not np.isin(node.weight, (-1.0, 1.0)).all():
            raise ExportError(f"export_nir: {who} is converted but its exported weight is not ±1")
        key = call.name.replace(".", "_")
        nodes[key] = node
        edges.append((source, key))
        producer[id(call.output)] = key
    last = producer.get(id(out))
    if last is None or last == "input":
        raise ExportError(
            "export_nir: the model's output is not produced by an exported module (its forward changes "
            "the last module's output, e.g. out.mean(0)); export the part up to the last module"
        )
    nodes["output"] = nir.Output(output_type={"output": np.array(out.shape[lead:])})
    edges.append((last, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges)
