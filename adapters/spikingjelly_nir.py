"""NIR export of SpikingJelly modules (see :func:`bso_snn.export_nir`), for both releases.

``layer.Linear`` / ``Conv1d`` / ``Conv2d`` / ``Flatten`` / ``AvgPool2d`` map like their torch
parents (in multi-step mode too: NIR has no time dimension); ``layer.Dropout`` is left out
(identity in eval). Neurons with a hard reset (``v_reset`` a number):

* ``IFNode``: ``v[t] = v + I[t]`` -> ``nir.IF(r = 1/dt, v_threshold, v_reset)``;
* ``LIFNode``: ``v[t] = v + (v_reset - v)/tau + I[t] * (1/tau if decay_input else 1)`` ->
  ``nir.LIF(tau = tau * dt, r = 1 if decay_input else tau, v_leak = v_reset, v_threshold, v_reset)``
  (forward Euler at ``dt`` gives back exactly SpikingJelly's update).

A soft reset (``v_reset=None``) subtracts the threshold, which NIR's neurons cannot express: refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from spikingjelly.activation_based import layer, neuron
from torch import nn

from bso_snn.export import ExportError, NodeContext, register_nir

__all__ = ["register"]


def _hard_reset(node: nn.Module, ctx: NodeContext) -> float:
    if node.v_reset is None:
        raise ExportError(
            f"{ctx.name} ({type(node).__name__}): v_reset=None is a soft reset (v -= v_threshold), which NIR's "
            f"IF/LIF cannot express (they reset to v_reset); build the neuron with v_reset=0.0 to export it"
        )
    return float(node.v_reset)


def _if(node: nn.Module, ctx: NodeContext):
    import nir

    v_reset = _hard_reset(node, ctx)
    shape = ctx.output_shape
    return nir.IF(
        r=np.full(shape, 1.0 / ctx.dt, dtype=np.float32),
        v_threshold=np.full(shape, float(node.v_threshold), dtype=np.float32),
        v_reset=np.full(shape, v_reset, dtype=np.float32),
    )


def _lif(node: nn.Module, ctx: NodeContext):
    import nir

    v_reset = _hard_reset(node, ctx)
    tau = float(node.tau)

    def full(value):
        return np.full(ctx.output_shape, value, dtype=np.float32)

    return nir.LIF(
        tau=full(tau * ctx.dt),
        r=full(1.0 if node.decay_input else tau),
        v_leak=full(v_reset),
        v_threshold=full(float(node.v_threshold)),
        v_reset=full(v_reset),
    )


def _flatten(module: nn.Module, ctx: NodeContext):
    """``layer.Flatten`` flattens per step (``[T*N, ...]`` in multi-step mode): one leading dim."""
    from bso_snn import export

    return export._flatten(module, dataclasses.replace(ctx, lead=1))


def register() -> None:
    """Add SpikingJelly's classes to the export table (the adapter calls this on import)."""
    from bso_snn import export

    parents = {
        layer.Linear: export._linear,
        layer.Conv1d: export._conv,
        layer.Conv2d: export._conv,
        layer.Flatten: _flatten,
        layer.AvgPool2d: export._avgpool,
        layer.Dropout: export._passthrough,
    }
    for cls, fn in parents.items():
        register_nir(cls, fn)
    register_nir(neuron.IFNode, _if)
    register_nir(neuron.LIFNode, _lif)
