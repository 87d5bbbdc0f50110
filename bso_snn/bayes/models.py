"""Normalisation-free residual SBNNs, as in the released code (train_cifar.py, train_dvs.py).

Topology (stage widths ``w_1..w_S``, ``n`` blocks per stage; every conv is 3x3, padding 1, no bias):

    stem:   SBNNConv2d(C_in, w_1) -> neuron
    block:  x -> SBNNConv2d -> neuron -> SBNNConv2d -> neuron = s;  out = s + shortcut(x)
    stage k > 1, first block: the first conv has stride 2 and the shortcut is *option A*:
            shortcut(x) = concat(AvgPool2d(2)(x), zeros)   (channels w_{k-1} -> w_k = 2 w_{k-1})
    head:   logits = (1/T) sum_t Linear(GAP(out_t))        (deterministic readout)

The residual add comes *after* the spike, so a block's output is an integer count (0, 1, 2, ...),
which the next layer's mean and variance see as its input. CIFAR-10 (train_cifar.py): widths
64/128/256/512, 3 blocks each: 12 blocks, 25 convs, T=1, theta=0, no bias noise. DVS Gesture
(train_dvs.py): widths 32/64/128, 3 blocks: 9 blocks, 19 convs, theta=1, bias noise softplus(-1).

``neuron`` picks the unit: ``"sbnn"`` (Gaussian noise, IW-ST(p) backward), or the deterministic
baselines of the same topology ``"sg"`` (Gaussian surrogate, width 0.4, as the released code's
``--method sg``) and ``"st"`` (straight-through, gradient 1). ``norm="batchnorm"`` puts one
BatchNorm2d per conv and time step on the mean (the released CIFAR ``sg`` path); the default
``None`` has no normalisation layer at all (:func:`normalisation_layers` counts them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import SBNNConv2d
from .neurons import DEFAULT_BETA, SBNNLIF, SurrogateLIF, reset_sbnn

NEURONS = ("sbnn", "sg", "st")
NORMS = (None, "batchnorm")
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def normalisation_layers(model: nn.Module) -> int:
    """Number of normalisation modules (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, LRN, RMSNorm)."""
    return sum(isinstance(m, _NORM_TYPES) for m in model.modules())


def _neuron(kind: str, p: float, threshold: float, beta: float, aux_form: str) -> SBNNLIF:
    if kind == "sbnn":
        return SBNNLIF(threshold=threshold, beta=beta, p=p, aux_form=aux_form)
    surrogate = "gaussian" if kind == "sg" else "straight-through"
    return SurrogateLIF(threshold=threshold, beta=beta, surrogate=surrogate)


class ConvUnit(nn.Module):
    """``SBNNConv2d -> [BatchNorm2d of step t] -> neuron``: ``forward(x, t) -> spikes``."""

    def __init__(self, conv: SBNNConv2d, neuron: SBNNLIF, norm: str | None, time_steps: int):
        super().__init__()
        self.conv, self.neuron = conv, neuron
        self.norms = (
            nn.ModuleList(nn.BatchNorm2d(conv.out_channels) for _ in range(time_steps)) if norm else None
        )

    def forward(self, x: Tensor, t: int) -> Tensor:
        mean, var, bias_var = self.conv(x, t)
        if self.norms is not None:
            mean = self.norms[t](mean)
        return self.neuron(mean, var, bias_var)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: ``AvgPool2d(stride)`` then zero channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"OptionAShortcut: out_channels={out_channels} < in_channels={in_channels}")
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.extra:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.extra, *x.shape[2:])], dim=1)
        return x


class ResidualBlock(nn.Module):
    """``out = unit2(unit1(x)) + shortcut(x)``: the add comes after the second unit's spike."""

    def __init__(self, unit1: ConvUnit, unit2: ConvUnit, shortcut: OptionAShortcut):
        super().__init__()
        self.unit1, self.unit2, self.shortcut = unit1, unit2, shortcut

    def forward(self, x: Tensor, t: int) -> Tensor:
        return self.unit2(self.unit1(x, t), t) + self.shortcut(x)


