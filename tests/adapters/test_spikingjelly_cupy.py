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
import shutil
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


# ---- the opt-in fused kernel: one CuPy launch with a time-local backward (0.0.0.0.14) ----

KERNEL_CASES = [
    dict(decay_input=True, hard_reset=True, detach_reset=False, dtype="float"),
    dict(decay_input=False, hard_reset=False, detach_reset=True, dtype="float"),
    dict(decay_input=True, hard_reset=False, detach_reset=False, dtype="half2"),
]


def _kernel_sources(case: dict) -> tuple[str, str]:
    from bso_snn.adapters.spikingjelly_cupy import LocalLIFNodeBPTTKernel
    from spikingjelly.activation_based import surrogate
    from spikingjelly.activation_based.auto_cuda import neuron_kernel

    args = dict(case, surrogate_function=surrogate.Sigmoid().cuda_codes)
    return LocalLIFNodeBPTTKernel(**args).full_codes, neuron_kernel.LIFNodeBPTTKernel(**args).full_codes


@classic_only
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_local_kernel_source_differs_from_spikingjelly_only_in_the_time_coupling(case):
    ours, theirs = _kernel_sources(case)
    zero = (
        "const float grad_h_next_to_v = 0.0f;"
        if case["dtype"] == "float"
        else ("const half2 grad_h_next_to_v = __float2half2_rn(0.0f);")
    )
    changed = [
        (a.strip(), b.strip()) for a, b in zip(ours.splitlines(), theirs.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 3, changed  # the kernel name, and dH[t+1]/dV[t] in the loop and after it
    assert changed[0][0].startswith("void LocalLIFNodeBPTTKernel_") and changed[0][1].startswith(
        "void LIFNodeBPTTKernel_"
    )
    for ours_line, theirs_line in changed[1:]:
        assert ours_line == zero and "grad_h_next_to_v" in theirs_line and "decay" in theirs_line


@classic_only
@pytest.mark.skipif(
    shutil.which("nvcc") is None, reason="nvcc not found: the PTX compile check needs the CUDA toolkit"
)
@pytest.mark.parametrize("case", [KERNEL_CASES[0], KERNEL_CASES[2]], ids=["float", "half2"])
def test_local_kernel_compiles_to_ptx(case, tmp_path):
    source, _ = _kernel_sources(case)
    (tmp_path / "kernel.cu").write_text(source)
    done = subprocess.run(
        ["nvcc", "--ptx", "-arch=sm_80", "-o", str(tmp_path / "kernel.ptx"), str(tmp_path / "kernel.cu")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ".entry LocalLIFNodeBPTTKernel_" in (tmp_path / "kernel.ptx").read_text()


@classic_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_spikingjelly_keeps_the_local_kernel(dtype):
    """LIFNode.multi_step_forward (0.0.0.0.14) rebuilds its backward kernel unless this check, copied
    from its code, passes; the local kernel must pass it for every neuron configuration."""
    from bso_snn.adapters.spikingjelly_cupy import local_backward_kernel

    for node in (neuron.LIFNode(), neuron.LIFNode(decay_input=False, v_reset=None, detach_reset=True)):
        kernel = local_backward_kernel(node, torch.zeros(2, 3, dtype=dtype))
        assert kernel.check_attributes(
            surrogate_function=node.surrogate_function.cuda_codes,
            hard_reset=node.v_reset is not None,
            detach_reset=node.detach_reset,
            dtype="float" if dtype == torch.float32 else "half2",
            decay_input=node.decay_input,
        )
    with pytest.raises(TypeError, match="float32 or float16"):
        local_backward_kernel(node, torch.zeros(2, dtype=torch.float64))


@classic_with_cupy
def test_use_fused_local_kernel_checks_the_model():
    net = _net("cupy")
    with pytest.raises(TypeError, match="for online \\(converted\\) SpikingJelly LIFNode only"):
        sja.use_fused_local_kernel(net)
    bso_snn.convert(net, lam=0.5)
    assert sja.use_fused_local_kernel(net) == ["1", "3"] and net[1].bso_fused_local_kernel
    torch_net = _net("torch")
    bso_snn.convert(torch_net, lam=0.5)
    with pytest.raises(ValueError, match="1: the fused local kernel needs backend='cupy'"):
        sja.use_fused_local_kernel(torch_net)
    with pytest.raises(ValueError, match="has no SpikingJelly LIFNode"):
        sja.use_fused_local_kernel(nn.Sequential(nn.Linear(2, 2)))


@classic_with_cupy
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no GPU exists")
def test_fused_kernel_without_gpu_fails_clearly():
    net = _net("cupy")
    bso_snn.convert(net, lam=0.5)
    sja.use_fused_local_kernel(net)
    with pytest.raises(RuntimeError, match="neuron '1' \\(LIFNode\\) has backend='cupy'"):
        net(torch.rand(T, N, 5))


@pytest.mark.skipif(sja.CLASSIC, reason="checks the 2.0.0 side")
def test_fused_kernel_is_refused_on_release_2():
    with pytest.raises(RuntimeError, match="exist only in the classic releases"):
        sja.use_fused_local_kernel(nn.Sequential(neuron.LIFNode()))


@pytest.mark.gpu
@classic_with_cupy
def test_fused_local_kernel_gradients_equal_sliced_on_gpu():
    """GPU only: one launch with the local kernel gives the T-slice gradients."""
    x, target = torch.rand(T, N, 5, device="cuda"), torch.rand(T, N, 2, device="cuda")
    grads = []
    for fused in (False, True):
        net = _net("cupy").cuda()
        bso_snn.convert(net, lam=0.5)
        if fused:
            sja.use_fused_local_kernel(net)
        (net(x) - target).pow(2).sum().backward()
        grads.append([p.grad for p in net.parameters()])
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
