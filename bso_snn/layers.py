r"""Sign-weight layers whose weight gradient comes from the trace of their own input.

A converted ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` keeps its class (it becomes a
generated subclass), its parameter names and its ``state_dict`` keys; its ``weight`` holds
exactly :math:`\pm 1`. While tracing (training mode, autograd enabled, ``bso_tracing``
True) it keeps the presynaptic trace of its input

.. math:: \hat a[t] = \lambda\,\hat a[t-1] + x[t]

and runs **one** forward on the spikes ``x[t]`` with a custom backward:

.. math:: \frac{\partial L}{\partial x[t]} = W^\top g[t], \qquad
          \frac{\partial L}{\partial W} \mathrel{+}= g[t]\,\hat a[t]^\top

(for a convolution, the same with ``conv_transpose`` / the weight-gradient convolution
of the trace). This is the OTTT gradient (Xiao et al., 2022). With tracing off it is an
ordinary layer. The trace is not a parameter or buffer, so it never enters ``state_dict``.

Input layouts: single-step ``[N, *]``; multi-step ``[T, N, *]`` when the layer's
``step_mode`` (SpikingJelly) or ``bso_step_mode`` is ``'m'``; flattened ``[T*N, *]`` when an
adapter sets ``bso_flat_steps = T`` (e.g. inside SpikingJelly's ``SeqToANNContainer``).
Decided per call: a multi-step layer given an input without a time dimension (a Linear on
``[N, F]``, a 2-d convolution on ``[N, C, H, W]``, as attention modules do) runs as a plain
layer for that call (exact weight gradient of the call, no trace).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from . import traces
from ._classswap import swap_class
from .sign import is_binary_tensor, sign


class _TracedLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` whose weight gradient is ``g^T trace``."""

    @staticmethod
    def forward(ctx, x, trace, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(trace, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        trace, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g2 = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
        if ctx.needs_input_grad[2]:
            grad_w = g2.t() @ trace.reshape(-1, trace.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = g2.sum(0)
        return grad_x, None, grad_w, grad_b


class _TracedConv(torch.autograd.Function):
    """A zero-padded N-d convolution whose weight gradient is computed from ``trace``."""

    @staticmethod
    def forward(ctx, x, trace, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(trace, weight)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        zeros = [0] * len(stride)
        return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, zeros, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        trace, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        need = ctx.needs_input_grad
        mask = [need[0], need[2], has_bias and need[3]]
        if not any(mask):
            return (None,) * 8
        # The input gradient depends only on the weight and the input's shape, so passing the
        # trace (same shape as x) as "input" yields dL/dx from W and dL/dW from the trace.
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad.contiguous(),
            trace,
            weight,
            [weight.shape[0]] if has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0] * len(stride),
            groups,
            mask,
        )
        return grad_x, None, grad_w, grad_b if has_bias else None, None, None, None, None


def _conv_padding(layer: _ConvNd) -> tuple[tuple[int, ...] | None, list[int]]:
    """``(explicit pre-pad for F.pad or None, symmetric zero padding for the convolution)``."""
    nd = len(layer.kernel_size)
    if layer.padding_mode != "zeros":
        return layer._reversed_padding_repeated_twice, [0] * nd
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return None, [0] * nd
        pads = []
        for d, k in zip(layer.dilation, layer.kernel_size, strict=True):  # 'same'
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        if all(lo == hi for lo, hi in pads):
            return None, [lo for lo, _ in pads]
        pre = tuple(p for lo, hi in reversed(pads) for p in (lo, hi))
        return pre, [0] * nd
    return None, list(layer.padding)


def traced_op(layer: nn.Module, x: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """Apply ``layer``'s linear map to ``x`` with the weight gradient taken from ``trace``.

    Under ``torch.autocast`` it computes in the autocast dtype, as a plain layer would (padding
    first, in the input's dtype); autograd casts each gradient back to its tensor's own dtype.
    """
    padding = None
    if not isinstance(layer, nn.Linear):
        if x.dim() == len(layer.kernel_size) + 1:  # unbatched [C, *spatial], as torch's conv allows
            return traced_op(layer, x.unsqueeze(0), trace.unsqueeze(0)).squeeze(0)
        pre_pad, padding = _conv_padding(layer)
        if pre_pad is not None:
            mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
            x, trace = F.pad(x, pre_pad, mode=mode), F.pad(trace, pre_pad, mode=mode)
    tensors = (x, trace, layer.weight, layer.bias)
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return _apply(layer, *tensors, padding)
    dtype = torch.get_autocast_dtype(device_type)
    cast = [t.to(dtype) if t is not None and t.dtype in _AUTOCAST_ELIGIBLE else t for t in tensors]
    with torch.autocast(device_type, enabled=False):
        return _apply(layer, *cast, padding)


_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _apply(layer, x, trace, weight, bias, padding) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return _TracedLinear.apply(x, trace, weight, bias)
    stride, dilation = list(layer.stride), list(layer.dilation)
    return _TracedConv.apply(x, trace, weight, bias, stride, padding, dilation, layer.groups)


class BinaryLayerMixin:
    """Mixed into a converted Linear/Conv layer (see the module docstring).

    Instance attributes set by :func:`binarize_layer`:
        bso_lam: OTTT trace decay (``None`` until set by ``convert``).
        bso_trace_mode: ``'ottt'`` (constant decay) or ``'ndot'`` (decay from the
            presynaptic neuron's dynamics).
        bso_tracing: record the trace and use it for the weight gradient in training.
        bso_step_mode: ``'s'`` or ``'m'`` for layers without SpikingJelly's ``step_mode``.
        bso_flat_steps: ``T`` when the input arrives flattened as ``[T*N, *]``.
        bso_trace: the trace after the last step (``None`` after a reset).
    """

    bso_binary_parameters = ("weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.bso_tracing and self.training and torch.is_grad_enabled()) or self._bso_time_free(x):
            return super().forward(x)
        x_seq, layout = self._bso_as_sequence(x)
        neuron = traces.presynaptic_neuron(self, x)
        self._bso_check_steps(x, x_seq.shape[0], neuron)
        self._bso_check_trace(x_seq)
        trace_seq = self._bso_traces(x_seq.detach(), neuron)
        out = traced_op(self, x_seq.flatten(0, 1), trace_seq.flatten(0, 1))
        self.bso_trace = trace_seq[-1]  # only once the step succeeded: a failed call changes nothing
        if layout == "m":
            return out.reshape(x_seq.shape[0], x_seq.shape[1], *out.shape[1:])
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Refuse a weight that is not ±1 (e.g. a float checkpoint loaded after conversion)."""
        _check_binary_entries(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_trace(self) -> None:
        """Forget the trace (start of a new sequence)."""
        self.bso_trace = None

    def _bso_check_trace(self, x_seq: torch.Tensor) -> None:
        """The stored trace must continue this input: same per-step shape, dtype and device."""
        old = self.bso_trace
        if old is None:
            return
        if old.shape != x_seq.shape[1:] or old.dtype != x_seq.dtype or old.device != x_seq.device:
            raise RuntimeError(
                f"{type(self).__name__}: the stored trace is {tuple(old.shape)} {old.dtype} on "
                f"{old.device} but this step's input is {tuple(x_seq.shape[1:])} {x_seq.dtype} on "
                f"{x_seq.device}; call bso_snn.reset(model) before each new sequence or batch "
                f"(and after moving the model)"
            )

    def _bso_check_steps(self, x: torch.Tensor, steps: int, neuron: nn.Module | None) -> None:
        """An input that comes straight from an online neuron must hold as many time steps as
        the neuron just ran; otherwise (e.g. a single-step layer fed a multi-step neuron's
        ``[T, N, *]`` output, traced as one step of batch ``T``) the trace would be silently wrong."""
        ran = None if neuron is None else getattr(neuron, "bso_steps_run", None)
        if ran is None or ran == steps:
            return
        mode = "flat" if self.bso_flat_steps is not None else self._bso_step_mode()
        raise RuntimeError(
            f"{type(self).__name__} is in step_mode={mode!r} but its input {tuple(x.shape)} comes from "
            f"a neuron that just ran {ran} time step(s), while the layer reads "
            f"{steps}, so its trace would be wrong. Give the layer the neuron's step mode: "
            f"bso_snn.online.set_step_mode(model, 'm') (SpikingJelly: functional.set_step_mode) after "
            f"bso_snn.convert, or set layer.bso_step_mode."
        )

    def _bso_traces(self, x_seq: torch.Tensor, neuron: nn.Module | None) -> torch.Tensor:
        """The trace of every step of ``x_seq`` (``[T, N, *]``), OTTT or NDOT."""
        name = type(self).__name__
        if self.bso_lam is None:
            raise RuntimeError(
                f"{name} has no trace decay: pass lam=... to bso_snn.convert or set layer.bso_lam"
            )
        if self.bso_trace_mode == "ottt":
            return traces.accumulate_trace(self.bso_trace, x_seq, self.bso_lam)
        if self.bso_trace_mode != "ndot":
            raise ValueError(f"{name}.bso_trace_mode={self.bso_trace_mode!r}; use 'ottt' or 'ndot'")
        p_seq = self._bso_presynaptic_p(x_seq, neuron)
        previous = getattr(self, traces.PREVIOUS_P_ATTR, None)
        if self.bso_trace is not None and (previous is None or previous.shape != x_seq.shape[1:]):
            raise RuntimeError(
                f"{name} holds a trace but no p[t-1] of its presynaptic neuron for it (the layer "
                f"switched to NDOT mid-sequence, or its state was set by hand). Reset with "
                f"bso_snn.reset(model) before each new sequence"
            )
        trace_seq, last_p = traces.ndot_traces(self.bso_trace, previous, x_seq, p_seq, self.bso_lam)
        setattr(self, traces.PREVIOUS_P_ATTR, last_p)
        return trace_seq

    def _bso_presynaptic_p(self, x_seq: torch.Tensor, neuron: nn.Module | None) -> torch.Tensor:
        """``p[t]`` of the presynaptic neuron for every step of ``x_seq``, shaped like it."""
        name = f"{type(self).__name__} ({self.extra_repr()})"
        if neuron is None:
            raise RuntimeError(
                f"{name} uses trace='ndot', but its input is not the output of an online neuron "
                f"that publishes its membrane (or a reshaping view of it, such as Flatten): something "
                f"sits in between, e.g. MaxPool, Dropout, a residual add, or it is the network input; "
                f"or the neuron is one whose membrane bso-snn cannot read (snnTorch's). NDOT needs the "
                f"presynaptic neuron's membrane. Use OTTT for this layer (layer.bso_trace_mode = "
                f"'ottt', or convert(..., trace='ottt')), or keep it float with convert(..., filter_fn=...)."
            )
        p_seq = getattr(neuron, traces.NDOT_P_ATTR, None)
        if not traces.records_ndot(neuron) or p_seq is None:
            traces.link_presynaptic(self, neuron)  # records from its next call on
            raise RuntimeError(
                f"{name} uses trace='ndot' but its presynaptic neuron {type(neuron).__name__} did not "
                f"record its membrane in this step (it now does). Convert with "
                f"bso_snn.convert(model, trace='ndot') so that neurons record from the start, then "
                f"call bso_snn.reset(model) and run the sequence again"
            )
        return p_seq.reshape(x_seq.shape).to(x_seq.dtype)

    def _bso_step_mode(self) -> str:
        mode = getattr(self, "step_mode", None)
        if mode in ("s", "m"):
            return mode
        if self.bso_step_mode not in ("s", "m"):
            raise ValueError(
                f"{type(self).__name__}.bso_step_mode={self.bso_step_mode!r}; use 's' for [N, ...] "
                f"input or 'm' for [T, N, ...] input"
            )
        return self.bso_step_mode

    def _bso_time_free(self, x: torch.Tensor) -> bool:
        """A multi-step layer called on an input without a time dimension: a convolution with
        ``d`` spatial dims given ``d + 2`` (or fewer) dims instead of ``[T, N, C, *spatial]``, a
        Linear given ``[N, F]``. Attention modules do this (e.g. SpikingJelly's
        ``TemporalWiseAttention`` runs its MLP on ``[N, T]`` statistics): the call is no time
        step, so it runs as a plain layer, its weight gradient exact for that call and the
        stored trace untouched. An input that comes straight from an online neuron is one time
        step's spikes, though: then the step modes disagree, and that is an error."""
        if self.bso_flat_steps is not None or self._bso_step_mode() != "m":
            return False
        single = 2 if isinstance(self, nn.Linear) else len(self.kernel_size) + 2
        if x.dim() > single:
            return False
        if traces.presynaptic_neuron(self, x) is not None:
            raise ValueError(
                f"{type(self).__name__} is in multi-step mode and expects [T, N, ...] input, but its input "
                f"{tuple(x.shape)} is one time step of an online neuron's spikes. Give the layer the neuron's "
                f"step mode: bso_snn.online.set_step_mode(model, 's') (SpikingJelly: functional.set_step_mode), "
                f"or feed the model [T, N, ...]"
            )
        return True

    def _bso_as_sequence(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """View ``x`` as ``[T, N, *]`` and say which layout it came in."""
        if self.bso_flat_steps is not None:
            steps = self.bso_flat_steps
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise ValueError(
                    f"{type(self).__name__}.bso_flat_steps={steps!r}; it must be the number of "
                    f"time steps T >= 1 folded into the batch dimension, or None"
                )
            if x.shape[0] % steps:
                raise ValueError(
                    f"{type(self).__name__}: input batch dimension {x.shape[0]} is not a multiple "
                    f"of bso_flat_steps={steps}; the input must be [T*N, ...] with T={steps}"
                )
            return x.reshape(steps, x.shape[0] // steps, *x.shape[1:]), "flat"
        if self._bso_step_mode() == "m":  # _bso_time_free has sent inputs without a T dim elsewhere
            return x, "m"
        return x.unsqueeze(0), "s"

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"{base}, binary, lam={self.bso_lam}, trace={self.bso_trace_mode}"


def _check_binary_entries(layer: nn.Module, state_dict, prefix: str) -> None:
    for name in layer.bso_binary_parameters:
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and not is_binary_tensor(value):
            raise RuntimeError(
                f"{prefix + name}: the state_dict holds values other than ±1 for the weight of a "
                f"binary {type(layer).__name__}. Load float checkpoints before bso_snn.convert, or "
                f"pass the weight through bso_snn.sign first; nothing was loaded"
            )


def check_binary_state(module: nn.Module, state_dict, prefix: str, *_) -> None:
    """``load_state_dict`` pre-hook (``convert`` registers it on the model): every binary weight
    in ``state_dict`` must be ±1, checked before any tensor is copied, so a refused load leaves
    the whole model unchanged (the per-layer check alone would fire after earlier layers loaded)."""
    for name, sub in module.named_modules():
        if is_binary_layer(sub):
            _check_binary_entries(sub, state_dict, f"{prefix}{name}." if name else prefix)


def guard_state_dict_loads(model: nn.Module) -> None:
    """Register :func:`check_binary_state` on ``model`` once."""
    hooks = model._load_state_dict_pre_hooks.values()
    if not any(getattr(h, "hook", None) is check_binary_state for h in hooks):
        model.register_load_state_dict_pre_hook(check_binary_state)


def is_binary_layer(module: nn.Module) -> bool:
    """True for a layer converted by :func:`binarize_layer`."""
    return isinstance(module, BinaryLayerMixin)


def binarize_layer(module: nn.Module) -> None:
    """Turn a Linear/Conv layer into its sign-weight version in place.

    The weight becomes ``sign(weight)`` (``+1`` for ``>= 0``) in its own dtype and device;
    the bias stays real. Idempotent.
    """
    if is_binary_layer(module):
        return
    if not isinstance(module, (nn.Linear, _ConvNd)) or getattr(module, "transposed", False):
        raise TypeError(
            f"binarize_layer supports Linear and (non-transposed) Conv layers, got {type(module).__name__}"
        )
    with torch.no_grad():
        module.weight.copy_(sign(module.weight))
    swap_class(module, BinaryLayerMixin)
    module.bso_lam = None
    module.bso_trace_mode = "ottt"
    module.bso_tracing = True
    module.bso_step_mode = "s"
    module.bso_flat_steps = None
    module.bso_trace = None


def binary_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yield every binary (±1) parameter of ``model``'s converted layers, once each."""
    seen: set[int] = set()
    for module in model.modules():
        if is_binary_layer(module):
            for name in module.bso_binary_parameters:
                p = getattr(module, name)
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p
