"""SpikingJelly's own model zoo (``spikingjelly.activation_based.model``), as a new user would try it:
build every model of the installed release that builds on a CPU without downloads, convert it in one
call, and train one online T-BSO step on random inputs (T=2, two samples, 32x32 images where the
model allows). Models that cannot work online must be refused with a reason that names the fix.

The VGGs (11/13/16/19, with and without BN: 129-144M parameters each, most in the 25088x4096
classifier) and the deeper/wider ResNets (ResNet-101/152, ResNeXt-101, Wide-ResNet-50/101: 45-127M)
repeat blocks that smaller models here cover (plain conv stacks with BN and pooling; the basic,
bottleneck and grouped blocks of ResNet-18/34/50 and ResNeXt-50). They run with
``BSO_SNN_FULL_ZOO=1``, which ``scripts/test.sh`` (and so CI) sets: the whole matrix took 70 s
(2.0.0) and 57 s (0.0.0.0.14) on the 2-core machine when quiet, ~5.5 minutes under heavy load.
Without it (a quick local run) they are reported as skipped.

The zoo's ResNet/VGG modules import ``load_state_dict_from_url`` from torchvision for pretrained
weights, and torchvision does not import beside CPU torch here: a stub module stands in for it
(it raises if called; no test asks for pretrained weights).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
import types
from collections.abc import Callable

import pytest
import torch
from bso_snn.adapters.spikingjelly import CLASSIC
from spikingjelly.activation_based import functional, neuron
from torch import nn

import bso_snn
from bso_snn.sign import is_binary_tensor

T, N, CLASSES = 2, 2, 10


def _torchvision_stub() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        return

    def load_state_dict_from_url(*args, **kwargs):
        raise RuntimeError("pretrained weights cannot be downloaded in the tests")

    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = load_state_dict_from_url
    models = types.ModuleType("torchvision.models")
    models.utils = utils
    root = types.ModuleType("torchvision")
    root.models = models
    sys.modules.setdefault("torchvision", root)
    sys.modules.setdefault("torchvision.models", models)
    sys.modules.setdefault("torchvision.models.utils", utils)


_torchvision_stub()


def _zoo(name: str):
    try:
        return importlib.import_module(f"spikingjelly.activation_based.model.{name}")
    except ImportError:  # a module of the other release
        return None


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    sample: tuple[int, ...]  # one sample of one step, e.g. (3, 32, 32)
    step_mode: str = "m"  # how train_step feeds it; 'm' models get functional.set_step_mode(net, 'm')
    steps: int = T
    heavy: bool = False  # see the module docstring: runs with BSO_SNN_FULL_ZOO=1
    input_scale: float = 1.0  # amplitude of the random input (some nets need more to spike at all)


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    image = (3, 32, 32)
    vgg, resnet, sew, plif = (
        _zoo(m) for m in ("spiking_vgg", "spiking_resnet", "sew_resnet", "parametric_lif_net")
    )
    heavy = ("vgg", "101", "152", "wide")
    # init_weights=False: the VGGs' second (kaiming) initialisation of ~130M weights is skipped; torch's
    # default initialisation remains.
    families = (
        (vgg, "spiking_vgg", {"init_weights": False}),
        (resnet, "spiking_", {}),
        (sew, "sew_", {"cnf": "ADD"}),
    )
    for module, prefix, extra in families:
        for name in module.__all__:
            if name.startswith(prefix) and callable(getattr(module, name)) and name[0].islower():
                fn = getattr(module, name)
                cases[name] = Case(
                    lambda fn=fn, extra=extra: fn(spiking_neuron=neuron.IFNode, num_classes=CLASSES, **extra),
                    image,
                    heavy=any(h in name for h in heavy),
                )
    sizes = {
        "MNISTNet": (1, 28, 28),
        "FashionMNISTNet": (1, 28, 28),
        "NMNISTNet": (2, 34, 34),
        "CIFAR10Net": (3, 32, 32),
        "CIFAR10DVSNet": (2, 128, 128),
        "DVSGestureNet": (2, 128, 128),
    }
    for name, size in sizes.items():
        cls = getattr(plif, name)
        cases[name] = Case(lambda cls=cls: cls(channels=8, spiking_neuron=neuron.ParametricLIFNode), size)
    if CLASSIC:
        return cases
    # 2.0.0 only
    masnn, ms, former = _zoo("masnn"), _zoo("ms_resnet"), _zoo("maxformer")
    qk, sdt, spikformer, snas = (
        _zoo("qkformer"),
        _zoo("spike_driven_transformer"),
        _zoo("spikformer"),
        _zoo("snas_net"),
    )
    # masnn_dvs128_gesture fixes reduction_t=5, so T >= 5; its temporal attention needs every step
    # at once (its forward refuses one step): the whole-sequence path.
    cases["masnn_dvs128_gesture"] = Case(
        lambda: masnn.masnn_dvs128_gesture(T=5, num_classes=CLASSES), (2, 32, 32), "sequence", steps=5
    )
    cases["att_ms_resnet18"] = Case(lambda: masnn.att_ms_resnet18(T=T, num_classes=CLASSES), image)
    for name in ("ms_resnet18", "ms_resnet34", "max_resnet18"):
        fn = getattr(ms, name)
        cases[name] = Case(lambda fn=fn: fn(T=T, num_classes=CLASSES), image)
    for module, name in ((former, "maxformer_cifar"), (former, "maxformer_10_384"), (qk, "qkformer_10_384")):
        fn = getattr(module, name)
        cases[name] = Case(lambda fn=fn: fn(T=T, num_classes=CLASSES), image)
    cases["sdt_8_384"] = Case(lambda: sdt.sdt_8_384(T=T, num_classes=CLASSES), image)
    cases["spikformer_cifar10"] = Case(lambda: spikformer.spikformer_cifar10(T=T), image)
    for name in ("spikformer_s", "spikformer_ti"):
        fn = getattr(spikformer, name)
        cases[name] = Case(lambda fn=fn: fn(T=T, img_size_h=32, img_size_w=32, num_classes=CLASSES), image)
    # SNASNet is built from a searched cell (a connection matrix of op ids 0-4) and run one step
    # per call with plain nn layers.
    args = types.SimpleNamespace(
        timestep=T, second_avgpooling=2, dataset="cifar10", celltype="forward", threshold=1.0, tau=2.0
    )
    cell = torch.tensor([[0, 2, 3, 4], [0, 0, 1, 2], [0, 0, 0, 3], [0, 0, 0, 0]])
    cases["SNASNet"] = Case(lambda: snas.SNASNet(args, cell), image, "s")
    # The OTTT VGGs with the fix their refusal names (test below): SpikingJelly's LIFNode.
    ottt = _zoo("spiking_vggws_ottt")
    cases["ottt_spiking_vgg11(LIFNode)"] = Case(
        lambda: ottt.ottt_spiking_vgg11(spiking_neuron=neuron.LIFNode, num_classes=CLASSES),
        image,
        heavy=True,
        input_scale=4.0,  # no BatchNorm: on [0, 1] noise every LIF stays silent for 2 steps (no gradient)
    )
    return cases


CASES = _cases()


FULL_ZOO = os.environ.get("BSO_SNN_FULL_ZOO") == "1"
_HEAVY = pytest.mark.skipif(
    not FULL_ZOO,
    reason="a large VGG/ResNet variant (45-144M parameters) whose blocks smaller models here cover; "
    "set BSO_SNN_FULL_ZOO=1 to run it",
)


def _params(cases):
    return [pytest.param(name, marks=[_HEAVY] if case.heavy else []) for name, case in cases.items()]


@pytest.mark.parametrize("name", _params(CASES))
def test_zoo_model_converts_and_trains_one_online_step(name, one_thread):
    case = CASES[name]
    torch.manual_seed(0)
    net = case.build()
    report = bso_snn.convert(net, lam=0.5)  # lam given: the PLIF nets' tau is learnable
    assert len(report.converted) >= 1 and report.online_neurons
    assert all(why in ("first weight layer", "last weight layer") for why in report.skipped.values()), report
    if case.step_mode == "m":
        functional.set_step_mode(net, "m")
    optimizer = bso_snn.make_optimizer(net, "tbso", time_steps=1)
    x, y = case.input_scale * torch.rand(case.steps, N, *case.sample), torch.randint(0, CLASSES, (N,))
    result = bso_snn.train_step(
        net, x, y, nn.functional.cross_entropy, optimizer, step_mode=case.step_mode, update="accumulated"
    )
    assert math.isfinite(result.loss) and result.output.dim() == 2 and result.output.shape[0] == N
    binary = list(bso_snn.binary_parameters(net))
    grads = [p.grad for p in binary if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the trace-based gradient reached the ±1 weights
    assert all(is_binary_tensor(p) for p in binary)


@pytest.mark.skipif(CLASSIC, reason="the OTTT VGGs are in SpikingJelly 2.0.0's zoo only")
def test_zoo_ottt_vggs_are_refused_with_the_fix():
    """Their default neuron is SpikingJelly's own OTTT neuron, and the _ws variants standardise their
    weights: both refused, naming the fix (the fix itself, LIFNode, trains in the matrix above)."""
    vggs = _zoo("spiking_vggws_ottt")
    with pytest.raises(TypeError, match=r"OTTTLIFNode is not supported by bso-snn: .* use neuron\.LIFNode"):
        bso_snn.convert(vggs.ottt_spiking_vgg11(num_classes=CLASSES, init_weights=False), lam=0.5)
    with pytest.raises(
        TypeError, match=r"WSConv2d cannot be converted: weight standardisation .* replace it"
    ):
        bso_snn.convert(
            vggs.ottt_spiking_vgg11_ws(spiking_neuron=neuron.LIFNode, num_classes=CLASSES), lam=0.5
        )


@pytest.mark.skipif(CLASSIC, reason="masnn is in SpikingJelly 2.0.0's zoo only")
def test_zoo_masnn_refuses_one_step_at_a_time():
    """Its own forward refuses a one-step slice; the whole-sequence path (above) trains it."""
    net = _zoo("masnn").masnn_dvs128_gesture(T=5, num_classes=CLASSES)
    bso_snn.convert(net, lam=0.5)
    opt = bso_snn.make_optimizer(net, "tbso", time_steps=5)
    x, y = torch.rand(5, N, 2, 32, 32), torch.randint(0, CLASSES, (N,))
    with pytest.raises(ValueError, match=r"expected a sequence with T=5 time steps"):
        bso_snn.train_step(net, x, y, nn.functional.cross_entropy, opt, step_mode="m")
