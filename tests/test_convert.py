"""bso_snn.convert: one call, in place, keeps names/keys/hooks/dtype/modes, refuses what it cannot do."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from bso_snn.convert import ConversionReport, convert
from bso_snn.layers import binarize_layer, binary_parameters, is_binary_layer
from bso_snn.registry import NeuronSupport, refuse_layer, register_layer, register_neuron
from bso_snn.sign import is_binary_tensor

pytestmark = pytest.mark.usefixtures("restore_registry")


def vgg_like() -> nn.Sequential:
    """Nested containers, BatchNorm, pooling; 4 conv + 2 linear weight layers."""
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)),
    )
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10))
    return nn.Sequential(features, classifier)


VGG_LAYERS = ["0.0.0", "0.1.0", "0.2.0", "0.3.0", "1.1", "1.3"]


def mlp() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    )


MODELS = {"vgg": (vgg_like, (2, 1, 8, 8), VGG_LAYERS), "mlp": (mlp, (2, 1, 4, 4), ["1", "3", "5"])}


@pytest.mark.parametrize("kind", MODELS)
def test_convert_keeps_names_and_shapes_and_skips_first_last(kind):
    make, x_shape, layers = MODELS[kind]
    model = make()
    x = torch.rand(x_shape)
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    out_shape = model(x).shape
    float_weights = {n: model.get_submodule(n).weight.detach().clone() for n in layers}

    report = convert(model, lam=0.5)

    assert isinstance(report, ConversionReport) and report.model is model and report.lam == 0.5
    assert report.converted == layers[1:-1]
    assert report.skipped == {layers[0]: "first weight layer", layers[-1]: "last weight layer"}
    assert [n for n, _ in model.named_parameters()] == names and list(model.state_dict()) == keys
    assert model(x).shape == out_shape
    for name in layers:
        layer = model.get_submodule(name)
        if name in report.converted:
            assert is_binary_layer(layer) and is_binary_tensor(layer.weight)
            assert torch.equal(layer.weight, torch.where(float_weights[name] >= 0, 1.0, -1.0))
            assert layer.bso_lam == 0.5 and layer.bso_trace_mode == "ottt"
        else:
            assert not is_binary_layer(layer) and torch.equal(layer.weight, float_weights[name])
    assert [id(p) for p in binary_parameters(model)] == [
        id(model.get_submodule(n).weight) for n in report.converted
    ]
    assert "binary   0.1.0" in str(report) or kind == "mlp"
    assert f"float    {layers[0]}  (first weight layer)" in str(report)


def test_convert_twice_changes_nothing():
    model = vgg_like()
    first = convert(model, lam=0.5)
    state = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model.modules()]
    second = convert(model, lam=0.5)
    assert second.converted == first.converted and second.skipped == first.skipped
    assert second.already_binary == first.converted and first.already_binary == []
    assert [type(m) for m in model.modules()] == classes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert "(already binary)" in str(second)


def test_second_convert_with_new_lam_updates_converted_layers():
    model = mlp()
    convert(model, lam=0.5)
    report = convert(model, lam=0.9, trace="ndot")
    assert report.already_binary == ["3"]
    assert model[3].bso_lam == 0.9 and model[3].bso_trace_mode == "ndot"


def test_shared_module_is_converted_once():
    calls = []

    class Counted(nn.Linear):
        pass

    def handler(module):
        calls.append(module)
        binarize_layer(module)

    register_layer(Counted, handler)
    shared = Counted(6, 6)
    model = nn.Sequential(nn.Linear(6, 6), shared, nn.ReLU(), shared, nn.Linear(6, 2))
    report = convert(model, lam=0.5)
    assert calls == [shared] and report.converted == ["1"]
    assert is_binary_layer(model[3]) and model[3] is shared


def test_filter_fn_keeps_layers_float_on_top_of_first_last():
    model = vgg_like()
    seen = []

    def keep_not_second(module, name):
        seen.append(name)
        return name != "0.1.0"

    report = convert(model, lam=0.5, filter_fn=keep_not_second)
    assert seen == ["0.1.0", "0.2.0", "0.3.0", "1.1"]  # first and last never asked
    assert report.skipped["0.1.0"] == "filter_fn returned False"
    assert report.converted == ["0.2.0", "0.3.0", "1.1"]


def test_skip_first_last_false_converts_everything():
    model = mlp()
    report = convert(model, lam=0.5, skip_first_last=False)
    assert report.converted == ["1", "3", "5"] and report.skipped == {}


def test_inplace_false_leaves_the_argument_alone():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    report = convert(model, lam=0.5, inplace=False)
    assert report.model is not model and is_binary_layer(report.model[3])
    assert not any(is_binary_layer(m) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_hooks_modes_requires_grad_and_step_mode_are_kept():
    model = mlp()
    layer = model[3]
    fired = []
    layer.register_forward_pre_hook(lambda m, args: fired.append("pre"))
    layer.register_forward_hook(lambda m, args, out: fired.append("post"))
    layer.bias.requires_grad_(False)
    layer.step_mode = "m"  # as a SpikingJelly layer would carry it
    model.eval()
    model[1].train()
    convert(model, lam=0.5)
    assert is_binary_layer(layer) and layer.step_mode == "m"
    assert not layer.bias.requires_grad and layer.weight.requires_grad
    assert [m.training for m in model.modules()] == [False, False, True, False, False, False, False]
    model(torch.rand(2, 1, 4, 4))
    assert fired == ["pre", "post"]


def test_multi_step_layer_after_conversion_uses_step_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].step_mode = "m"
    convert(model, lam=0.5)
    out = model[1](torch.ones(3, 2, 4))  # [T, N, F]
    assert out.shape == (3, 2, 4) and model[1].bso_trace.shape == (2, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_and_device_are_kept(dtype):
    model = vgg_like().to(dtype)
    convert(model, lam=0.5)
    for p in model.parameters():
        assert p.dtype == dtype and p.device.type == "cpu"
    assert is_binary_tensor(model[0][1][0].weight)
    model(torch.rand(2, 1, 8, 8, dtype=dtype)).sum().backward()
    assert model[0][1][0].weight.grad.dtype == dtype


def test_deepcopy_of_converted_model():
    model = vgg_like()
    convert(model, lam=0.5)
    clone = copy.deepcopy(model)
    assert type(clone[0][1][0]) is type(model[0][1][0]) and clone[0][1][0].bso_lam == 0.5
    assert {id(p) for p in binary_parameters(clone)}.isdisjoint(id(p) for p in binary_parameters(model))
    x = torch.rand(2, 1, 8, 8)
    model.eval(), clone.eval()
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    clone.train()
    clone(x).sum().backward()
    assert clone[0][1][0].weight.grad is not None and model[0][1][0].weight.grad is None


def test_torch_save_and_load_in_a_fresh_process(tmp_path):
    model = vgg_like()
    convert(model, lam=0.5)
    model.eval()
    x = torch.rand(2, 1, 8, 8)
    torch.save(model, tmp_path / "model.pt")
    torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import torch
        model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
        io = torch.load({str(tmp_path / "io.pt")!r})
        from bso_snn.layers import is_binary_layer
        layer = model[0][1][0]
        assert is_binary_layer(layer) and type(layer).__name__ == "BinaryLayerConv2d", type(layer)
        assert layer.bso_lam == 0.5
        assert torch.equal(model(io["x"]), io["y"])
        model.train()
        model(io["x"]).sum().backward()
        assert layer.weight.grad is not None
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ---------------------------------------------------------------- lam inference via neurons


class ToyNeuron(nn.Module):
    def __init__(self, decay):
        super().__init__()
        self.decay, self.online = decay, False

    def forward(self, x):
        return (x > 0).to(x.dtype)


def _register_toy():
    register_neuron(
        ToyNeuron,
        NeuronSupport(
            make_online=lambda m: setattr(m, "online", True),
            is_online=lambda m: m.online,
            decay=lambda m: m.decay,
            reset=lambda m: None,
        ),
    )


def _snn(*decays):
    parts = [nn.Linear(4, 4)]
    for d in decays:
        parts += [ToyNeuron(d), nn.Linear(4, 4)]
    return nn.Sequential(*parts)


def test_lam_is_inferred_and_neurons_go_online():
    _register_toy()
    model = _snn(0.75, 0.75)
    report = convert(model)
    assert report.lam == 0.75 and model[2].bso_lam == 0.75
    assert report.online_neurons == ["1", "3"] and model[1].online and model[3].online


def test_online_false_leaves_neurons_alone():
    _register_toy()
    model = _snn(0.75, 0.75)
    report = convert(model, lam=0.5, online=False)
    assert report.online_neurons == [] and not model[1].online


@pytest.mark.parametrize(
    ("decays", "message"),
    [
        ((), r"lam=None but the trace decay cannot be inferred: the model has no neuron whose leak"),
        ((0.5, 0.75), r"neurons imply different trace decays \(1: 0.5, 3: 0.75\); pass lam explicitly"),
        ((0.5, None), r"the decay of neurons \['3'\] cannot be told"),
        ((None, None), r"lam=None but the trace decay cannot be inferred"),
    ],
)
def test_lam_inference_errors(decays, message):
    _register_toy()
    model = _snn(*decays) if decays else mlp()
    with pytest.raises(ValueError, match=message):
        convert(model)
    assert not any(is_binary_layer(m) for m in model.modules())


def test_unregistered_neuron_subclass_is_refused():
    _register_toy()

    class MyNeuron(ToyNeuron):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyNeuron(0.5), nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(
        TypeError, match=r"MyNeuron subclasses the neuron .*ToyNeuron.*register_neuron\(MyNeuron"
    ):
        convert(model, lam=0.5)
    assert convert(model, lam=0.5, online=False).converted == ["2"]


# ---------------------------------------------------------------- errors


class WSConv2d(nn.Conv2d):
    """A weight-standardised conv: its forward is not a plain Conv2d's."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std() + 1e-5)
        return self._conv_forward(x, w, self.bias)


