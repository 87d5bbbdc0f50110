"""Online training: hand-derived OTTT gradients, the loop helper, multi-step models, residual nets, reset."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.neurons import LIF
from bso_snn.online import evaluate, set_step_mode, train_step

LAM = 0.5  # LIF(tau=2)
ALPHA = 2.0


def surrogate(z):
    return (ALPHA / 2) / (1 + (math.pi / 2 * ALPHA * z) ** 2)


def mlp(step_mode="s"):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 10),
        LIF(step_mode=step_mode),
        nn.Linear(10, 8),
        LIF(step_mode=step_mode),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        for layer in (net[0], net[2], net[4]):
            layer.weight.mul_(2.0)
    return net


def test_per_step_gradient_is_hand_derived_ottt():
    """All three layers binary: dL[t]/dW_l = zeta_l[t]^T a_hat_l[t], zeta by the chain rule by hand,
    with the neuron state cut (no term through earlier steps)."""
    net = mlp()
    bso_snn.convert(net, skip_first_last=False)
    torch.manual_seed(1)
    steps, x_seq, c_seq = 5, torch.rand(5, 4, 6) * 2, torch.randn(5, 4, 3)
    w1, w2, w3 = (net[i].weight.detach().clone() for i in (0, 2, 4))
    b1, b2 = net[0].bias.detach(), net[2].bias.detach()
    a1 = a2 = a3 = 0.0
    h1, h2 = torch.zeros(4, 10), torch.zeros(4, 8)
    fired = 0.0
    for t in range(steps):
        net.zero_grad()
        net(x_seq[t]).backward(c_seq[t])  # L[t] = sum(c[t] * out[t])
        # forward by hand
        u1 = LAM * h1 + x_seq[t] @ w1.T + b1
        s1 = (u1 >= 1).float()
        h1 = u1 - s1
        u2 = LAM * h2 + s1 @ w2.T + b2
        s2 = (u2 >= 1).float()
        h2 = u2 - s2
        fired += s1.mean() + s2.mean()
        # OTTT traces and spatial gradients by hand
        a1, a2, a3 = LAM * a1 + x_seq[t], LAM * a2 + s1, LAM * a3 + s2
        zeta3 = c_seq[t]
        zeta2 = (zeta3 @ w3) * surrogate(u2 - 1)
        zeta1 = (zeta2 @ w2) * surrogate(u1 - 1)
        for layer, zeta, trace in ((net[4], zeta3, a3), (net[2], zeta2, a2), (net[0], zeta1, a1)):
            torch.testing.assert_close(layer.weight.grad, zeta.T @ trace, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(layer.bias.grad, zeta.sum(0), rtol=1e-5, atol=1e-6)
    assert fired > 0  # spikes happened, so the traces are not trivially zero


def _split(net):
    binary = {id(p) for p in bso_snn.binary_parameters(net)}
    return [p for p in net.parameters() if id(p) not in binary]


def _reference_loop(net, x_seq, target, lr, update):
    """The online loop written out by hand with a hand-written SGD update of the real parameters."""
    real = _split(net)
    bso_snn.reset(net)
    for p in net.parameters():
        p.grad = None
    losses, outputs = [], []
    for t in range(x_seq.shape[0]):
        out = net(x_seq[t])
        loss = nn.functional.cross_entropy(out, target)
        (loss / x_seq.shape[0]).backward()
        if update == "realtime":
            with torch.no_grad():
                for p in real:
                    p -= lr * p.grad
            for p in net.parameters():
                p.grad = None
        losses.append(loss.item())
        outputs.append(out.detach())
    if update == "accumulated":
        with torch.no_grad():
            for p in real:
                p -= lr * p.grad
    return sum(losses) / len(losses), torch.stack(outputs).mean(0)


@pytest.mark.parametrize("update", ["realtime", "accumulated"])
@pytest.mark.parametrize("trace", ["ottt", "ndot"])
def test_train_step_equals_hand_written_loop(update, trace):
    net = mlp()
    bso_snn.convert(net, trace=trace)
    reference = copy.deepcopy(net)
    torch.manual_seed(3)
    x_seq, target = torch.rand(4, 5, 6) * 2, torch.randint(0, 3, (5,))
    optimizer = torch.optim.SGD(_split(net), lr=0.5)
    for _ in range(2):  # two batches: the second starts from the updated weights
        result = train_step(net, x_seq, target, nn.functional.cross_entropy, optimizer, update=update)
        ref_loss, ref_output = _reference_loop(reference, x_seq, target, 0.5, update)
        assert result.loss == pytest.approx(ref_loss, rel=1e-6)
        torch.testing.assert_close(result.output, ref_output)
        assert not result.output.requires_grad
        for p, q in zip(net.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    assert not torch.equal(net[0].weight, mlp()[0].weight)  # the updates happened


def test_realtime_and_accumulated_differ():
    """The two schedules are really different (the equality test above could not tell otherwise)."""
    torch.manual_seed(4)
    x_seq, target = torch.rand(4, 5, 6) * 2, torch.randint(0, 3, (5,))
    finals = []
    for update in ("realtime", "accumulated"):
        net = mlp()
        bso_snn.convert(net)
        train_step(
            net,
            x_seq,
            target,
            nn.functional.cross_entropy,
            torch.optim.SGD(_split(net), lr=0.5),
            update=update,
        )
        finals.append(net[0].weight.detach().clone())
    assert not torch.allclose(finals[0], finals[1])


@pytest.mark.parametrize("trace", ["ottt", "ndot"])
def test_multi_step_gradient_equals_single_step_accumulated(trace):
    """One backward over [T, N, *] == sum of per-step backwards; float32 rounding: rtol 1e-5, atol 1e-6."""
    single = mlp("s")
    bso_snn.convert(single, trace=trace)
    multi = copy.deepcopy(single)
    set_step_mode(multi, "m")
    assert multi[1].step_mode == "m" and multi[2].bso_step_mode == "m"
    torch.manual_seed(5)
    x_seq, target = torch.rand(6, 5, 6) * 2, torch.randint(0, 3, (5,))
    bso_snn.reset(multi)
    out = multi(x_seq)
    sum(nn.functional.cross_entropy(out[t], target) for t in range(6)).div(6).backward()
    bso_snn.reset(single)
    for t in range(6):
        (nn.functional.cross_entropy(single(x_seq[t]), target) / 6).backward()
    for (name, p), q in zip(single.named_parameters(), multi.parameters(), strict=True):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_multi_step_model_in_train_step():
    net = mlp("m")
    bso_snn.convert(net)
    set_step_mode(net, "m")
    reference = copy.deepcopy(net)
    set_step_mode(reference, "s")
    torch.manual_seed(6)
    x_seq, target = torch.rand(3, 4, 6), torch.randint(0, 3, (4,))
    opt_m, opt_s = torch.optim.SGD(_split(net), lr=0.3), torch.optim.SGD(_split(reference), lr=0.3)
    res_m = train_step(net, x_seq, target, nn.functional.cross_entropy, opt_m, step_mode="m")
    res_s = train_step(reference, x_seq, target, nn.functional.cross_entropy, opt_s)
    assert res_m.loss == pytest.approx(res_s.loss, rel=1e-6)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(evaluate(net, x_seq, step_mode="m"), evaluate(reference, x_seq))


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.lif1 = nn.Conv2d(channels, channels, 3, padding=1), LIF()
        self.conv2, self.lif2 = nn.Conv2d(channels, channels, 3, padding=1), LIF()

    def forward(self, x):
        return self.lif2(self.conv2(self.lif1(self.conv1(x))) + x)


def residual_net():
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        LIF(),
        Block(4),
        Block(4),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 3),
    )


@pytest.mark.parametrize("trace", ["ottt", "ndot"])
def test_residual_network_trains_with_per_step_backward(trace):
    """Every binary conv of the blocks reads a neuron's output directly (the add feeds a neuron),
    so NDOT works here too."""
    net = residual_net()
    report = bso_snn.convert(net, trace=trace)
    assert len(report.converted) == 4
    before = net[2].conv1.weight.detach().clone()
    torch.manual_seed(8)
    x_seq, target = torch.rand(4, 2, 1, 8, 8), torch.randint(0, 3, (2,))
    real = _split(net)
    optimizer = torch.optim.SGD(real, lr=0.1)
    grads = []
    net[2].conv1.weight.register_hook(lambda g: grads.append(g.abs().sum().item()))
    for _ in range(2):
        result = train_step(net, x_seq, target, nn.functional.cross_entropy, optimizer)
        assert math.isfinite(result.loss)
    assert len(grads) == 8 and max(grads) > 0  # a gradient reached a binary layer at every step
    assert torch.equal(net[2].conv1.weight, before)  # binary weights untouched by the real-only SGD


def test_reset_is_recursive_and_local():
    net, other = residual_net(), residual_net()
    bso_snn.convert(net), bso_snn.convert(other)
    x = torch.rand(2, 1, 8, 8)
    for model in (net, other):
        for _ in range(2):
            model(x).sum().backward()
    neurons = [m for m in net.modules() if isinstance(m, LIF)]
    layers = [m for m in net.modules() if bso_snn.is_binary_layer(m)]
    assert all(isinstance(n.v, torch.Tensor) for n in neurons) and all(
        la.bso_trace is not None for la in layers
    )
    bso_snn.reset(net)
    assert all(n.v == 0.0 and n._bso_ndot_p is None for n in neurons)
    assert all(la.bso_trace is None for la in layers)
    assert all(isinstance(m.v, torch.Tensor) for m in other.modules() if isinstance(m, LIF))
    assert all(m.bso_trace is not None for m in other.modules() if bso_snn.is_binary_layer(m))


def test_plain_optimizer_needs_no_time_index_but_reset_stays_strict():
    net = mlp()
    bso_snn.convert(net)
    optimizer = torch.optim.SGD(_split(net), lr=0.1)
    train_step(
        net, torch.rand(2, 3, 6), torch.zeros(3, dtype=torch.long), nn.functional.cross_entropy, optimizer
    )
    with pytest.raises(TypeError, match="SGD, which has no reset_time_step"):
        bso_snn.reset(net, optimizer)


@pytest.mark.parametrize(
    "kwargs, inputs, message",
    [
        ({"update": "sometimes"}, torch.rand(2, 3, 6), r"update='sometimes' must be one of"),
        ({"step_mode": "x"}, torch.rand(2, 3, 6), r"step_mode='x' must be 's'"),
        ({}, torch.rand(6), r"inputs must be a tensor \[T, N, ...\] \(time first\), got \(6,\)"),
    ],
)
def test_train_step_bad_arguments(kwargs, inputs, message):
    net = mlp()
    bso_snn.convert(net)
    with pytest.raises(ValueError, match=message):
        train_step(net, inputs, torch.zeros(3, dtype=torch.long), nn.functional.cross_entropy, None, **kwargs)
    with pytest.raises(ValueError, match=r"step_mode='q' must be 's' or 'm'"):
        set_step_mode(net, "q")


def test_train_step_with_tbso_equals_hand_loop_and_flips_weights():
    """Real-time loop with T-BSO (binary) + SGD (real): the helper and a hand loop give the same
    flips and updates, T-BSO's time index starts at 0 every batch, weights stay exactly +-1."""
    from bso_snn.optim import TBSO, HybridOptimizer, split_parameters

    def optimizer_for(model):
        binary, real = split_parameters(model)
        return HybridOptimizer(TBSO(binary, gamma=1e-7, time_steps=4), torch.optim.SGD(real, lr=0.1))

    net = mlp()
    bso_snn.convert(net)
    reference = copy.deepcopy(net)
    opt, opt_ref = optimizer_for(net), optimizer_for(reference)
    start = net[2].weight.detach().clone()
    torch.manual_seed(9)
    for _ in range(3):
        x_seq, target = torch.rand(4, 8, 6) * 2, torch.randint(0, 3, (8,))
        opt.optimizers[0].set_time_step(2)  # train_step must rewind it
        train_step(net, x_seq, target, nn.functional.cross_entropy, opt)
        assert opt.optimizers[0].time_step == 4  # 4 steps from 0: the sequence is complete
        bso_snn.reset(reference, opt_ref)
        for t in range(4):
            opt_ref.zero_grad()
            (nn.functional.cross_entropy(reference(x_seq[t]), target) / 4).backward()
            opt_ref.step()
        for p, q in zip(net.parameters(), reference.parameters(), strict=True):
            assert torch.equal(p, q)
    assert set(net[2].weight.unique().tolist()) == {-1.0, 1.0}
    assert (net[2].weight != start).any()  # some signs flipped


