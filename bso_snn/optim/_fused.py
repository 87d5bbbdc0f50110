r"""The fused flip: one pass per tensor that updates the momentum, compares, flips and counts.

The rule is the one of :mod:`bso_snn.optim.functional`, with a per-tensor positive scale ``s``
(``1`` for BSO, ``sqrt(v[t]) + eps`` for T-BSO, a 0-dim tensor):

.. math::
    M \leftarrow \mathrm{lerp}(M, G, 1 - \beta), \qquad
    \text{flip} = (W \odot M) / s > \gamma, \qquad
    W \leftarrow -W,\ (M \leftarrow 0) \text{ where flip.}

Where the multi-tensor path makes about five passes over memory per tensor (lerp, ``W*M``, the
comparison, the sign change, the count), the kernels read ``G``, ``M``, ``W`` once and write
``M``, ``W`` once.

- CPU: ``csrc/fused_flip.cpp``, the operator ``torch.ops.bso_snn.flip_``, built on first use by
  ``torch.utils.cpp_extension.load`` into torch's extension cache (``$TORCH_EXTENSIONS_DIR``,
  default ``~/.cache/torch_extensions``; about 10 s, once per machine and torch version).
  It needs a C++ compiler (``$CXX`` or ``c++``) and ninja.
- CUDA: ``csrc/fused_flip.cu``, plain CUDA C compiled on first use by NVRTC (shipped with CUDA
  builds of torch) through ``torch.cuda._compile_kernel``, once per device.

Bit identity is checked, not assumed: the only rounding that depends on the machine is the
momentum's ``lerp`` (torch evaluates it with one fused multiply-add where the hardware has one,
with two roundings elsewhere). Each kernel has both variants, and before a backend is first used
it is run against torch's own ``lerp_`` on a test tensor; the variant that matches bit for bit is
kept. When neither matches or nothing can be built, the backend is unavailable:
:func:`unavailable_reason` says why, the optimizers' default (``fused=None``) falls back to the
multi-tensor path with a one-time warning, and ``fused=True`` raises.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

_CSRC = Path(__file__).parent / "csrc"
FUSED_DTYPES = (torch.float32, torch.float64)
"""Parameter dtypes the kernels handle (others take the multi-tensor path)."""
_CUDA_MAX_NUMEL = 2**31 - 1  # the CUDA kernel takes the element count as a C int

Launch = Callable[[list[Tensor], list[Tensor], list[Tensor], list[Tensor], float, float, bool, bool], Tensor]
"""``launch(params, grads, momenta, scales, weight, gamma, reset_momentum, fma) -> counts`` (int64, one
per tensor); ``scales`` is empty for BSO."""


@dataclasses.dataclass(frozen=True)
class _Backend:
    launch: Launch
    fma: bool  # the lerp variant that equals torch's own on this device


_backends: dict[str, _Backend | str] = {}  # device key -> backend, or the reason it is unavailable
_warned: set[str] = set()


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


# --------------------------------------------------------------------------- CPU


def _find_compiler() -> str | None:
    """The C++ compiler ``torch.utils.cpp_extension`` will use (``$CXX``, else ``c++``), or None."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _cpu_flags() -> list[str]:
    """``-ffp-contract=off`` (only the explicit ``std::fma`` may fuse) and the vector ISA torch
    itself dispatches to on this CPU."""
    flags = ["-O3", "-ffp-contract=off"]
    if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in (
        "AVX2",
        "AVX512",
    ):
        flags += ["-mavx2", "-mfma"]
    return flags


