"""SpikingJelly's own reset_net / detach_net on converted models (both releases): traces and neuron
state cleared, no warnings, 2.0.0's reset cache invalidated; and bso_snn.reset does the same."""

from __future__ import annotations

import torch
from bso_snn.adapters import spikingjelly as sja
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import bso_snn

T, N = 3, 2


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(1, 3, 3, padding=1),
        neuron.LIFNode(),
        layer.SeqToANNContainer(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)),
        neuron.IFNode(),
        layer.Flatten(),
        nn.Linear(3 * 4 * 4, 5),  # a plain torch layer in a SpikingJelly model
        neuron.LIFNode(),
        layer.Linear(5, 2),
    )
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    return net


def _traces(net: nn.Module) -> list:
    return [m.bso_trace for m in net.modules() if bso_snn.is_binary_layer(m)]


def _run(net: nn.Module) -> None:
    net(torch.rand(T, N, 1, 4, 4)).sum().backward()


def test_reset_net_clears_traces_and_neurons_without_warnings(sj_warnings):
    net = _net()
    functional.reset_net(net)  # before converting: 2.0.0 caches the resettable modules here
    report = bso_snn.convert(net, skip_first_last=False, lam=0.5)
    assert report.converted == ["0", "2.0", "5", "7"]
    _run(net)
    assert all(isinstance(t, torch.Tensor) for t in _traces(net))
    assert isinstance(net[1].v, torch.Tensor)
    functional.reset_net(net)
    assert _traces(net) == [None, None, None, None]
    assert net[1].v == 0.0 and net[3].v == 0.0
    _run(net)  # a new batch size would fail on a stale trace; the same size starts afresh
    functional.reset_net(net)
    assert _traces(net) == [None, None, None, None]
    assert sj_warnings == []


def test_detach_net_works_without_warnings(sj_warnings):
    net = _net()
    bso_snn.convert(net, skip_first_last=False, lam=0.5)
    net[1].v = torch.zeros(N, 3, 4, 4, requires_grad=True) * 2.0  # a state with history
    functional.detach_net(net)
    assert net[1].v.grad_fn is None
    _run(net)
    functional.detach_net(net)
    assert all(t.grad_fn is None for t in _traces(net))
    assert sj_warnings == []


def test_bso_reset_clears_spikingjelly_neurons_and_traces():
    net = _net()
    bso_snn.convert(net, skip_first_last=False, lam=0.5)
    _run(net)
    bso_snn.reset(net)
    assert _traces(net) == [None, None, None, None]
    assert net[1].v == 0.0 and net[3].v == 0.0 and net[6].v == 0.0


def test_trace_lives_in_a_spikingjelly_memory():
    net = _net()
    bso_snn.convert(net, skip_first_last=False, lam=0.5)
    memories = [m for m in net.modules() if isinstance(m, sja.TraceMemory)]
    assert len(memories) == 4
    _run(net)
    assert memories[0].trace is net[0].bso_trace
    net[0].reset_trace()
    assert memories[0].trace is None


def test_without_conversion_glue_the_classic_reset_net_would_warn(sj_warnings):
    """Guard for the no-warning tests: the collector sees SpikingJelly's warning about a module
    with reset() that is not a MemoryModule."""

    class NotMemory(nn.Module):
        def reset(self):
            pass

    functional.reset_net(nn.Sequential(NotMemory()))
    assert any("MemoryModule" in message for message in sj_warnings)
