"""bso_snn.neurons.LIF: numerics against hand-written references, online mode, registration."""

import copy
import io
import math

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn import registry
from bso_snn.neurons import LIF, OnlineMixin


def reference_lif(x_seq, tau, v_threshold, v_reset):
    """Plain loop over steps and elements: (spikes, membrane after reset) per step."""
    lam = 1 - 1 / tau
    h = torch.full_like(x_seq[0], 0.0 if v_reset is None else v_reset)
    spikes, membranes = [], []
    for x in x_seq:
        u = lam * h + x
        s = (u >= v_threshold).float()
        h = u - v_threshold * s if v_reset is None else torch.where(s > 0, torch.full_like(u, v_reset), u)
        spikes.append(s)
        membranes.append(h)
    return torch.stack(spikes), torch.stack(membranes)


@pytest.mark.parametrize(
    "tau, v_threshold, v_reset",
    [(2.0, 1.0, None), (4.0, 0.5, None), (2.0, 1.0, 0.0), (3.0, 1.0, -0.2), (1.0, 1.0, None)],
)
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_lif_matches_reference(tau, v_threshold, v_reset, step_mode):
    torch.manual_seed(0)
    x_seq = torch.randn(6, 3, 5) * 1.5
    neuron = LIF(tau=tau, v_threshold=v_threshold, v_reset=v_reset, step_mode=step_mode)
    spikes_ref, membranes_ref = reference_lif(x_seq, tau, v_threshold, v_reset)
    if step_mode == "m":
        spikes = neuron(x_seq)
        torch.testing.assert_close(neuron.v, membranes_ref[-1], rtol=0, atol=1e-6)
    else:
        spikes = []
        for t, x in enumerate(x_seq):
            spikes.append(neuron(x))
            torch.testing.assert_close(neuron.v, membranes_ref[t], rtol=0, atol=1e-6)
        spikes = torch.stack(spikes)
    assert torch.equal(spikes, spikes_ref)
    assert spikes.sum() > 0 and spikes.sum() < spikes.numel()  # the test exercises both branches


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
def test_atan_surrogate_gradient(alpha):
    x = torch.linspace(-2, 3, 11, requires_grad=True)
    neuron = LIF(tau=2.0, v_threshold=1.0, alpha=alpha)
    neuron(x).sum().backward()  # first step from rest: u = x
    z = x.detach() - 1.0
    expected = (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)
    torch.testing.assert_close(x.grad, expected)


def test_multi_step_equals_single_step_loop_under_bptt():
    torch.manual_seed(1)
    x_seq = (torch.randn(5, 2, 4) * 2).requires_grad_()
    weights = torch.randn(5, 2, 4)
    multi = LIF(step_mode="m")
    (multi(x_seq) * weights).sum().backward()
    grad_multi = x_seq.grad.clone()
    x_seq.grad = None
    single = LIF()
    torch.stack([single(x) for x in x_seq]).mul(weights).sum().backward()
    torch.testing.assert_close(x_seq.grad, grad_multi)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tau": 0.5}, r"tau=0.5 must be >= 1"),
        ({"alpha": 0.0}, r"alpha=0.0 must be > 0"),
        ({"step_mode": "x"}, r"step_mode='x' must be 's'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LIF(**kwargs)


def test_state_shape_mismatch_asks_for_reset():
    neuron = LIF()
    neuron(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match=r"state has shape \(2, 3\) but the input is \(4, 3\).*reset"):
        neuron(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"step_mode='m' expects \[T, N, ...\]"):
        LIF(step_mode="m")(torch.zeros(3))


def test_registered_and_lam_inferred():
    net = nn.Sequential(nn.Linear(3, 4), LIF(tau=4.0), nn.Linear(4, 4), LIF(tau=4.0), nn.Linear(4, 2))
    support = registry.neuron_support(net[1])
    assert support is not None and support.decay(net[1]) == 0.75
    report = bso_snn.convert(net)
    assert report.lam == 0.75 and report.online_neurons == ["1", "3"]
    assert all(isinstance(net[i], OnlineMixin) and support.is_online(net[i]) for i in (1, 3))
    support.make_online(net[1])  # idempotent
    assert type(net[1]).__mro__.count(OnlineMixin) == 1


def test_online_mode_keeps_numerics_and_cuts_time():
    torch.manual_seed(2)
    x_seq = torch.randn(4, 3, 5) * 2
    plain, online = LIF(), LIF()
    registry.neuron_support(online).make_online(online)
    for x in x_seq:
        assert torch.equal(plain(x), online(x))
        torch.testing.assert_close(plain.v, online.v, rtol=0, atol=0)

    # per-step backward: fails through time un-converted, works online
    weight = torch.randn(5, 5, requires_grad=True)
    plain.reset(), online.reset()
    plain(x_seq[0] @ weight).sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        plain(x_seq[1] @ weight).sum().backward()
    for x in x_seq:
        online(x @ weight).sum().backward()


def test_reset_and_copies():
    net = nn.Sequential(nn.Linear(3, 4), LIF(), nn.Linear(4, 4), LIF(), nn.Linear(4, 2))
    bso_snn.convert(net)
    for x in torch.randn(3, 2, 3):
        net(x).sum().backward()
    assert isinstance(net[1].v, torch.Tensor)
    bso_snn.reset(net)
    assert net[1].v == 0.0 and net[3].v == 0.0 and net[2].bso_trace is None
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(net), torch.load(buffer, weights_only=False)):
        assert isinstance(clone[1], OnlineMixin) and isinstance(clone[1], LIF)
        x = torch.randn(2, 3)
        torch.testing.assert_close(clone(x), net(x))
        bso_snn.reset(net)


def test_every_online_mode_follows_the_one_contract():
    from bso_snn.online import OnlineNeuron, is_online, make_online

    modes = [OnlineMixin]
    for adapter in ("bso_snn.adapters.spikingjelly_neurons", "bso_snn.adapters.snntorch"):
        modes.append(pytest.importorskip(adapter).OnlineMixin)
    assert all(issubclass(mode, OnlineNeuron) for mode in modes)
    neuron = LIF()
    make_online(neuron, OnlineMixin)
    make_online(neuron, OnlineMixin)  # idempotent
    assert is_online(neuron) and type(neuron).__mro__[1] is OnlineMixin
    with pytest.raises(
        TypeError, match=r"make_online: mode must be an OnlineNeuron subclass, got <class 'int'>"
    ):
        make_online(LIF(), int)