class SBNNResNet(nn.Module):
    """The normalisation-free residual SBNN (module docstring). ``forward(x) -> logits``.

    ``x`` is ``[B, C, H, W]`` (fed at each of the ``time_steps`` steps: direct encoding) or
    ``[T, B, C, H, W]`` (one frame per step, ``T == time_steps``). ``H`` and ``W`` must be
    multiples of ``2**(len(widths) - 1)`` (each later stage halves them).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        blocks_per_stage: int | tuple[int, ...] = 3,
        time_steps: int = 1,
        neuron: str = "sbnn",
        p: float = 0.0,
        threshold: float = 0.0,
        beta: float = DEFAULT_BETA,
        bias_noise_std: float | None = None,
        sigma_init: float = 0.5,
        learn_sigma: bool = True,
        norm: str | None = None,
        aux_form: str = "membrane",
    ):
        super().__init__()
        if neuron not in NEURONS:
            raise ValueError(f"SBNNResNet: neuron={neuron!r} is not one of {', '.join(NEURONS)}")
        if norm not in NORMS:
            raise ValueError(f"SBNNResNet: norm={norm!r} is not None or 'batchnorm'")
        widths = tuple(widths)
        blocks = (blocks_per_stage,) * len(widths) if isinstance(blocks_per_stage, int) else blocks_per_stage
        if not widths or len(blocks) != len(widths) or min(blocks) < 0 or min(widths) < 1:
            raise ValueError(
                f"SBNNResNet: widths={widths} and blocks_per_stage={blocks_per_stage} must be positive and "
                "of one length (one block count per stage)"
            )
        for a, b in zip(widths, widths[1:], strict=False):
            if b < a:
                raise ValueError(f"SBNNResNet: widths={widths} must not decrease (option-A shortcuts pad)")
        self.time_steps, self.widths, self.blocks = time_steps, widths, tuple(blocks)

        def unit(c_in: int, c_out: int, stride: int) -> ConvUnit:
            conv = SBNNConv2d(
                c_in,
                c_out,
                3,
                stride=stride,
                padding=1,
                time_steps=time_steps,
                sigma_init=sigma_init,
                learn_sigma=learn_sigma,
                bias_noise_std=bias_noise_std,
            )
            return ConvUnit(conv, _neuron(neuron, p, threshold, beta, aux_form), norm, time_steps)

        self.stem = unit(in_channels, widths[0], 1)
        layers, c = [], widths[0]
        for k, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(n):
                stride = 2 if k > 0 and i == 0 else 1
                layers.append(ResidualBlock(unit(c, w, stride), unit(w, w, 1), OptionAShortcut(c, w, stride)))
                c = w
        self.blocks_seq = nn.ModuleList(layers)
        self.readout = nn.Linear(c, num_classes)
        bound = 1.0 / math.sqrt(c)
        nn.init.uniform_(self.readout.weight, -bound, bound)

    @property
    def num_convs(self) -> int:
        return sum(isinstance(m, SBNNConv2d) for m in self.modules())

    def forward(self, x: Tensor) -> Tensor:
        T = self.time_steps
        if x.dim() == 5 and x.shape[0] != T:
            raise ValueError(f"SBNNResNet: input has {x.shape[0]} time steps, the model {T} (time_steps)")
        if x.dim() not in (4, 5):
            raise ValueError(
                f"SBNNResNet: input shape {tuple(x.shape)} is not [B, C, H, W] or [T, B, C, H, W]"
            )
        factor = 2 ** (len(self.widths) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"SBNNResNet: input size {tuple(x.shape[-2:])} must be a multiple of {factor} "
                f"({len(self.widths)} stages halve it {len(self.widths) - 1} times); pad or resize the input"
            )
        reset_sbnn(self)
        logits = 0.0
        for t in range(T):
            out = self.stem(x[t] if x.dim() == 5 else x, t)
            for block in self.blocks_seq:
                out = block(out, t)
            logits = logits + self.readout(out.mean((2, 3)))
        return logits / T


def cifar_sbnn_resnet(
    num_classes: int = 10, width: int = 64, blocks_per_stage: int = 3, in_channels: int = 3, **kwargs
) -> SBNNResNet:
    """train_cifar.py's net: widths w/2w/4w/8w, 3 blocks each (12 blocks, 25 convs), T=1, theta=0."""
    kwargs.setdefault("threshold", 0.0)
    widths = (width, 2 * width, 4 * width, 8 * width)
    return SBNNResNet(in_channels, num_classes, widths, blocks_per_stage, **kwargs)


DVS_BIAS_NOISE_STD = F.softplus(torch.tensor(-1.0)).item()  # train_dvs.py: scales_biases init -1


def dvs_sbnn_resnet(
    num_classes: int = 11,
    width: int = 32,
    blocks_per_stage: int = 3,
    in_channels: int = 2,
    time_steps: int = 49,
    **kwargs,
) -> SBNNResNet:
    """train_dvs.py's net: widths w/2w/4w, 3 blocks each (9 blocks, 19 convs), theta=1, bias noise
    std softplus(-1) = 0.3133, 2 polarity channels, 32x32 frames, 11 classes, T=49."""
    kwargs.setdefault("threshold", 1.0)
    kwargs.setdefault("bias_noise_std", DVS_BIAS_NOISE_STD)
    widths = (width, 2 * width, 4 * width)
    return SBNNResNet(in_channels, num_classes, widths, blocks_per_stage, time_steps=time_steps, **kwargs)
