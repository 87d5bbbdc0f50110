"""The SNNs ``bso-snn train`` builds, from plain torch, SpikingJelly or snnTorch parts.

The same architecture in each ecosystem (single-step models: one call per time step, input
``[N, C, H, W]``; LIF neurons with leak 0.5, threshold 1, soft reset, arctangent surrogate):

- ``mlp``:  Linear(C*H*W, w) BN LIF | Linear(w, w) BN LIF | Linear(w, w) BN LIF | Linear(w, classes)
- ``conv``: Conv(C, c, 3) BN LIF | Conv(c, 2c, 3) BN LIF AvgPool2 | Conv(2c, 2c, 3) BN LIF AvgPool2 |
  Flatten Linear(2c * H/4 * W/4, classes)
- ``vgg11``: the BSO paper's VGG-11 (its Table 2 / Appendix B; the authors' ``models/spiking_vgg.py``,
  configuration 'A' with BatchNorm and average pooling):
  64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-GAP-FC, every conv followed by BN and LIF.
  ``width`` (default 64) is the first conv's channel count; the others scale with it (w, 2w, 4w, 8w).
- ``resnet18``: the spiking ResNet-18 of the authors' ImageNet code (repository hamings1/BSO,
  ``models/resnet.py``, ``birealnet18``: a Bi-Real-style ResNet-18; hamingsi/BSO ships only the VGG): a float stem Conv3x3(C, w) BN MaxPool(3, 2, 1), then
  4 stages of 4 blocks with w, 2w, 4w, 8w channels (stride 2 at the start of stages 2-4), then GAP
  and Linear(8w, classes). Each block is ``out = BN(Conv3x3(LIF(x))) + shortcut(x)``: the neuron
  spikes on the real-valued residual stream, the 3x3 conv sees only spikes; the shortcut is the
  identity, or AvgPool2(stride) Conv1x1 BN where the shape changes (16 binary 3x3 convs + stem + FC).

``bso_snn.convert`` (``skip_first_last=True``, as in the BSO paper) keeps the first and last weight
layers in float32 and makes the middle ones ±1; :func:`convert_filter` also keeps ResNet-18's 1x1
shortcut convs float, as the authors do. Pooling after spikes is average pooling (the trace of
max-pooled spikes is not the max-pooled trace; see docs/online.md); ResNet-18's stem max-pool acts on
real values before any neuron, so no trace passes through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

MODELS = ("mlp", "conv", "vgg11", "resnet18")
ECOSYSTEMS = ("torch", "spikingjelly", "snntorch")
DEFAULT_WIDTH = {"mlp": 256, "conv": 32, "vgg11": 64, "resnet18": 64}
_PIP_HINT = {
    "spikingjelly": "pip install 'bso-snn[spikingjelly]'",
    "snntorch": "pip install 'bso-snn[snntorch]'",
}
VGG11_CONFIG = (1, 2, "AP", 4, 4, "AP", 8, 8, "AP", 8, 8)  # channel multiples of the width; AP: AvgPool2


class EcosystemMissingError(ImportError):
    """The chosen ecosystem's library is not installed."""


class ModelInputError(ValueError):
    """The model cannot take the dataset's input shape (e.g. too small for its downsampling)."""


@dataclass(frozen=True)
class Parts:
    """Layer and neuron constructors of one ecosystem (all take torch's arguments)."""

    linear: Callable[..., nn.Module]
    conv2d: Callable[..., nn.Module]
    bn1d: Callable[..., nn.Module]
    bn2d: Callable[..., nn.Module]
    avgpool2d: Callable[..., nn.Module]
    maxpool2d: Callable[..., nn.Module]
    global_avgpool: Callable[[], nn.Module]  # [N, C, H, W] -> [N, C, 1, 1]
    flatten: Callable[[], nn.Module]
    lif: Callable[[], nn.Module]


def parts(ecosystem: str) -> Parts:
    """The constructors of ``ecosystem`` (``torch``, ``spikingjelly`` or ``snntorch``)."""
    if ecosystem == "torch":
        from bso_snn.neurons import LIF

        return _torch_nn_parts(lambda: LIF(tau=2.0))
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

        return Parts(
            layer.Linear,
            layer.Conv2d,
            layer.BatchNorm1d,
            layer.BatchNorm2d,
            layer.AvgPool2d,
            layer.MaxPool2d,
            lambda: layer.AdaptiveAvgPool2d(1),
            layer.Flatten,
            lif,
        )
    import snntorch as snn

    def leaky():
        return snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="subtract", init_hidden=True)

    return _torch_nn_parts(leaky)


