r"""Presynaptic traces: :math:`\hat a[t] = \mu[t] \odot \hat a[t-1] + s[t]`.

OTTT uses a constant :math:`\mu = \lambda` (the LIF leak); NDOT takes :math:`\mu` from the
presynaptic neuron's membrane dynamics.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

Decay = Union[float, torch.Tensor]  # noqa: UP007 (runtime alias, py3.10+)


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
    raise NotImplementedError(f"trace mode {layer.bso_trace_mode!r} is not implemented yet")