def test_evaluate_is_the_time_averaged_output_without_tracing():
    net = mlp()
    bso_snn.convert(net)
    torch.manual_seed(10)
    x_seq = torch.rand(5, 3, 6) * 2
    scores = evaluate(net, x_seq)
    assert not scores.requires_grad and net[2].bso_trace is None  # no tracing under no_grad
    bso_snn.reset(net)
    with torch.no_grad():
        expected = sum(net(x) for x in x_seq) / 5
    torch.testing.assert_close(scores, expected)


class _PairOutput(nn.Module):
    """Returns (spikes, membrane)-like pairs, as snnTorch models with output=True do."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        out = self.body(x)
        return out * 0, out


def test_tuple_outputs_need_output_fn_and_then_train_like_the_plain_model():
    torch.manual_seed(0)
    plain = mlp()
    bso_snn.convert(plain)
    paired = _PairOutput(copy.deepcopy(plain))
    x, y = torch.rand(3, 4, 6), torch.randint(0, 3, (4,))
    loss = nn.functional.cross_entropy
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt_paired = torch.optim.SGD(paired.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"returned tuple, not a tensor; pass output_fn"):
        train_step(paired, x, y, loss, opt_paired)
    expected = train_step(plain, x, y, loss, opt_plain)
    got = train_step(paired, x, y, loss, opt_paired, output_fn=lambda out: out[1])
    assert got.loss == expected.loss
    torch.testing.assert_close(got.output, expected.output, rtol=0, atol=0)
    torch.testing.assert_close(
        evaluate(paired, x, output_fn=lambda out: out[1]), evaluate(plain, x), rtol=0, atol=0
    )


@pytest.mark.usefixtures("restore_registry")
def test_reset_leaves_neurons_it_does_not_drive_alone():
    """A refused neuron kept with online=False: reset clears the traces and the supported neurons,
    and leaves the refused one to its own library."""

    class Unsupported(LIF):
        pass

    bso_snn.refuse_neuron(Unsupported, "test neuron")
    model = nn.Sequential(nn.Linear(6, 8), Unsupported(), nn.Linear(8, 8), LIF(), nn.Linear(8, 3))
    with pytest.raises(TypeError, match="Unsupported is not supported by bso-snn: test neuron"):
        bso_snn.convert(copy.deepcopy(model))
    bso_snn.convert(model, lam=0.5, online=False)
    model(torch.rand(4, 6) * 3).sum().backward()
    assert model[2].bso_trace is not None
    kept = model[1].v
    bso_snn.reset(model)
    assert model[2].bso_trace is None
    assert model[1].v is kept  # untouched
    assert model[3].v == model[3].v_initial  # the supported neuron is reset


@pytest.mark.gpu
def test_train_step_synchronises_with_the_host_once_per_batch():
    """The per-step losses stay on the GPU; with a torch optimizer (no flip statistics or
    finiteness checks of its own) the only host sync of a batch is the final loss."""
    device = torch.device("cuda")
    model = nn.Sequential(nn.Linear(6, 8), LIF(), nn.Linear(8, 8), LIF(), nn.Linear(8, 3)).to(device)
    bso_snn.convert(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, foreach=True)
    x, y = torch.rand(4, 5, 6, device=device), torch.randint(0, 3, (5,), device=device)
    train_step(model, x, y, nn.functional.cross_entropy, opt)  # warm-up (lazy initialisation)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_step(model, x, y, nn.functional.cross_entropy, opt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


class _TimeMean(nn.Module):
    """A multi-step model that averages its output over time inside: returns [N, C]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x_seq):
        return self.net(x_seq).mean(0)


