"""SpikingJelly layers converted to sign-weight layers (both releases): step modes, containers,
weight gradient against the trace reference, WS layers refused, state_dict/pickle unchanged."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from bso_snn.adapters import spikingjelly as sja
from spikingjelly.activation_based import functional, layer
from torch import nn

import bso_snn

T, N, LAM = 4, 2, 0.5


def _spikes(*shape: int) -> torch.Tensor:
    return (torch.rand(*shape) > 0.5).float()


def _reference_traces(x_seq: torch.Tensor) -> torch.Tensor:
    """a_hat[t] = LAM * a_hat[t-1] + x[t], by a plain loop."""
    out, acc = [], torch.zeros_like(x_seq[0])
    for x in x_seq:
        acc = LAM * acc + x
        out.append(acc)
    return torch.stack(out)


def _expected_weight_grad(float_layer: nn.Module, x_seq: torch.Tensor, g_seq: torch.Tensor) -> torch.Tensor:
    """sum_t dW of (float_layer applied to a_hat[t]) with output gradient g[t]: the layer is linear
    in its input, so this is sum_t g[t]^T a_hat[t] (or its convolution form)."""
    ref = copy.deepcopy(float_layer)
    ref.weight.grad = None
    traces = _reference_traces(x_seq)
    for t in range(x_seq.shape[0]):
        out = _plain(ref)(traces[t])
        out.backward(g_seq[t])
    return ref.weight.grad


def _plain(module: nn.Module):
    """The torch functional forward of a Linear/Conv layer, whatever its SpikingJelly step mode."""
    if isinstance(module, nn.Linear):
        return lambda x: nn.functional.linear(x, module.weight, module.bias)
    return lambda x: module._conv_forward(x, module.weight, module.bias)


# (id, make the layer, per-step input shape)
LAYERS = {
    "Linear": (lambda mode: layer.Linear(6, 3, step_mode=mode), (N, 6)),
    "Conv1d": (lambda mode: layer.Conv1d(2, 3, 3, padding=1, step_mode=mode), (N, 2, 7)),
    "Conv2d": (lambda mode: layer.Conv2d(2, 3, 3, padding=1, stride=2, step_mode=mode), (N, 2, 6, 6)),
}


def _convert_alone(module: nn.Module) -> nn.Module:
    report = bso_snn.convert(module, skip_first_last=False, lam=LAM)
    assert report.converted == [""]
    return module


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_keeps_step_mode_and_gets_trace_gradient(kind, step_mode):
    make, shape = LAYERS[kind]
    torch.manual_seed(0)
    converted = _convert_alone(make(step_mode))
    assert converted.step_mode == step_mode and bso_snn.sign(converted.weight).equal(converted.weight)
    float_twin = copy.deepcopy(converted)
    x_seq, torch_g = _spikes(T, *shape), None
    outs = []
    if step_mode == "m":
        out = converted(x_seq)
        torch_g = torch.randn_like(out)
        out.backward(torch_g)
        outs = list(out)
    else:
        gs = []
        for t in range(T):
            out = converted(x_seq[t])
            gs.append(torch.randn_like(out))
            out.backward(gs[-1])
            outs.append(out)
        torch_g = torch.stack(gs)
    for t in range(T):  # forward = the plain layer on the spikes
        torch.testing.assert_close(outs[t], _plain(float_twin)(x_seq[t]))
    torch.testing.assert_close(converted.weight.grad, _expected_weight_grad(float_twin, x_seq, torch_g))


def _container_net(container: str) -> tuple[nn.Module, nn.Module]:
    """(net, the converted conv inside it); the conv's input is [T*N, ...] or one step at a time."""
    conv, bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    if container == "SeqToANNContainer":
        inner = layer.SeqToANNContainer(conv, bn)
    elif container == "MultiStepContainer":
        if not sja.CLASSIC:  # a single-step SpikingJelly layer, called T times (0.0.0.0.14's
            conv = layer.Conv2d(2, 3, 3, padding=1)  # set_step_mode would switch it to 'm')
        inner = layer.MultiStepContainer(conv, bn)
    else:
        # the step mode argument exists only in 2.0.0
        inner = (
            layer.StepModeContainer(False, conv, bn)
            if sja.CLASSIC
            else layer.StepModeContainer(False, "s", conv, bn)
        )
    net = nn.Sequential(inner)
    functional.set_step_mode(net, "m")
    if container == "StepModeContainer":
        inner.step_mode = "m"
    return net, conv


