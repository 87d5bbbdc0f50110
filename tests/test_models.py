"""The paper's models (``bso_snn.cli.models``): VGG-11 and ResNet-18, in every ecosystem."""

import pytest
import torch
from torch import nn

from bso_snn import convert, reset
from bso_snn.cli.models import ECOSYSTEMS, build_model, convert_filter
from bso_snn.layers import is_binary_layer


def _ecosystem(name):
    pytest.importorskip(name) if name != "torch" else None
    return name


def _listing(model: nn.Module) -> str:
    """The paper's notation: ``64C3`` per 3x3 conv, ``AP2`` per average pool, ``GAP``, ``FC``."""
    items = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            items.append(f"{m.out_channels}C{m.kernel_size[0]}")
        elif isinstance(m, nn.AvgPool2d):
            items.append(f"AP{m.kernel_size}")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            items.append("GAP")
        elif isinstance(m, nn.Linear):
            items.append("FC")
    return "-".join(items)


@pytest.mark.parametrize("ecosystem", ECOSYSTEMS)
def test_vgg11_is_the_papers_listing_with_bn_and_lif_after_every_conv(ecosystem):
    model = build_model("vgg11", _ecosystem(ecosystem), (3, 32, 32), 10)
    assert _listing(model) == "64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-GAP-FC"
    layers = list(model)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d)
            assert "LIF" in type(layers[i + 2]).__name__ or "Leaky" in type(layers[i + 2]).__name__
    assert layers[-1].out_features == 10


def test_vgg11_size_channels_classes_and_width_are_configurable():
    model = build_model("vgg11", "torch", (2, 48, 48), 7, width=8)
    assert _listing(model) == "8C3-16C3-AP2-32C3-32C3-AP2-64C3-64C3-AP2-64C3-64C3-GAP-FC"
    assert model[0].in_channels == 2
    assert model(torch.rand(3, 2, 48, 48)).shape == (3, 7)
    with pytest.raises(ValueError, match="multiples of 8, got 36x30"):
        build_model("vgg11", "torch", (3, 36, 30), 10)


def test_vgg11_convert_keeps_first_and_last_float_and_makes_the_other_7_convs_binary():
    model = build_model("vgg11", "torch", (3, 32, 32), 10, width=8)
    report = convert(model, filter_fn=convert_filter("vgg11"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [is_binary_layer(m) for m in convs] == [False] + [True] * 7
    assert not is_binary_layer(model[-1]) and len(report.converted) == 7
    for m in convs[1:]:
        assert set(m.weight.unique().tolist()) == {-1.0, 1.0}


def _resnet_listing(model):
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]


@pytest.mark.parametrize("ecosystem", ECOSYSTEMS)
def test_resnet18_has_the_authors_layout(ecosystem):
    model = build_model("resnet18", _ecosystem(ecosystem), (3, 32, 32), 100)
    convs = _resnet_listing(model)
    three = [c for c in convs if c[2] == 3]
    assert len(three) == 17 and three[0] == (3, 64, 3, 1)  # stem + 16 block convs
    expected_blocks = []
    channels = 64
    for stage, out in enumerate((64, 128, 256, 512)):
        for i in range(4):
            expected_blocks.append((channels, out, 3, 2 if stage and i == 0 else 1))
            channels = out
    assert three[1:] == expected_blocks
    assert [c for c in convs if c[2] == 1] == [(64, 128, 1, 1), (128, 256, 1, 1), (256, 512, 1, 1)]
    assert model.fc.in_features == 512 and model.fc.out_features == 100
    report = convert(model, filter_fn=convert_filter("resnet18"))
    assert len(report.converted) == 16
    assert sorted(report.skipped) == sorted(
        ["stem.0", "fc", "blocks.4.shortcut.1", "blocks.8.shortcut.1", "blocks.12.shortcut.1"]
    )
    x = torch.rand(2, 3, 32, 32)
    reset(model)
    assert model(x).shape == (2, 100)


def test_resnet18_block_is_bn_of_conv_of_spikes_plus_shortcut():
    """One block, by hand: out = BN(conv(LIF(x))) + AvgPool2 -> conv1x1 -> BN (x)."""
    torch.manual_seed(0)
    model = build_model("resnet18", "torch", (3, 16, 16), 10, width=4)
    block = model.blocks[4]  # first block of stage 2: stride 2, 4 -> 8 channels
    block.eval()
    x = torch.randn(2, 4, 8, 8) * 2
    spikes = (x >= 1.0).float()  # LIF from rest, leak 0.5, threshold 1: u = x
    by_hand = block.bn(nn.functional.conv2d(spikes, block.conv.weight, stride=2, padding=1))
    pooled = nn.functional.avg_pool2d(x, 2)
    by_hand = by_hand + block.shortcut[2](nn.functional.conv2d(pooled, block.shortcut[1].weight))
    reset(model)
    torch.testing.assert_close(block(x), by_hand)


def test_resnet18_input_channels_are_configurable():
    model = build_model("resnet18", "torch", (2, 48, 48), 10, width=4)
    assert model.stem[0].in_channels == 2
    assert model(torch.rand(1, 2, 48, 48)).shape == (1, 10)
    with pytest.raises(ValueError, match="multiples of 16, got 8x8"):
        build_model("resnet18", "torch", (1, 8, 8), 10)
