r"""Presynaptic traces: :math:`\hat a[t] = \mu[t] \odot \hat a[t-1] + s[t]`.

OTTT (Xiao et al., 2022) uses a constant :math:`\mu = \lambda` (the LIF leak). NDOT (Jiang et
al., ICML 2024, Eq. 10 and Appendix) takes :math:`\mu` from the presynaptic neuron's dynamics:

.. math:: \hat a[t] = e[t-1] \odot \hat a[t-1] + s[t], \qquad
          e[t] = \frac{u[t] - V_{th} s[t]}{u[t-1] - V_{th} s[t-1]} = \frac{h[t]}{h[t-1]}

with :math:`h[t]` the membrane after firing and reset and :math:`h[0]` the state after a reset
(0 for a LIF at rest). So the trace at step :math:`t` decays by :math:`h[t-1]/h[t-2]`. Our
stabilisation (the paper clamps to :math:`[-\lambda, \lambda]` and decides a zero denominator
by the sign of the numerator): :math:`e = \mathrm{clamp}(h[t-1]/h[t-2], -\lambda, \lambda)`
element-wise, where a zero denominator gives :math:`\mathrm{sign}(h[t-1])\,\lambda` (with
``bso_snn.sign``: :math:`+\lambda` when the numerator is 0 too), and :math:`\lambda` is the
layer's ``bso_lam``. The decay at the first step after a reset is never used (the trace
starts there).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Union

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .sign import sign

Decay = Union[float, torch.Tensor]  # noqa: UP007 (runtime alias, py3.10+)
Membrane = Union[torch.Tensor, float]  # noqa: UP007 (runtime alias, py3.10+)
# A neuron output tensor -> its MembraneHistory. Keyed weakly by tensor identity, so the entry
# lives exactly as long as the tensor, and saving or copying a tensor never carries it along.
HISTORIES: WeakIdKeyDictionary = WeakIdKeyDictionary()
RECORDING_ATTR = "_bso_ndot_recording"  # on a neuron: True once an NDOT layer reads it
PREVIOUS_ATTR = "_bso_ndot_h_prev"  # on a recording neuron: its membrane at the start of its previous step


@dataclasses.dataclass(frozen=True)
class MembraneHistory:
    """What an online neuron attaches to one output tensor for NDOT.

    Attributes:
        h_before: the membrane at the start of each time step of this output, i.e. ``h[t-1]``
            for step ``t`` (a float for a neuron at rest that has no tensor state yet).
        earlier: ``h[t0-2]`` for the first step ``t0`` of this output, or ``None`` when unknown
            (first step after a reset, or the neuron is not recording yet).
        source: weak reference to the neuron, so a layer can switch its recording on.
    """

    h_before: tuple[Membrane, ...]
    earlier: Membrane | None
    source: weakref.ref

    def start_recording(self) -> None:
        """Make the neuron remember ``h[t-2]`` from now on (only NDOT needs that memory)."""
        neuron = self.source()
        if neuron is not None and not getattr(neuron, RECORDING_ATTR, False):
            setattr(neuron, RECORDING_ATTR, True)
            setattr(neuron, PREVIOUS_ATTR, self.h_before[-1])


def find_membrane_history(x: torch.Tensor) -> MembraneHistory | None:
    """The membrane history of the neuron that produced ``x``, if ``x`` is that neuron's output
    or a reshaping view of it (Flatten, reshape; not a slice or a transpose); else ``None``."""
    history = HISTORIES.get(x)
    if history is not None:
        return history
    base = x._base
    if base is not None and _is_reshape_of(x, base):
        return HISTORIES.get(base)
    return None


def _is_reshape_of(x: torch.Tensor, base: torch.Tensor) -> bool:
    """True if ``x`` has the elements of ``base`` in the same order (a view by reshape/flatten,
    not a slice, transpose or permutation)."""
    return (
        x.numel() == base.numel()
        and x.storage_offset() == base.storage_offset()
        and x.is_contiguous()
        and base.is_contiguous()
    )


def accumulate_trace(previous: torch.Tensor | None, x_seq: torch.Tensor, decay: Decay) -> torch.Tensor:
    """Traces for every step of ``x_seq`` (``[T, N, *]``), continuing from ``previous``.

    ``decay`` is a float, or a tensor ``[T, N, *]`` (one decay per step and element).
    ``previous=None`` means the sequence starts here (``a_hat[-1] = 0``).
    """
    if previous is not None and previous.shape != x_seq.shape[1:]:
        raise RuntimeError(
            f"the stored trace has shape {tuple(previous.shape)} but this step's input is "
            f"{tuple(x_seq.shape[1:])}; call bso_snn.reset(model) before each new sequence/batch"
        )
    out = torch.empty_like(x_seq)
    acc = previous
    for t in range(x_seq.shape[0]):
        mu = decay if not isinstance(decay, torch.Tensor) else decay[t]
        acc = x_seq[t] if acc is None else mu * acc + x_seq[t]
        out[t] = acc
    return out


def trace_decay(layer: nn.Module, x: torch.Tensor, x_seq: torch.Tensor) -> Decay:
    """The decay ``mu`` the layer's trace uses for input ``x`` (viewed as ``x_seq``)."""
    if layer.bso_trace_mode == "ottt":
        if layer.bso_lam is None:
            raise RuntimeError(
                f"{type(layer).__name__} has no trace decay: pass lam=... to bso_snn.convert "
                f"or set layer.bso_lam"
            )
        return layer.bso_lam
    if layer.bso_trace_mode == "ndot":
        return ndot_decay(layer, x, x_seq)
    raise ValueError(f"{type(layer).__name__}.bso_trace_mode={layer.bso_trace_mode!r}; use 'ottt' or 'ndot'")


