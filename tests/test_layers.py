"""Sign-weight layers: ±1 weights, and the OTTT gradient dL/dW = sum_t g[t]^T a_hat[t].

References are plain torch layers with the same ±1 weight: the input gradient is autograd of the
plain layer at x[t]; the weight (and bias) gradient is autograd of the plain layer applied to the
hand-computed trace a_hat[t] = lam * a_hat[t-1] + x[t]. Linear and a zero-padded Conv2d also get
a fully explicit formula (matrix products / torch.nn.grad.conv2d_weight).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bso_snn.layers import binarize_layer, binary_parameters, is_binary_layer
from bso_snn.online import reset
from bso_snn.sign import is_binary_tensor

LAM = 0.6
T, N = 4, 3

# name -> (layer factory, per-sample input shape)
CASES = {
    "linear": (lambda: nn.Linear(5, 3), (5,)),
    "linear_nobias": (lambda: nn.Linear(5, 3, bias=False), (5,)),
    "linear_leading_dims": (lambda: nn.Linear(5, 3), (2, 5)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), (3, 9)),
    "conv1d_same_even_reflect": (lambda: nn.Conv1d(3, 4, 4, padding="same", padding_mode="reflect"), (3, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 6, 6)),
    "conv2d_nobias": (lambda: nn.Conv2d(3, 4, 3, padding=1, bias=False), (3, 6, 6)),
    "conv2d_stride_dilation_groups": (
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        (4, 7, 7),
    ),
    "conv2d_same_even_kernel": (lambda: nn.Conv2d(3, 4, 4, padding="same"), (3, 6, 6)),
    "conv2d_same_dilated": (lambda: nn.Conv2d(3, 4, (2, 3), padding="same", dilation=(3, 1)), (3, 7, 6)),
    "conv2d_valid": (lambda: nn.Conv2d(3, 4, 3, padding="valid"), (3, 6, 6)),
    "conv2d_reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (3, 6, 6)),
    "conv2d_circular": (lambda: nn.Conv2d(3, 4, 3, padding=(1, 2), padding_mode="circular"), (3, 6, 6)),
    "conv2d_replicate_same_even": (
        lambda: nn.Conv2d(3, 4, 4, padding="same", padding_mode="replicate"),
        (3, 6, 6),
    ),
}


def _pair(case: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A converted float64 layer and a plain copy holding the same ±1 weight."""
    torch.manual_seed(seed)
    make, _ = CASES[case]
    plain = make().double()
    binary = copy.deepcopy(plain)
    binarize_layer(binary)
    binary.bso_lam = LAM
    with torch.no_grad():
        plain.weight.copy_(binary.weight)
    return binary, plain


