r"""snnTorch adapter: online mode, trace decay and per-instance reset for snnTorch neurons.

Imported as ``bso_snn.adapters.snntorch``; :func:`bso_snn.convert` imports it when a model
contains a module from the ``snntorch`` package. Importing it registers:

* ``Leaky``, ``Synaptic``, ``RLeaky``, ``RSynaptic``: full support (online mode in both state
  styles, every reset mechanism, ``lam`` inference, per-instance reset).
* every other snnTorch neuron (``Alpha``, ``Lapicque``, ``SLSTM``, ``StateLeaky``, ``LeakyParallel``,
  ...) and the base classes ``SpikingNeuron`` / ``LIF``: refused with a reason
  (:func:`bso_snn.registry.refuse_neuron`), so :func:`bso_snn.registry.neuron_support` raises a
  ``TypeError`` for them and for any subclass without an entry of its own, before ``convert``
  changes anything.

**Online mode.** A neuron's class is swapped in place to ``(OnlineMixin, cls)``. Before every call
the mixin replaces the neuron's own state buffers (``mem``, ``syn``, ``spk``) and every state tensor
passed explicitly (``lif(x, mem)``, ``rlif(x, spk, mem)``, positional or keyword) by detached
copies. Values are untouched, so outputs equal the original neuron's bit for bit; gradients no
longer reach earlier time steps (the OTTT approximation). snnTorch's class methods
``detach_hidden`` / ``reset_hidden`` act on every instance in the process and are never used.

**Trace decay.** The membrane update is ``mem[t] = beta * mem[t-1] + I[t] - reset``, so the
OTTT trace decay is ``lam = beta`` (clamped to ``[0, 1]`` as snnTorch does). It is inferred
when ``beta`` is fixed (not learnable) and equal for all neurons of the layer. For ``Synaptic``
the membrane integrates a filtered current ``syn[t] = alpha * syn[t-1] + I[t]``; the exact
kernel is a difference of two exponentials, which one trace cannot represent, so ``lam`` is
only inferred when ``alpha == 0`` (then ``Synaptic`` is ``Leaky``); otherwise pass ``lam``.

**Recurrent weights** (``RLeaky``/``RSynaptic`` with ``all_to_all=True``) live in a child
``nn.Linear``/``nn.Conv2d`` called ``recurrent`` whose input at step ``t`` is ``spk[t-1]``.
``convert`` treats it as any other weight layer (binary unless skipped or filtered out). Its
trace is the trace of ``spk[t-1]`` with decay ``beta``, which is exactly the OTTT gradient of the
recurrent weight: unrolling ``mem[t] = sum_k beta^(t-k) (W x[k] + R spk[k-1])`` (reset and
spike-to-state paths detached) gives ``dL[t]/dR = g[t] * sum_k beta^(t-k) spk[k-1]``.
:func:`keep_recurrent_float` builds a ``filter_fn`` that keeps them float instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import snntorch
import torch
from snntorch import Leaky, RLeaky, RSynaptic, Synaptic
from torch import nn

from bso_snn._classswap import original_class
from bso_snn.online.state import OnlineNeuron, detach_state, is_online
from bso_snn.online.state import make_online as _make_online
from bso_snn.registry import NeuronSupport, refuse_neuron, register_neuron

__all__ = ["OnlineMixin", "STATE_BUFFERS", "keep_recurrent_float", "recurrent_layers"]

STATE_BUFFERS: dict[type, tuple[str, ...]] = {
    Leaky: ("mem",),
    Synaptic: ("syn", "mem"),
    RLeaky: ("spk", "mem"),
    RSynaptic: ("spk", "syn", "mem"),
}
"""The state buffers of each supported neuron class (non-persistent buffers in snnTorch)."""


def _cut(value):
    """``value`` detached from the graph if it is a tensor that carries one, else unchanged
    (the rule of :func:`bso_snn.online.state.detach_state`, for arguments)."""
    return value.detach() if isinstance(value, torch.Tensor) and value.grad_fn is not None else value


class OnlineMixin(OnlineNeuron):
    """Mixed into a supported snnTorch neuron by :func:`make_online`.

    Detaches the neuron's state buffers and the explicitly passed state arguments (everything
    after ``input_``) before calling the original ``forward``. It publishes no NDOT membrane
    (``bso_publishes_membrane`` is ``False``).
    """

    def forward(self, *args, **kwargs):
        names = STATE_BUFFERS[original_class(self)]
        _warn_outside_reset(self, names)
        detach_state(self, names)
        args = args[:1] + tuple(_cut(a) for a in args[1:])
        kwargs = {k: v if k == "input_" else _cut(v) for k, v in kwargs.items()}
        out = self._step(*args, **kwargs)
        self.__dict__[_STATE_SEEN] = tuple(getattr(self, name) for name in names)
        return out

    def _step(self, *args, **kwargs):
        recurrent = self._modules.get("recurrent") if getattr(self, "all_to_all", False) else None
        if recurrent is None:
            return super().forward(*args, **kwargs)
        # With reset_mechanism="zero", RLeaky/RSynaptic evaluate self.recurrent(self.spk) twice per
        # step; a binary layer would then advance its trace twice. Evaluate it once per step.
        self._modules["recurrent"] = _CallOnce(recurrent)
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._modules["recurrent"] = recurrent


_STATE_SEEN = "_bso_state_seen"
"""On an online snnTorch neuron: its state tensors as its last call left them (cleared by
:func:`reset_state`)."""


def _warn_outside_reset(neuron: nn.Module, names: tuple[str, ...]) -> None:
    """Warn if the neuron's state was reset to zeros by snnTorch since its last call
    (``utils.reset``, ``reset_hidden``, ``reset_mem``/``init_leaky``): that reset leaves the
    presynaptic traces of bso-snn's layers in place, so the next batch would silently continue
    the previous one's traces."""
    seen = neuron.__dict__.get(_STATE_SEEN)
    if seen is None:
        return
    for name, before in zip(names, seen, strict=True):
        now = getattr(neuron, name, None)
        if now is before or not isinstance(now, torch.Tensor) or now.numel() == 0:
            continue
        if not now.any():
            warnings.warn(
                f"{original_class(neuron).__name__}.{name} was reset to zeros outside bso-snn (by "
                f"snntorch.utils.reset, reset_hidden or reset_mem/init_leaky), which leaves the "
                f"presynaptic traces of the converted layers in place: the next batch would continue "
                f"the previous one's traces. Call bso_snn.reset(model) at the start of each "
                f"sequence (or before each call of a model whose forward resets its own neurons); it "
                f"resets the neurons and the traces together",
                RuntimeWarning,
                stacklevel=3,
            )
            return