def _ws_model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), WSConv2d(4, 4, 3), nn.Conv2d(4, 2, 3))


def _assert_untouched(model, state):
    assert not any(is_binary_layer(m) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_unregistered_subclass_is_refused_and_nothing_changes():
    model = _ws_model()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(
        TypeError,
        match=r"test_convert\.WSConv2d subclasses torch\.nn\.modules\.conv\.Conv2d but has no entry.*"
        r"bso_snn\.register_layer\(WSConv2d, bso_snn\.layers\.binarize_layer\)",
    ):
        convert(model, lam=0.5)
    _assert_untouched(model, state)  # layer "1" (before the refused one) was not converted either


def test_unregistered_subclass_can_be_filtered_or_registered():
    model = _ws_model()
    report = convert(model, lam=0.5, filter_fn=lambda m, name: not isinstance(m, WSConv2d))
    assert report.converted == ["1"] and report.skipped["2"] == "filter_fn returned False"
    model = _ws_model()
    register_layer(WSConv2d, binarize_layer)  # (wrong maths for WS, but shows the mechanism)
    assert convert(model, lam=0.5).converted == ["1", "2"]


def test_refused_layer_names_the_reason():
    refuse_layer(WSConv2d, "it standardises its weight in forward")
    model = _ws_model()
    with pytest.raises(
        TypeError, match=r"WSConv2d cannot be converted: it standardises its weight in forward"
    ):
        convert(model, lam=0.5)


def test_refused_first_layer_is_skipped_without_error():
    refuse_layer(WSConv2d, "no")
    model = nn.Sequential(WSConv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 3))
    report = convert(model, lam=0.5)
    assert report.skipped["0"] == "first weight layer" and report.converted == ["1"]


