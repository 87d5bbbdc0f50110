"""snnTorch's tutorial networks, as written in its tutorials (snnTorch docs, tutorials 5-7 and the
recurrent/regression ones), converted in one call and trained one online T-BSO step on random
inputs (T=2, two samples)."""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext

import pytest
import snntorch as snn
import torch
from snntorch import surrogate, utils
from torch import nn

import bso_snn
from bso_snn.sign import is_binary_tensor

T, N = 2, 2


class Tutorial5Net(nn.Module):
    """Tutorial 5 (MNIST MLP, explicit membranes): the forward runs ``num_steps`` steps on a
    static input and returns the spike and membrane records ``[num_steps, N, 10]``."""

    def __init__(self, num_steps=3):
        super().__init__()
        self.num_steps = num_steps
        self.fc1, self.lif1 = nn.Linear(784, 100), snn.Leaky(beta=0.95)
        self.fc2, self.lif2 = nn.Linear(100, 10), snn.Leaky(beta=0.95)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(self.num_steps):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


def tutorial6_csnn(channels=1):
    """Tutorials 6 (MNIST, 28x28) and 7 (N-MNIST, 2 x 34x34): the convolutional SNN in nn.Sequential."""
    grad = surrogate.fast_sigmoid(slope=25)
    flat = 64 * 4 * 4 if channels == 1 else 64 * 5 * 5
    return nn.Sequential(
        nn.Conv2d(channels, 12, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
        nn.Conv2d(12, 64, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
        nn.Flatten(),
        nn.Linear(flat, 10),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True, output=True),
    )


def synaptic_mlp():
    """The Synaptic (current-based) neuron of tutorial 2, in a two-layer net."""
    return nn.Sequential(
        nn.Linear(20, 32),
        snn.Synaptic(alpha=0.9, beta=0.8, init_hidden=True),
        nn.Linear(32, 32),
        snn.Synaptic(alpha=0.9, beta=0.8, init_hidden=True),
        nn.Linear(32, 10),
        snn.Synaptic(alpha=0.9, beta=0.8, init_hidden=True, output=True),
    )


def recurrent_net():
    """The recurrent tutorial's RLeaky (all-to-all recurrent weights) between two Linear layers."""
    return nn.Sequential(
        nn.Linear(20, 32),
        snn.RLeaky(beta=0.9, linear_features=32, init_hidden=True),
        nn.Linear(32, 32),
        snn.Leaky(beta=0.9, init_hidden=True),
        nn.Linear(32, 10),
        snn.Leaky(beta=0.9, init_hidden=True, output=True),
    )


def regression_net():
    """The regression tutorial's learnable-leak neurons (learn_beta=True, learn_threshold=True)."""
    return nn.Sequential(
        nn.Linear(20, 32),
        snn.Leaky(beta=0.8, learn_beta=True, learn_threshold=True, init_hidden=True),
        nn.Linear(32, 32),
        snn.Leaky(beta=0.8, learn_beta=True, init_hidden=True),
        nn.Linear(32, 10),
        snn.Leaky(beta=0.8, learn_beta=True, init_hidden=True, output=True),
    )


def _membrane(out):
    return out[1]  # (spk, mem): the tutorials' loss is on the membrane


# name -> (build, input per step, output_fn, convert's keyword arguments)
NETS = {
    # Two weight layers: the first/last rule would keep both float.
    "tutorial5-mlp": (Tutorial5Net, (784,), lambda out: out[1].sum(0), {"skip_first_last": False}),
    "tutorial6-csnn": (tutorial6_csnn, (1, 28, 28), _membrane, {}),
    "tutorial7-nmnist-csnn": (lambda: tutorial6_csnn(2), (2, 34, 34), _membrane, {}),
    "synaptic-mlp": (synaptic_mlp, (20,), _membrane, {"lam": 0.8}),  # alpha > 0: lam is not inferred
    "recurrent-rleaky": (recurrent_net, (20,), _membrane, {}),
    "regression-learn-beta": (regression_net, (20,), _membrane, {"lam": 0.8}),  # learnable beta
}


@pytest.mark.parametrize("name", NETS)
def test_snntorch_tutorial_net_converts_and_trains_one_online_step(name, one_thread):
    build, sample, output_fn, convert_kwargs = NETS[name]
    torch.manual_seed(0)
    net = build()
    report = bso_snn.convert(net, **convert_kwargs)
    assert report.converted and report.online_neurons
    optimizer = bso_snn.make_optimizer(net, "tbso", time_steps=1)
    x, y = torch.rand(T, N, *sample), torch.randint(0, 10, (N,))
    # Tutorial 5's forward calls init_leaky itself, so every step restarts the membranes while the
    # converted layers' traces go on: bso-snn says so (see test_snntorch_reset_outside_bso_snn_warns).
    restarts = name == "tutorial5-mlp"
    with pytest.warns(RuntimeWarning, match="reset to zeros outside bso-snn") if restarts else nullcontext():
        result = bso_snn.train_step(
            net, x, y, nn.functional.cross_entropy, optimizer, update="accumulated", output_fn=output_fn
        )
    assert math.isfinite(result.loss) and result.output.shape == (N, 10)
    binary = list(bso_snn.binary_parameters(net))
    grads = [p.grad for p in binary if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(is_binary_tensor(p) for p in binary)


@pytest.mark.parametrize("reset", ["snntorch.utils.reset", "Leaky.reset_mem", "bso_snn.reset"])
def test_snntorch_reset_outside_bso_snn_warns(reset, one_thread):
    """snnTorch's own resets zero the membranes but not the converted layers' traces: the next
    call warns and names bso_snn.reset, which resets both and stays silent."""
    torch.manual_seed(0)
    net = tutorial6_csnn()
    bso_snn.convert(net)
    x = torch.rand(N, 1, 28, 28)
    bso_snn.reset(net)
    net(x)
    if reset == "snntorch.utils.reset":
        utils.reset(net)
    elif reset == "Leaky.reset_mem":
        net[2].reset_mem()
    else:
        bso_snn.reset(net)
    if reset == "bso_snn.reset":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net(x)
    else:
        with pytest.warns(RuntimeWarning, match=r"Call bso_snn.reset\(model\)"):
            net(x)