def _torch_nn_parts(neuron: Callable[[], nn.Module]) -> Parts:
    """torch.nn's layers (used by plain torch and by snnTorch) with the given spiking neuron."""
    return Parts(
        nn.Linear,
        nn.Conv2d,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.AvgPool2d,
        nn.MaxPool2d,
        lambda: nn.AdaptiveAvgPool2d(1),
        nn.Flatten,
        neuron,
    )


def build_model(
    name: str, ecosystem: str, image_shape: tuple[int, int, int], num_classes: int, width: int | None = None
) -> nn.Module:
    """The ``name`` model (see :data:`MODELS`) made of ``ecosystem`` parts for ``[C, H, W]`` inputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    p = parts(ecosystem)
    c, h, w = image_shape
    k = width or DEFAULT_WIDTH[name]
    if name == "mlp":
        return nn.Sequential(
            p.flatten(),
            p.linear(c * h * w, k), p.bn1d(k), p.lif(),
            p.linear(k, k), p.bn1d(k), p.lif(),
            p.linear(k, k), p.bn1d(k), p.lif(),
            p.linear(k, num_classes),
        )  # fmt: skip
    if name == "vgg11":
        return _vgg11(p, c, (h, w), num_classes, k)
    if name == "resnet18":
        _check_divisible("resnet18", (h, w), 16)  # stem pool /2, then three stride-2 stages
        return ResNet18(p, c, num_classes, k)
    _check_divisible("conv", (h, w), 4)
    return nn.Sequential(
        p.conv2d(c, k, 3, padding=1), p.bn2d(k), p.lif(),
        p.conv2d(k, 2 * k, 3, padding=1), p.bn2d(2 * k), p.lif(), p.avgpool2d(2),
        p.conv2d(2 * k, 2 * k, 3, padding=1), p.bn2d(2 * k), p.lif(), p.avgpool2d(2),
        p.flatten(),
        p.linear(2 * k * (h // 4) * (w // 4), num_classes),
    )  # fmt: skip


def _check_divisible(name: str, size: tuple[int, int], factor: int) -> None:
    if size[0] % factor or size[1] % factor:
        raise ModelInputError(
            f"the {name} model downsamples by {factor}: input height and width must be multiples of "
            f"{factor}, got {size[0]}x{size[1]}"
        )


def _vgg11(p: Parts, in_channels: int, size: tuple[int, int], num_classes: int, width: int) -> nn.Sequential:
    _check_divisible("vgg11", size, 8)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG11_CONFIG:
        if item == "AP":
            layers.append(p.avgpool2d(2))
            continue
        out = item * width
        layers += [p.conv2d(channels, out, 3, padding=1), p.bn2d(out), p.lif()]
        channels = out
    layers += [p.global_avgpool(), p.flatten(), p.linear(channels, num_classes)]
    model = nn.Sequential(*layers)
    _init_weights(model)
    return model


def _init_weights(model: nn.Module) -> None:
    """The authors' initialisation: convs Kaiming-normal (fan_out, ReLU gain), BN weight 1 bias 0,
    linear N(0, 0.01) bias 0. (Binary layers keep only the signs of their initial weights.)"""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class SpikingBlock(nn.Module):
    """``BN(Conv3x3(LIF(x))) + shortcut(x)`` (one block of :class:`ResNet18`)."""

    def __init__(self, p: Parts, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.neuron = p.lif()
        self.conv = p.conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = p.bn2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                p.avgpool2d(stride) if stride != 1 else nn.Identity(),
                p.conv2d(in_channels, out_channels, 1, bias=False),
                p.bn2d(out_channels),
            )

    def forward(self, x):
        return self.bn(self.conv(self.neuron(x))) + self.shortcut(x)


class ResNet18(nn.Module):
    """The authors' spiking ResNet-18 (see the module docstring) for ``[N, in_channels, H, W]`` input."""

    def __init__(self, p: Parts, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            p.conv2d(in_channels, width, 3, padding=1, bias=False),
            p.bn2d(width),
            p.maxpool2d(3, stride=2, padding=1),
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage, multiple in enumerate((1, 2, 4, 8)):
            for index in range(4):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(SpikingBlock(p, channels, multiple * width, stride))
                channels = multiple * width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(p.global_avgpool(), p.flatten())
        self.fc = p.linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))))


def convert_filter(name: str) -> Callable[[nn.Module, str], bool] | None:
    """The ``filter_fn`` for ``bso_snn.convert`` of model ``name``: ResNet-18 keeps its 1x1 shortcut
    convs float (as the authors' code does); the other models convert every middle layer."""
    if name != "resnet18":
        return None
    return lambda module, _name: getattr(module, "kernel_size", None) != (1, 1)