def _converted_multi_step():
    net = mlp("m")
    bso_snn.convert(net)
    set_step_mode(net, "m")
    return net


@pytest.mark.parametrize("loss_fn", [nn.functional.cross_entropy, "mse"])
def test_multi_step_model_returning_n_c_trains_on_the_right_tensor(loss_fn):
    """[N, C] from inputs[t:t+1] is that step's output; it was once taken as out[0] (sample 0)."""
    if loss_fn == "mse":
        loss_fn = lambda out, y: nn.functional.mse_loss(out, nn.functional.one_hot(y, 3).float())  # noqa: E731
    time_first = _converted_multi_step()
    reduced = _TimeMean(copy.deepcopy(time_first))
    torch.manual_seed(7)
    x_seq, target = torch.rand(3, 4, 6), torch.randint(0, 3, (4,))
    results = []
    for net in (time_first, reduced):
        opt = torch.optim.SGD(_split(net), lr=0.3)
        results.append(train_step(net, x_seq, target, loss_fn, opt, step_mode="m"))
    assert results[1].output.shape == (4, 3)
    assert results[1].loss == pytest.approx(results[0].loss, rel=1e-6)
    torch.testing.assert_close(results[1].output, results[0].output)
    for p, q in zip(time_first.parameters(), reduced.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(
        evaluate(reduced, x_seq, step_mode="m"), evaluate(time_first, x_seq, step_mode="m")
    )


class _Fixed(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


def test_ambiguous_or_wrong_output_shapes_are_errors():
    net = _TimeMean(_converted_multi_step())
    x_one, target = torch.rand(2, 1, 6), torch.tensor([1])
    one_out = nn.Sequential(net, nn.Linear(3, 1))  # [N=1, 1] per step: [1, 1] fits both
    opt = torch.optim.SGD(_split(net), lr=0.1)
    loss = lambda out, y: out.sum()  # noqa: E731
    with pytest.raises(
        ValueError, match=r"returned shape \(1, 1\) for 1 time step\(s\) of 1 sample\(s\): that is"
    ):
        train_step(one_out, x_one, target, loss, opt, step_mode="m")
    train_step(one_out, x_one, target, loss, opt, step_mode="m", output_layout="n")
    with pytest.raises(ValueError, match=r"output_layout='tn' but the model returned shape \(1, 3\)"):
        train_step(net, x_one, target, loss, opt, step_mode="m", output_layout="tn")
    with pytest.raises(
        ValueError, match=r"returned shape \(3,\) for 1 time step\(s\) of 4 sample\(s\): neither"
    ):
        evaluate(_Fixed(torch.zeros(3)), torch.rand(2, 4, 6), step_mode="m")
    with pytest.raises(ValueError, match=r"output_layout='x' must be 'tn'"):
        evaluate(net, x_one, step_mode="m", output_layout="x")
    with pytest.raises(
        ValueError, match=r"step_mode='sequence' runs one forward over all T steps.*accumulated"
    ):
        train_step(net, x_one, target, loss, opt, step_mode="sequence")


@pytest.mark.parametrize("reduce_inside", [False, True])
def test_sequence_path_equals_the_accumulated_per_step_update(reduce_inside):
    """One forward over [T, N, ...] and one update give what T per-step calls with an accumulated
    update give (the converted layers trace over time inside the call; neurons detach per step)."""
    per_step = _converted_multi_step()
    whole = copy.deepcopy(per_step)
    if reduce_inside:
        whole = _TimeMean(whole)
    torch.manual_seed(8)
    x_seq, target = torch.rand(4, 5, 6), torch.randint(0, 3, (5,))
    opt_a, opt_b = torch.optim.SGD(_split(per_step), lr=0.3), torch.optim.SGD(_split(whole), lr=0.3)
    loss_fn = nn.functional.cross_entropy
    a = train_step(per_step, x_seq, target, loss_fn, opt_a, step_mode="m", update="accumulated")
    b = train_step(whole, x_seq, target, loss_fn, opt_b, step_mode="sequence", update="accumulated")
    torch.testing.assert_close(b.output, a.output)
    if not reduce_inside:  # loss of the mean output differs from the mean of per-step losses
        assert b.loss == pytest.approx(a.loss, rel=1e-6)
        for p, q in zip(per_step.parameters(), whole.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    inner = whole.net if reduce_inside else whole
    torch.testing.assert_close(
        evaluate(whole, x_seq, step_mode="sequence"), evaluate(inner, x_seq, step_mode="m")
    )