@pytest.mark.parametrize("container", ["SeqToANNContainer", "MultiStepContainer", "StepModeContainer"])
def test_layers_inside_containers_trace_over_time(container):
    torch.manual_seed(1)
    net, conv = _container_net(container)
    report = bso_snn.convert(net, lam=LAM, skip_first_last=False)
    assert report.converted == ["0.0"]
    assert not hasattr(conv, "step_mode") or conv.step_mode == "s"
    float_twin = copy.deepcopy(conv)
    x_seq = _spikes(T, N, 2, 5, 5)
    net[0].eval()  # BatchNorm in eval: a fixed affine map, so the upstream gradient is known below
    conv.train()
    out = net[0](x_seq)
    g = torch.randn_like(out)
    out.backward(g)
    # gradient at the conv output: the eval BatchNorm scales channel c by gamma/sqrt(var + eps)
    bn = net[0][1]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(1, 1, -1, 1, 1)
    torch.testing.assert_close(conv.weight.grad, _expected_weight_grad(float_twin, x_seq, g * scale))
    assert conv.bso_flat_steps is None  # only set during the container's call


@pytest.mark.parametrize("container", ["SeqToANNContainer", "MultiStepContainer"])
def test_set_step_mode_after_conversion_does_not_break_containers(container):
    """0.0.0.0.14's set_step_mode also walks into containers and would switch the layers there to
    'm'; inside a container the layout comes from the container, whatever their step_mode."""
    torch.manual_seed(2)
    net, conv = _container_net(container)
    bso_snn.convert(net, lam=LAM, skip_first_last=False)
    functional.set_step_mode(net, "m")
    float_twin = copy.deepcopy(conv)
    net.eval()
    conv.train()
    x_seq = _spikes(T, N, 2, 5, 5)
    out = net(x_seq)
    g = torch.randn_like(out)
    out.backward(g)
    bn = net[0][1]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(1, 1, -1, 1, 1)
    torch.testing.assert_close(conv.weight.grad, _expected_weight_grad(float_twin, x_seq, g * scale))


@pytest.mark.parametrize(
    "set_before", [True, False], ids=["set_step_mode-then-convert", "convert-then-set_step_mode"]
)
def test_plain_layer_between_multi_step_neurons_follows_the_step_mode(set_before):
    """A plain nn.Linear fed by a multi-step neuron gets [T, N, F]: it traces over T whether the
    script sets the step mode before or after converting."""
    from spikingjelly.activation_based import neuron

    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), neuron.IFNode(), nn.Linear(6, 3), neuron.IFNode(), nn.Linear(3, 2))
    if set_before:
        functional.set_step_mode(net, "m")
    bso_snn.convert(net, lam=LAM)
    if not set_before:
        functional.set_step_mode(net, "m")
    assert net[2].step_mode == "m"
    x = torch.rand(T, N, 4) * 3
    spikes = net[1](net[0](x)).detach()
    functional.reset_net(net)
    float_twin = copy.deepcopy(net[2])
    out = net[:3](x)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(net[2].weight.grad, _expected_weight_grad(float_twin, spikes, g))


