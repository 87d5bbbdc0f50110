"""A tiny all-binary spiking network learns scikit-learn's digits with BSO and with T-BSO alone.

Every weight is ±1 (``skip_first_last=False``, no biases, no normalisation), so nothing but the
binary optimizer can make it learn: chance is 0.1 and the untrained network sits near it.
Real-time updates as in the paper: an optimizer step after every one of the T=4 time steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.data import load_dataset
from bso_snn.neurons import LIF
from bso_snn.optim import BSO, TBSO
from bso_snn.sign import is_binary_tensor

T = 4
HIDDEN = 128


class Scale(nn.Module):
    """Multiply by a constant (keeps the logits of a ±1 output layer in a useful range)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        bso_snn.reset(model)
        out = sum(model(x) for _ in range(T))
    model.train()
    return (out.argmax(1) == y).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_optimizer",
    [
        pytest.param(lambda params: BSO(params, gamma=2e-5), id="bso"),
        pytest.param(lambda params: TBSO(params, gamma=5e-7, time_steps=T), id="tbso"),
    ],
)
def test_binary_snn_learns_digits(make_optimizer, one_thread):
    torch.manual_seed(0)
    train, test = load_dataset("digits")
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, HIDDEN, bias=False),
        LIF(),
        nn.Linear(HIDDEN, 10, bias=False),
        Scale(HIDDEN**-0.5),
    )
    bso_snn.convert(model, skip_first_last=False)
    binary = list(bso_snn.binary_parameters(model))
    assert len(binary) == 2 and sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in binary)
    optimizer = make_optimizer(binary)
    x, y = train.tensors
    x_test, y_test = test.tensors
    before = accuracy(model, x_test, y_test)
    gen = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(3):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            bso_snn.reset(model, optimizer)  # new sequence: neuron state, traces, time index
            for _ in range(T):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch]) / T
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                flips += sum(s.flips for s in optimizer.flip_stats())
    after = accuracy(model, x_test, y_test)
    assert before < 0.3
    assert after > 0.75, f"test accuracy {after:.3f} after training (before: {before:.3f})"
    assert flips > 0
    assert all(is_binary_tensor(p) for p in binary)
