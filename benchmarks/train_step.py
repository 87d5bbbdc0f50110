"""Training-step time: a converted conv SNN's ``bso_snn.online.train_step`` vs SpikingJelly 2.0.0's own
``OTTTSequential`` on the same network, batch and ``T``, side by side in one run.

The network (flat, as ``OTTTSequential`` needs): conv 3->32 (float), LIF, conv 32->64 (binary), LIF,
avg-pool 2, conv 64->64 (binary), LIF, avg-pool 2, flatten, linear 4096->10 (float); CIFAR-shaped
random inputs [T, N, 3, 32, 32] (``T=4``, ``N=32``) and random labels; LIF tau 2, threshold 1, no
input decay, soft reset, detached reset (``OTTTLIFNode``'s defaults). Both train online with one
optimizer step per time step (real-time updates) and the loss ``cross_entropy(out[t], y) / T``:

- ``bso-snn``: the ``nn.Sequential`` of SpikingJelly ``LIFNode``s converted by ``bso_snn.convert``
  (the two middle convolutions become ±1), ``train_step(..., update='realtime')`` with T-BSO on the
  binary weights and ``SGD(lr=0.1, momentum=0.9)`` on the float ones (``make_optimizer``); one
  forward per layer (the layer keeps its own input trace).
- ``SpikingJelly OTTT``: ``OTTTSequential`` with ``OTTTLIFNode`` (spike/trace pairs; each layer
  runs on the spikes and again on the traces), SGD(lr=0.1, momentum=0.9) on every parameter, its
  documented loop (``reset_net``, then per step forward, backward, ``step``, ``zero_grad``).

Rounds are interleaved (one training step of each per round); the medians of the wall time and of
the process CPU time (``time.process_time``, not counting time descheduled by other jobs) are
printed and, with ``--json``, written with the command and the machine's load average.

    python benchmarks/train_step.py --repeats 10 --threads 1 2 --json benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import bso_snn
from bso_snn.online import train_step
from bso_snn.optim import make_optimizer

TAU = 2.0


def layers() -> list[nn.Module]:
    """The weight layers, with the same initial weights for both networks (binary ones as ±1)."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)]
    with torch.no_grad():
        for conv in convs[1:]:
            conv.weight.copy_(bso_snn.sign(conv.weight))
    return [*convs, nn.Linear(64 * 8 * 8, 10)]


def build(lif: type[nn.Module]) -> list[nn.Module]:
    c0, c1, c2, fc = layers()
    return [c0, lif(), c1, lif(), nn.AvgPool2d(2), c2, lif(), nn.AvgPool2d(2), nn.Flatten(), fc]


def bso_snn_runner(steps: int):
    def lif() -> nn.Module:  # OTTTLIFNode's dynamics, as an ordinary LIFNode
        return neuron.LIFNode(tau=TAU, decay_input=False, v_reset=None, detach_reset=True)

    model = nn.Sequential(*build(lif))
    report = bso_snn.convert(model)
    assert report.converted == ["2", "5"], report.converted
    optimizer = make_optimizer(
        model,
        "tbso",
        time_steps=steps,
        float_optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    )

    def run(x: torch.Tensor, y: torch.Tensor) -> float:
        return train_step(model, x, y, loss_fn, optimizer, update="realtime").loss

    return run


def spikingjelly_ottt_runner():
    model = layer.OTTTSequential(*build(lambda: neuron.OTTTLIFNode(tau=TAU)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def run(x: torch.Tensor, y: torch.Tensor) -> float:
        functional.reset_net(model)
        total = 0.0
        for t in range(x.shape[0]):
            loss = loss_fn(model(x[t]), y) / x.shape[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.detach()
        return float(total)

    return run


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


OURS, THEIRS = "bso-snn train_step (T-BSO + SGD)", "SpikingJelly OTTT (SGD)"


def time_both(threads: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(args.steps, args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    runners = {OURS: bso_snn_runner(args.steps), THEIRS: spikingjelly_ottt_runner()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    load_before = os.getloadavg()[0]
    for round_ in range(args.warmup + args.repeats):
        for name, run in runners.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            run(x, y)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    load_after = os.getloadavg()[0]
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    cpu = {name: statistics.median(samples) for name, samples in cpu_times.items()}
    if args.profile:
        with torch.profiler.profile() as prof:
            for _ in range(3):
                runners[OURS](x, y)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return {
        "threads": threads,
        "load_average_before_after": [load_before, load_after],
        "median_ms": {name: m * 1e3 for name, m in medians.items()},
        "samples_ms": {name: [s * 1e3 for s in samples] for name, samples in times.items()},
        "speedup_over_spikingjelly_ottt": medians[THEIRS] / medians[OURS],
        "median_cpu_ms": {name: m * 1e3 for name, m in cpu.items()},
        "cpu_speedup_over_spikingjelly_ottt": cpu[THEIRS] / cpu[OURS],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="T")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of bso-snn's step"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, T={args.steps}, batch {args.batch}, median of {args.repeats} interleaved rounds"
    )
    runs = []
    for threads in args.threads:
        run = time_both(threads, args)
        runs.append(run)
        load = run["load_average_before_after"]
        print(f"\nthreads {threads} (load average {load[0]:.1f} -> {load[1]:.1f})")
        for name, median in run["median_ms"].items():
            print(f"{name:<36} {median:>9.1f} ms wall {run['median_cpu_ms'][name]:>9.1f} ms CPU")
        print(
            f"speed-up of bso-snn over SpikingJelly OTTT: {run['speedup_over_spikingjelly_ottt']:.2f}x wall, "
            f"{run['cpu_speedup_over_spikingjelly_ottt']:.2f}x CPU time"
        )
    if args.json:
        result = {
            "command": "python " + " ".join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
            "torch": torch.__version__,
            "T": args.steps,
            "batch": args.batch,
            "repeats": args.repeats,
            "runs": runs,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
