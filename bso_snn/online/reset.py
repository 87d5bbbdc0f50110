"""``bso_snn.reset``: one recursive reset of neuron state, traces and T-BSO time indices."""

from __future__ import annotations

from torch import nn

from .. import registry
from ..layers import is_binary_layer


def reset(model: nn.Module, *optimizers) -> None:
    """Start a new sequence: clear every trace and neuron state in ``model`` (nested
    anywhere), and rewind the time index of each optimizer that has one (T-BSO).

    Only ``model``'s own modules are touched, never other models in the process. Neurons
    bso-snn does not drive (refused classes, kept with ``convert(..., online=False)``) are left
    alone: reset them with their own library's reset.
    """
    for module in model.modules():
        if is_binary_layer(module):
            module.reset_trace()
            continue
        support = registry.registered_neuron_support(module)
        if support is not None:
            support.reset(module)
    for optimizer in optimizers:
        rewind = getattr(optimizer, "reset_time_step", None)
        if rewind is None:
            raise TypeError(
                f"reset got {type(optimizer).__name__}, which has no reset_time_step(); pass "
                f"only bso-snn optimizers (BSO, TBSO, HybridOptimizer) after the model"
            )
        rewind()
