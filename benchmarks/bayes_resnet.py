"""Depth sweep of normalisation-free residual nets: SBNN vs surrogate gradient vs straight-through.

For each dataset, depth (residual blocks), seed and method, train a two-stage ``SBNNResNet``
(widths w/2w, depth/2 blocks per stage, T=1, theta=0: binary activations) with the CIFAR recipe's
Adam (lr 5e-3, sigma at 10x), and record the test accuracy, the number of normalisation layers and
the wall time. Methods:

    sbnn-p{0,1}-{aux,noaux}  SBNN, IW-ST(p), with lam_aux (default 1e-8, train_cifar.py) or 0
    sg                       deterministic, Gaussian surrogate width 0.4 (the released --method sg)
    st                       deterministic, plain straight-through (gradient 1)
    sg-bn                    sg WITH one BatchNorm2d per conv: the reference the paper removes

SBNN nets are evaluated noiseless, with one noisy sample (what the released code reports) and
with the Monte Carlo mean of ``--mc`` noisy passes; deterministic nets once.

    python benchmarks/bayes_resnet.py                 # full sweep -> benchmarks/results/bayes_resnet.json
    python benchmarks/bayes_resnet.py --table         # print the markdown table from the JSON
    python benchmarks/bayes_resnet.py --quick         # CI: tiny sweep on digits, checks the pipeline only

Results are written after every run; a rerun skips the runs already in the JSON (resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bso_snn.bayes import SBNNConv2d
from bso_snn.bayes.evaluation import accuracies
from bso_snn.bayes.models import SBNNResNet, normalisation_layers
from bso_snn.bayes.recipe import recipe
from bso_snn.bayes.trainer import train_epoch
from bso_snn.data import load_dataset

METHODS = {
    "sbnn-p0-aux": {"neuron": "sbnn", "p": 0.0, "aux": True},
    "sbnn-p0-noaux": {"neuron": "sbnn", "p": 0.0, "aux": False},
    "sbnn-p1-aux": {"neuron": "sbnn", "p": 1.0, "aux": True},
    "sbnn-p1-noaux": {"neuron": "sbnn", "p": 1.0, "aux": False},
    "sg": {"neuron": "sg"},
    "st": {"neuron": "st"},
    "sg-bn": {"neuron": "sg", "norm": "batchnorm"},
}
RESULTS = Path(__file__).parent / "results" / "bayes_resnet.json"


def run_key(dataset: str, depth: int, seed: int, method: str) -> str:
    return f"{dataset}/depth{depth}/seed{seed}/{method}"


def batches(x: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator | None = None):
    order = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    return [(x[i], y[i]) for i in order.split(size)]


def one_run(data, dataset: str, depth: int, seed: int, method: str, args) -> dict:
    spec = METHODS[method]
    (x_tr, y_tr), (x_te, y_te) = data
    torch.manual_seed(seed)
    model = SBNNResNet(
        x_tr.shape[1],
        int(y_tr.max()) + 1,
        widths=(args.width, 2 * args.width),
        blocks_per_stage=depth // 2,
        neuron=spec["neuron"],
        p=spec.get("p", 0.0),
        norm=spec.get("norm"),
    )
    rec = recipe("cifar10")
    optimizer = rec.optimizer(model, lr=args.lr)
    scheduler = rec.scheduler(optimizer, args.epochs)
    lam_aux = args.lam_aux if spec.get("aux") else 0.0
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    history = []
    for _ in range(args.epochs):
        history.append(train_epoch(model, batches(x_tr, y_tr, args.batch_size, gen), optimizer, lam_aux))
        scheduler.step()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    stochastic = spec["neuron"] == "sbnn"
    acc = accuracies(model, batches(x_te, y_te, 500), samples=args.mc if stochastic else 0)
    if not stochastic:
        acc = {"noiseless": acc["noiseless"]}  # deterministic: every mode is the same
    convs = [m for m in model.modules() if isinstance(m, SBNNConv2d)]
    return {
        "dataset": dataset,
        "depth": depth,
        "seed": seed,
        "method": method,
        "convs": len(convs),
        "normalisation_layers": normalisation_layers(model),
        "accuracy": acc,
        "train_loss_last_epoch": history[-1]["loss"],
        "train_acc_last_epoch": history[-1]["train_acc"],
        # learned sigma relative to its init 0.5/sqrt(fan_in), median over layers (SBNN only)
        "sigma_over_init_median": statistics.median(
            c.sigma.item() / (0.5 / math.sqrt(c.fan_in)) for c in convs
        )
        if stochastic
        else None,
        "train_seconds": train_s,
        "eval_seconds": time.perf_counter() - t1,
    }


def load_data(dataset: str, train_size: int, test_size: int, pool: int, normalise: bool = False):
    """A seeded training subset and the first ``test_size`` test images, average-pooled by ``pool``;
    ``normalise``: ``(x - mean) / std`` with the subset's pixel mean and std (as the authors'
    CIFAR ``Normalize``), so no input is exactly 0."""
    train, test = load_dataset(dataset)
    x_tr, y_tr = train.tensors
    x_te, y_te = test.tensors
    if pool > 1:
        x_tr, x_te = F.avg_pool2d(x_tr, pool), F.avg_pool2d(x_te, pool)
    pick = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(1234))[:train_size]
    x_tr, y_tr, x_te, y_te = x_tr[pick], y_tr[pick], x_te[:test_size], y_te[:test_size]
    if normalise:
        mean, std = x_tr.mean(), x_tr.std()
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return (x_tr, y_tr), (x_te, y_te)


def save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def sweep(args, out: Path, log=print) -> dict:
    results = json.loads(out.read_text()) if out.exists() else {}
    settings = {
        k: getattr(args, k)
        for k in (
            "width",
            "epochs",
            "batch_size",
            "lr",
            "lam_aux",
            "mc",
            "train_size",
            "test_size",
            "pool",
            "normalise",
        )
    }
    if "settings" in results:
        results["settings"].setdefault("normalise", False)  # files written before the option existed
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{out} was made with other settings {results['settings']}; use another --out")
    results["settings"] = settings
    results["command"] = "python benchmarks/bayes_resnet.py " + " ".join(sys.argv[1:])
    results["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    runs = results.setdefault("runs", {})
    for seed in args.seeds:
        for dataset in args.datasets:
            data = load_data(dataset, args.train_size, args.test_size, args.pool, args.normalise)
            for depth in args.depths:
                for method in args.methods:
                    key = run_key(dataset, depth, seed, method)
                    if key in runs:
                        continue
                    runs[key] = one_run(data, dataset, depth, seed, method, args)
                    save(out, results)
                    r = runs[key]
                    log(f"{key}: {r['accuracy']}  ({r['train_seconds']:.0f} s train)", flush=True)
    return results


def merge(paths: list[Path], out: Path) -> dict:
    """Union of the runs of result files made with the same settings (parallel parts of one sweep)."""
    parts = [json.loads(p.read_text()) for p in paths]
    for part in parts:
        part["settings"].setdefault("normalise", False)
        if part["settings"] != parts[0]["settings"]:
            raise SystemExit(f"--merge: {paths} were made with different settings")
    merged = {
        "settings": parts[0]["settings"],
        "command": [part["command"] for part in parts],
        "machine": parts[0]["machine"],
        "runs": {k: v for part in parts for k, v in part["runs"].items()},
    }
    save(out, merged)
    return merged


def table(results: dict) -> str:
    """Markdown: one row per dataset/depth/method; accuracy per seed and their median; wall time."""
    rows: dict[tuple, list[dict]] = {}
    for r in results["runs"].values():
        rows.setdefault((r["dataset"], r["depth"], r["method"]), []).append(r)
    order = list(METHODS)
    lines = [
        "| dataset | blocks (convs) | method | norm layers | noiseless | 1 sample | MC | sigma/init | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(runs, mode):
        vals = [r["accuracy"][mode] for r in runs if mode in r["accuracy"]]
        if not vals:
            return "–"
        per_seed = " / ".join(f"{100 * v:.1f}" for v in vals)
        return f"**{100 * statistics.median(vals):.1f}** ({per_seed})"

    for key in sorted(rows, key=lambda k: (k[0], k[1], order.index(k[2]))):
        runs = sorted(rows[key], key=lambda r: r["seed"])
        mc = next((m for m in runs[0]["accuracy"] if m.startswith("mc")), None)
        sig = [r["sigma_over_init_median"] for r in runs if r["sigma_over_init_median"] is not None]
        lines.append(
            f"| {key[0]} | {key[1]} ({runs[0]['convs']}) | {key[2]} | {runs[0]['normalisation_layers']} | "
            f"{cell(runs, 'noiseless')} | {cell(runs, 'single')} | {cell(runs, mc) if mc else '–'} | "
            f"{statistics.median(sig):.2f} | {statistics.median(r['train_seconds'] for r in runs):.0f} |"
            if sig
            else f"| {key[0]} | {key[1]} ({runs[0]['convs']}) | {key[2]} | {runs[0]['normalisation_layers']} | "
            f"{cell(runs, 'noiseless')} | – | – | – | {statistics.median(r['train_seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def check_pipeline(results: dict, args) -> None:
    """--quick: every run finished with finite numbers, and only sg-bn has normalisation layers."""
    runs = results["runs"]
    expected = len(args.seeds) * len(args.datasets) * len(args.depths) * len(args.methods)
    assert len(runs) == expected, f"{len(runs)} runs, expected {expected}"
    for key, r in runs.items():
        assert all(0.0 <= v <= 1.0 for v in r["accuracy"].values()), (key, r["accuracy"])
        assert math.isfinite(r["train_loss_last_epoch"]), (key, r["train_loss_last_epoch"])
        assert (r["normalisation_layers"] > 0) == (r["method"] == "sg-bn"), (key, r["normalisation_layers"])
        assert r["convs"] == 1 + 2 * r["depth"], (key, r["convs"])
        if r["method"].startswith("sbnn"):
            assert set(r["accuracy"]) == {"noiseless", "single", f"mc{args.mc}"}, (key, r["accuracy"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sweep on digits; checks the pipeline")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, help="merge these result files into --out"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--depths", nargs="+", type=int, default=[4, 8, 16], help="residual blocks (even)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--width", type=int, default=8, help="channels of stage 1 (stage 2: 2x)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam base rate (sigma at 10x)")
    parser.add_argument("--lam-aux", type=float, default=1e-8, help="lam_aux of the *-aux runs")
    parser.add_argument("--mc", type=int, default=8, help="Monte Carlo samples for the SBNN evaluation")
    parser.add_argument("--train-size", type=int, default=6000, help="training images (seeded subset)")
    parser.add_argument("--test-size", type=int, default=1000, help="first N test images")
    parser.add_argument(
        "--pool", type=int, default=2, help="average-pool the images by this factor (28 -> 14)"
    )
    parser.add_argument("--normalise", action="store_true", help="standardise the inputs (no exact zeros)")
    args = parser.parse_args(argv)
    if any(d < 2 or d % 2 for d in args.depths):
        parser.error(f"--depths {args.depths}: each must be an even number >= 2 (two stages)")
    torch.set_num_threads(1)
    if args.merge:
        print(table(merge(args.merge, args.out or RESULTS)))
        return 0
    if args.table:
        print(table(json.loads((args.out or RESULTS).read_text())))
        return 0
    if args.quick:
        args.datasets, args.depths, args.seeds = ["digits"], [2], [0]
        args.width, args.train_size, args.test_size, args.mc, args.pool = 4, 256, 128, 2, 1
        with tempfile.TemporaryDirectory() as tmp:
            out = args.out or Path(tmp) / "quick.json"
            t0 = time.perf_counter()
            results = sweep(args, out)
            check_pipeline(results, args)
            print(table(results))
            print(f"quick sweep: pipeline ok ({time.perf_counter() - t0:.1f} s)")
        return 0
    results = sweep(args, args.out or RESULTS)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
