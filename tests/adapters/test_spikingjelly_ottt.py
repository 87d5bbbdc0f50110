"""Gradients of a converted model equal SpikingJelly 2.0.0's own OTTT implementation
(``OTTTLIFNode`` + ``OTTTSequential``) on the same network and weights."""

from __future__ import annotations

import copy

import pytest
import torch
from bso_snn.adapters import spikingjelly as sja
from spikingjelly.activation_based import functional, neuron
from torch import nn

import bso_snn

pytestmark = pytest.mark.skipif(
    sja.CLASSIC, reason="OTTTLIFNode/OTTTSequential exist only in SpikingJelly 2.0.0 (not in 0.0.0.0.14)"
)

T, N, D_IN, D_HID, D_OUT, TAU = 6, 4, 10, 16, 3, 2.0


def _linears() -> list[nn.Linear]:
    torch.manual_seed(0)
    layers = [nn.Linear(D_IN, D_HID), nn.Linear(D_HID, D_HID), nn.Linear(D_HID, D_OUT)]
    with torch.no_grad():
        layers[0].weight.mul_(5.0)
        for binary in layers[1:]:  # the layers OTTT trains with traces hold ±1 weights in both
            binary.weight.copy_(bso_snn.sign(binary.weight))
    return layers


def spikingjelly_ottt_gradients(x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """SpikingJelly's OTTT: (spike, trace) pairs flow through OTTTSequential; one backward per step."""
    from spikingjelly.activation_based.layer import OTTTSequential

    l0, l1, l2 = _linears()
    net = OTTTSequential(l0, neuron.OTTTLIFNode(tau=TAU), l1, neuron.OTTTLIFNode(tau=TAU), l2)
    for t in range(T):
        nn.functional.mse_loss(net(x[t]), target[t]).backward()
    return {name: p.grad for name, p in net.named_parameters()}


def converted_gradients(x: torch.Tensor, target: torch.Tensor, step_mode: str) -> dict[str, torch.Tensor]:
    l0, l1, l2 = _linears()

    def lif() -> nn.Module:  # OTTTLIFNode's dynamics, as an ordinary LIFNode
        return neuron.LIFNode(tau=TAU, decay_input=False, v_reset=None, detach_reset=True)

    net = nn.Sequential(l0, lif(), l1, lif(), l2)
    functional.set_step_mode(net, step_mode)
    # OTTTSequential's first layer sees the input tensor, not a (spike, trace) pair, so it gets an
    # ordinary gradient: keep it float and untraced here too. Its later layers are traced.
    report = bso_snn.convert(net, skip_first_last=False, filter_fn=lambda module, name: name != "0")
    assert report.converted == ["2", "4"] and report.lam == 1 - 1 / TAU
    if step_mode == "s":
        for t in range(T):
            nn.functional.mse_loss(net(x[t]), target[t]).backward()
    else:  # one backward over the sequence: the sum of the per-step losses
        out = net(x)
        sum(nn.functional.mse_loss(out[t], target[t]) for t in range(T)).backward()
    return {name: p.grad for name, p in net.named_parameters()}


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_gradients_equal_spikingjelly_ottt(step_mode):
    torch.manual_seed(1)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    expected = spikingjelly_ottt_gradients(x, target)
    got = converted_gradients(x, target, step_mode)
    assert got.keys() == expected.keys()
    assert all(g.abs().sum() > 0 for g in expected.values()), "a layer got no gradient: no spikes"
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1.3e-6, atol=1e-6, msg=name)


def test_equivalence_is_not_vacuous():
    """Guard: a different trace decay gives different gradients than SpikingJelly's OTTT."""
    torch.manual_seed(1)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    expected = spikingjelly_ottt_gradients(x, target)
    l0, l1, l2 = _linears()
    net = nn.Sequential(l0, neuron.LIFNode(tau=TAU, decay_input=False, v_reset=None, detach_reset=True), l1)
    net = copy.deepcopy(net)
    bso_snn.convert(net, skip_first_last=False, filter_fn=lambda module, name: name != "0", lam=0.9)
    for t in range(T):
        out = nn.functional.linear(net(x[t]), l2.weight, l2.bias)
        nn.functional.mse_loss(out, target[t]).backward()
    assert not torch.allclose(net[2].weight.grad, expected["2.weight"], rtol=1e-3, atol=1e-4)
