"""CuPy backends of SpikingJelly 0.0.0.0.14 (``backend='cupy'``): kept by conversion, never replaced
by another backend, a clear error where no GPU can run them. 2.0.0 has no CuPy path at all.

What runs where: on a machine without a CUDA GPU (as in CI), CuPy imports but every device call
fails, so only construction, backend bookkeeping, the errors, and eval-mode CPU paths are
exercised; the ``gpu``-marked test runs the kernels wherever a GPU exists.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from bso_snn.adapters import spikingjelly as sja
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import bso_snn

T, N = 4, 3
classic_only = pytest.mark.skipif(
    not sja.CLASSIC, reason="backend='cupy' exists only in SpikingJelly 0.0.0.0.x"
)
if not sja.CLASSIC:
    _NO_CUPY_RUN = "backend='cupy' exists only in SpikingJelly 0.0.0.0.x"
elif importlib.util.find_spec("cupy") is None:
    _NO_CUPY_RUN = (
        "CuPy is not importable (scripts/test.sh installs cupy-cuda12x beside SpikingJelly 0.0.0.0.14)"
    )
else:
    _NO_CUPY_RUN = ""
classic_with_cupy = pytest.mark.skipif(bool(_NO_CUPY_RUN), reason=_NO_CUPY_RUN)


def _net(backend: str, plif: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    make = (lambda: neuron.ParametricLIFNode(step_mode="m", backend=backend)) if plif else None
    make = make or (lambda: neuron.LIFNode(step_mode="m", backend=backend))
    net = nn.Sequential(layer.Linear(5, 6), make(), layer.Linear(6, 6), make(), layer.Linear(6, 2))
    functional.set_step_mode(net, "m")
    return net


@pytest.mark.skipif(
    os.environ.get("BSO_SNN_EXPECT_SPIKINGJELLY") != "0.0.0.0.14",
    reason="only the CI run against 0.0.0.0.14 (BSO_SNN_EXPECT_SPIKINGJELLY=0.0.0.0.14) requires CuPy",
)
def test_cupy_is_installed_for_the_classic_run():
    assert importlib.util.find_spec("cupy") is not None


@classic_with_cupy
def test_conversion_keeps_the_cupy_backend(sj_warnings):
    net = _net("cupy")
    report = bso_snn.convert(net, lam=0.5)
    assert report.online_neurons == ["1", "3"]
    assert [net[1].backend, net[3].backend] == ["cupy", "cupy"]
    clone = copy.deepcopy(net)
    assert clone[1].backend == "cupy" and type(clone[1]) is type(net[1])
    functional.set_backend(net, "torch")
    functional.set_backend(net, "cupy")  # SpikingJelly's own switch still works on converted nets
    assert net[3].backend == "cupy"
    assert sj_warnings == []


@classic_with_cupy
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no GPU exists")
@pytest.mark.parametrize("plif", [False, True], ids=["LIF", "PLIF"])
def test_training_forward_without_gpu_fails_clearly(plif):
    net = _net("cupy", plif)
    with pytest.raises(AssertionError, match="Torch not compiled with CUDA"):
        net(torch.rand(T, N, 5))  # SpikingJelly's own failure, unconverted
    functional.reset_net(net)
    bso_snn.convert(net, lam=0.5)
    name = "ParametricLIFNode" if plif else "LIFNode"
    with pytest.raises(
        RuntimeError,
        match=rf"neuron '1' \({name}\) has backend='cupy'.*input is on cpu \(and this machine has no CUDA GPU\)"
        r".*move the model and the data to a GPU.*backend='torch'",
    ):
        net(torch.rand(T, N, 5))
    assert net[1].backend == "cupy"  # never switched


@classic_with_cupy
def test_eval_mode_uses_spikingjelly_cpu_path_for_lif_and_fails_clearly_for_plif():
    """0.0.0.0.14 runs LIF/IF with backend='cupy' on CPU in eval mode (TorchScript), but
    ParametricLIF's CuPy kernel runs in eval too: the converted model behaves the same way."""
    net, twin = _net("cupy"), _net("torch")
    bso_snn.convert(net, lam=0.5)
    bso_snn.convert(twin, lam=0.5)
    net.eval(), twin.eval()
    x = torch.rand(T, N, 5)
    torch.testing.assert_close(net(x), twin(x))
    plif = _net("cupy", plif=True)
    bso_snn.convert(plif, lam=0.5)
    plif.eval()
    with pytest.raises(RuntimeError, match="backend='cupy'"):
        plif(x)


@classic_only
def test_without_cupy_spikingjelly_error_is_not_hidden():
    """Without CuPy, SpikingJelly itself refuses backend='cupy' at construction and in set_backend;
    conversion must not change that. CuPy is made unimportable in a child process."""
    code = """
import sys
sys.modules["cupy"] = None  # import cupy -> ImportError, as on a machine without CuPy
import bso_snn, torch
from spikingjelly.activation_based import functional, layer, neuron
try:
    neuron.LIFNode(step_mode="m", backend="cupy")
except ImportError as e:
    print("construction:", e)
net = torch.nn.Sequential(layer.Linear(2, 3), neuron.LIFNode(step_mode="m"), layer.Linear(3, 3),
                          neuron.LIFNode(step_mode="m"), layer.Linear(3, 1))
bso_snn.convert(net)
try:
    functional.set_backend(net, "cupy", instance=neuron.LIFNode)
except ImportError as e:
    print("set_backend:", e)
print("backend:", net[1].backend)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "construction: CuPy is not installed" in done.stdout
    assert "set_backend: CuPy is not installed" in done.stdout
    assert "backend: torch" in done.stdout


@pytest.mark.skipif(sja.CLASSIC, reason="checks the 2.0.0 side: no backend argument at all")
def test_release_2_has_no_backend_to_keep():
    with pytest.raises(TypeError, match="backend"):
        neuron.LIFNode(backend="cupy")
    sja.check_cupy_device(neuron.LIFNode(step_mode="m"), torch.zeros(1))  # nothing to check


@pytest.mark.gpu
@classic_with_cupy
def test_cupy_gradients_equal_torch_backend_on_gpu():
    """GPU only: the converted model's CuPy kernels give the torch backend's online gradients."""
    x, target = torch.rand(T, N, 5, device="cuda"), torch.rand(T, N, 2, device="cuda")
    grads = {}
    for backend in ("cupy", "torch"):
        net = _net(backend).cuda()
        bso_snn.convert(net, lam=0.5)
        (net(x) - target).pow(2).sum().backward()
        grads[backend] = [p.grad for p in net.parameters()]
    for got, want in zip(grads["cupy"], grads["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