def _spikes(case: str, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return (torch.rand(T, N, *CASES[case][1]) > 0.5).double()


def _hand_trace(x: torch.Tensor) -> torch.Tensor:
    out, acc = torch.empty_like(x), torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        acc = LAM * acc + x[t]
        out[t] = acc
    return out


def _reference(plain: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """(input grads [T, ...], weight grad, bias grad) by autograd of the plain layer."""
    grad_x = []
    for t in range(x.shape[0]):
        xt = x[t].clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(plain(xt), xt, g[t])
        grad_x.append(gx)
    plain.zero_grad()
    trace = _hand_trace(x)
    for t in range(x.shape[0]):
        plain(trace[t]).backward(g[t])
    bias = None if plain.bias is None else plain.bias.grad
    return torch.stack(grad_x), plain.weight.grad, bias


def _upstream(layer: nn.Module, x: torch.Tensor, seed: int = 2) -> torch.Tensor:
    with torch.no_grad():
        shape = torch.stack([layer(x[t]) for t in range(x.shape[0])]).shape
    torch.manual_seed(seed)
    return torch.randn(shape, dtype=x.dtype)


def _assert_grads(binary: nn.Module, grad_x: torch.Tensor, ref) -> None:
    ref_x, ref_w, ref_b = ref
    torch.testing.assert_close(grad_x, ref_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(binary.weight.grad, ref_w, rtol=1e-12, atol=1e-12)
    if ref_b is not None:
        torch.testing.assert_close(binary.bias.grad, ref_b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_single_step_gradients_match_reference(case):
    binary, plain = _pair(case)
    x = _spikes(case)
    g = _upstream(plain, x)
    grad_x = []
    for t in range(T):
        xt = x[t].clone().requires_grad_(True)
        binary(xt).backward(g[t])
        grad_x.append(xt.grad)
    _assert_grads(binary, torch.stack(grad_x), _reference(plain, x, g))


@pytest.mark.parametrize("case", CASES)
def test_multi_step_gradients_match_reference(case):
    binary, plain = _pair(case)
    binary.bso_step_mode = "m"
    x = _spikes(case)
    g = _upstream(plain, x)
    xs = x.clone().requires_grad_(True)
    out = binary(xs)
    assert out.shape == g.shape
    out.backward(g)
    _assert_grads(binary, xs.grad, _reference(plain, x, g))


@pytest.mark.parametrize("case", ["linear", "conv1d", "conv2d_stride_dilation_groups", "conv2d_reflect"])
def test_flat_steps_layout_matches_reference(case):
    binary, plain = _pair(case)
    binary.bso_flat_steps = T
    x = _spikes(case)
    g = _upstream(plain, x)
    xs = x.flatten(0, 1).clone().requires_grad_(True)
    out = binary(xs)
    assert out.shape == g.flatten(0, 1).shape
    out.backward(g.flatten(0, 1))
    _assert_grads(binary, xs.grad.reshape(x.shape), _reference(plain, x, g))


def _run(binary: nn.Module, x: torch.Tensor, g: torch.Tensor, step_mode: str) -> None:
    """Backward through ``binary`` one step at a time ('s') or in one [T, N, *] call ('m')."""
    binary.bso_step_mode = step_mode
    if step_mode == "m":
        binary(x).backward(g)
        return
    for t in range(T):
        binary(x[t]).backward(g[t])


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_linear_weight_gradient_by_hand(step_mode):
    """dL/dW = sum_t g[t]^T a_hat[t] with the trace written out step by step."""
    binary, _ = _pair("linear")
    x = _spikes("linear")
    g = torch.randn(T, N, 3, dtype=torch.float64)
    _run(binary, x, g, step_mode)
    trace, expected = torch.zeros(N, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    for t in range(T):
        trace = LAM * trace + x[t]
        expected += g[t].T @ trace
    torch.testing.assert_close(binary.weight.grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(binary.bias.grad, g.sum((0, 1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_conv2d_weight_gradient_by_hand(step_mode):
    binary, _ = _pair("conv2d")
    x = _spikes("conv2d")
    g = torch.randn(T, N, 4, 6, 6, dtype=torch.float64)
    _run(binary, x, g, step_mode)
    trace = _hand_trace(x)
    expected = sum(
        torch.nn.grad.conv2d_weight(trace[t], binary.weight.shape, g[t], padding=1) for t in range(T)
    )
    torch.testing.assert_close(binary.weight.grad, expected, rtol=1e-12, atol=1e-12)


def test_multi_step_trace_continues_across_calls():
    """Two [2, N, *] calls equal one [4, N, *] call: the trace carries over until reset."""
    one, _ = _pair("conv2d")
    two = copy.deepcopy(one)
    one.bso_step_mode = two.bso_step_mode = "m"
    x = _spikes("conv2d")
    one(x).sum().backward()
    two(x[:2]).sum().backward()
    two(x[2:]).sum().backward()
    torch.testing.assert_close(two.weight.grad, one.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(two.bso_trace, _hand_trace(x)[-1], rtol=0, atol=0)


def test_unbatched_conv_input():
    binary, plain = _pair("conv2d")
    x = _spikes("conv2d")[:, 0]  # [T, C, H, W]
    g = torch.randn(T, 4, 6, 6, dtype=torch.float64)
    grad_x = []
    for t in range(T):
        xt = x[t].clone().requires_grad_(True)
        out = binary(xt)
        assert out.shape == (4, 6, 6)
        out.backward(g[t])
        grad_x.append(xt.grad)
    ref = _reference(plain, x.unsqueeze(1), g.unsqueeze(1))
    _assert_grads(binary, torch.stack(grad_x).unsqueeze(1), ref)


def test_tracing_off_is_plain_autograd():
    """bso_tracing=False: the weight gradient comes from x[t] itself, as in a plain layer."""
    binary, plain = _pair("conv2d")
    binary.bso_tracing = False
    x = _spikes("conv2d")
    for t in range(T):
        binary(x[t]).sum().backward()
        plain(x[t]).sum().backward()
    assert binary.bso_trace is None
    torch.testing.assert_close(binary.weight.grad, plain.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_eval_and_no_grad_are_plain_forward_without_trace(mode):
    binary, plain = _pair("conv2d")
    x = _spikes("conv2d")[0]
    if mode == "eval":
        binary.eval()
        out = binary(x)
    else:
        with torch.no_grad():
            out = binary(x)
    assert binary.bso_trace is None
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)


def test_conversion_takes_the_sign_and_never_zero():
    layer = nn.Linear(4, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.2, 0.0, -0.0], [-5.0, 7.0, 1e-30, -1e-30]]))
        layer.bias.copy_(torch.tensor([0.25, -1.5]))
    binarize_layer(layer)
    expected = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]], dtype=torch.float64)
    assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.bias, torch.tensor([0.25, -1.5], dtype=torch.float64))  # bias stays real
    assert layer.weight.dtype == torch.float64 and is_binary_tensor(layer.weight)


def test_binarize_is_idempotent_and_keeps_identity():
    layer = nn.Conv2d(2, 3, 3)
    weight = layer.weight
    binarize_layer(layer)
    cls, before = type(layer), layer.weight.clone()
    binarize_layer(layer)
    assert type(layer) is cls and layer.weight is weight and torch.equal(layer.weight, before)
    assert isinstance(layer, nn.Conv2d) and is_binary_layer(layer)
    assert "binary" in repr(layer)


def test_trace_is_not_in_state_dict_and_reset_clears_it():
    binary, _ = _pair("linear")
    keys = set(binary.state_dict())
    binary(_spikes("linear")[0]).sum().backward()
    assert binary.bso_trace is not None
    assert set(binary.state_dict()) == keys == {"weight", "bias"}
    binary.reset_trace()
    assert binary.bso_trace is None


def test_new_batch_size_without_reset_is_an_error():
    binary, _ = _pair("linear")
    binary(torch.ones(3, 5, dtype=torch.float64))
    with pytest.raises(
        RuntimeError, match=r"stored trace is \(3, 5\).*\(2, 5\).*call bso_snn.reset\(model\)"
    ):
        binary(torch.ones(2, 5, dtype=torch.float64))
    reset(binary)
    assert binary(torch.ones(2, 5, dtype=torch.float64)).shape == (2, 3)


def test_missing_lam_is_an_error():
    layer = nn.Linear(3, 2)
    binarize_layer(layer)
    with pytest.raises(RuntimeError, match=r"no trace decay: pass lam=\.\.\. to bso_snn.convert"):
        layer(torch.ones(1, 3))


@pytest.mark.parametrize(
    ("attr", "value", "x_shape", "message"),
    [
        ("bso_step_mode", "x", (2, 5), r"bso_step_mode='x'; use 's' for \[N, \.\.\.\] input or 'm'"),
        ("bso_flat_steps", 4, (6, 5), r"input batch dimension 6 is not a multiple of bso_flat_steps=4"),
        ("bso_flat_steps", 0, (6, 5), r"bso_flat_steps=0; it must be the number of time steps T >= 1"),
    ],
)
def test_bad_layout_settings_are_errors(attr, value, x_shape, message):
    binary, _ = _pair("linear")
    setattr(binary, attr, value)
    with pytest.raises(ValueError, match=message):
        binary(torch.ones(x_shape, dtype=torch.float64))


@pytest.mark.parametrize(
    ("layer", "time_free", "multi_step"),
    [
        (nn.Linear(5, 3), (4, 5), (2, 4, 5)),
        (nn.Conv2d(2, 3, 3, padding=1), (4, 2, 6, 6), (2, 4, 2, 6, 6)),
        (nn.Conv1d(2, 3, 3), (4, 2, 6), (2, 4, 2, 6)),
    ],
)
def test_multi_step_layer_called_without_a_time_dim_runs_as_a_plain_layer(layer, time_free, multi_step):
    """E.g. an attention MLP over [N, T] statistics inside a multi-step model: no time step, so the
    call's exact gradient, and the trace of the real time steps is left alone."""
    torch.manual_seed(0)
    reference = copy.deepcopy(layer)
    binarize_layer(layer)
    layer.bso_lam, layer.bso_step_mode = 0.5, "m"
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
    layer((torch.rand(multi_step) > 0.5).float())  # one real multi-step call leaves a trace
    trace = layer.bso_trace.clone()
    layer.weight.grad = None
    x = torch.rand(time_free)
    out, expected = layer(x), reference(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    assert torch.equal(layer.bso_trace, trace)


def test_multi_step_layer_fed_one_step_of_a_neuron_is_an_error():
    """Spikes straight from an online neuron are a time step, not a time-free statistic."""
    import bso_snn

    net = nn.Sequential(nn.Linear(5, 4), bso_snn.LIF(), nn.Linear(4, 3))
    bso_snn.convert(net, skip_first_last=False)
    net[2].bso_step_mode = "m"  # the neuron and the first layer stay single-step
    with pytest.raises(
        ValueError, match=r"expects \[T, N, \.\.\.\] input, but its input \(2, 4\) is one time step"
    ):
        net(torch.rand(2, 5))


@pytest.mark.parametrize("module", [nn.ConvTranspose2d(2, 2, 3), nn.Embedding(4, 2), nn.BatchNorm2d(2)])
def test_binarize_layer_refuses_other_modules(module):
    with pytest.raises(TypeError, match=r"binarize_layer supports Linear and \(non-transposed\) Conv layers"):
        binarize_layer(module)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtype_is_kept_and_training_runs(dtype):
    layer = nn.Conv2d(2, 3, 3, padding=1).to(dtype)
    binarize_layer(layer)
    layer.bso_lam = 0.5
    assert layer.weight.dtype == dtype and is_binary_tensor(layer.weight)
    x = (torch.rand(2, 2, 5, 5) > 0.5).to(dtype)
    layer(x).float().sum().backward()
    assert layer.weight.grad.dtype == dtype and layer.weight.grad.shape == layer.weight.shape


def test_binary_parameters_yields_shared_weights_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Linear(3, 3), shared)
    for m in model:
        binarize_layer(m)
    params = list(binary_parameters(model))
    assert len(params) == 2 and params[0] is shared.weight and params[1] is model[1].weight


@pytest.mark.parametrize("case", ["linear", "conv2d", "conv2d_reflect"])
def test_autocast_computes_like_a_plain_layer(case):
    """Under torch.autocast the layer computes in bfloat16 as a plain one does; grads are float32."""
    binary, plain = _pair(case)
    binary.float(), plain.float()
    x = _spikes(case).float()
    g = _upstream(plain, x).float()
    for t in range(T):
        xt = x[t].clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = binary(xt)
        assert out.dtype == torch.bfloat16
        out.backward(g[t].to(out.dtype))
        assert xt.grad.dtype == torch.float32 and binary.weight.grad.dtype == torch.float32
        xp = x[t].clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_plain = plain(xp)
        (gx,) = torch.autograd.grad(out_plain, xp, g[t].to(out.dtype))
        assert torch.equal(out, out_plain) and torch.equal(xt.grad, gx)
    plain.zero_grad()
    trace = _hand_trace(x.double()).float()
    for t in range(T):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_plain = plain(trace[t])
        out_plain.backward(g[t].to(out_plain.dtype))
    torch.testing.assert_close(binary.weight.grad, plain.weight.grad, rtol=0, atol=0)


def test_loading_a_float_weight_into_a_binary_layer_is_refused():
    float_model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model = copy.deepcopy(float_model)
    binarize_layer(model[1])
    before = model[1].weight.clone()
    with pytest.raises(
        RuntimeError, match=r"1\.weight: the state_dict holds values other than ±1 for the weight"
    ):
        model.load_state_dict(float_model.state_dict())
    assert torch.equal(model[1].weight, before)
    binary_state = {
        k: (torch.where(v >= 0, 1.0, -1.0) if k == "1.weight" else v)
        for k, v in float_model.state_dict().items()
    }
    model.load_state_dict(binary_state)
    assert torch.equal(model[1].weight, binary_state["1.weight"])


def test_layer_fed_by_a_multi_step_neuron_must_read_the_same_number_of_steps():
    """A single-step layer given a multi-step neuron's [T, N, F] output would trace it as one step
    of batch T: refused. With the neuron's step mode it traces T steps."""
    import bso_snn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), bso_snn.LIF(step_mode="m"), nn.Linear(5, 4), nn.Linear(4, 2))
    bso_snn.convert(model, lam=0.5)
    x = torch.rand(4, 2, 3) * 3
    with pytest.raises(
        RuntimeError, match=r"step_mode='s' but its input \(4, 2, 5\) comes from a neuron that just ran 4"
    ):
        model(x)
    bso_snn.reset(model)
    bso_snn.online.set_step_mode(model, "m")
    assert model(x).shape == (4, 2, 2)
