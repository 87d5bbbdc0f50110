"""The small SNNs ``bso-snn train`` builds, from plain torch, SpikingJelly or snnTorch parts.

The same architecture in each ecosystem (single-step models: one call per time step, input
``[N, 1, H, W]``; LIF neurons with leak 0.5, threshold 1, soft reset, arctangent surrogate):

- ``mlp``:  Flatten, Linear(H*W, 256), [Linear(256, 256), BN, LIF] x 2 ... exactly:
  Linear(H*W, w) BN LIF | Linear(w, w) BN LIF | Linear(w, w) BN LIF | Linear(w, classes)
- ``conv``: Conv(1, c, 3) BN LIF | Conv(c, 2c, 3) BN LIF AvgPool2 | Conv(2c, 2c, 3) BN LIF AvgPool2 |
  Flatten Linear(2c * H/4 * W/4, classes)

``bso_snn.convert`` (``skip_first_last=True``, as in the BSO paper) keeps the first and last weight
layers in float32 and makes the middle ones ±1. Pooling is average pooling (the trace of max-pooled
spikes is not the max-pooled trace; see docs/online.md).
"""

from __future__ import annotations

import importlib

from torch import nn

MODELS = ("mlp", "conv")
ECOSYSTEMS = ("torch", "spikingjelly", "snntorch")
_PIP_HINT = {
    "spikingjelly": "pip install 'bso-snn[spikingjelly]'",
    "snntorch": "pip install 'bso-snn[snntorch]'",
}


class EcosystemMissingError(ImportError):
    """The chosen ecosystem's library is not installed."""


def _parts(ecosystem: str):
    """``(linear, conv2d, bn1d, bn2d, avgpool2d, flatten, lif)`` constructors of one ecosystem."""
    if ecosystem == "torch":
        from bso_snn.neurons import LIF

        return (
            nn.Linear,
            nn.Conv2d,
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.AvgPool2d,
            nn.Flatten,
            lambda: LIF(tau=2.0),
        )
    if ecosystem not in ECOSYSTEMS:
        raise ValueError(f"unknown ecosystem {ecosystem!r}; choose one of {', '.join(ECOSYSTEMS)}")
    try:
        importlib.import_module(ecosystem)
    except ImportError as exc:
        raise EcosystemMissingError(
            f"--ecosystem {ecosystem} needs the {ecosystem} package, which is not importable ({exc}). "
            f"Install it with: {_PIP_HINT[ecosystem]}"
        ) from exc
    if ecosystem == "spikingjelly":
        from spikingjelly.activation_based import layer, neuron, surrogate

        def lif():
            return neuron.LIFNode(
                tau=2.0, decay_input=False, v_reset=None, surrogate_function=surrogate.ATan()
            )

        return (
            layer.Linear,
            layer.Conv2d,
            layer.BatchNorm1d,
            layer.BatchNorm2d,
            layer.AvgPool2d,
            layer.Flatten,
            lif,
        )
    import snntorch as snn

    def leaky():
        return snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="subtract", init_hidden=True)

    return nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.Flatten, leaky


def build_model(
    name: str, ecosystem: str, image_shape: tuple[int, int, int], num_classes: int, width: int | None = None
) -> nn.Sequential:
    """The ``name`` model (``mlp`` or ``conv``) made of ``ecosystem`` parts for ``[C, H, W]`` images."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    linear, conv, bn1d, bn2d, avgpool, flatten, lif = _parts(ecosystem)
    c, h, w = image_shape
    if name == "mlp":
        k = width or 256
        return nn.Sequential(
            flatten(),
            linear(c * h * w, k), bn1d(k), lif(),
            linear(k, k), bn1d(k), lif(),
            linear(k, k), bn1d(k), lif(),
            linear(k, num_classes),
        )  # fmt: skip
    if h % 4 or w % 4:
        raise ValueError(
            f"the conv model pools twice by 2: image height and width must be multiples of 4, got {h}x{w}"
        )
    k = width or 32
    return nn.Sequential(
        conv(c, k, 3, padding=1), bn2d(k), lif(),
        conv(k, 2 * k, 3, padding=1), bn2d(2 * k), lif(), avgpool(2),
        conv(2 * k, 2 * k, 3, padding=1), bn2d(2 * k), lif(), avgpool(2),
        flatten(),
        linear(2 * k * (h // 4) * (w // 4), num_classes),
    )  # fmt: skip
