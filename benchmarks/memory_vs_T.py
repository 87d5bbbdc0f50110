"""Peak training memory versus the number of time steps T: online (real-time) vs BPTT.

The same converted conv network (float first conv and classifier, two binary convs, LIF
neurons, average pooling; MNIST 28x28, batch 16) is trained on one real MNIST batch

- **online**: ``bso_snn.convert`` puts the neurons in online mode; ``bso_snn.online.train_step``
  with ``update='realtime'`` (backward and optimizer step after every time step);
- **BPTT**: the same conversion with ``online=False`` and ``bso_tracing=False`` on the binary
  layers, so neuron state stays in the graph; the T per-step losses are summed and one
  ``backward()`` runs through time, then one optimizer step.

Both use T-BSO for the binary weights and SGD for the float ones (``HybridOptimizer``).

Measurement: ``torch.profiler`` with ``profile_memory=True`` records every allocation and
free of the CPU allocator (c10), i.e. every tensor storage, including tensors saved by
autograd for backward, gradients and optimizer state. For each (mode, T) the model,
optimizer and input are built *inside* the profiled window,
two training batches run, and the peak of the running sum of allocated bytes is reported.
So the number is the peak of live tensor bytes of the whole training run, counted honestly
on CPU (not RSS, which allocator caching and the interpreter blur). Each configuration runs
once unprofiled first: the first run in a process allocates ~4 MiB of one-time caches that
are never freed, which would otherwise inflate whichever configuration happens to run first.

Run:  python benchmarks/memory_vs_T.py [--steps 1 2 4 8 16 32] [--plot docs/img/memory_vs_T.png]
(MNIST must be present: python -m bso_snn.data fetch mnist)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import bso_snn
from bso_snn.data import load_dataset
from bso_snn.neurons import LIF
from bso_snn.online import train_step
from bso_snn.optim import TBSO, HybridOptimizer, split_parameters

BATCH = 16


def build_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        LIF(),
        nn.Conv2d(16, 32, 3, padding=1),
        LIF(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        LIF(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def make_optimizer(model: nn.Module, time_steps: int) -> HybridOptimizer:
    binary, real = split_parameters(model)
    return HybridOptimizer(TBSO(binary, time_steps=time_steps), torch.optim.SGD(real, lr=0.1))


def train_bptt(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, optimizer) -> float:
    bso_snn.reset(model)
    optimizer.zero_grad()
    loss = sum(nn.functional.cross_entropy(model(x), target) for x in inputs) / inputs.shape[0]
    loss.backward()
    optimizer.step()
    return loss.item()


def train_two_batches(mode: str, steps: int, image: torch.Tensor, target: torch.Tensor) -> float:
    """Build the model and optimizer and train two batches of ``steps`` time steps."""
    model = build_network()
    if mode == "online":
        bso_snn.convert(model)
        optimizer = make_optimizer(model, steps)
    else:
        bso_snn.convert(model, online=False)
        for layer in model.modules():
            if bso_snn.is_binary_layer(layer):
                layer.bso_tracing = False
        optimizer = make_optimizer(model, 1)
    inputs = image.clone().expand(steps, *image.shape)  # direct encoding: the image at every step
    for _ in range(2):
        if mode == "online":
            loss = train_step(model, inputs, target, nn.functional.cross_entropy, optimizer).loss
        else:
            loss = train_bptt(model, inputs, target, optimizer)
    return loss


def peak_bytes(mode: str, steps: int, image: torch.Tensor, target: torch.Tensor) -> int:
    """Peak live tensor bytes over :func:`train_two_batches`, after one unprofiled warm-up run
    (so one-time, process-wide caches of the first call are not counted)."""
    train_two_batches(mode, steps, image, target)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_two_batches(mode, steps, image, target)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--plot", default="docs/img/memory_vs_T.png", help="PNG path ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("mnist")
    image, target = train.tensors[0][:BATCH].clone(), train.tensors[1][:BATCH].clone()

    print(f"torch {torch.__version__}, CPU, batch {BATCH}, input 1x28x28; peak live tensor memory (MiB)")
    print(f"{'T':>4} {'online':>10} {'BPTT':>10} {'BPTT/online':>12} {'online/online(T=1)':>19}")
    results = {"online": [], "bptt": []}
    start = time.time()
    for steps in args.steps:
        for mode in results:
            results[mode].append(peak_bytes(mode, steps, image, target) / 2**20)
        online, bptt = results["online"][-1], results["bptt"][-1]
        print(
            f"{steps:>4} {online:>10.2f} {bptt:>10.2f} {bptt / online:>12.2f} "
            f"{online / results['online'][0]:>19.3f}"
        )
    print(f"({time.time() - start:.0f} s)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(args.steps, results["bptt"], "o-", label="BPTT")
        ax.plot(args.steps, results["online"], "s-", label="online, real-time (bso-snn)")
        ax.set_xticks(args.steps, [str(s) for s in args.steps])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("peak tensor memory (MiB)")
        ax.set_title(f"conv SNN, MNIST batch {BATCH}, CPU")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
