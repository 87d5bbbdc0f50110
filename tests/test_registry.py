"""The exact-type registry and the in-place class swap."""

from __future__ import annotations

import copy
import pickle

import pytest
from torch import nn

from bso_snn import registry
from bso_snn._classswap import original_class, swap_class
from bso_snn.layers import BinaryLayerMixin, binarize_layer
from bso_snn.registry import NeuronSupport, is_weight_layer, layer_handler, refuse_layer, register_layer

pytestmark = pytest.mark.usefixtures("restore_registry")


class MyLinear(nn.Linear):
    pass


def test_torch_layers_are_registered_by_exact_type():
    assert set(registry.registered_layer_types()) >= {nn.Linear, nn.Conv1d, nn.Conv2d}
    assert layer_handler(nn.Conv2d(1, 1, 1)) is binarize_layer
    assert layer_handler(nn.ReLU()) is None and not is_weight_layer(nn.ReLU())
    assert layer_handler(nn.ConvTranspose2d(1, 1, 1)) is None  # not registered: left float
    assert registry.unhandled_weights(nn.ConvTranspose2d(1, 1, 1)) == ["weight"]
    assert registry.unhandled_weights(nn.Linear(1, 1)) == registry.unhandled_weights(nn.LayerNorm(3)) == []
    assert is_weight_layer(MyLinear(2, 2))
    with pytest.raises(
        TypeError, match=r"MyLinear subclasses torch\.nn\.modules\.linear\.Linear but has no entry"
    ):
        layer_handler(MyLinear(2, 2))


def test_converted_layer_keeps_its_registry_entry():
    layer = nn.Linear(2, 2)
    binarize_layer(layer)
    assert original_class(layer) is nn.Linear and layer_handler(layer) is binarize_layer


def test_register_and_refuse_replace_each_other():
    refuse_layer(MyLinear, "custom forward")
    with pytest.raises(TypeError, match=r"MyLinear cannot be converted: custom forward\. Keep it in float"):
        layer_handler(MyLinear(2, 2))
    register_layer(MyLinear, binarize_layer)
    assert layer_handler(MyLinear(2, 2)) is binarize_layer


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: register_layer("Linear", binarize_layer),
            r"registry keys must be nn.Module subclasses, got 'Linear'",
        ),
        (
            lambda: register_layer(int, binarize_layer),
            r"registry keys must be nn.Module subclasses, got <class 'int'>",
        ),
        (lambda: register_layer(MyLinear, None), r"handler must be callable as handler\(module\), got None"),
        (
            lambda: registry.register_neuron(MyLinear, {}),
            r"support must be a bso_snn.registry.NeuronSupport, got dict",
        ),
        (lambda: refuse_layer(MyLinear, ""), r"reason must be a non-empty string saying why, got ''"),
    ],
)
def test_registration_errors(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_neuron_support_is_a_frozen_record():
    support = NeuronSupport(
        make_online=lambda m: None, is_online=lambda m: True, decay=lambda m: 0.5, reset=lambda m: None
    )
    assert support.membrane is None
    with pytest.raises(AttributeError):
        support.decay = None


class OtherMixin:
    pass


def test_class_swaps_do_not_stack_but_repeat_is_a_no_op():
    layer = nn.Linear(2, 2)
    swap_class(layer, BinaryLayerMixin)
    cls = type(layer)
    swap_class(layer, BinaryLayerMixin)
    assert type(layer) is cls
    with pytest.raises(
        TypeError, match=r"BinaryLayerLinear already carries BinaryLayerMixin; bso-snn cannot add"
    ):
        swap_class(layer, OtherMixin)


def test_swapped_class_pickles_and_deepcopies():
    layer = nn.Conv1d(2, 3, 3)
    binarize_layer(layer)
    layer.bso_lam = 0.25
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert type(clone) is type(layer) and clone.bso_lam == 0.25
        assert clone.weight.equal(layer.weight) and clone.weight is not layer.weight


def test_subclass_of_a_refused_class_is_refused_too():
    class Odd(nn.Module):
        pass

    class OddChild(Odd):
        pass

    refuse_layer(Odd, "odd")
    assert is_weight_layer(OddChild()) and is_weight_layer(Odd())
    with pytest.raises(
        TypeError, match=r"OddChild subclasses .*Odd but has no entry in the bso-snn layer registry"
    ):
        layer_handler(OddChild())


def test_adapter_table():
    from bso_snn.convert import load_adapters

    class FakeLibLayer(nn.Linear):
        pass

    FakeLibLayer.__module__ = "fakelib.layers"
    model = nn.Sequential(nn.Linear(1, 1), FakeLibLayer(1, 1))
    assert [m.__name__ for m in load_adapters(model)] == []  # the built-in table knows torch only
    assert registry.adapter_modules({"snntorch", "torch", "spikingjelly"}) == [
        "bso_snn.adapters.snntorch",
        "bso_snn.adapters.spikingjelly",
    ]
    registry.register_adapter("fakelib", "json")  # any importable module stands for an adapter
    assert [m.__name__ for m in load_adapters(model)] == ["json"]
    with pytest.raises(ValueError, match=r"package='a\.b' must be a top-level package name"):
        registry.register_adapter("a.b", "x")
    with pytest.raises(TypeError, match=r"register_adapter: module must be a non-empty string, got ''"):
        registry.register_adapter("a", "")