def test_tied_weight_that_stays_float_is_an_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    model[2].weight = model[1].weight
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"the weight of '1' is shared with '2.weight', which stays float"):
        convert(model, lam=0.5)
    _assert_untouched(model, state)


def test_filter_fn_raising_is_reported_and_nothing_changes():
    model = vgg_like()
    state = copy.deepcopy(model.state_dict())

    def broken(module, name):
        if name == "0.2.0":
            raise KeyError("oops")
        return True

    with pytest.raises(
        RuntimeError, match=r"filter_fn raised KeyError on layer '0.2.0' \(Conv2d\).*nothing was"
    ):
        convert(model, lam=0.5, filter_fn=broken)
    _assert_untouched(model, state)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lam": 1.5}, ValueError, r"lam=1.5 must be a number in \[0, 1\]"),
        ({"lam": -0.1}, ValueError, r"lam=-0.1 must be a number in \[0, 1\]"),
        ({"lam": True}, ValueError, r"lam=True must be a number in \[0, 1\]"),
        ({"lam": "0.5"}, ValueError, r"lam='0.5' must be a number"),
        ({"lam": float("nan")}, ValueError, r"lam=nan must be a number"),
        (
            {"lam": 0.5, "trace": "bptt"},
            ValueError,
            r"trace='bptt' is not supported; use one of \('ottt', 'ndot'\)",
        ),
        (
            {"lam": 0.5, "filter_fn": "1.1"},
            TypeError,
            r"filter_fn must be callable as filter_fn\(module, name\)",
        ),
        (
            {"lam": 0.5, "filter_fn": lambda m, n: None},
            TypeError,
            r"filter_fn must return True \(convert\) or False \(keep float\), got None for layer '0.1.0'",
        ),
        ({"lam": 0.5, "skip_first_last": 0}, TypeError, r"skip_first_last must be True or False, got 0"),
        ({"lam": 0.5, "online": "yes"}, TypeError, r"online must be True or False, got 'yes'"),
        ({"lam": 0.5, "inplace": None}, TypeError, r"inplace must be True or False, got None"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    model = vgg_like()
    with pytest.raises(error, match=message):
        convert(model, **kwargs)
    assert not any(is_binary_layer(m) for m in model.modules())


def test_not_a_module():
    with pytest.raises(TypeError, match=r"convert expects an nn.Module as model, got OrderedDict"):
        convert(vgg_like().state_dict(), lam=0.5)


def test_no_weight_layer():
    with pytest.raises(
        ValueError, match=r"convert found no weight layer in Sequential: the registered layer types"
    ):
        convert(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), lam=0.5)


