"""bso_snn.export_nir: converted networks written as NIR graphs, saved with nir.write, read back with
nir.read, imported by snnTorch's and SpikingJelly 2.0's NIR readers, and run: the imported networks
must produce the converted network's output spikes at every one of T steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.export import ExportError
from bso_snn.neurons import LIF

nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")
snn = pytest.importorskip("snntorch")
sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import layer, neuron  # noqa: E402

try:
    from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir as sj_import
except ImportError:  # 0.0.0.0.14 has no NIR reader
    sj_import = None
from snntorch.import_nir import import_from_nir as snntorch_import  # noqa: E402

T = 8
DT = 1e-4  # what snnTorch's reader assumes; SpikingJelly's is told


def _run_converted(net, x):
    """The converted network's output spikes over the T steps of x, in eval mode."""
    net.eval()
    bso_snn.reset(net)
    with torch.no_grad():
        if any(getattr(m, "step_mode", None) == "m" for m in net.modules()):
            out = net(x)
        else:
            out = torch.stack([net(x[t]) for t in range(x.shape[0])])
    bso_snn.reset(net)
    return out[0] if isinstance(out, tuple) else out


def _run_snntorch(graph, x):
    """snnTorch's import keeps neuron state inside (init_hidden=True); its Flatten keeps NIR's
    start_dim as a torch start_dim, so it flattens the batch too: run one sample at a time."""
    outs = []
    for n in range(x.shape[1]):
        imported = snntorch_import(graph)
        steps = []
        with torch.no_grad():
            for t in range(x.shape[0]):
                out = imported(x[t, n : n + 1])
                out = out[0] if isinstance(out, tuple) else out
                steps.append(out.reshape(-1))
        outs.append(torch.stack(steps))
    return torch.stack(outs, dim=1)


def _run_spikingjelly(graph, x):
    imported = sj_import(graph, dt=DT)
    state, steps = None, []
    with torch.no_grad():
        for t in range(x.shape[0]):
            out, state = imported(x[t], state)
            steps.append(out)
    return torch.stack(steps)


def _roundtrip(graph, tmp_path):
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    return nir.read(path)


def _assert_binary_nodes(graph, names):
    for name in names:
        weight = graph.nodes[name].weight
        assert weight.dtype == np.float32 and set(np.unique(weight)) == {-1.0, 1.0}, name


def _assert_same_spikes(expected, got):
    assert expected.shape == got.shape
    assert 0 < expected.mean() < 1  # neither silent nor saturated: the comparison means something
    assert torch.equal(expected, got)


def _loud(net, gain=4.0):
    """Scale the float weights up so that every neuron layer fires now and then (the default init
    keeps small networks almost silent); the converted layers are ±1 either way."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.weight.mul_(gain)
    return net


def _torch_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 24),
        LIF(tau=2.0, v_threshold=0.7, v_reset=0.0),
        nn.Linear(24, 16),
        LIF(tau=2.0, v_threshold=1.3, v_reset=0.0),
        nn.Linear(16, 5),
        LIF(tau=2.0, v_threshold=0.9, v_reset=0.0),
    )
    bso_snn.convert(_loud(net))  # first and last layers stay float, "3" becomes ±1
    return net, torch.rand(T, 3, 1, 4, 4) * 1.5, ["3"]


def _torch_cnn():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        LIF(tau=4.0, v_threshold=0.8, v_reset=0.0),
        nn.Conv2d(6, 6, 3, stride=1, padding=1, bias=False),
        LIF(tau=4.0, v_threshold=2.1, v_reset=0.0),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
        LIF(tau=4.0, v_threshold=1.7, v_reset=0.0),
        nn.Linear(10, 4),
        LIF(tau=4.0, v_threshold=0.6, v_reset=0.0),
    )
    bso_snn.convert(_loud(net))
    return net, torch.rand(T, 2, 1, 6, 6) * 1.5, ["2", "6"]


def _snntorch_mlp():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Linear(10, 20),
        snn.Leaky(beta=0.75, threshold=0.8, reset_mechanism="zero", init_hidden=True),
        nn.Linear(20, 12),
        snn.Leaky(beta=0.75, threshold=1.9, reset_mechanism="zero", init_hidden=True),
        nn.Linear(12, 4),
        snn.Leaky(beta=0.75, threshold=0.7, reset_mechanism="zero", init_hidden=True),
    )
    bso_snn.convert(_loud(net))
    return net, torch.rand(T, 3, 10) * 1.5, ["2"]


def _spikingjelly_cnn(step_mode="s", decay_input=True):
    torch.manual_seed(3)
    net = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1, step_mode=step_mode),
        neuron.LIFNode(tau=2.0, v_threshold=0.6, v_reset=0.0, decay_input=decay_input, step_mode=step_mode),
        layer.Conv2d(4, 4, 3, padding=1, step_mode=step_mode),
        neuron.IFNode(v_threshold=2.3, v_reset=0.0, step_mode=step_mode),
        layer.AvgPool2d(2, step_mode=step_mode),
        layer.Flatten(step_mode=step_mode),
        layer.Linear(4 * 2 * 2, 8, step_mode=step_mode),
        neuron.LIFNode(tau=2.0, v_threshold=0.9, v_reset=0.0, decay_input=decay_input, step_mode=step_mode),
        layer.Linear(8, 3, step_mode=step_mode),
        neuron.LIFNode(tau=2.0, v_threshold=0.4, v_reset=0.0, decay_input=decay_input, step_mode=step_mode),
    )
    bso_snn.convert(_loud(net), lam=0.5)
    return net, torch.rand(T, 2, 1, 4, 4) * 2, ["2", "6"]


NETS = {"torch-mlp": _torch_mlp, "torch-cnn": _torch_cnn, "snntorch-mlp": _snntorch_mlp}


@pytest.mark.parametrize("kind", NETS)
def test_roundtrip_through_both_readers(kind, tmp_path):
    net, x, binary = NETS[kind]()
    expected = _run_converted(net, x)
    graph = _roundtrip(bso_snn.export_nir(net, x[0]), tmp_path)
    _assert_binary_nodes(graph, binary)
    _assert_same_spikes(expected, _run_snntorch(graph, x))
    if sj_import is not None:
        _assert_same_spikes(expected, _run_spikingjelly(graph, x))


@pytest.mark.skipif(sj_import is None, reason="this SpikingJelly release has no NIR reader")
@pytest.mark.parametrize(("step_mode", "decay_input"), [("s", True), ("s", False), ("m", True)])
def test_spikingjelly_network_roundtrip(step_mode, decay_input, tmp_path):
    """IF neurons, and LIF with decay_input=False (r = tau), read back by SpikingJelly's reader;
    snnTorch's reader turns nir.IF into a Leaky with beta=0.9, so it is not asked."""
    net, x, binary = _spikingjelly_cnn(step_mode, decay_input)
    expected = _run_converted(net, x)
    graph = _roundtrip(bso_snn.export_nir(net, x if step_mode == "m" else x[0]), tmp_path)
    _assert_binary_nodes(graph, binary)
    assert isinstance(graph.nodes["3"], nir.IF) and isinstance(graph.nodes["1"], nir.LIF)
    _assert_same_spikes(expected, _run_spikingjelly(graph, x))


