"""Median optimizer step time of BSO and T-BSO (reference, foreach, fused, inductor) vs
``torch.optim.SGD(momentum=0.9, foreach=True)``, side by side in one run, at 1 and 2 threads.

The parameter set is VGG-11 for CIFAR-10 as the BSO paper binarises it: the 3x3 convolutions
64-128-256-256-512-512-512-512 with the first convolution and the classifier left out (those
stay full precision and would be trained by SGD in both cases), i.e. 7 binary weight tensors,
9.2 M weights. Every optimizer updates its own copy of the same tensors with the same random
gradients; measurements are interleaved (one step of each per round) so that load on a shared
machine hits all alike. T-BSO is rewound every 4 steps (a sequence of T = 4).

The BSO / T-BSO implementations:

- ``reference``: ``foreach=False``, the plain single-tensor rule;
- ``foreach``: ``foreach=True``, the multi-tensor ``torch._foreach_*`` path;
- ``fused``: ``fused=True``, the C++ kernel (``bso_snn/optim/csrc/fused_flip.cpp``);
- ``inductor``: the same optimizer with its flip replaced by ``torch.compile`` of the
  single-tensor rule (built here only for comparison).

Beside the wall time, the process CPU time of each step is recorded (``time.process_time``: all
threads, including OpenMP's spinning; time spent descheduled by other jobs is not in it).

After the timed rounds every variant's weights, momenta and ``v`` are compared with the reference's
bit for bit (all took the same steps from the same state) and the result is printed.

``--instructions`` counts instructions per step instead (``valgrind --tool=callgrind``, one child
process per variant, instrumentation switched on only around the measured steps), which the load
of other jobs on a shared machine does not change.

    python benchmarks/optim_step.py --repeats 40 --threads 1 2 --json benchmarks/results/optim_step.json
    python benchmarks/optim_step.py --instructions --json benchmarks/results/optim_step_instructions.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bso_snn.optim import BSO, TBSO
from bso_snn.optim import functional as F

VGG11_CHANNELS = (3, 64, 128, 256, 256, 512, 512, 512, 512)
SGD_NAME = "SGD(momentum=0.9, foreach)"
T = 4


def vgg11_binary_shapes() -> list[tuple[int, ...]]:
    pairs = list(zip(VGG11_CHANNELS[:-1], VGG11_CHANNELS[1:], strict=True))
    return [(c_out, c_in, 3, 3) for c_in, c_out in pairs[1:]]  # first conv stays float


def make_params(device: torch.device, seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in vgg11_binary_shapes():
        w = torch.randint(0, 2, shape, generator=g).float().mul_(2).sub_(1)
        p = torch.nn.Parameter(w.to(device))
        p.grad = (torch.randn(shape, generator=g) * 1e-5).to(device)
        params.append(p)
    return params


_compiled_flip = None


def inductor_flip(*args):
    """``torch.compile`` of the single-tensor flip rule (compiled on first call)."""
    global _compiled_flip
    if _compiled_flip is None:
        _compiled_flip = torch.compile(F._single_tensor_flip)
    return _compiled_flip(*args)


class InductorBSO(BSO):
    def _update(self, group, params, grads, probes):
        momenta = self._momenta(params)
        return inductor_flip(
            params,
            grads,
            momenta,
            [None] * len(params),
            group["gamma"],
            group["beta"],
            group["reset_momentum"],
        )


class InductorTBSO(TBSO):
    def _update(self, group, params, grads, probes):
        beta1, beta2 = group["betas"]
        scales = F.temporal_scales_(
            self._second_moments(params, group),
            probes,
            time_step=group["time_step"],
            beta2=float(beta2),
            eps=float(group["eps"]),
        )
        momenta = self._momenta(params)
        return inductor_flip(
            params, grads, momenta, scales, group["gamma"], float(beta1), group["reset_momentum"]
        )


def variants(device: torch.device) -> dict:
    """name -> a function building that optimizer over a fresh copy of the parameters (all from
    the same seed)."""
    p = lambda: make_params(device, 0)  # noqa: E731
    return {
        SGD_NAME: lambda: torch.optim.SGD(p(), lr=0.1, momentum=0.9, foreach=True),
        "BSO reference": lambda: BSO(p(), foreach=False),
        "BSO foreach": lambda: BSO(p(), foreach=True),
        "BSO fused": lambda: BSO(p(), fused=True),
        "BSO inductor": lambda: InductorBSO(p(), foreach=False),
        "T-BSO reference": lambda: TBSO(p(), time_steps=T, foreach=False),
        "T-BSO foreach": lambda: TBSO(p(), time_steps=T, foreach=True),
        "T-BSO fused": lambda: TBSO(p(), time_steps=T, fused=True),
        "T-BSO inductor": lambda: InductorTBSO(p(), time_steps=T, foreach=False),
    }


def step(opt, round_: int) -> None:
    if round_ % T == 0 and isinstance(opt, TBSO):
        opt.reset_time_step()  # a new sequence of T steps (T-BSO refuses a (T+1)-th)
    opt.step()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = {torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.detach().view(view), b.detach().view(view))


def identical_to_reference(optimizers: dict, name: str) -> bool | None:
    if name == SGD_NAME:
        return None
    ref = optimizers[name.split()[0] + " reference"]
    opt = optimizers[name]
    for p, q in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"], strict=True):
        if not same_bits(p, q) or opt.state[p].keys() != ref.state[q].keys():
            return False
        if not all(same_bits(opt.state[p][k], ref.state[q][k]) for k in opt.state[p]):
            return False
    return True


def time_all(threads: int, repeats: int, warmup: int, device: torch.device) -> dict:
    torch.set_num_threads(threads)
    optimizers = {name: build() for name, build in variants(device).items()}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    cpu_times: dict[str, list[float]] = {name: [] for name in optimizers}
    load_before = os.getloadavg()[0]
    for round_ in range(warmup + repeats):
        for name, opt in optimizers.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            step(opt, round_)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    load_after = os.getloadavg()[0]
    sgd = statistics.median(times[SGD_NAME])
    sgd_cpu = statistics.median(cpu_times[SGD_NAME])
    rows = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        cpu = statistics.median(cpu_times[name])
        q1, _, q3 = statistics.quantiles(samples, n=4)
        rows[name] = {
            "median_ms": median * 1e3,
            "iqr_ms": [q1 * 1e3, q3 * 1e3],
            "x_sgd": median / sgd,
            "median_cpu_ms": cpu * 1e3,
            "cpu_x_sgd": cpu / sgd_cpu,
            "bit_identical_to_reference": identical_to_reference(optimizers, name),
        }
    return {"threads": threads, "load_average_before_after": [load_before, load_after], "rows": rows}


def count_instructions(name: str, steps: int) -> None:
    """Child mode, run under callgrind: warm up natively, then count ``steps`` steps."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _callgrind import region

    torch.set_num_threads(1)
    opt = variants(torch.device("cpu"))[name]()
    for round_ in range(T):
        step(opt, round_)
    with region():
        for round_ in range(steps):
            step(opt, round_)