def test_single_step_layer_fed_a_multi_step_neuron_raises():
    from spikingjelly.activation_based import neuron

    net = nn.Sequential(nn.Linear(4, 6), neuron.IFNode(), nn.Linear(6, 3), neuron.IFNode(), nn.Linear(3, 2))
    functional.set_step_mode(net, "m")
    bso_snn.convert(net, lam=LAM)
    net[2].step_mode = "s"
    with pytest.raises(
        RuntimeError, match=r"step_mode='s' but its input \(4, 2, 6\) comes from a neuron that just ran 4"
    ):
        net(torch.rand(T, N, 4))


@pytest.mark.skipif(sja.CLASSIC, reason="TLastSeqToANNContainer exists only in SpikingJelly 2.0.0")
def test_t_last_container_is_refused_when_training():
    net = nn.Sequential(layer.TLastSeqToANNContainer(nn.Linear(3, 3)))
    bso_snn.convert(net, lam=LAM, skip_first_last=False)
    x = torch.rand(N, 3, T)
    with pytest.raises(RuntimeError, match="TLastSeqToANNContainer runs its children under torch.vmap"):
        net(x)
    with torch.no_grad():
        assert net(x).shape == (N, 3, T)


@pytest.mark.skipif(
    sja.CLASSIC, reason="WSConv2d/WSLinear exist only in SpikingJelly 2.0.0 (not in 0.0.0.0.14)"
)
@pytest.mark.parametrize("make", [lambda: layer.WSConv2d(2, 3, 3), lambda: layer.WSLinear(4, 3)])
def test_weight_standardised_layers_are_refused(make):
    net = nn.Sequential(nn.Linear(2, 2), make(), nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"WS(Conv2d|Linear) cannot be converted: weight standardisation"):
        bso_snn.convert(net, skip_first_last=False, lam=LAM)
    assert not bso_snn.is_binary_layer(net[0])


@pytest.mark.skipif(sja.CLASSIC, reason="WSConv2d exists only in SpikingJelly 2.0.0")
def test_why_ws_layers_are_refused():
    """The stated reason holds: standardising ±1 weights gives non-binary effective weights."""
    ws = layer.WSConv2d(2, 3, 3, gain=False)
    with torch.no_grad():
        ws.weight.copy_(bso_snn.sign(torch.randn_like(ws.weight)))
    assert not bso_snn.sign(ws.get_weight()).equal(ws.get_weight())


def test_state_dict_keys_and_values_unchanged():
    torch.manual_seed(3)
    net, _ = _container_net("SeqToANNContainer")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bso_snn.convert(net, lam=LAM, skip_first_last=False)
    after = net.state_dict()
    assert list(after) == list(before)
    fresh, _ = _container_net("SeqToANNContainer")
    fresh.load_state_dict(after)  # an unconverted model loads a converted checkpoint (strict)


def test_after_convert_is_idempotent():
    net, conv = _container_net("SeqToANNContainer")
    bso_snn.convert(net, lam=LAM, skip_first_last=False)
    classes = [type(m) for m in net.modules()]
    bso_snn.convert(net, lam=LAM, skip_first_last=False)
    sja.after_convert(net)
    assert [type(m) for m in net.modules()] == classes
    assert sum(isinstance(m, sja.TraceMemory) for m in conv.modules()) == 1


def test_torch_save_load_in_a_fresh_process(tmp_path):
    torch.manual_seed(4)
    net, _ = _container_net("SeqToANNContainer")
    bso_snn.convert(net, lam=LAM, skip_first_last=False)
    x = _spikes(T, N, 2, 5, 5)
    net.eval()
    torch.save({"net": net, "x": x, "y": net(x)}, tmp_path / "net.pt")
    code = (
        "import torch, bso_snn;"
        f"d = torch.load({str(tmp_path / 'net.pt')!r}, weights_only=False);"
        "assert type(d['net'][0]).__name__ == 'FlatStepsSeqToANNContainer', type(d['net'][0]);"
        "assert type(d['net'][0][0]).__name__ == 'ResettableBinaryConv2d';"
        "torch.testing.assert_close(d['net'](d['x']), d['y']); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