def test_parameters_follow_the_readers_conventions():
    net, x, _ = _snntorch_mlp()
    graph = bso_snn.export_nir(net, x[0], dt=DT)
    lif = graph.nodes["1"]
    assert isinstance(lif, nir.LIF) and lif.tau.shape == (20,)
    np.testing.assert_allclose(lif.tau, DT / (1 - 0.75))  # Euler: v += dt/tau (-v + r I) = 0.75 v + I
    np.testing.assert_allclose(lif.r * DT / lif.tau, 1.0)
    assert (lif.v_leak == 0).all() and (lif.v_reset == 0).all()
    np.testing.assert_allclose(lif.v_threshold, 0.8)
    assert graph.edges[0] == ("input", "0") and graph.edges[-1] == ("5", "output")
    assert list(graph.nodes["input"].input_type["input"]) == [10]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: nn.Sequential(nn.Linear(4, 4), LIF()),
            r"v_reset=None.*soft reset \(v_reset=None\) has no NIR",
        ),
        (
            lambda: nn.Sequential(nn.Linear(4, 4), snn.Leaky(beta=0.5, init_hidden=True)),
            r"reset_mechanism='subtract'; NIR's LIF resets",
        ),
        (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()), r"no NIR mapping for 1 \(ReLU\)"),
        (
            lambda: nn.Sequential(nn.Linear(4, 4), nn.MaxPool1d(2)),
            r"no NIR mapping for 1 \(MaxPool1d\).*bso_snn.export.register_nir",
        ),
        (lambda: _Residual(), r"the input of fc2 \(Linear\) is not the output of an exported module"),
        (lambda: nn.Sequential(nn.Flatten(0), nn.Linear(8, 4)), r"flatten the batch/time dimensions"),
    ],
)
def test_what_nir_cannot_hold_is_refused_by_name(make, message):
    with pytest.raises(ExportError, match=message):
        bso_snn.export_nir(make(), torch.rand(2, 4))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(self.fc1(x) + x)


def test_export_leaves_the_model_as_it_was():
    net, x, _ = _torch_mlp()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    bso_snn.export_nir(net, x[0])
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert net[2].v == net[2].v_initial  # neurons reset after the tracing run


@pytest.mark.skipif(sj_import is None, reason="this SpikingJelly release has no NIR reader")
def test_conv1d_network_roundtrip_through_spikingjelly(tmp_path):
    """nir.Conv1d (snnTorch's reader has no Conv1d, so only SpikingJelly's is asked)."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1),
        LIF(tau=2.0, v_threshold=0.7, v_reset=0.0),
        nn.Conv1d(6, 6, 3, stride=2, dilation=1),
        LIF(tau=2.0, v_threshold=1.9, v_reset=0.0),
        nn.Flatten(),
        nn.Linear(6 * 4, 5),
        LIF(tau=2.0, v_threshold=0.6, v_reset=0.0),
    )
    bso_snn.convert(_loud(net))
    x = torch.rand(T, 3, 2, 10) * 1.5
    expected = _run_converted(net, x)
    graph = _roundtrip(bso_snn.export_nir(net, x[0]), tmp_path)
    assert isinstance(graph.nodes["2"], nir.Conv1d)
    _assert_binary_nodes(graph, ["2"])
    _assert_same_spikes(expected, _run_spikingjelly(graph, x))