def instructions(names: list[str], steps: int) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).parent))
    from _callgrind import total_instructions

    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    counts = {}
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "callgrind.out"
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            cmd += [sys.executable, __file__, "--count-instructions", name, "--steps", str(steps)]
            subprocess.run(cmd, check=True, capture_output=True)
            counts[name] = total_instructions(out) / steps
        print(f"  {name:<28} {counts[name] / 1e6:>10.1f} M instructions per step", flush=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (callgrind) instead of timing"
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--count-instructions", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_instructions:
        count_instructions(args.count_instructions, args.steps)
        return
    device = torch.device(args.device)
    numel = sum(p.numel() for p in make_params(torch.device("cpu"), 0))
    header = (
        f"torch {torch.__version__}, device {device}, {len(vgg11_binary_shapes())} tensors, "
        f"{numel / 1e6:.2f} M weights, median of {args.repeats} interleaved rounds"
    )
    print(header)
    runs = []
    for threads in [] if args.instructions else args.threads:
        run = time_all(threads, args.repeats, args.warmup, device)
        runs.append(run)
        load = run["load_average_before_after"]
        print(f"\nthreads {threads} (load average {load[0]:.1f} -> {load[1]:.1f})")
        print(f"{'optimizer':<28} {'median ms':>10} {'x SGD':>7} {'CPU ms':>8} {'x SGD':>7}  bit-identical")
        for name, row in run["rows"].items():
            same = row["bit_identical_to_reference"]
            print(
                f"{name:<28} {row['median_ms']:>10.2f} {row['x_sgd']:>7.2f} {row['median_cpu_ms']:>8.2f} "
                f"{row['cpu_x_sgd']:>7.2f}  {'' if same is None else same}"
            )
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared; torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        "torch": torch.__version__,
        "device": str(device),
        "numel": numel,
    }
    if runs:
        result.update(repeats=args.repeats, runs=runs)
    if args.instructions:
        print("\ninstructions per step, 1 thread (callgrind, 4 steps after 4 warm-up steps):")
        names = [SGD_NAME, "BSO foreach", "BSO fused", "T-BSO foreach", "T-BSO fused"]
        counts = instructions(names, steps=4)
        result["instructions_per_step"] = counts
        result["instructions_x_sgd"] = {name: c / counts[SGD_NAME] for name, c in counts.items()}
        for name, ratio in result["instructions_x_sgd"].items():
            print(f"  {name:<28} {ratio:>6.2f} x SGD")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