class _CallOnce(nn.Module):
    """Stands in for a recurrent layer during one neuron step: the first call runs the layer,
    a repeated call on the same input tensor returns the same output (same values, one graph)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last is None or self.last[0] is not x:
            self.last = (x, self.layer(x))
        return self.last[1]


def make_online(module: nn.Module) -> None:
    """Put a supported snnTorch neuron in online mode in place (idempotent)."""
    _make_online(module, OnlineMixin)


def _fixed_value(module: nn.Module, name: str) -> float | None:
    """The value of a decay ``name`` clamped to ``[0, 1]`` when it is fixed and the same for
    every neuron; ``None`` when it is learnable or differs between neurons."""
    value = getattr(module, name)
    if isinstance(value, nn.Parameter) and value.requires_grad:
        return None
    value = value.detach().clamp(0, 1).flatten()
    if value.numel() == 0 or not bool((value == value[0]).all()):
        return None
    return float(value[0])


def leaky_decay(module: nn.Module) -> float | None:
    """``lam = beta`` for ``Leaky`` / ``RLeaky``; ``None`` for a learnable or per-neuron ``beta``."""
    return _fixed_value(module, "beta")


def synaptic_decay(module: nn.Module) -> float | None:
    """``lam = beta`` for ``Synaptic`` / ``RSynaptic`` when ``alpha == 0`` (no synaptic filter),
    else ``None``: a single exponential trace cannot represent the alpha-beta kernel."""
    alpha = _fixed_value(module, "alpha")
    return _fixed_value(module, "beta") if alpha == 0.0 else None


def reset_state(module: nn.Module) -> None:
    """Clear one neuron's state, as freshly constructed (empty buffers, sized lazily on the next
    call), on the same device and dtype. Never touches other instances."""
    for name in STATE_BUFFERS[original_class(module)]:
        old = getattr(module, name)
        setattr(module, name, torch.zeros(0, dtype=old.dtype, device=old.device))
    module.__dict__.pop(_STATE_SEEN, None)


_WHOLE_SEQUENCE = "it processes the whole sequence [T, ...] in one call, so there is no per-step state to cut"
_REFUSED = {
    "SpikingNeuron": "it is snnTorch's neuron base class; Leaky, Synaptic, RLeaky and RSynaptic are supported",
    "LIF": "it is snnTorch's LIF base class; Leaky, Synaptic, RLeaky and RSynaptic are supported",
    "Alpha": "its excitatory and inhibitory synaptic currents are not modelled by bso-snn's traces yet",
    "Lapicque": "not supported yet (Leaky is)",
    "DeltaLeaky": "its delta coding keeps the previous membrane (mem_prev), not supported yet",
    "SLSTM": "its LSTM gates carry state through learned weights, which one presynaptic trace cannot account for",
    "SConv2dLSTM": "its LSTM gates carry state through learned weights, which one presynaptic trace cannot account for",
    "StateLeaky": _WHOLE_SEQUENCE,
    "LinearLeaky": _WHOLE_SEQUENCE,
    "AssociativeLeaky": _WHOLE_SEQUENCE,
    "LeakyParallel": _WHOLE_SEQUENCE + " (an nn.RNN)",
}
"""snnTorch classes refused, and why. Subclasses of these (and of the supported classes) without an
entry of their own are refused by the registry too."""

for _cls in (Leaky, RLeaky):
    register_neuron(_cls, NeuronSupport(make_online, is_online, leaky_decay, reset_state))
for _cls in (Synaptic, RSynaptic):
    register_neuron(_cls, NeuronSupport(make_online, is_online, synaptic_decay, reset_state))
for _name, _reason in _REFUSED.items():
    _cls = getattr(snntorch, _name, None)  # StateLeaky, LinearLeaky, DeltaLeaky, AssociativeLeaky: 1.0.0 only
    if _cls is not None:
        refuse_neuron(_cls, _reason)


def recurrent_layers(model: nn.Module) -> list[nn.Module]:
    """The recurrent weight layers (``.recurrent`` ``nn.Linear``/``nn.Conv2d``) of every
    ``RLeaky``/``RSynaptic`` with ``all_to_all=True`` in ``model``."""
    return [m.recurrent for m in model.modules() if original_class(m) in (RLeaky, RSynaptic) and m.all_to_all]


def keep_recurrent_float(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """A ``filter_fn`` for :func:`bso_snn.convert` that keeps the recurrent weights of
    ``model``'s ``RLeaky``/``RSynaptic`` neurons float (identified by object, not by name)."""
    recurrent = {id(m) for m in recurrent_layers(model)}
    return lambda module, name: id(module) not in recurrent


