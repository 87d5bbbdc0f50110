"""Residual SBNN builders vs a plain transcription of the released forward loop; shortcuts; surrogates."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bso_snn.bayes import (
    SBNNConv2d,
    SBNNResNet,
    SurrogateLIF,
    aux_loss,
    cifar_sbnn_resnet,
    dvs_sbnn_resnet,
    normalisation_layers,
    set_noise,
)
from bso_snn.bayes.models import OptionAShortcut


def test_cifar_and_dvs_builders_have_the_released_depths_and_no_normalisation():
    cifar = cifar_sbnn_resnet(width=2)
    dvs = dvs_sbnn_resnet(width=2, time_steps=2)
    assert (cifar.num_convs, len(cifar.blocks_seq), normalisation_layers(cifar)) == (25, 12, 0)
    assert (dvs.num_convs, len(dvs.blocks_seq), normalisation_layers(dvs)) == (19, 9, 0)
    convs = [c for c in cifar.modules() if isinstance(c, SBNNConv2d)]
    # train_cifar.py's conv_params: 7 x 64, then 6 x 128, 256, 512, stride 2 at convs 7, 13, 19
    assert [c.out_channels for c in convs] == [2] * 7 + [4] * 6 + [8] * 6 + [16] * 6
    assert [i for i, c in enumerate(convs) if c.stride == (2, 2)] == [7, 13, 19]
    assert dvs.stem.neuron.threshold == 1.0 and cifar.stem.neuron.threshold == 0.0
    assert dvs.stem.conv.sigma.item() == pytest.approx(0.5 / math.sqrt(2 * 9), rel=1e-5)
    assert F.softplus(dvs.stem.conv.rho_b).item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    assert cifar(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    assert dvs(torch.rand(2, 2, 2, 8, 8)).shape == (2, 11)  # [T, B, C, H, W]
    bn = SBNNResNet(1, 3, widths=(2, 4), blocks_per_stage=1, neuron="sg", norm="batchnorm", time_steps=2)
    assert normalisation_layers(bn) == 2 * 5  # one BatchNorm2d per conv and step


def test_option_a_shortcut_pools_and_zero_pads():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    out = OptionAShortcut(2, 5, 2)(x)
    assert out.shape == (2, 5, 2, 2)
    for b in range(2):
        for c in range(2):
            for i in range(2):
                for j in range(2):
                    block = x[b, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    assert out[b, c, i, j] == block.mean()
    assert (out[:, 2:] == 0).all()
    assert torch.equal(OptionAShortcut(3, 3, 1)(x[:, :1].expand(2, 3, 4, 4)), x[:, :1].expand(2, 3, 4, 4))


def _released_forward(model: SBNNResNet, data, blocks_per_stage: int):
    """Noiseless forward written as the released scripts' index loop over conv j (train_dvs.py)."""
    convs = [m for m in model.modules() if isinstance(m, SBNNConv2d)]
    neurons = [m.neuron for m in model.modules() if hasattr(m, "neuron")]
    theta, beta = neurons[0].threshold, neurons[0].beta
    T, out = model.time_steps, 0.0
    mem = [0.0] * len(convs)
    spikes = [None] * len(convs)
    for t in range(T):
        identity = 0
        for j, conv in enumerate(convs):
            if j % (blocks_per_stage * 2) == 1 and j != 1:
                ds = F.avg_pool2d(spikes[j - 1], 2)
                identity = torch.cat([ds, torch.zeros_like(ds)], dim=1)
            elif j % 2 == 1:
                identity = spikes[j - 1].clone()
            x = data[t] if j == 0 else spikes[j - 1]
            new_input = F.conv2d(x, conv.weight, stride=conv.stride, padding=1) * conv.a[t].view(
                1, -1, 1, 1
            ) + conv.c[t].view(1, -1, 1, 1)
            mem[j] = beta * mem[j] + new_input
            spikes[j] = (mem[j] - theta > 0).float()
            mem[j] = mem[j] - theta * spikes[j]
            if j % 2 == 0 and j != 0:
                spikes[j] = spikes[j] + identity
        out = out + model.readout(spikes[-1].mean((2, 3)))
    return out / T


@pytest.mark.parametrize("theta", [0.0, 1.0])
def test_resnet_matches_the_released_index_loop(theta):
    torch.manual_seed(0)
    model = SBNNResNet(2, 5, widths=(3, 6, 12), blocks_per_stage=2, time_steps=3, threshold=theta)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, SBNNConv2d):
                conv.weight.mul_(3.0)  # enough drive that several layers spike
                conv.a.uniform_(0.5, 1.5)
                conv.c.uniform_(-0.2, 0.2)
    data = (torch.rand(3, 4, 2, 8, 8) < 0.5).float()
    set_noise(model, False)
    with torch.no_grad():
        expected = _released_forward(model, data, 2)
        actual = model(data)
    assert torch.allclose(actual, expected, atol=1e-6)
    assert not torch.allclose(expected, model.readout.bias.expand_as(expected))  # the features are not all 0


def test_resnet_static_input_is_fed_every_step_and_aux_accumulates():
    torch.manual_seed(1)
    model = SBNNResNet(1, 4, widths=(2, 4), blocks_per_stage=1, time_steps=2, threshold=1.0)
    x = torch.rand(3, 1, 4, 4)
    set_noise(model, False)
    assert torch.equal(model(x), model(x.unsqueeze(0).expand(2, *x.shape)))
    set_noise(model, True)
    model(x)
    assert float(aux_loss(model)) > 0


def test_resnet_bad_inputs_name_the_problem():
    model = SBNNResNet(1, 4, widths=(2, 4, 8), blocks_per_stage=1)
    with pytest.raises(ValueError, match=r"input size \(6, 6\) must be a multiple of 4"):
        model(torch.rand(1, 1, 6, 6))
    with pytest.raises(ValueError, match="time steps"):
        model(torch.rand(2, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="neuron='lif'"):
        SBNNResNet(1, 4, neuron="lif")
    with pytest.raises(ValueError, match="must not decrease"):
        SBNNResNet(1, 4, widths=(8, 4))
    with pytest.raises(ValueError, match="one length"):
        SBNNResNet(1, 4, widths=(8, 16), blocks_per_stage=(1, 2, 3))


@pytest.mark.parametrize(("surrogate", "expected"), [("gaussian", None), ("straight-through", 1.0)])
def test_surrogate_lif_forward_and_backward_vs_hand(surrogate, expected):
    u = torch.tensor([-1.0, -0.3, 0.0, 0.2, 0.9], requires_grad=True)
    neuron = SurrogateLIF(threshold=0.5, surrogate=surrogate)
    s = neuron(u + 0.5)
    assert s.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    s.sum().backward()
    for ui, gi in zip(u.tolist(), u.grad.tolist(), strict=True):
        want = math.exp(-0.5 * (ui / 0.4) ** 2) / (math.sqrt(2 * math.pi) * 0.4) if expected is None else 1.0
        assert gi == pytest.approx(want, rel=1e-6)
    assert neuron.aux == 0.0
    # soft reset and leak, as the SBNN-LIF mean path
    assert torch.allclose(neuron.state.membrane, (u + 0.5 - 0.5 * s).detach())
    with pytest.raises(ValueError, match="surrogate='sigmoid'"):
        SurrogateLIF(surrogate="sigmoid")


def test_normalisation_layers_counts_every_kind():
    model = nn.Sequential(
        nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.LayerNorm(2), nn.InstanceNorm2d(2), nn.Linear(2, 2)
    )
    assert normalisation_layers(model) == 4