def test_everything_skipped_is_an_error():
    with pytest.raises(
        ValueError,
        match=r"would leave every weight layer in float \(0: first weight layer; 1: last weight layer\)\. "
        r"Pass skip_first_last=False",
    ):
        convert(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), lam=0.5)


def test_report_lists_weight_layers_without_a_handler_in_order():
    model = nn.Sequential(
        nn.Linear(4, 4),
        nn.ConvTranspose2d(1, 1, 2),
        nn.Linear(4, 4),
        nn.Embedding(5, 4),
        nn.Conv3d(1, 1, 1),
        nn.BatchNorm1d(4),  # a 1-D weight: a norm, not a weight layer
        nn.Linear(4, 4),
    )
    transposed_weight = model[1].weight.detach().clone()
    report = convert(model, lam=0.5)
    assert report.converted == ["2", "4"]  # Conv3d is registered
    assert list(report.skipped) == ["0", "1", "3", "6"]
    assert report.skipped["1"] == (
        "no handler for ConvTranspose2d (weights weight): register one with "
        "bso_snn.register_layer(ConvTranspose2d, handler); bso_snn.layers.binarize_layer serves plain "
        "Linear and non-transposed Conv layers only"
    )
    assert report.skipped["3"].startswith("no handler for Embedding (weights weight)")
    assert "float    1  (no handler for ConvTranspose2d" in str(report)
    assert torch.equal(model[1].weight, transposed_weight) and not is_binary_layer(model[1])


