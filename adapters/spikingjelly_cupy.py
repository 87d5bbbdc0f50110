r"""A time-local CuPy backward kernel for SpikingJelly 0.0.0.0.14's multi-step ``LIFNode`` (opt-in).

Online mode normally runs a multi-step neuron as ``T`` slices of length 1 (``T`` kernel launches
forward and backward). With :func:`use_fused_local_kernel`, a CuPy ``LIFNode`` instead runs the
whole sequence in SpikingJelly's own forward kernel and a backward kernel that differs from
SpikingJelly's ``LIFNodeBPTTKernel`` in one term:

.. math:: \frac{\partial H[t+1]}{\partial V[t]} := 0 \quad (\text{SpikingJelly: } 1 - 1/\tau),

which is exactly what detaching the state between steps does: no gradient flows from step
``t+1`` back into step ``t``, so one backward gives the OTTT gradient accumulated over time, in
one launch. The kernel source is generated in Python by SpikingJelly's ``auto_cuda`` (no CUDA
needed to generate it). Only the OTTT trace is served: the fused call does not publish the
per-step membranes that NDOT layers read.

Classic releases only (2.0.0 has no CuPy); running the kernel needs a CUDA GPU.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.auto_cuda import cfunction, neuron_kernel
from torch import nn

from bso_snn._classswap import original_class


class LocalLIFNodeBPTTKernel(neuron_kernel.LIFNodeBPTTKernel):
    """SpikingJelly's LIF backward kernel with ``grad_h_next_to_v = 0`` (see the module docstring)."""

    def grad_h_next_to_v(self) -> str:
        return cfunction.constant(y=f"const {self.dtype} grad_h_next_to_v", x=0.0, dtype=self.dtype)


_KERNEL_DTYPES = {torch.float32: "float", torch.float16: "half2"}  # as LIFNode.multi_step_forward


def local_backward_kernel(node: nn.Module, x_seq: torch.Tensor) -> LocalLIFNodeBPTTKernel:
    """The local kernel with the attributes ``LIFNode.multi_step_forward`` checks, so SpikingJelly
    keeps it instead of building its own BPTT kernel."""
    if x_seq.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"the CuPy LIF kernels take float32 or float16 input, got {x_seq.dtype}")
    return LocalLIFNodeBPTTKernel(
        decay_input=node.decay_input,
        surrogate_function=node.surrogate_function.cuda_codes,
        hard_reset=node.v_reset is not None,
        detach_reset=node.detach_reset,
        dtype=_KERNEL_DTYPES[x_seq.dtype],
    )


def check_fusable(node: nn.Module, name: str) -> None:
    """Raise unless ``node`` is an online ``LIFNode`` with ``backend='cupy'`` in multi-step mode."""
    from .spikingjelly_neurons import OnlineMixin

    if original_class(node) is not neuron.LIFNode or not isinstance(node, OnlineMixin):
        raise TypeError(
            f"{name}: the fused local kernel exists for online (converted) SpikingJelly LIFNode only, "
            f"got {type(node).__name__}"
        )
    if node.backend != "cupy" or node.step_mode != "m":
        raise ValueError(
            f"{name}: the fused local kernel needs backend='cupy' and step_mode='m', got "
            f"backend={node.backend!r}, step_mode={node.step_mode!r}"
        )


def fused_forward(node: nn.Module, run, x_seq: torch.Tensor) -> torch.Tensor:
    """Run ``run(x_seq)`` (the neuron's own multi-step forward) once with the local backward
    kernel in place, and check SpikingJelly kept it."""
    node.backward_kernel = local_backward_kernel(node, x_seq)
    out = run(x_seq)
    if not isinstance(node.backward_kernel, LocalLIFNodeBPTTKernel):
        raise RuntimeError(
            f"SpikingJelly replaced the local backward kernel of {type(node).__name__} by "
            f"{type(node.backward_kernel).__name__}; the gradient of this call would flow through time"
        )
    return out
