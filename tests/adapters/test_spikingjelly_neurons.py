"""SpikingJelly neurons in online mode (both releases): gradients against a hand-written reference,
single-step vs multi-step, lam inference, refusals, backends kept, deepcopy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from bso_snn.adapters import spikingjelly as sja
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import bso_snn
from bso_snn.registry import neuron_support

T, N, D_IN, D_HID, D_OUT = 5, 3, 6, 8, 4

# (id, constructor, neuron dynamics for the reference, lam given to convert or None to infer it)
NEURONS = {
    "IF": (lambda: neuron.IFNode(), 1.0, None),
    "LIF-hard": (lambda: neuron.LIFNode(tau=2.0), 0.5, None),
    "LIF-soft-nodecay": (
        lambda: neuron.LIFNode(tau=4.0, decay_input=False, v_reset=None, detach_reset=True),
        0.75,
        None,
    ),
    "PLIF": (lambda: neuron.ParametricLIFNode(init_tau=2.0), 0.5, 0.5),
}


def _charge(node: nn.Module, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SpikingJelly's charge equations, written out (v_reset None counts as 0 here)."""
    vr = 0.0 if node.v_reset is None else node.v_reset
    if isinstance(node, neuron.IFNode):
        return v + x
    k = 1.0 / node.tau if isinstance(node, neuron.LIFNode) else node.w.sigmoid()
    if node.decay_input:
        return v + (x - (v - vr)) * k
    return v - (v - vr) * k + x


