"""NDOT traces: the decay rule, the per-step gradient against a hand loop, and where NDOT must refuse."""

import io

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.neurons import LIF
from bso_snn.traces import ndot_ratio

LAM = 0.5


def reference_decay(h_prev, h_prev2, lam):
    """e = clamp(h[t-1] / h[t-2], -lam, lam); a zero denominator gives +lam if h[t-1] >= 0 else -lam."""
    out = []
    for num, den in zip(h_prev.flatten().tolist(), h_prev2.flatten().tolist(), strict=True):
        if den == 0:
            out.append(lam if num >= 0 else -lam)
        else:
            out.append(max(-lam, min(lam, num / den)))
    return torch.tensor(out).reshape(h_prev.shape)


@pytest.mark.parametrize(
    "num, den, expected",
    [
        (0.1, 0.4, 0.25),
        (-0.1, 0.4, -0.25),
        (0.3, -0.6, -0.5),
        (0.8, 0.4, 0.5),  # clamped from 2.0
        (-0.8, 0.4, -0.5),  # clamped from -2.0
        (0.3, 0.0, 0.5),  # zero denominator: sign of the numerator
        (-0.3, 0.0, -0.5),
        (0.0, 0.0, 0.5),  # 0/0: sign(0) = +1
        (0.0, 0.7, 0.0),
    ],
)
def test_ndot_ratio_table(num, den, expected):
    got = ndot_ratio(torch.tensor([num]), torch.tensor([den]), LAM)
    assert got.item() == pytest.approx(expected)
    assert ndot_ratio(torch.tensor([num]), den, LAM).item() == pytest.approx(expected)  # float h[t-2]


def net(trace="ndot"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), LIF(), nn.Flatten(), nn.Linear(12, 8), LIF(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # strong, mixed-sign input currents: spikes and negative membranes
    bso_snn.convert(model, trace=trace)
    return model


def test_per_step_gradient_matches_hand_ndot_loop():
    model = net()
    layer, neuron = model[3], model[1]
    inputs, zetas, membranes = [], [], [torch.zeros(4, 12)]  # h[0] = 0: the state after a reset

    def capture(module, args, out):
        inputs.append(args[0].detach())
        out.register_hook(zetas.append)

    layer.register_forward_hook(capture)
    torch.manual_seed(1)
    x_seq, c_seq = torch.randn(6, 4, 6), torch.randn(6, 4, 3)
    trace = None
    ottt_differs = False
    for t in range(6):
        model.zero_grad()
        model(x_seq[t]).backward(c_seq[t])
        membranes.append(neuron.v.detach())  # h[t+1] in 1-based steps
        # hand NDOT: a[1] = s[1]; a[t] = e[t-1] * a[t-1] + s[t], e[t-1] = clamp(h[t-1] / h[t-2])
        s = inputs[t]
        if trace is None:
            trace, ottt = s, s
        else:
            decay = reference_decay(membranes[t], membranes[t - 1], LAM)
            trace, ottt = decay * trace + s, LAM * ottt + s
        expected = zetas[t].T @ trace
        torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-6)
        ottt_differs |= not torch.allclose(expected, zetas[t].T @ ottt, atol=1e-4)
    assert ottt_differs  # NDOT really changed the gradient here
    hs = torch.stack(membranes[1:])
    assert (hs < 0).any() and (hs > 0).any() and (inputs[0].sum() > 0)  # both signs, spikes


class MaxPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0, self.lif0 = nn.Conv2d(1, 2, 3, padding=1), LIF()
        self.pool, self.conv1, self.lif1 = nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1), LIF()
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.lif1(self.conv1(self.pool(self.lif0(self.conv0(x))))).flatten(1))


class AddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0, self.lif0 = nn.Linear(4, 4), LIF()
        self.fc1, self.lif1 = nn.Linear(4, 4), LIF()
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        s = self.lif0(self.fc0(x))
        return self.fc2(self.lif1(self.fc1(s + s)))


def dropout_net():
    return nn.Sequential(nn.Linear(4, 4), LIF(), nn.Dropout(0.5), nn.Linear(4, 4), LIF(), nn.Linear(4, 2))


@pytest.mark.parametrize(
    "build, x, convert_kwargs, layer_name",
    [
        (MaxPoolNet, torch.rand(2, 1, 8, 8), {}, "BinaryLayerConv2d"),
        (dropout_net, torch.rand(2, 4), {}, "BinaryLayerLinear"),
        (AddNet, torch.rand(2, 4), {}, "BinaryLayerLinear"),
        (dropout_net, torch.rand(2, 4), {"skip_first_last": False}, "BinaryLayerLinear"),  # the raw input
    ],
    ids=["maxpool", "dropout", "residual-add", "network-input"],
)
def test_ndot_refuses_when_presynaptic_neuron_is_unknown(build, x, convert_kwargs, layer_name):
    model = build()
    bso_snn.convert(model, trace="ndot", **convert_kwargs)
    with pytest.raises(
        RuntimeError, match=rf"{layer_name} \(.*\) uses trace='ndot', but its input is not the output"
    ):
        model(x)
    for module in model.modules():  # the suggested fix works
        if bso_snn.is_binary_layer(module):
            module.bso_trace_mode = "ottt"
    bso_snn.reset(model)
    model(x).sum().backward()


def test_reset_neuron_without_layer_is_reported():
    model = net()
    model(torch.randn(4, 6))
    model[1].reset()  # the neuron only, not the layer's trace
    with pytest.raises(
        RuntimeError, match=r"holds a trace but its presynaptic neuron has no membrane history.*bso_snn.reset"
    ):
        model(torch.randn(4, 6))


def test_mismatched_step_modes_are_reported():
    model = nn.Sequential(nn.Linear(6, 12), LIF(), nn.Linear(12, 8), LIF(), nn.Linear(8, 3))
    bso_snn.convert(model, trace="ndot")
    model[2].bso_step_mode = "m"  # the neuron before it stays single-step
    with pytest.raises(RuntimeError, match=r"just ran 1 time step\(s\), while the layer reads 2"):
        model(torch.randn(2, 4, 6))


@pytest.mark.parametrize("trace, recording", [("ottt", False), ("ndot", True)])
def test_neurons_remember_membranes_only_for_ndot(trace, recording):
    model = net(trace)
    for x in torch.randn(3, 4, 6):
        model(x).sum().backward()
    remembered = getattr(model[1], "_bso_ndot_h_prev", None)
    assert isinstance(remembered, torch.Tensor) == recording
    assert getattr(model[4], "_bso_ndot_h_prev", None) is None  # feeds a float layer: never read


def test_transposed_or_sliced_views_are_not_the_neuron_output():
    model = nn.Sequential(nn.Linear(6, 4), LIF(), nn.Linear(4, 4), LIF(), nn.Linear(4, 3))
    bso_snn.convert(model, trace="ndot")
    x = torch.randn(4, 6)
    spikes = model[1](model[0](x))
    from bso_snn.traces import find_membrane_history

    assert find_membrane_history(spikes) is not None
    assert find_membrane_history(spikes.reshape(2, 8)) is not None
    assert find_membrane_history(spikes.t()) is None  # same elements, another order
    assert find_membrane_history(spikes[:2]) is None


def test_spike_tensors_save_and_copy_without_history():
    model = net()
    spikes = model[1](model[0](torch.randn(4, 6)))
    buffer = io.BytesIO()
    torch.save(spikes, buffer)
    buffer.seek(0)
    from bso_snn.traces import find_membrane_history

    loaded = torch.load(buffer)  # weights_only=True, the default
    assert torch.equal(loaded, spikes) and find_membrane_history(loaded) is None
