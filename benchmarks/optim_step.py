"""Median optimizer step time of BSO, T-BSO and SGD(momentum=0.9, foreach=True), side by side.

The parameter set is VGG-11 for CIFAR-10 as the BSO paper binarises it: the 3x3 convolutions
64-128-256-256-512-512-512-512 with the first convolution and the classifier left out (those
stay full precision and would be trained by SGD in both cases), i.e. 7 binary weight tensors,
9.2 M weights. All three optimizers update the same tensors with the same random gradients;
measurements are interleaved (one step of each per round) so that load on a shared machine
hits all three alike.

    python benchmarks/optim_step.py [--repeats 50] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bso_snn.optim import BSO, TBSO

VGG11_CHANNELS = (3, 64, 128, 256, 256, 512, 512, 512, 512)


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    optimizers = {
        "SGD(momentum=0.9, foreach)": torch.optim.SGD(
            make_params(device, 0), lr=0.1, momentum=0.9, foreach=True
        ),
        "BSO": BSO(make_params(device, 0)),
        "T-BSO (T=4)": TBSO(make_params(device, 0), time_steps=4),
    }
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_ in range(args.warmup + args.repeats):
        for name, opt in optimizers.items():
            if round_ % 4 == 0 and hasattr(opt, "reset_time_step"):
                opt.reset_time_step()  # a new sequence of T=4 steps (T-BSO refuses a 5th)
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    numel = sum(p.numel() for p in optimizers["BSO"].param_groups[0]["params"])
    sgd = statistics.median(times["SGD(momentum=0.9, foreach)"])
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{len(vgg11_binary_shapes())} tensors, {numel / 1e6:.2f} M weights, median of {args.repeats}"
    )
    print(f"{'optimizer':<28} {'median ms':>10} {'x SGD':>7}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<28} {median * 1e3:>10.2f} {median / sgd:>7.2f}")


if __name__ == "__main__":
    main()
