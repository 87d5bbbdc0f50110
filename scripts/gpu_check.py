"""The checks of ``scripts/gpu_check.sh`` that are Python (run with the venv it builds).

    python scripts/gpu_check.py cupy [--steps 5]            SpikingJelly 0.0.0.0.14 backend='cupy' vs 'torch'
    python scripts/gpu_check.py memory [--steps 50] [--T 4] VGG-11 (CIFAR-10 shape): online T-BSO vs BPTT
    python scripts/gpu_check.py amp --data-root DIR          bso-snn train --amp on generated CIFAR-10 files

Each prints what it measured and exits 1 with the reason when a check fails. ``--device cpu`` and
small sizes (``--width``, ``--batch-size``) make a dry run of the same code on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


class CheckFailed(Exception):
    pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- SpikingJelly 0.0.0.0.14 CuPy


def _sj_net(backend: str):
    from spikingjelly.activation_based import functional, layer, neuron

    def lif():
        return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, backend=backend, step_mode="m")

    net = torch.nn.Sequential(
        layer.Conv2d(3, 16, 3, padding=1), layer.BatchNorm2d(16), lif(),
        layer.Conv2d(16, 32, 3, padding=1), layer.BatchNorm2d(32), lif(), layer.AvgPool2d(2),
        layer.Conv2d(32, 32, 3, padding=1), layer.BatchNorm2d(32), lif(), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(32 * 8 * 8, 10),
    )  # fmt: skip
    functional.set_step_mode(net, "m")
    return net


def check_cupy(args) -> dict:
    """Convert the same SpikingJelly 0.0.0.0.14 network with backend 'cupy' and 'torch', train both
    ``--steps`` batches with T-BSO (real-time updates, T=4) on the same data, compare every batch's
    output and loss, and the binary weights at the end."""
    from importlib.metadata import version

    from bso_snn.adapters import spikingjelly as sja
    from spikingjelly.activation_based import functional, neuron

    import bso_snn
    from bso_snn.online import train_step
    from bso_snn.optim import make_optimizer

    if not sja.CLASSIC:
        raise CheckFailed(f"needs SpikingJelly 0.0.0.0.14 (backend='cupy'), got {version('spikingjelly')}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = _sj_net("torch")
    nets = {}
    for backend in ("cupy", "torch"):
        net = copy.deepcopy(base)
        functional.set_backend(net, backend)
        net.to(device)
        bso_snn.convert(net)
        nets[backend] = (net, make_optimizer(net, "tbso", time_steps=4, gamma=5e-7))
    backends = {n.backend for n in nets["cupy"][0].modules() if isinstance(n, neuron.BaseNode)}
    if backends != {"cupy"}:
        raise CheckFailed(f"the converted network's neurons run {backends}, not cupy")
    if args.construct_only:  # dry run without a GPU: CuPy kernels cannot run
        print("  built and converted the cupy and torch networks (construct-only: no GPU, nothing trained)")
        return {"construct_only": True}
    gen = torch.Generator().manual_seed(1)
    worst_out = worst_loss = 0.0
    for step in range(args.steps):
        x = torch.rand(4, 32, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (32,), generator=gen).to(device)
        results = {b: train_step(n, x, y, F.cross_entropy, o, step_mode="m") for b, (n, o) in nets.items()}
        out_diff = (results["cupy"].output - results["torch"].output).abs().max().item()
        loss_diff = abs(results["cupy"].loss - results["torch"].loss)
        worst_out, worst_loss = max(worst_out, out_diff), max(worst_loss, loss_diff)
        print(
            f"  step {step + 1}: loss cupy {results['cupy'].loss:.6f} torch {results['torch'].loss:.6f}  max|out diff| {out_diff:.2e}"
        )
    backends = {n.backend for n in nets["cupy"][0].modules() if isinstance(n, neuron.BaseNode)}
    if backends != {"cupy"}:
        raise CheckFailed(f"the converted network's neurons run {backends}, not cupy")
    weights = [
        (a, b) for a, b in zip(nets["cupy"][0].parameters(), nets["torch"][0].parameters(), strict=True)
    ]
    binary = [
        (a, b)
        for a, b in weights
        if getattr(a, "_bso_binary", None) or set(a.unique().tolist()) <= {-1.0, 1.0}
    ]
    differ = sum(int((a != b).sum()) for a, b in binary)
    total = sum(a.numel() for a, _ in binary)
    result = {"steps": args.steps, "max_output_diff": worst_out, "max_loss_diff": worst_loss,
              "binary_weights": total, "binary_weights_differing": differ}  # fmt: skip
    if worst_out > 1e-3 or worst_loss > 1e-4:
        raise CheckFailed(f"cupy and torch backends disagree: {result}")
    if differ > 1e-3 * total:
        raise CheckFailed(f"more than 0.1% of the binary weights differ between the backends: {result}")
    return result


# ---------------------------------------------------------------- VGG-11 memory and time


def _vgg(width: int, device):
    from bso_snn.cli.models import build_model

    torch.manual_seed(0)
    return build_model("vgg11", "torch", (3, 32, 32), 10, width=width).to(device)


def _measure(step_fn, steps: int, device) -> dict:
    times, peaks = [], []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        step_fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
    steady = times[min(3, len(times) - 1) :]  # the first steps include cuDNN autotuning and allocation
    return {
        "median_s": statistics.median(steady),
        "first_s": times[0],
        "peak_mib": max(peaks) if peaks else None,
        "peak_mib_per_step_median": statistics.median(peaks) if peaks else None,
    }


def _measure_online(args, inputs, y, device) -> dict:
    from bso_snn import convert
    from bso_snn.online import train_step
    from bso_snn.optim import make_optimizer

    model = _vgg(args.width, device)
    convert(model)
    sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    opt = make_optimizer(model, "tbso", time_steps=args.T, gamma=5e-7, float_optimizer=sgd)
    return _measure(lambda: train_step(model, inputs, y, F.cross_entropy, opt), args.steps, device)


def check_memory(args) -> dict:
    """VGG-11, CIFAR-10 shape, ``--T`` time steps, ``--batch-size``: ``--steps`` batches of online
    T-BSO (real-time updates; constant memory in T) vs BPTT of the float network."""
    from bso_snn import reset

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    inputs = x.unsqueeze(0).expand(args.T, *x.shape)

    results = {"online_tbso": _measure_online(args, inputs, y, device)}
    if device.type == "cuda":
        torch.cuda.empty_cache()

    bptt = _vgg(args.width, device)
    from bso_snn.convert import load_adapters

    load_adapters(bptt)
    fp_opt = torch.optim.SGD(bptt.parameters(), lr=0.1, momentum=0.9)

    def bptt_step():
        reset(bptt)
        fp_opt.zero_grad()
        loss = sum(F.cross_entropy(bptt(inputs[t]), y) for t in range(args.T)) / args.T
        loss.backward()
        fp_opt.step()

    results["bptt_fp"] = _measure(bptt_step, args.steps, device)
    for name, r in results.items():
        peak = f"{r['peak_mib']:.0f} MiB" if r["peak_mib"] is not None else "n/a (CPU)"
        print(
            f"  {name:<12} median {r['median_s'] * 1000:8.1f} ms/step (first {r['first_s']:.2f} s)  peak {peak}"
        )
    results.update({"T": args.T, "batch_size": args.batch_size, "width": args.width, "steps": args.steps,
                    "device": str(device), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None})  # fmt: skip
    return results


# ---------------------------------------------------------------- --amp end to end


def check_amp(args) -> dict:
    """``bso-snn train --amp`` on generated CIFAR-10 files: exit 0, binary weights exactly ±1 and
    float32, optimizer state float32, the same run without --amp for comparison."""
    from bso_snn.cli import main
    from bso_snn.cli.runstate import load_run

    root = Path(args.data_root)
    out = {}
    for amp in (True, False):
        run = root.parent / f"run-amp-{amp}"
        argv = ["train", "--dataset", "cifar10", "--data-root", str(root), "--model", "vgg11",
                "--width", str(args.width), "--T", "2", "--epochs", "1", "--batch-size", "32",
                "--device", args.device, "--out", str(run)] + (["--amp"] if amp else [])  # fmt: skip
        code = main(argv)
        if code != 0:
            raise CheckFailed(f"bso-snn {' '.join(argv)} exited {code}")
        metrics = json.loads((run / "metrics.json").read_text())
        payload = load_run(run / "checkpoint.pt")
        binary = set(metrics["weights_per_layer"])
        for name, value in payload["model"].items():
            if value.is_floating_point() and value.dtype != torch.float32:
                raise CheckFailed(f"--amp={amp}: {name} is {value.dtype}, not float32")
            if name in binary and set(value.unique().tolist()) != {-1.0, 1.0}:
                raise CheckFailed(f"--amp={amp}: binary weight {name} holds values other than ±1")
        out[f"amp={amp}"] = {
            "metrics_amp": metrics["amp"],
            "device": metrics["device"],
            "train_loss": metrics["epochs"][0]["train_loss"],
            "seconds": metrics["seconds_total"],
        }
    if out["amp=True"]["metrics_amp"] != "autocast bfloat16":
        raise CheckFailed(f"metrics.json does not record the autocast: {out}")
    print("  " + json.dumps(out))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py")
    parser.add_argument("check", choices=("cupy", "memory", "amp"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument(
        "--construct-only", action="store_true", help="cupy: build and convert only (dry run)"
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or {"cupy": 5, "memory": 50, "amp": 0}[args.check]
    if args.device.startswith("cuda") and not torch.cuda.is_available() and not args.construct_only:
        print(f"FAIL {args.check}: torch {torch.__version__} sees no CUDA GPU", file=sys.stderr)
        return 1
    check = {"cupy": check_cupy, "memory": check_memory, "amp": check_amp}[args.check]
    try:
        result = check(args)
    except CheckFailed as exc:
        print(f"FAIL {args.check}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"OK {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