def _load_cpu() -> Launch | str:
    from torch.utils import cpp_extension

    if _find_compiler() is None:
        return (
            f"no C++ compiler found ({os.environ.get('CXX', 'c++')!r} is not on PATH; install g++ or set CXX)"
        )
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja), which torch.utils.cpp_extension needs to build"
    flags = _cpu_flags()
    name = "bso_snn_fused_flip" + ("_avx2" if "-mavx2" in flags else "")
    try:
        cpp_extension.load(
            name=name,
            sources=[str(_CSRC / "fused_flip.cpp")],
            extra_cflags=flags,
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # a failed build: report it and fall back
        return f"building {_CSRC / 'fused_flip.cpp'} failed: {type(error).__name__}: {error}"
    return torch.ops.bso_snn.flip_


# --------------------------------------------------------------------------- CUDA

_CUDA_THREADS = 256


def _load_cuda(device: torch.device) -> Launch | str:
    compile_kernel = getattr(torch.cuda, "_compile_kernel", None)
    if compile_kernel is None:
        return (
            f"torch {torch.__version__} has no torch.cuda._compile_kernel (NVRTC), needed to build the kernel"
        )
    source = (_CSRC / "fused_flip.cu").read_text()
    try:
        with torch.cuda.device(device):
            kernels = {
                torch.float32: compile_kernel(source, "bso_snn_flip_f32"),
                torch.float64: compile_kernel(source, "bso_snn_flip_f64"),
            }
            max_blocks = 8 * torch.cuda.get_device_properties(device).multi_processor_count
    except Exception as error:
        return f"compiling {_CSRC / 'fused_flip.cu'} with NVRTC failed: {type(error).__name__}: {error}"

    def launch(params, grads, momenta, scales, weight, gamma, reset_momentum, fma):
        counts = torch.zeros(len(params), dtype=torch.int64, device=device)
        with torch.cuda.device(device):
            for i, (w, g, m) in enumerate(zip(params, grads, momenta, strict=True)):
                scale = scales[i] if scales else w  # unread when not scaled
                blocks = max(1, min(-(-w.numel() // _CUDA_THREADS), max_blocks))
                kernels[w.dtype](
                    grid=(blocks, 1, 1),
                    block=(_CUDA_THREADS, 1, 1),
                    args=[w, g, m, scale, int(bool(scales)), w.numel(), float(weight), float(gamma)]
                    + [int(reset_momentum), int(fma), counts[i : i + 1]],
                )
        return counts

    return launch


# --------------------------------------------------------------------------- selection


def _matching_variant(launch: Launch, device: torch.device) -> bool | None:
    """The lerp variant (True: one fused multiply-add) whose momentum equals torch's ``lerp_``
    bit for bit on ``device``, for both lerp branches and both dtypes; None if neither does."""
    generator = torch.Generator().manual_seed(0)
    for fma in (True, False):
        ok = True
        for dtype, bits in ((torch.float32, torch.int32), (torch.float64, torch.int64)):
            for weight in (1e-3, 0.75):  # |weight| < 0.5 and >= 0.5 take different formulas
                g = torch.randn(4099, generator=generator, dtype=dtype).to(device)
                m = torch.randn(4099, generator=generator, dtype=dtype).to(device)
                w = torch.ones_like(m)
                expected = m.clone().lerp_(g, weight)
                launch([w], [g], [m], [], weight, float("inf"), False, fma)
                ok = ok and torch.equal(m.view(bits), expected.view(bits))
        if ok:
            return fma
    return None


def _backend(device: torch.device) -> _Backend | str:
    key = _device_key(device)
    if key not in _backends:
        if device.type == "cpu":
            loaded = _load_cpu()
        elif device.type == "cuda":
            loaded = _load_cuda(torch.device(key))
        else:
            loaded = f"there is no fused kernel for device type {device.type!r} (only cpu and cuda)"
        if isinstance(loaded, str):
            _backends[key] = loaded
        else:
            fma = _matching_variant(loaded, torch.device(key))
            _backends[key] = (
                _Backend(loaded, fma)
                if fma is not None
                else f"neither kernel variant reproduces torch's lerp_ rounding bit for bit on {key}"
            )
    return _backends[key]


def unavailable_reason(device: torch.device) -> str | None:
    """Why the fused kernel cannot be used on ``device`` (building it on first call), or None."""
    backend = _backend(device)
    return backend if isinstance(backend, str) else None


def warn_unavailable_once(device: torch.device) -> None:
    """One warning per process and device that the default fell back to the multi-tensor path."""
    reason = unavailable_reason(device)
    key = _device_key(device)
    if reason is not None and key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"bso_snn: the fused flip kernel is not available on {key} ({reason}); BSO/TBSO use the "
            f"multi-tensor path instead (the same results, slower). Pass fused=False to choose it explicitly "
            f"and silence this warning.",
            stacklevel=3,
        )


def supports(param: Tensor, grad: Tensor, momentum: Tensor, scale: Tensor | None = None) -> bool:
    """Whether the kernel handles this tensor: float32/float64, dense, contiguous, all on one device
    (and fewer than 2**31 elements on CUDA), the scale (if any) a 0-dim tensor of the same dtype
    and device. Others take the multi-tensor path."""
    return (
        (scale is None or (scale.dim() == 0 and scale.dtype == param.dtype and scale.device == param.device))
        and param.dtype in FUSED_DTYPES
        and grad.dtype == param.dtype
        and momentum.dtype == param.dtype
        and grad.layout == torch.strided
        and param.is_contiguous()
        and grad.is_contiguous()
        and momentum.is_contiguous()
        and grad.device == param.device
        and momentum.device == param.device
        and (param.device.type != "cuda" or param.numel() <= _CUDA_MAX_NUMEL)
    )


def flip_(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    scales: list[Tensor] | None,
    *,
    gamma: float,
    beta: float,
    reset_momentum: bool,
) -> list[Tensor]:
    """The fused flip in place on tensors that :func:`supports` accepts, all on one device whose
    backend is available. ``scales``: one 0-dim tensor of the parameter's dtype per tensor, or
    None for ``s = 1``. Returns the flip count per tensor (0-dim int64, on the device)."""
    if not params:
        return []
    backend = _backend(params[0].device)
    if isinstance(backend, str):
        raise RuntimeError(f"the fused flip kernel is not available on {params[0].device}: {backend}")
    counts = backend.launch(
        params, grads, momenta, list(scales or []), 1 - beta, gamma, reset_momentum, backend.fma
    )
    return list(counts.unbind(0))
