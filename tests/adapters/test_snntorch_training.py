"""snnTorch tutorial-style networks, converted in a few lines, trained online with T-BSO on real data
(scikit-learn's 8x8 digits: 1,437 training / 360 test images, 10 classes, chance = 10 %)."""

from __future__ import annotations

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import bso_snn
from bso_snn.data import load_dataset
from bso_snn.optim import TBSO, HybridOptimizer, split_parameters
from bso_snn.sign import is_binary_tensor

pytestmark = pytest.mark.slow

T, BETA, BATCH = 4, 0.5, 32


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Sequential:
    """snnTorch's Sequential style: state kept inside the neurons (init_hidden=True)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.Linear(128, 128),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.Linear(128, 10),
        snn.Leaky(beta=BETA, init_hidden=True, output=True),
    )


def conv_net() -> nn.Sequential:
    """snnTorch tutorial 6 style convolutional network."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.Conv2d(16, 32, 3, padding=1),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
        snn.Leaky(beta=BETA, init_hidden=True, output=True),
    )


class TutorialMLP(nn.Module):
    """snnTorch tutorial 5 style: explicit membrane, the time loop inside ``forward``."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(64, 128), snn.Leaky(beta=BETA)
        self.fc2, self.lif2 = nn.Linear(128, 128), snn.Leaky(beta=BETA)
        self.fc3, self.lif3 = nn.Linear(128, 10), snn.Leaky(beta=BETA)

    def forward(self, x):
        x = x.flatten(1)
        mem1, mem2, mem3 = self.lif1.init_leaky(), self.lif2.init_leaky(), self.lif3.init_leaky()
        mem3_rec = []
        for _ in range(T):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk3, mem3 = self.lif3(self.fc3(spk2), mem3)
            mem3_rec.append(mem3)
        return torch.stack(mem3_rec)


def accuracy(model: nn.Module, data, per_step: bool = True) -> float:
    """Test accuracy of the membrane of the output layer summed over T steps (direct input)."""
    images, labels = data.tensors
    model.eval()
    with torch.no_grad():
        bso_snn.reset(model)
        scores = sum(model(images)[1] for _ in range(T)) if per_step else model(images).sum(0)
    model.train()
    return (scores.argmax(1) == labels).float().mean().item()


def train_online(model, optimizer, train, epochs: int) -> None:
    """The online loop written by hand: forward one step, backward, update; T steps per batch."""
    torch.manual_seed(0)
    for _ in range(epochs):
        for images, labels in DataLoader(train, batch_size=BATCH, shuffle=True):
            bso_snn.reset(model, optimizer)  # neuron state, traces, T-BSO time index
            for _ in range(T):
                spk, mem = model(images)  # direct input: the same image at every step
                loss = F.cross_entropy(mem, labels) / T
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()


def hybrid(model, time_steps: int = T):
    binary, real = split_parameters(model)
    return HybridOptimizer(TBSO(binary, time_steps=time_steps), torch.optim.Adam(real, lr=1e-3))


@pytest.mark.parametrize("build", [mlp, conv_net], ids=["mlp", "conv"])
def test_tutorial_network_trains_online_with_tbso_on_digits(build, digits):
    train, test = digits
    torch.manual_seed(0)
    model = build()
    report = bso_snn.convert(model)  # lam = beta = 0.5, first and last layers stay float
    assert report.lam == BETA and len(report.converted) == 1
    optimizer = hybrid(model)
    initial = [p.detach().clone() for p in bso_snn.binary_parameters(model)]
    train_online(model, optimizer, train, epochs=3)
    acc = accuracy(model, test)
    assert acc >= 0.85, acc
    binary = list(bso_snn.binary_parameters(model))
    assert all(is_binary_tensor(p) for p in binary)
    assert sum(int((p != p0).sum()) for p, p0 in zip(binary, initial, strict=True)) > 0  # T-BSO flipped


def test_binary_layer_alone_learns_with_tbso(digits):
    """Float weights frozen at their random init: any gain comes from T-BSO's sign flips driven by
    the OTTT gradients through the snnTorch neurons."""
    train, test = digits
    torch.manual_seed(0)
    model = mlp()
    bso_snn.convert(model)
    binary, real = split_parameters(model)
    for p in real:
        p.requires_grad_(False)
    before = accuracy(model, test)
    optimizer = TBSO(binary, time_steps=T)
    train_online(model, optimizer, train, epochs=3)
    after = accuracy(model, test)
    assert after >= before + 0.2, (before, after)


def test_tutorial_class_with_time_loop_inside_forward_trains_with_accumulated_tbso(digits):
    """Loop inside forward, one backward per batch: OTTT gradients summed over T, one T-BSO update
    per sequence (``time_steps=1``)."""
    train, test = digits
    torch.manual_seed(0)
    model = TutorialMLP()
    bso_snn.convert(model)
    optimizer = hybrid(model, time_steps=1)
    for _ in range(3):
        for images, labels in DataLoader(train, batch_size=BATCH, shuffle=True):
            bso_snn.reset(model, optimizer)  # the traces must start afresh with each sequence
            mem = model(images)
            loss = sum(F.cross_entropy(mem[t], labels) for t in range(T)) / T
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    acc = accuracy(model, test, per_step=False)
    assert acc >= 0.85, acc


def test_train_step_drives_an_snntorch_model_with_a_linear_readout(digits):
    """``bso_snn.online.train_step`` needs one tensor per step: end with a Linear readout (or a
    Leaky without ``output=True``), not with a neuron returning ``(spk, mem)``."""
    from bso_snn.online import train_step

    train, test = digits
    torch.manual_seed(0)
    model = nn.Sequential(*list(mlp())[:-1])  # ... Linear(128, 10): membrane-free readout
    bso_snn.convert(model)
    optimizer = hybrid(model)
    for _ in range(3):
        for images, labels in DataLoader(train, batch_size=BATCH, shuffle=True):
            train_step(model, images.expand(T, *images.shape), labels, F.cross_entropy, optimizer)
    images, labels = test.tensors
    model.eval()
    with torch.no_grad():
        bso_snn.reset(model)
        scores = sum(model(images) for _ in range(T))
    acc = (scores.argmax(1) == labels).float().mean().item()
    assert acc >= 0.85, acc
