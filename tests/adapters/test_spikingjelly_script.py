"""A typical SpikingJelly training script (SpikingJelly's convolutional Fashion-MNIST/MNIST example,
with LIF neurons, multi-step), converted with the few changed lines shown in docs/spikingjelly.md,
trains briefly on real MNIST and learns. Runs against both releases.

To fit CI time on two busy cores the images are average-pooled to 14x14 and a 2,048-image
subset is seen once (128 optimizer steps of 16 images, T = 4); accuracy is measured on 1,000
test images."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import bso_snn
from bso_snn.data import load_dataset
from bso_snn.optim import make_optimizer


class CSNN(nn.Module):  # as in docs/spikingjelly.md
    def __init__(self, T: int, channels: int, size: int = 28):
        super().__init__()
        self.T = T
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(channels),
            neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),
            layer.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(channels),
            neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),
            layer.Flatten(),
            layer.Linear(channels * (size // 4) ** 2, channels * 4 * 4, bias=False),
            neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
            layer.Linear(channels * 4 * 4, 10, bias=False),
            neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        )
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [N, C, H, W] -> [T, N, C, H, W]
        return self.conv_fc(x_seq).mean(0)  # firing rate


def train_epoch(net, optimizer, images, labels, batch_size, generator) -> list[float]:  # as in the docs
    net.train()
    losses = []
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        optimizer.zero_grad()
        out_fr = net(images[idx])
        loss = F.mse_loss(out_fr, F.one_hot(labels[idx], 10).float())
        loss.backward()
        optimizer.step()
        functional.reset_net(net)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def accuracy(net, images, labels) -> float:
    net.eval()
    correct = (net(images).argmax(1) == labels).float().mean().item()
    functional.reset_net(net)
    return correct


def _mnist():
    try:
        return load_dataset("mnist")
    except FileNotFoundError as missing:
        if os.environ.get("BSO_SNN_REQUIRE_DATA") == "1":
            pytest.fail(f"MNIST missing although BSO_SNN_REQUIRE_DATA=1: {missing}")
        pytest.skip(f"MNIST not fetched ({missing}); run python -m bso_snn.data fetch mnist")


@pytest.mark.slow
def test_converted_spikingjelly_script_learns_mnist():
    train, test = _mnist()
    shrink = lambda x: F.avg_pool2d(x, 2)  # noqa: E731  28x28 -> 14x14, for CI time
    images, labels = shrink(train.tensors[0][:2048]), train.tensors[1][:2048]
    test_images, test_labels = shrink(test.tensors[0][:1000]), test.tensors[1][:1000]
    torch.manual_seed(0)

    net = CSNN(T=4, channels=8, size=14)
    report = bso_snn.convert(net)  # the changed lines of the script ...
    optimizer = make_optimizer(
        net, "tbso", time_steps=1, float_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)
    )
    assert report.converted == ["conv_fc.4", "conv_fc.9"] and report.lam == 0.5
    initial = [p.detach().clone() for p in bso_snn.binary_parameters(net)]

    generator, start = torch.Generator().manual_seed(0), time.perf_counter()
    losses = train_epoch(net, optimizer, images, labels, 16, generator)
    acc = accuracy(net, test_images, test_labels)
    first, last = sum(losses[:16]) / 16, sum(losses[-16:]) / 16
    print(
        f"MNIST 14x14: loss {first:.4f} -> {last:.4f}, test accuracy {acc:.3f}, {time.perf_counter() - start:.1f} s"
    )

    assert acc > 0.4, f"test accuracy {acc:.3f} (chance 0.1) after one pass over 2,048 images"
    assert last < first
    changed = 0
    for before, after in zip(initial, bso_snn.binary_parameters(net), strict=True):
        assert bso_snn.sign(after).equal(after)  # still exactly ±1
        changed += int((before != after).sum())
    assert changed > 0  # T-BSO flipped weights
