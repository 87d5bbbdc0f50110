"""NDOT traces against a loop transcription of the authors' rule, and the plumbing that feeds a layer
its presynaptic neuron's membrane (views, custom forwards, deepcopy, torch.compile, DDP, refusals)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.neurons import LIF
from bso_snn.traces import ndot_factor, safe_divide

LAM, VTH = 0.5, 1.0


def authors_factor(p: float, p_prev: float, lam: float) -> float:
    """HaiyanJiang/SNN-DNOT modules/neuron.py: clamp(safe_divide(p[t], p[t-1], default=lam), -lam, lam);
    safe_divide gives the default for NaN/inf operands, a NaN/inf quotient and a zero denominator."""
    if not (math.isfinite(p) and math.isfinite(p_prev)) or p_prev == 0:
        ratio = lam
    else:
        ratio = p / p_prev
        ratio = lam if not math.isfinite(ratio) else ratio
    return max(-lam, min(lam, ratio))


def authors_lif_traces(currents: list[torch.Tensor], lam: float = LAM, vth: float = VTH):
    """Loop transcription of the authors' OnlineLIFNode (soft reset, v_reset=None) per element:
    v = lam*v + x; s = [v >= vth]; v = v - vth*s; p = v - vth*s; a[0] = s[0],
    a[t] = a[t-1] * P[t] + s[t]. Returns spikes and traces per step."""
    shape = currents[0].shape
    n = currents[0].numel()
    v, a, p_prev = [0.0] * n, [0.0] * n, [0.0] * n
    spikes, traces = [], []
    for t, x in enumerate(currents):
        s_t, a_t = [], []
        for j, xj in enumerate(x.flatten().tolist()):
            v[j] = v[j] * lam + xj
            s = 1.0 if v[j] - vth >= 0 else 0.0
            v[j] = v[j] - vth * s
            p = v[j] - vth * s
            a[j] = s if t == 0 else a[j] * authors_factor(p, p_prev[j], lam) + s
            p_prev[j] = p
            s_t.append(s)
            a_t.append(a[j])
        spikes.append(torch.tensor(s_t, dtype=torch.float64).reshape(shape))
        traces.append(torch.tensor(a_t, dtype=torch.float64).reshape(shape))
    return spikes, traces


@pytest.mark.parametrize(
    "num, den, expected",
    [
        (0.1, 0.4, 0.25),
        (-0.1, 0.4, -0.25),
        (0.3, -0.6, -0.5),
        (0.8, 0.4, 0.5),  # clamped from 2.0
        (-0.8, 0.4, -0.5),  # clamped from -2.0
        (0.3, 0.0, 0.5),  # zero denominator: lam, whatever the numerator's sign
        (-0.3, 0.0, 0.5),
        (0.0, 0.0, 0.5),
        (0.0, 0.7, 0.0),
        (math.nan, 0.5, 0.5),
        (0.5, math.inf, 0.5),
        (-math.inf, 1.0, 0.5),
        (1e308, 1e-308, 0.5),  # the quotient overflows to inf
    ],
)
def test_safe_divide_and_the_ndot_factor_follow_the_authors(num, den, expected):
    got = ndot_factor(torch.tensor([num], dtype=torch.float64), torch.tensor([den], dtype=torch.float64), LAM)
    assert got.item() == expected == authors_factor(num, den, LAM)
    assert safe_divide(torch.tensor([1.0]), torch.tensor([0.0]), 7.0).item() == 7.0


def ndot_net(dtype=torch.float64, flatten: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    middle = nn.Flatten() if flatten else nn.Identity()  # Flatten would fold T into the features in 'm'
    model = nn.Sequential(nn.Linear(6, 12), LIF(), middle, nn.Linear(12, 8), LIF(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # strong, mixed-sign currents: spikes and negative membranes
        model[0].bias.zero_()
        model[0].weight[:3] = 0.0  # three neurons never receive input: zero membranes throughout
    model.to(dtype)
    bso_snn.convert(model, trace="ndot")
    return model


def silent_inputs(steps: int, seed: int) -> torch.Tensor:
    x = torch.randn(steps, 5, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] = 0.0  # a silent sample: zero current, zero membrane, p = 0 at every step
    x[2:, 1] = 0.0  # a sample that falls silent after two steps
    return x


def run_recording(model: nn.Sequential, x_seq: torch.Tensor, c_seq: torch.Tensor):
    """Per-step backward as in real-time training; returns the currents into the first neuron,
    the layer's input, its trace, its zeta and its weight gradient at every step."""
    layer = model[3]
    record = {"current": [], "spikes": [], "trace": [], "zeta": [], "grad": []}

    def current(module, args, out):
        record["current"].append(out.detach())

    def spikes_and_zeta(module, args, out):
        record["spikes"].append(args[0].detach())
        out.register_hook(record["zeta"].append)

    hooks = [model[0].register_forward_hook(current), layer.register_forward_hook(spikes_and_zeta)]
    bso_snn.reset(model)
    for t in range(x_seq.shape[0]):
        model.zero_grad()
        model(x_seq[t]).backward(c_seq[t])
        record["trace"].append(layer.bso_trace.clone())
        record["grad"].append(layer.weight.grad.clone())
    for hook in hooks:
        hook.remove()
    return record