def test_layers_inside_multihead_attention_stay_float_with_the_reason(one_thread):
    """nn.MultiheadAttention reads out_proj.weight directly (a Linear subclass it never calls):
    convert leaves it float and says why, converts the rest, and the model still trains."""
    from bso_snn.neurons import LIF
    from bso_snn.online import train_step
    from bso_snn.optim import make_optimizer

    class AttentionNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(8, 16), LIF()
            self.fc2, self.lif2 = nn.Linear(16, 16), LIF()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc3 = nn.Linear(16, 4)

        def forward(self, x):
            h = self.lif2(self.fc2(self.lif1(self.fc1(x))))[:, None]
            return self.fc3(self.attn(h, h, h)[0][:, 0])

    torch.manual_seed(0)
    net = AttentionNet()
    out_proj = net.attn.out_proj.weight.detach().clone()
    report = convert(net, lam=0.5)
    assert report.converted == ["fc2"]
    assert list(report.skipped) == ["fc1", "attn", "attn.out_proj", "fc3"]
    assert report.skipped["attn.out_proj"].startswith("inside MultiheadAttention 'attn', which computes")
    assert report.skipped["attn"].startswith("no handler for MultiheadAttention (weights in_proj_weight)")
    assert torch.equal(net.attn.out_proj.weight, out_proj) and not is_binary_layer(net.attn.out_proj)
    optimizer = make_optimizer(net, "tbso", time_steps=2)
    result = train_step(
        net, torch.rand(2, 3, 8), torch.tensor([0, 1, 2]), nn.functional.cross_entropy, optimizer
    )
    assert torch.isfinite(torch.as_tensor(result.loss)) and is_binary_tensor(net.fc2.weight)


def test_conv3d_is_converted_and_traced():
    torch.manual_seed(0)
    layer = nn.Conv3d(2, 3, 3, padding=1)
    convert(nn.Sequential(layer), lam=0.5, skip_first_last=False)
    x = (torch.rand(2, 2, 4, 4, 4) > 0.5).float()
    layer(x).sum().backward()
    expected = torch.nn.grad.conv3d_weight(x, layer.weight.shape, torch.ones(2, 3, 4, 4, 4), padding=1)
    assert is_binary_tensor(layer.weight) and torch.allclose(layer.weight.grad, expected, atol=1e-5)


class _Failing(nn.Linear):
    pass


def test_handler_raising_mid_way_leaves_the_model_exactly_as_it_was():
    calls = []

    def fail_on_second(module):
        calls.append(module)
        if len(calls) == 2:
            raise RuntimeError("handler broke")
        binarize_layer(module)

    register_layer(_Failing, fail_on_second)
    register_neuron(
        ToyNeuron,
        NeuronSupport(
            make_online=lambda m: setattr(m, "online", True),
            is_online=lambda m: m.online,
            decay=lambda m: m.decay,
            reset=lambda m: None,
        ),
    )
    model = nn.Sequential(
        nn.Linear(4, 4), _Failing(4, 4), ToyNeuron(0.5), _Failing(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
    )
    state = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model.modules()]
    attributes = [sorted(vars(m)) for m in model.modules()]
    with pytest.raises(RuntimeError, match="handler broke"):
        convert(model, lam=0.5)
    assert len(calls) == 2  # the first _Failing layer was binarised before the second one failed
    _assert_untouched(model, state)
    assert [type(m) for m in model.modules()] == classes
    assert [sorted(vars(m)) for m in model.modules()] == attributes
    assert not model[2].online and not any(is_binary_layer(m) for m in model.modules())
    model(torch.rand(2, 4)).sum().backward()  # still an ordinary float model
    assert not is_binary_tensor(model[1].weight)