def _fire_and_reset(node: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    spike = node.surrogate_function(h - node.v_threshold)
    s = spike.detach() if node.detach_reset else spike
    if node.v_reset is None:
        return spike, h - s * node.v_threshold
    return spike, h * (1.0 - s) + node.v_reset * s


def _build(kind: str, step_mode: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    make = NEURONS[kind][0]
    net = nn.Sequential(
        layer.Linear(D_IN, D_HID), make(), layer.Linear(D_HID, D_HID), make(), layer.Linear(D_HID, D_OUT)
    )
    with torch.no_grad():  # strong enough input that every neuron spikes now and then
        net[0].weight.mul_(4.0)
        net[0].bias.fill_(0.3)
    functional.set_step_mode(net, step_mode)
    return net


def _ndot_factor(p: torch.Tensor, p_prev: torch.Tensor, lam: float) -> torch.Tensor:
    """The authors' NDOT decay (HaiyanJiang/SNN-DNOT, OnlineLIFNode): clamp(p[t] / p[t-1], -lam, lam),
    lam where an operand or the quotient is NaN/inf or p[t-1] == 0."""
    out = torch.empty_like(p)
    for i, (a, b) in enumerate(zip(p.flatten().tolist(), p_prev.flatten().tolist(), strict=True)):
        ratio = lam if b == 0 or not (math.isfinite(a) and math.isfinite(b)) else a / b
        ratio = lam if not math.isfinite(ratio) else ratio
        out.view(-1)[i] = min(max(ratio, -lam), lam)
    return out


def reference_gradients(
    net: nn.Sequential, x: torch.Tensor, target: torch.Tensor, lam: float, trace: str = "ottt"
) -> dict:
    """OTTT (or NDOT) by hand on an *unconverted* copy: the neuron state is cut between steps, and
    the middle layer (±1 weights) gets dL/dW = sum_t g[t]^T a_hat[t], a_hat[t] = mu[t] a_hat[t-1] + s[t],
    a_hat[0] = s[0], with mu = lam (OTTT) or the authors' P[t] = clamp(p[t] / p[t-1]) of the first
    neuron (NDOT), p[t] = h[t] - V_th s[t], h[t] its membrane after firing and reset."""
    ref = copy.deepcopy(net)
    with torch.no_grad():
        ref[2].weight.copy_(bso_snn.sign(ref[2].weight))
    n1, n2 = ref[1], ref[3]
    v1 = torch.zeros(N, D_HID) + (n1.v_reset or 0.0)
    v2 = torch.zeros(N, D_HID) + (n2.v_reset or 0.0)
    a_hat = p_prev = None
    grad_w2 = torch.zeros_like(ref[2].weight)
    for t in range(T):
        s1, v1 = _fire_and_reset(n1, _charge(n1, v1.detach(), ref[0](x[t])))
        p = v1.detach() - n1.v_threshold * s1.detach()
        if a_hat is None:
            a_hat = s1.detach()
        else:
            mu = lam if trace == "ottt" else _ndot_factor(p, p_prev, lam)
            a_hat = mu * a_hat + s1.detach()
        p_prev = p
        z2 = ref[2](s1)
        z2.retain_grad()
        s2, v2 = _fire_and_reset(n2, _charge(n2, v2.detach(), z2))
        loss = 0.5 * (ref[4](s2) - target[t]).pow(2).sum()
        loss.backward()
        grad_w2 += z2.grad.t() @ a_hat
    grads = {name: p.grad.clone() for name, p in ref.named_parameters()}
    grads["2.weight"] = grad_w2
    return grads


def converted_gradients(
    net: nn.Sequential,
    x: torch.Tensor,
    target: torch.Tensor,
    lam: float | None,
    step_mode: str,
    trace: str = "ottt",
):
    report = bso_snn.convert(net, lam=lam, trace=trace)
    assert report.converted == ["2"] and report.online_neurons == ["1", "3"]
    if step_mode == "s":  # the real-time loop: one backward per step
        for t in range(T):
            (0.5 * (net(x[t]) - target[t]).pow(2).sum()).backward()
    else:  # an ordinary multi-step script: one backward over [T, N, *]
        (0.5 * (net(x) - target).pow(2).sum()).backward()
    return report, {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("kind", list(NEURONS))
def test_online_gradients_equal_hand_written_ottt(kind, step_mode):
    _, lam, lam_arg = NEURONS[kind]
    net = _build(kind, step_mode)
    torch.manual_seed(1)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    expected = reference_gradients(net, x, target, lam)
    report, got = converted_gradients(net, x, target, lam_arg, step_mode)
    assert report.lam == lam
    assert expected["2.weight"].abs().sum() > 0, "the binary layer got no gradient: no spikes"
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("kind", list(NEURONS))
def test_ndot_gradients_equal_hand_written_ndot(kind, step_mode):
    """The online neurons publish their membrane after reset, which NDOT traces read."""
    _, lam, lam_arg = NEURONS[kind]
    net = _build(kind, step_mode)
    torch.manual_seed(1)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    expected = reference_gradients(net, x, target, lam, trace="ndot")
    ottt = reference_gradients(net, x, target, lam)
    _, got = converted_gradients(net, x, target, lam_arg, step_mode, trace="ndot")
    assert not torch.allclose(expected["2.weight"], ottt["2.weight"])  # NDOT is not OTTT here
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", list(NEURONS))
def test_one_multi_step_backward_equals_per_step_backwards(kind):
    """A multi-step script's single backward gives the OTTT-accumulated gradient of the real-time
    loop (T=1 slices through the neuron's own multi-step code)."""
    _, _, lam_arg = NEURONS[kind]
    torch.manual_seed(2)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    _, single = converted_gradients(_build(kind, "s"), x, target, lam_arg, "s")
    _, multi = converted_gradients(_build(kind, "m"), x, target, lam_arg, "m")
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-5, atol=1e-5, msg=name)


def test_unconverted_multi_step_gradient_differs():
    """Guard for the test above: without online mode the same script backpropagates through time."""
    torch.manual_seed(2)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    _, online = converted_gradients(_build("LIF-hard", "m"), x, target, None, "m")
    net = _build("LIF-hard", "m")
    bso_snn.convert(net, online=False, lam=0.5)
    (0.5 * (net(x) - target).pow(2).sum()).backward()
    assert not torch.allclose(net[0].weight.grad, online["0.weight"])


def test_lam_inference():
    assert bso_snn.convert(_build("LIF-hard", "s")).lam == 0.5
    assert bso_snn.convert(_build("IF", "s")).lam == 1.0
    mixed = nn.Sequential(
        nn.Linear(2, 3), neuron.LIFNode(tau=2.0), nn.Linear(3, 3), neuron.IFNode(), nn.Linear(3, 1)
    )
    with pytest.raises(ValueError, match="different trace decays"):
        bso_snn.convert(mixed)
    # learnable tau: no inferred lam, alone or beside a LIF
    with pytest.raises(ValueError, match="(?i)pass lam explicitly"):
        bso_snn.convert(_build("PLIF", "s"))
    plif = nn.Sequential(
        nn.Linear(2, 3), neuron.LIFNode(), nn.Linear(3, 3), neuron.ParametricLIFNode(), nn.Linear(3, 1)
    )
    with pytest.raises(ValueError, match=r"decay of neurons \['3'\] cannot be told"):
        bso_snn.convert(plif)


def test_online_mode_keeps_numerics_state_and_backend_code_path():
    torch.manual_seed(3)
    x = torch.rand(T, N, D_IN)
    plain, online = _build("LIF-hard", "m"), _build("LIF-hard", "m")
    bso_snn.convert(online, lam=0.5)
    bso_snn.convert(plain, lam=0.5, online=False)
    torch.testing.assert_close(online(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(online[1].v, plain[1].v, rtol=0, atol=0)
    cls = type(online[1])
    assert isinstance(online[1], neuron.LIFNode) and cls.__name__ == "OnlineLIFNode"
    # 2.0.0's fast multi-step LIF path is taken only when this method is LIFNode's own.
    if not sja.CLASSIC:
        assert cls.single_step_functional_forward is neuron.LIFNode.single_step_functional_forward
        assert cls.multi_step_functional_forward is neuron.LIFNode.multi_step_functional_forward
    else:
        assert online[1].backend == "torch"


def test_store_v_seq_is_kept_in_multi_step():
    torch.manual_seed(4)
    net = _build("LIF-hard", "m")
    net[1].store_v_seq = True
    bso_snn.convert(net)
    net(torch.rand(T, N, D_IN)).sum().backward()
    assert net[1].v_seq.shape == (T, N, D_HID)
    torch.testing.assert_close(net[1].v_seq[-1], net[1].v)


@pytest.mark.usefixtures("restore_registry")
def test_other_spikingjelly_neurons_are_refused_with_the_fix():
    custom = type("MyNode", (neuron.LIFNode,), {})
    net = nn.Sequential(nn.Linear(2, 3), custom(), nn.Linear(3, 3), neuron.LIFNode(), nn.Linear(3, 1))
    with pytest.raises(TypeError, match=r"MyNode subclasses the neuron .*LIFNode.*register_neuron"):
        bso_snn.convert(net)
    qif = nn.Sequential(nn.Linear(2, 3), neuron.QIFNode(), nn.Linear(3, 3), neuron.LIFNode(), nn.Linear(3, 1))
    with pytest.raises(TypeError, match=r"QIFNode subclasses the neuron .*BaseNode"):
        bso_snn.convert(qif, lam=0.5)
    # ... and registering it with the generic support makes it work.
    bso_snn.register_neuron(custom, sja.memory_neuron_support(decay=lambda node: 1 - 1 / node.tau))
    assert bso_snn.convert(net).online_neurons == ["1", "3"]


@pytest.mark.skipif(sja.CLASSIC, reason="OTTTLIFNode exists only in SpikingJelly 2.0.0")
@pytest.mark.parametrize(
    "name, why", [("OTTTLIFNode", r"returns \[spike, trace\]"), ("SLTTLIFNode", "already cuts")]
)
def test_online_neurons_of_spikingjelly_are_refused(name, why):
    node = getattr(neuron, name)()
    net = nn.Sequential(nn.Linear(2, 3), node, nn.Linear(3, 3), neuron.LIFNode(), nn.Linear(3, 1))
    with pytest.raises(TypeError, match=f"{name} is not supported by bso-snn: SpikingJelly's own .*{why}"):
        bso_snn.convert(net)


def test_support_entries_and_idempotence():
    net = _build("LIF-hard", "s")
    bso_snn.convert(net)
    support = neuron_support(net[1])
    assert support.is_online(net[1]) and support.decay(net[1]) == 0.5
    cls = type(net[1])
    bso_snn.convert(net)
    assert type(net[1]) is cls
    assert neuron_support(_build("PLIF", "s")[1]).decay(neuron.ParametricLIFNode()) is None
    assert math.isclose(neuron_support(neuron.LIFNode(tau=3.0)).decay(neuron.LIFNode(tau=3.0)), 2 / 3)


def test_deepcopy_and_pickle_keep_online_mode(tmp_path):
    net = _build("LIF-hard", "m")
    bso_snn.convert(net)
    x = torch.rand(T, N, D_IN)
    out = net(x)
    functional.reset_net(net)
    clone = copy.deepcopy(net)
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    for other in (clone, loaded):
        assert type(other[1]) is type(net[1]) and type(other[2]) is type(net[2])
        torch.testing.assert_close(other(x), out)
        other(x).sum().backward()  # online: no "backward through the graph a second time"


def test_neurons_inside_multi_step_container_are_online():
    """MultiStepContainer calls single-step neurons once per step: same gradients as the
    multi-step network."""
    torch.manual_seed(6)
    x, target = torch.rand(T, N, D_IN), torch.rand(T, N, D_OUT)
    grads = []
    for contained in (False, True):
        net = _build("LIF-hard", "m")
        if contained:
            functional.set_step_mode(net[2:4], "s")
            net = nn.Sequential(net[0], net[1], layer.MultiStepContainer(net[2], net[3]), net[4])
        report = bso_snn.convert(net)
        assert len(report.online_neurons) == 2 and len(report.converted) == 1
        (0.5 * (net(x) - target).pow(2).sum()).backward()
        grads.append([p.grad for p in net.parameters()])
    for contained, flat in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(contained, flat, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(neuron, "PSN"), reason="this SpikingJelly release has no PSN family")
def test_neurons_outside_basenode_are_refused_by_name():
    for make, reason in (
        (lambda: neuron.PSN(T=2), r"PSN is not supported by bso-snn: a parallel spiking neuron"),
        (lambda: neuron.SlidingPSN(k=2), r"SlidingPSN is not supported by bso-snn: a parallel spiking"),
        (lambda: neuron.GatedLIFNode(T=2), r"GatedLIFNode is not supported by bso-snn: it is not a subclass"),
    ):
        model = nn.Sequential(nn.Linear(3, 3), make(), nn.Linear(3, 3), nn.Linear(3, 3))
        state = copy.deepcopy(model.state_dict())
        with pytest.raises(TypeError, match=reason):
            bso_snn.convert(model, lam=0.5)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert not any(bso_snn.is_binary_layer(m) for m in model.modules())
