"""Post-training binarisation of SBNN weight means: ``mu <- alpha * sign(mu)``, ``alpha = mean |mu|``.

The Bayesian path trains real-valued means (it is not a ±1-flip optimizer like BSO). Replacing each
layer's ``mu`` by its sign times one per-layer scale gives ±alpha weights (1 bit plus one float per
layer; ``alpha`` can be folded into the per-step gain ``a``). It costs accuracy (measured on digits in
tests/test_bayes_digits.py and docs/bayes.md); the method itself does not train for it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..sign import sign
from .layers import _SBNNSynapse


@torch.no_grad()
def binarize_means_(model: nn.Module) -> int:
    """In place, every SBNN layer's ``weight`` becomes ``mean(|weight|) * sign(weight)``; returns the count."""
    layers = [m for m in model.modules() if isinstance(m, _SBNNSynapse)]
    if not layers:
        raise ValueError("binarize_means_: model has no SBNNLinear / SBNNConv2d layer")
    for layer in layers:
        layer.weight.copy_(layer.weight.abs().mean() * sign(layer.weight))
    return len(layers)
