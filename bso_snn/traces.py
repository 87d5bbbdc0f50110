r"""Presynaptic traces: :math:`\hat a[t] = \mu[t] \odot \hat a[t-1] + s[t]`, :math:`\hat a[0] = s[0]`.

OTTT (Xiao et al., 2022) uses a constant :math:`\mu = \lambda` (the LIF leak). NDOT (Jiang et
al., ICML 2024) takes :math:`\mu` from the presynaptic neuron, exactly as the authors' code
(repository HaiyanJiang/SNN-DNOT, ``modules/neuron.py``, ``OnlineLIFNode.forward``):

.. math::
    p[t] &= h[t] - V_{th}\, s[t] \\
    P[t] &= \mathrm{clamp}\big(\mathrm{safe\_divide}(p[t], p[t-1], \lambda), -\lambda, \lambda\big) \\
    \hat a[t] &= P[t] \odot \hat a[t-1] + s[t], \qquad \hat a[0] = s[0]

with :math:`h[t]` the neuron's membrane at the end of step :math:`t` (after firing and the soft
reset, the authors' ``v_new``), :math:`s[t]` its spike at step :math:`t`, and
``safe_divide`` giving :math:`\lambda` where an operand is NaN or inf, the quotient is NaN or
inf, or the denominator is 0. So the trace at step :math:`t` decays by the ratio of step
:math:`t` to step :math:`t-1`; :math:`P[0]` is never used. :math:`\lambda` is the layer's
``bso_lam``.

**How a layer reads its presynaptic neuron.** An online neuron that records for NDOT keeps, on
itself, :math:`p` for every step of its last call (``[T_call, *]``) and a detached alias of its
last output. A converted layer holds a link to its presynaptic neuron module
(:func:`link_presynaptic`): ``convert(..., trace='ndot')`` sets it for every layer fed straight
by a neuron inside ``nn.Sequential``-like containers; otherwise the layer finds it on its first
eager training call, by matching its input's memory with the neuron's last output (the same
elements in the same order: the output itself or a reshaping view such as ``Flatten``). In eager
mode every call checks that the input still is that output. The link is a plain attribute, so it
follows ``copy.deepcopy`` (to the copied neuron), pickling, DDP and ``torch.compile``; no table
keyed by tensors is involved.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

Decay = float | torch.Tensor

NDOT_RECORD_ATTR = "bso_ndot_record"
"""On an online neuron: True when it records ``p[t]`` for NDOT layers."""
NDOT_P_ATTR = "_bso_ndot_p"
"""On a recording neuron: ``p`` for every step of its last call, ``[T_call, *]`` (or ``None``)."""
LAST_OUTPUT_ATTR = "_bso_last_output"
"""On an online neuron: a detached alias of its last output (how a layer recognises it)."""
LINK_ATTR = "bso_presynaptic"
"""On a converted layer: ``(neuron,)`` once its presynaptic neuron is known, ``()`` when its
input is known not to come straight from one, absent while unknown."""
PREVIOUS_P_ATTR = "bso_ndot_p_prev"
"""On an NDOT layer: ``p[t-1]`` of its presynaptic neuron, for the next step's ratio."""

_ONLINE_NEURONS: weakref.WeakSet = weakref.WeakSet()  # candidates for a layer's first lookup
ORDERED_CONTAINERS: set[type] = {nn.Sequential}
"""Containers that call their children in order, each on the previous one's output (exact
types; adapters add their own, e.g. SpikingJelly's ``SeqToANNContainer``)."""
SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity)
"""Modules that only reshape: a layer behind one still reads the neuron before it."""


# --------------------------------------------------------------------------- the two traces