@pytest.mark.parametrize("steps", [4, 6])
def test_traces_and_weight_gradients_equal_the_authors_rule(steps):
    model = ndot_net()
    x_seq = silent_inputs(steps, seed=steps)
    c_seq = torch.randn(steps, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = run_recording(model, x_seq, c_seq)
    spikes, traces = authors_lif_traces(got["current"])
    ottt_differs = False
    for t in range(steps):
        assert torch.equal(got["spikes"][t], spikes[t])
        torch.testing.assert_close(got["trace"][t], traces[t], rtol=0, atol=1e-12)
        expected = got["zeta"][t].T @ traces[t]
        torch.testing.assert_close(got["grad"][t], expected, rtol=0, atol=1e-12)
        ottt = sum(LAM ** (t - k) * spikes[k] for k in range(t + 1))
        ottt_differs |= not torch.allclose(traces[t], ottt)
    assert ottt_differs  # NDOT really differs from OTTT on these inputs
    currents = torch.stack(got["current"])
    assert (currents[:, 0] == 0).all() and (currents[:, :, :3] == 0).all()  # silent inputs covered
    assert torch.stack(spikes).sum() > 0


def test_multi_step_mode_equals_the_authors_rule():
    steps = 6
    model = ndot_net(flatten=False)
    bso_snn.online.set_step_mode(model, "m")
    x_seq = silent_inputs(steps, seed=3)
    current = model[0](x_seq).detach()
    spikes, traces = authors_lif_traces(list(current))
    model(x_seq).sum().backward()
    torch.testing.assert_close(model[3].bso_trace, traces[-1], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- plumbing


class CustomForward(nn.Module):
    """No Sequential: the layer finds its neuron on its first eager call; reshape and view feed it."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc0, self.lif0 = nn.Linear(6, 12), LIF()
        self.fc1, self.lif1 = nn.Linear(12, 8), LIF()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        s = self.lif0(self.fc0(x).reshape(-1, 3, 4))
        s = s.reshape(s.shape[0], 12) if self.how == "reshape" else s.view(-1, 12)
        return self.fc2(self.lif1(self.fc1(s)))


@pytest.mark.parametrize("how", ["reshape", "view"])
def test_custom_forward_with_reshaping_views_finds_its_neuron(how):
    torch.manual_seed(0)
    model = CustomForward(how).double()
    reference = ndot_net()  # the same computation as a Sequential (Flatten), linked by convert
    with torch.no_grad():
        for a, b in ((model.fc0, reference[0]), (model.fc2, reference[5])):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        model.fc1.weight.copy_(reference[3].weight)
        model.fc1.bias.copy_(reference[3].bias)
    bso_snn.convert(model, trace="ndot")
    assert not hasattr(model.fc1, "bso_presynaptic")  # not linked at conversion: found at the first call
    x_seq, c_seq = silent_inputs(4, seed=5), torch.randn(4, 5, 3, dtype=torch.float64)
    got, expected = [], []
    for net, out in ((model, got), (reference, expected)):
        bso_snn.reset(net)
        for t in range(4):
            net.zero_grad()
            net(x_seq[t]).backward(c_seq[t])
            out.append(
                dict(net.named_parameters())["fc1.weight" if net is model else "3.weight"].grad.clone()
            )
    assert model.fc1.bso_presynaptic == (model.lif0,)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_transposed_or_sliced_views_are_refused():
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc0, self.lif0, self.fc1, self.fc2 = nn.Linear(4, 4), LIF(), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(self.fc1(self.lif0(self.fc0(x)).t()).t())

    model = Transposed()
    bso_snn.convert(model, trace="ndot")
    with pytest.raises(RuntimeError, match=r"uses trace='ndot', but its input is not the output"):
        model(torch.rand(4, 4))


def test_deepcopy_mid_sequence_continues_identically_on_its_own_neuron():
    model = ndot_net()
    x_seq, c_seq = silent_inputs(6, seed=7), torch.randn(6, 5, 3, dtype=torch.float64)
    bso_snn.reset(model)
    for t in range(3):
        model(x_seq[t]).backward(c_seq[t])
    twin = copy.deepcopy(model)
    assert twin[3].bso_presynaptic[0] is twin[1] and model[3].bso_presynaptic[0] is model[1]
    for t in range(3, 6):
        for net in (model, twin):
            net.zero_grad()
            net(x_seq[t]).backward(c_seq[t])
        assert torch.equal(model[3].weight.grad, twin[3].weight.grad)
        assert torch.equal(model[3].bso_trace, twin[3].bso_trace)


def test_torch_compile_eager_backend_matches_and_does_not_recompile_every_step():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, reference = ndot_net(), ndot_net()
    compiled = torch.compile(model, backend="eager")
    c_seq = torch.randn(4, 5, 3, dtype=torch.float64)
    graphs, first = [], []
    for seq in range(3):
        x_seq = silent_inputs(4, seed=10 + seq)
        bso_snn.reset(model)
        bso_snn.reset(reference)
        for t in range(4):
            model.zero_grad()
            reference.zero_grad()
            compiled(x_seq[t]).backward(c_seq[t])
            reference(x_seq[t]).backward(c_seq[t])
            torch.testing.assert_close(model[3].weight.grad, reference[3].weight.grad, rtol=0, atol=1e-12)
            if seq == 0:
                first.append(counters["stats"]["unique_graphs"])
        graphs.append(counters["stats"]["unique_graphs"])
    assert first[0] > 0  # it did compile
    assert first[1] == first[2] == first[3]  # steps 2-4 reuse the graphs of step 2
    assert graphs[1] == graphs[2]  # the third sequence compiled nothing new


def test_ddp_single_process_gloo_matches_the_plain_model(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, reference = ndot_net(), ndot_net()
        ddp = DistributedDataParallel(model)
        x_seq, c_seq = silent_inputs(4, seed=21), torch.randn(4, 5, 3, dtype=torch.float64)
        bso_snn.reset(model)
        bso_snn.reset(reference)
        for t in range(4):
            model.zero_grad()
            reference.zero_grad()
            ddp(x_seq[t]).backward(c_seq[t])
            reference(x_seq[t]).backward(c_seq[t])
            torch.testing.assert_close(model[3].weight.grad, reference[3].weight.grad, rtol=0, atol=1e-12)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- refusals


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


def test_mismatched_step_modes_are_reported():
    model = nn.Sequential(nn.Linear(6, 12), LIF(), nn.Linear(12, 8), LIF(), nn.Linear(8, 3))
    bso_snn.convert(model, trace="ndot")
    model[2].bso_step_mode = "m"  # the neuron before it stays single-step
    with pytest.raises(RuntimeError, match=r"just ran 1 time step\(s\), while the layer reads 2"):
        model(torch.randn(2, 4, 6))


@pytest.mark.parametrize("trace", ["ottt", "ndot"])
def test_neurons_compute_p_only_for_ndot(trace):
    model = nn.Sequential(nn.Linear(6, 12), LIF(), nn.Flatten(), nn.Linear(12, 8), LIF(), nn.Linear(8, 3))
    bso_snn.convert(model, trace=trace)
    for x in torch.randn(3, 4, 6):
        model(x).sum().backward()
    assert isinstance(getattr(model[1], "_bso_ndot_p", None), torch.Tensor) == (trace == "ndot")
    bso_snn.reset(model)
    assert model[1]._bso_ndot_p is None and model[1]._bso_last_output is None


def test_a_layer_switched_to_ndot_by_hand_asks_for_a_restart_once():
    model = nn.Sequential(nn.Linear(6, 12), LIF(), nn.Linear(12, 8), LIF(), nn.Linear(8, 3))
    bso_snn.convert(model)  # OTTT: neurons do not compute p
    model[2].bso_trace_mode = "ndot"
    with pytest.raises(RuntimeError, match=r"did not record its membrane in this step \(it now does\)"):
        model(torch.randn(4, 6))
    bso_snn.reset(model)
    model(torch.randn(4, 6)).sum().backward()  # the neuron records now
    assert model[2].bso_presynaptic == (model[1],)