def _leaky_nir(node: nn.Module, ctx):
    """``Leaky`` with ``reset_mechanism='zero'`` -> ``nir.LIF`` (``bso_snn.export.leaky_node``):
    ``mem[t] = beta * mem[t-1] + I[t]``, spike when ``mem > threshold``, reset to 0. With a zero
    reset, ``reset_delay`` changes only the membrane snnTorch returns at the spiking step, not
    the spikes. Other resets, and per-neuron or graded parameters, are refused."""
    from bso_snn.export import ExportError, leaky_node

    who = f"{ctx.name} (Leaky)"
    if node.reset_mechanism != "zero":
        raise ExportError(
            f"{who}: reset_mechanism={node.reset_mechanism!r}; NIR's LIF resets the membrane to v_reset, "
            f"which is snnTorch's reset_mechanism='zero' only (a subtractive reset has no NIR equivalent)"
        )
    beta = node.beta.clamp(0, 1)
    threshold = node.threshold
    if beta.numel() != 1 or threshold.numel() != 1 or float(node.graded_spikes_factor) != 1.0:
        raise ExportError(f"{who}: per-neuron beta/threshold or graded spikes are not exported; use scalars")
    return leaky_node(ctx.output_shape, float(beta), float(threshold), ctx.dt, ctx.name)


def _register_nir() -> None:
    from bso_snn.export import register_nir

    register_nir(Leaky, _leaky_nir)


_register_nir()