def accumulate_trace(previous: torch.Tensor | None, x_seq: torch.Tensor, decay: Decay) -> torch.Tensor:
    """Traces for every step of ``x_seq`` (``[T, N, *]``), continuing from ``previous``.

    ``decay`` is a float, or a tensor ``[T, N, *]`` (one decay per step and element; entry
    ``t`` decays the trace of step ``t-1`` into step ``t``). ``previous=None`` means the
    sequence starts here (``a_hat[0] = s[0]``).
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


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor, default: float) -> torch.Tensor:
    """``numerator / denominator``, with ``default`` where either operand is NaN or inf, where
    the quotient is NaN or inf, and where the denominator is 0 (the authors' ``safe_divide``)."""
    quotient = numerator / denominator
    bad = ~(numerator.isfinite() & denominator.isfinite() & quotient.isfinite()) | (denominator == 0)
    return torch.where(bad, torch.full_like(quotient, default), quotient)


def ndot_factor(p: torch.Tensor, p_prev: torch.Tensor, lam: float) -> torch.Tensor:
    """NDOT's decay ``P[t] = clamp(safe_divide(p[t], p[t-1], lam), -lam, lam)``."""
    return safe_divide(p, p_prev, lam).clamp(-lam, lam)


def ndot_p(h: torch.Tensor, spike: torch.Tensor, v_threshold: float) -> torch.Tensor:
    """``p[t] = h[t] - V_th * s[t]`` (detached): ``h`` the membrane at the end of the step
    (after firing and reset), ``spike`` the step's output."""
    return torch.sub(h.detach(), spike.detach(), alpha=v_threshold)


def ndot_traces(
    previous: torch.Tensor | None,
    p_previous: torch.Tensor | None,
    x_seq: torch.Tensor,
    p_seq: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NDOT traces for every step of ``x_seq`` (``[T, N, *]``) from the neuron's ``p_seq`` (same
    shape), continuing from ``previous`` / ``p_previous`` (``None`` at a sequence start).

    Returns ``(traces [T, N, *], p of the last step)``.
    """
    out = torch.empty_like(x_seq)
    acc, p_prev = previous, p_previous
    for t in range(x_seq.shape[0]):
        if acc is None:
            acc = x_seq[t]
        else:
            acc = ndot_factor(p_seq[t], p_prev, lam) * acc + x_seq[t]
        p_prev = p_seq[t]
        out[t] = acc
    return out, p_prev


# --------------------------------------------------------------------------- neuron side


def publish_step(neuron: nn.Module, out: torch.Tensor, p_steps: list[torch.Tensor] | None) -> torch.Tensor:
    """Record what layers fed by ``neuron`` read, after a call that returned ``out``:
    ``p_steps`` (one ``p[t]`` per step of the call, or ``None`` when not recording) and a
    detached alias of ``out``. Returns ``out``."""
    if not torch.compiler.is_compiling():
        _ONLINE_NEURONS.add(neuron)
    setattr(neuron, LAST_OUTPUT_ATTR, out.detach())
    if p_steps is not None:
        setattr(neuron, NDOT_P_ATTR, torch.stack(p_steps))
    return out


def records_ndot(neuron: nn.Module) -> bool:
    """Whether ``neuron`` computes ``p[t]`` in its steps (switched on for NDOT layers)."""
    return getattr(neuron, NDOT_RECORD_ATTR, False)


def clear_published(neuron: nn.Module) -> None:
    """Forget what ``neuron`` published (part of resetting an online neuron)."""
    setattr(neuron, NDOT_P_ATTR, None)
    setattr(neuron, LAST_OUTPUT_ATTR, None)


# --------------------------------------------------------------------------- links


def link_presynaptic(layer: nn.Module, neuron: nn.Module) -> None:
    """Declare that converted ``layer``'s input is ``neuron``'s output (or a reshaping view of
    it), and make ``neuron`` record ``p[t]`` for NDOT. ``convert(..., trace='ndot')`` does this
    for layers in ``nn.Sequential``-like containers; call it for custom forwards that you want
    to run under ``torch.compile`` from the first step."""
    if not getattr(type(neuron), "bso_publishes_membrane", False):
        raise TypeError(
            f"{type(neuron).__name__} does not publish its membrane for NDOT (only bso-snn's LIF and "
            f"SpikingJelly neurons in online mode do); use trace='ottt' for {type(layer).__name__}"
        )
    setattr(layer, LINK_ATTR, (neuron,))
    setattr(neuron, NDOT_RECORD_ATTR, True)


def set_recording(model: nn.Module, record: bool) -> None:
    """Switch NDOT recording on or off for every online neuron of ``model`` that publishes."""
    for module in model.modules():
        if getattr(type(module), "bso_publishes_membrane", False):
            setattr(module, NDOT_RECORD_ATTR, record)


def link_sequential(model: nn.Module) -> int:
    """Link every converted layer fed straight by an online neuron (only shape-only modules in
    between) inside ordered containers of ``model``; returns the number of links made."""
    from ._classswap import original_class
    from .layers import is_binary_layer

    links = 0

    def walk(container: nn.Module, previous: nn.Module | None) -> nn.Module | None:
        nonlocal links
        for child in container.children():
            if original_class(child) in ORDERED_CONTAINERS:
                previous = walk(child, previous)
            elif getattr(type(child), "bso_publishes_membrane", False):
                previous = child
            elif isinstance(child, SHAPE_ONLY):
                continue
            elif is_binary_layer(child):
                if previous is not None:
                    link_presynaptic(child, previous)
                    links += 1
                previous = None
            else:
                opaque(child)
                previous = None
        return previous

    def opaque(module: nn.Module) -> None:
        for child in module.children():
            if original_class(child) in ORDERED_CONTAINERS:
                walk(child, None)
            else:
                opaque(child)

    if original_class(model) in ORDERED_CONTAINERS:
        walk(model, None)
    else:
        opaque(model)
    return links


def _same_elements(x: torch.Tensor, out: torch.Tensor) -> bool:
    """``x`` holds ``out``'s elements in ``out``'s order: ``out`` itself or a reshaping view."""
    return (
        x.numel() == out.numel()
        and x.is_contiguous()
        and out.is_contiguous()
        and x.storage_offset() == out.storage_offset()
        and x.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
    )


def _fed_by(x: torch.Tensor, neuron: nn.Module) -> bool:
    out = getattr(neuron, LAST_OUTPUT_ATTR, None)
    return out is not None and _same_elements(x, out)


def presynaptic_neuron(layer: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The online neuron whose last output ``x`` is, for converted ``layer``: from the layer's
    link, else (eager mode, first call) found among the live online neurons and linked; ``None``
    when ``x`` does not come straight from one. Eager calls check that a linked neuron's last
    output still is ``x``."""
    link = getattr(layer, LINK_ATTR, None)
    if torch.compiler.is_compiling():
        return link[0] if link else None
    if link:
        return link[0] if _fed_by(x, link[0]) else None
    if link is None:
        found = next((n for n in list(_ONLINE_NEURONS) if _fed_by(x, n)), None)
        setattr(layer, LINK_ATTR, () if found is None else (found,))
        return found
    return None


def forget_link(layer: nn.Module) -> None:
    """Make ``layer`` look its presynaptic neuron up again on its next call."""
    if hasattr(layer, LINK_ATTR):
        delattr(layer, LINK_ATTR)
