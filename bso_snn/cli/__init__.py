"""The ``bso-snn`` command: ``bso-snn train [...]`` and ``bso-snn fetch DATASET...``.

Exit codes: 0 success; 1 fetch failed; 2 bad arguments (argparse usage errors: unknown dataset,
model, ecosystem or optimizer, T/epochs/batch size < 1, ...; a model that does not fit the data); 3 dataset missing or corrupted;
4 output folder cannot be written (or already holds a run); 5 the chosen ecosystem's library
is not installed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from ..data import DATASETS, DatasetChecksumError, DatasetNotFoundError
from ..data._fetch import add_fetch_arguments, run_fetch
from .models import ECOSYSTEMS, MODELS

OPTIMIZERS = ("tbso", "bso", "fp")
UPDATES = ("realtime", "accumulated")
DEFAULT_EPOCHS = {"digits": 10, "mnist": 1, "fashion-mnist": 1}
EXIT_USAGE, EXIT_DATA, EXIT_OUTPUT, EXIT_ECOSYSTEM = 2, 3, 4, 5


def _at_least_one(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value >= 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
        return value

    return parse


def _finite_float(minimum: float, inclusive: bool):
    """An argparse type: a finite float above ``minimum`` (or equal to it when ``inclusive``)."""
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value >= minimum if inclusive else value > minimum
        if not (above and value < math.inf):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bso-snn", description="Train binary-weight spiking neural networks online with BSO / T-BSO."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,fetch}")
    t = commands.add_parser(
        "train",
        help="train a small SNN and write a run folder",
        description="Train a small binary-weight SNN online (T-BSO / BSO) or its full-precision baseline; "
        "prints progress and a summary, writes metrics.json, loss_acc.png, flip_rate.png and a checkpoint.",
    )
    t.add_argument(
        "--dataset", choices=DATASETS, default="digits", help="default: digits (embedded in scikit-learn)"
    )
    t.add_argument("--model", choices=MODELS, default="mlp", help="default: mlp")
    t.add_argument(
        "--ecosystem", choices=ECOSYSTEMS, default="torch", help="whose layers/neurons build the model"
    )
    t.add_argument(
        "--optimizer", choices=OPTIMIZERS, default="tbso", help="tbso (default), bso, fp (float baseline)"
    )
    t.add_argument("--T", type=_at_least_one(int), default=4, help="time steps per sample (default 4)")
    t.add_argument(
        "--epochs",
        type=_at_least_one(int),
        default=None,
        help="default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()),
    )
    t.add_argument("--batch-size", type=_at_least_one(int), default=64, help="default 64")
    t.add_argument("--seed", type=int, default=0, help="seeds torch and the data order (default 0)")
    t.add_argument(
        "--update",
        choices=UPDATES,
        default=None,
        help="tbso/bso: step after every time step (realtime, default) or once per batch (accumulated)",
    )
    t.add_argument(
        "--lr",
        type=_finite_float(0, inclusive=False),
        default=1e-3,
        help="Adam learning rate of the float parameters",
    )
    t.add_argument(
        "--gamma",
        type=_finite_float(0, inclusive=True),
        default=5e-7,
        help="BSO/T-BSO flip threshold (paper 5e-7)",
    )
    t.add_argument(
        "--width",
        type=_at_least_one(int),
        default=None,
        help="hidden width (mlp 256; conv 32 channels; vgg11/resnet18 64: the first conv's channels, the others scale)",
    )
    t.add_argument(
        "--threads",
        type=_at_least_one(int),
        default=1,
        help="torch CPU threads (default 1: these small models run fastest on one thread)",
    )
    t.add_argument("--data-root", default=None, help="data folder (default: $BSO_SNN_DATA, else ./data)")
    t.add_argument("--out", default=None, help="run folder (default: runs/<time>-<dataset>-<optimizer>)")
    f = commands.add_parser("fetch", help="fetch and md5-verify MNIST / Fashion-MNIST")
    add_fetch_arguments(f)
    return parser


def _prepare_out(out: Path) -> str | None:
    """Create ``out`` and check it is writable; returns an error message or None."""
    if (out / "metrics.json").exists():
        return f"--out {out} already holds a run (metrics.json); choose another folder or delete it"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot write the run folder --out {out}: {exc.strerror or exc}. Choose a writable folder with --out"
    return None


def _error(message: str, code: int) -> int:
    print(f"bso-snn: error: {message}", file=sys.stderr)
    return code


def _summary(metrics: dict, out: Path) -> str:
    size, rss = metrics["model_size"], metrics["peak_rss_mb"]
    lines = [
        "",
        f"test accuracy     {metrics['test_acc']:.4f}  (after {len(metrics['epochs'])} epoch(s), "
        f"{metrics['seconds_total']:.0f} s incl. data loading)",
        f"model size        {size['bytes_1bit'] / 1024:.1f} KiB with 1-bit weights vs "
        f"{size['bytes_float32'] / 1024:.1f} KiB float32 ({size['bytes_float32'] / size['bytes_1bit']:.1f}x); "
        f"{size['binary_weights']} binary weights, {size['float_values']} float values",
        f"peak memory       {rss['end']:.0f} MiB peak RSS of this process (getrusage; includes Python, torch "
        f"and the dataset; {rss['before_training']:.0f} MiB before the first batch)",
    ]
    flips, numel = metrics["flips_per_layer"], metrics["weights_per_layer"]
    if numel:
        lines.append(f"flips per layer   (over {metrics['optimizer_steps']} binary optimizer steps)")
        lines += [
            f"  {name:<20} {flips.get(name, 0):>10} flips  ({flips.get(name, 0) / numel[name]:.2f} per weight)"
            for name in numel
        ]
    else:
        lines.append("flips per layer   none: full-precision baseline (no binary weights)")
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    lines.append(f"run folder        {out}  ({files})")
    return "\n".join(lines)


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .models import EcosystemMissingError, ModelInputError
    from .train import TrainConfig, train

    if args.optimizer == "fp" and args.update is not None:
        parser.error(
            "--update applies to tbso/bso only; the fp baseline is trained with backprop through time"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{stamp}-{args.dataset}-{args.optimizer}"
    problem = _prepare_out(out)
    if problem:
        return _error(problem, EXIT_OUTPUT)
    cfg = TrainConfig(
        dataset=args.dataset,
        model=args.model,
        ecosystem=args.ecosystem,
        optimizer=args.optimizer,
        T=args.T,
        epochs=args.epochs or DEFAULT_EPOCHS[args.dataset],
        batch_size=args.batch_size,
        seed=args.seed,
        update="bptt" if args.optimizer == "fp" else (args.update or "realtime"),
        lr=args.lr,
        gamma=args.gamma,
        data_root=args.data_root,
        width=args.width,
        threads=args.threads,
    )
    print(
        "bso-snn train " + " ".join(f"{k}={v}" for k, v in cfg.__dict__.items() if v is not None), flush=True
    )
    threads = torch.get_num_threads()
    try:
        metrics = train(cfg, out)
    except (DatasetNotFoundError, DatasetChecksumError) as exc:
        return _error(str(exc), EXIT_DATA)
    except EcosystemMissingError as exc:
        return _error(str(exc), EXIT_ECOSYSTEM)
    except ModelInputError as exc:
        return _error(f"--model {args.model} does not fit --dataset {args.dataset}: {exc}", EXIT_USAGE)
    finally:
        torch.set_num_threads(threads)  # train() sets --threads; callers of main() get theirs back
    print(_summary(metrics, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return run_fetch(args)
    return run_train(args, parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]