def ndot_ratio(h_prev: torch.Tensor, h_prev2: torch.Tensor | float, lam: float) -> torch.Tensor:
    """``clamp(h_prev / h_prev2, -lam, lam)``, with ``sign(h_prev) * lam`` where ``h_prev2 == 0``."""
    h_prev2 = torch.as_tensor(h_prev2, dtype=h_prev.dtype, device=h_prev.device)
    ratio = torch.where(h_prev2 == 0, sign(h_prev) * math.inf, h_prev / h_prev2)
    return ratio.clamp(-lam, lam)


def ndot_decay(layer: nn.Module, x: torch.Tensor, x_seq: torch.Tensor) -> torch.Tensor:
    """NDOT decays ``[T, N, *]`` for ``x_seq`` from the membrane history its neuron attached to ``x``."""
    history = find_membrane_history(x)
    name = type(layer).__name__
    if history is None:
        raise RuntimeError(
            f"{name} ({layer.extra_repr()}) uses trace='ndot', but its input is not the output of an "
            f"online neuron (or a reshaping view of it, such as Flatten): something sits in between, "
            f"e.g. MaxPool, Dropout, a residual add, or it is the network input. NDOT needs the "
            f"presynaptic neuron's membrane. Use OTTT for this layer (layer.bso_trace_mode = 'ottt', "
            f"or convert(..., trace='ottt')), or keep it float with convert(..., filter_fn=...)."
        )
    if layer.bso_lam is None:
        raise RuntimeError(f"{name} has no lam for the NDOT clamp: pass lam=... to bso_snn.convert")
    steps = x_seq.shape[0]
    decay = torch.empty_like(x_seq)
    for t in range(steps):
        if t == 0 and layer.bso_trace is None:
            decay[0] = 0.0  # never used: the trace starts at this step
            continue
        h_prev2 = history.h_before[t - 1] if t > 0 else history.earlier
        if h_prev2 is None:
            raise RuntimeError(
                f"{name} holds a trace but its presynaptic neuron has no membrane history for it: the "
                f"neuron was reset without the layer, or the layer switched to NDOT mid-sequence. "
                f"Reset both with bso_snn.reset(model) before each new sequence"
            )
        h_prev = torch.as_tensor(history.h_before[t], dtype=x_seq.dtype, device=x_seq.device)
        ratio = ndot_ratio(h_prev, h_prev2, layer.bso_lam)
        decay[t] = ratio.reshape(x_seq.shape[1:]) if ratio.dim() else ratio
    history.start_recording()
    return decay
