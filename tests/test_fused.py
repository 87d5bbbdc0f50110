"""The fused flip kernels (bso_snn/optim/_fused.py) against a plain transcription of the rule.

The CPU kernel is built on first use (about 10 s once; cached by torch.utils.cpp_extension).
The CUDA kernel is compiled with ``nvcc --ptx`` where nvcc exists and run where a GPU exists.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest
import torch

from bso_snn.optim import BSO, TBSO, _fused

BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def plain_flip(w, g, m, scale, gamma, beta, reset_momentum):
    """The rule, written out on one tensor: M <- lerp(M, G, 1-beta); flip where (W*M)/s > gamma
    (a tie keeps its sign); W <- -W and optionally M <- 0 where flipped; count the flips."""
    m.lerp_(g, 1 - beta)
    ratio = w * m if scale is None else (w * m) / scale
    flip = ratio > gamma
    w.copy_(torch.where(flip, -w, w))
    if reset_momentum:
        m.masked_fill_(flip, 0.0)
    return int(flip.sum())


def random_case(shapes, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    ws = [torch.randint(0, 2, s, generator=generator).to(dtype).mul_(2).sub_(1) for s in shapes]
    ms = [torch.randn(s, generator=generator, dtype=dtype) * 0.1 for s in shapes]
    return ws, ms, generator


def bitwise_equal(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def require(device):
    reason = _fused.unavailable_reason(torch.device(device))
    if reason is not None:
        pytest.fail(f"the fused kernel should build here: {reason}")


# (the 40_000-element tensor spans two parallel tasks of the CPU kernel)
SHAPES = [(3,), (17, 5), (40_000,), (8, 4, 3, 3)]


@pytest.mark.parametrize(
    "dtype, threads",
    [(torch.float32, 1), (torch.float64, 1), (torch.float32, 2)],  # 2 threads: split into tasks
    ids=["float32", "float64", "float32-2-threads"],
)
@pytest.mark.parametrize("scaled", [False, True], ids=["bso", "tbso"])
@pytest.mark.parametrize("reset_momentum", [False, True])
@pytest.mark.parametrize("beta", [0.9, 0.3])  # 1-beta < 0.5 and >= 0.5: lerp's two formulas
def test_cpu_kernel_equals_the_plain_rule_bit_for_bit(dtype, threads, scaled, reset_momentum, beta):
    require("cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ws, ms, generator = random_case(SHAPES, dtype, seed=int(scaled) + 2 * int(reset_momentum))
        ws_ref, ms_ref = [w.clone() for w in ws], [m.clone() for m in ms]
        gamma = 0.05 if not scaled else 0.3
        total = 0
        for _ in range(12):
            gs = [torch.randn(w.shape, generator=generator, dtype=dtype) * 0.2 for w in ws]
            scales = [torch.rand((), generator=generator, dtype=dtype) + 0.1 for _ in ws] if scaled else None
            counts = _fused.flip_(ws, gs, ms, scales, gamma=gamma, beta=beta, reset_momentum=reset_momentum)
            for i in range(len(ws)):
                expected = plain_flip(
                    ws_ref[i], gs[i], ms_ref[i], scales[i] if scaled else None, gamma, beta, reset_momentum
                )
                assert counts[i].dtype == torch.int64 and counts[i].dim() == 0
                assert int(counts[i]) == expected
                total += expected
            assert all(bitwise_equal(a, b) for a, b in zip(ws, ws_ref, strict=True))
            assert all(bitwise_equal(a, b) for a, b in zip(ms, ms_ref, strict=True))
        assert total > 100  # the sequence really flips
    finally:
        torch.set_num_threads(previous)


def test_flip_decision_equals_an_elementwise_loop():
    """On a small tensor, each weight flips exactly where its own (w*m)/s > gamma, from the
    momentum the kernel wrote (Python floats, one element at a time)."""
    require("cpu")
    ws, ms, generator = random_case([(300,)], torch.float64, seed=5)
    w_before = ws[0].clone()
    g = torch.randn(300, generator=generator, dtype=torch.float64)
    scale = torch.tensor(0.7, dtype=torch.float64)
    (count,) = _fused.flip_(ws, [g], ms, [scale], gamma=0.2, beta=0.5, reset_momentum=False)
    flips = 0
    for wb, wa, m in zip(w_before.tolist(), ws[0].tolist(), ms[0].tolist(), strict=True):
        flip = wb * m / 0.7 > 0.2
        flips += flip
        assert wa == (-wb if flip else wb)
    assert int(count) == flips > 0


@pytest.mark.parametrize("scaled", [False, True])
def test_a_tie_keeps_its_sign(scaled):
    require("cpu")
    w = torch.tensor([1.0, -1.0, 1.0, -1.0])
    m = torch.tensor([0.5, -0.5, 0.25, -0.75])
    scale = torch.tensor(0.5) if scaled else None
    gamma = 1.0 if scaled else 0.5  # (W*M)/s equals gamma exactly for the first two
    # beta = 0 and G = M: the momentum stays M, so the ratios are exactly (0.5, 0.5, 0.25, 0.75) / s
    (count,) = _fused.flip_(
        [w], [m.clone()], [m], [scale] if scaled else None, gamma=gamma, beta=0.0, reset_momentum=True
    )
    assert torch.equal(w, torch.tensor([1.0, -1.0, 1.0, 1.0])) and int(count) == 1
    assert m.tolist() == [0.5, -0.5, 0.25, 0.0]


def test_unsupported_tensors_are_declined():
    w = torch.ones(4, 4)
    assert _fused.supports(w, torch.zeros(4, 4), torch.zeros(4, 4))
    assert not _fused.supports(w.t(), torch.zeros(4, 4), torch.zeros(4, 4))  # a non-contiguous weight
    assert not _fused.supports(w, torch.zeros(4, 4).t(), torch.zeros(4, 4))  # non-contiguous grad
    half = torch.ones(4, dtype=torch.bfloat16)
    assert not _fused.supports(half, torch.zeros_like(half), torch.zeros_like(half))


def test_the_self_check_refuses_a_kernel_that_rounds_differently():
    def off_by_rounding(params, grads, momenta, scales, weight, gamma, reset_momentum, fma):
        for g, m in zip(grads, momenta, strict=True):
            m.copy_(m * (1 - weight) + g * weight)  # the textbook formula, not torch's lerp
        return torch.zeros(len(params), dtype=torch.int64)

    assert _fused._matching_variant(off_by_rounding, torch.device("cpu")) is None
    require("cpu")
    assert _fused._backend(torch.device("cpu")).fma in (True, False)


def test_no_compiler_makes_the_cpu_kernel_unavailable_with_a_clear_reason(monkeypatch):
    monkeypatch.setattr(_fused, "_backends", {})
    monkeypatch.setattr(_fused, "_warned", set())
    monkeypatch.setattr(_fused, "_find_compiler", lambda: None)
    reason = _fused.unavailable_reason(torch.device("cpu"))
    assert reason is not None and "no C++ compiler" in reason and "CXX" in reason
    with pytest.warns(UserWarning, match="fused flip kernel is not available on cpu.*multi-tensor"):
        _fused.warn_unavailable_once(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fused.warn_unavailable_once(torch.device("cpu"))  # once per process: silent now
    with pytest.raises(RuntimeError, match="not available on cpu: no C\\+\\+ compiler"):
        _fused.flip_(
            [torch.ones(2)],
            [torch.zeros(2)],
            [torch.zeros(2)],
            None,
            gamma=0.0,
            beta=0.5,
            reset_momentum=False,
        )


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_cuda_kernel_source_compiles_with_nvcc(arch, tmp_path):
    """Where no GPU exists this is as far as the CUDA kernel can be checked: it compiles to PTX
    for both dtypes with explicitly rounded arithmetic."""
    ptx = tmp_path / "fused_flip.ptx"
    source = _fused._CSRC / "fused_flip.cu"
    subprocess.run(["nvcc", "--ptx", f"-arch={arch}", "-o", str(ptx), str(source)], check=True, timeout=300)
    text = ptx.read_text()
    assert ".entry bso_snn_flip_f32" in text and ".entry bso_snn_flip_f64" in text
    assert "fma.rn.f32" in text and "div.rn.f32" in text and "div.rn.f64" in text


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scaled", [False, True], ids=["bso", "tbso"])
@pytest.mark.parametrize("reset_momentum", [False, True])
def test_cuda_kernel_equals_the_plain_rule_bit_for_bit(dtype, scaled, reset_momentum):
    require("cuda")
    device = torch.device("cuda")
    ws, ms, generator = random_case(SHAPES + [(3_000_001,)], dtype, seed=7)
    ws, ms = [w.to(device) for w in ws], [m.to(device) for m in ms]
    ws_ref, ms_ref = [w.clone() for w in ws], [m.clone() for m in ms]
    gamma, total = (0.05 if not scaled else 0.3), 0
    for beta in (0.9, 0.3, 0.9):
        gs = [(torch.randn(w.shape, generator=generator, dtype=dtype) * 0.2).to(device) for w in ws]
        scales = (
            [(torch.rand((), generator=generator, dtype=dtype) + 0.1).to(device) for _ in ws]
            if scaled
            else None
        )
        counts = _fused.flip_(ws, gs, ms, scales, gamma=gamma, beta=beta, reset_momentum=reset_momentum)
        for i in range(len(ws)):
            expected = plain_flip(
                ws_ref[i], gs[i], ms_ref[i], scales[i] if scaled else None, gamma, beta, reset_momentum
            )
            assert int(counts[i]) == expected
            total += expected
        assert all(bitwise_equal(a, b) for a, b in zip(ws, ws_ref, strict=True))
        assert all(bitwise_equal(a, b) for a, b in zip(ms, ms_ref, strict=True))
    assert total > 100


# ----------------------------------------------------------------------------- through the optimizers


def _optimizer(kind, params, **kw):
    return (
        TBSO(params, gamma=0.5, betas=(0.9, 0.99), time_steps=4, **kw)
        if kind == "tbso"
        else BSO(params, gamma=0.02, beta=0.9, **kw)
    )


def _params(dtype):
    generator = torch.Generator().manual_seed(11)
    shapes = [(64, 32, 3, 3), (40_000,), (10, 7)]
    return [torch.nn.Parameter(torch.randint(0, 2, s, generator=generator).to(dtype) * 2 - 1) for s in shapes]


def _run(opt, params, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    flips = []
    for step in range(steps):
        if isinstance(opt, TBSO) and step % 4 == 0:
            opt.reset_time_step()
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.1
        opt.step()
        flips.append([s.flips for s in opt.flip_stats()])
    return flips


@pytest.mark.parametrize("kind", ["bso", "tbso"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_optimizer_equals_the_reference_optimizer_bit_for_bit(kind, dtype, one_thread):
    """Weights, momentum, v and flip counts of BSO/TBSO(fused=True) vs foreach=False, 12 steps."""
    require("cpu")
    fused_params, ref_params = _params(dtype), _params(dtype)
    fused, ref = _optimizer(kind, fused_params, fused=True), _optimizer(kind, ref_params, foreach=False)
    fused_flips, ref_flips = _run(fused, fused_params, 12, seed=3), _run(ref, ref_params, 12, seed=3)
    assert fused_flips == ref_flips and sum(map(sum, ref_flips)) > 1000
    for p, q in zip(fused_params, ref_params, strict=True):
        assert bitwise_equal(p.detach(), q.detach())
        assert (
            fused.state[p].keys()
            == ref.state[q].keys()
            == ({"momentum", "v"} if kind == "tbso" else {"momentum"})
        )
        for key in fused.state[p]:
            assert bitwise_equal(fused.state[p][key], ref.state[q][key])


def test_the_default_uses_the_fused_kernel_where_available(monkeypatch):
    require("cpu")
    calls = []
    original = _fused.flip_

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(_fused, "flip_", spy)
    for kw, expected in ((dict(), True), (dict(foreach=True), False), (dict(fused=False), False)):
        calls.clear()
        params = _params(torch.float32)
        _run(_optimizer("bso", params, **kw), params, 1, seed=0)
        assert bool(calls) == expected, kw


def test_without_a_compiler_the_default_falls_back_once_warned_and_fused_true_is_refused(monkeypatch):
    monkeypatch.setattr(_fused, "_backends", {})
    monkeypatch.setattr(_fused, "_warned", set())
    monkeypatch.setattr(_fused, "_find_compiler", lambda: None)
    params, ref_params = _params(torch.float32), _params(torch.float32)
    opt, ref = _optimizer("tbso", params), _optimizer("tbso", ref_params, foreach=False)
    with pytest.warns(
        UserWarning, match=r"not available on cpu \(no C\+\+ compiler found.*multi-tensor path"
    ):
        flips = _run(opt, params, 1, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        flips += _run(opt, params, 3, seed=5)
    assert flips == _run(ref, ref_params, 1, seed=4) + _run(ref, ref_params, 3, seed=5)
    assert all(bitwise_equal(p.detach(), q.detach()) for p, q in zip(params, ref_params, strict=True))
    with pytest.raises(RuntimeError, match=r"TBSO\(fused=True\): parameter 0 .*no C\+\+ compiler found"):
        _optimizer("tbso", _params(torch.float32), fused=True)
