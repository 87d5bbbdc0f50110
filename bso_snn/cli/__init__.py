"""The ``bso-snn`` command: ``bso-snn train [...]``, ``bso-snn eval RUN_DIR|CHECKPOINT`` and
``bso-snn fetch DATASET...``.

Exit codes: 0 success; 1 fetch failed; 2 bad arguments (argparse usage errors: unknown dataset,
model, ecosystem or optimizer, T/epochs/batch size < 1, ...; a model that does not fit the data);
3 dataset missing or corrupted;
4 output folder cannot be written (or already holds a run); 5 the chosen ecosystem's library
is not installed; 6 a checkpoint or run folder to resume or evaluate is missing or unreadable;
130 training was interrupted (SIGINT / SIGTERM) after writing ``checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path

import torch

from ..data import CATALOG, DATASETS, DatasetChecksumError, DatasetNotFoundError
from ..data._fetch import add_fetch_arguments, run_fetch
from .models import ECOSYSTEMS, MODELS
from .sbnn import SBNN_MODELS, SBNN_RECIPES
from .sbnn import add_arguments as add_sbnn_arguments

OPTIMIZERS = ("tbso", "bso", "fp")
UPDATES = ("realtime", "accumulated")
EXIT_USAGE, EXIT_DATA, EXIT_OUTPUT, EXIT_ECOSYSTEM, EXIT_CHECKPOINT, EXIT_INTERRUPTED = 2, 3, 4, 5, 6, 130
RESUME_KEEPS = ("threads", "data_root", "device", "workers")
"""Options a resumed run may set anew (where and how fast it runs, not what it computes)."""


def _at_least(minimum: int):
    """An argparse type: an int >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a int") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


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
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="bso-snn", description="Train binary-weight spiking neural networks online with BSO / T-BSO."
    )
    parser.add_argument("--version", action="version", version=f"bso-snn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,fetch}")
    t = commands.add_parser(
        "train",
        help="train a small SNN and write a run folder",
        description="Train a small binary-weight SNN online (T-BSO / BSO) or its full-precision baseline; "
        "prints progress and a summary, writes metrics.json, loss_acc.png, flip_rate.png and a checkpoint.",
    )
    t.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="default: digits (embedded in scikit-learn); cifar10-dvs makes --T frames per recording",
    )
    t.add_argument(
        "--model",
        choices=MODELS + SBNN_MODELS,
        default=None,
        help=f"default: mlp ({', '.join(MODELS)}); --method sbnn: resnet (default) or recurrent",
    )
    t.add_argument(
        "--ecosystem", choices=ECOSYSTEMS, default="torch", help="whose layers/neurons build the model"
    )
    t.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None, help="tbso (default), bso, fp (float baseline)"
    )
    t.add_argument(
        "--T",
        type=_at_least_one(int),
        default=None,
        help="time steps per sample (default 4; --method sbnn: the recipe's for sequences, else 1)",
    )
    t.add_argument(
        "--epochs",
        type=_at_least_one(int),
        default=None,
        help="default: " + ", ".join(f"{k} {v.default_epochs}" for k, v in CATALOG.items()),
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
        default=None,
        help="Adam learning rate of the float parameters (default 1e-3; --method sbnn: the recipe's 5e-3)",
    )
    t.add_argument(
        "--gamma",
        type=_finite_float(0, inclusive=True),
        default=None,
        help="BSO/T-BSO flip threshold (default: the paper's 5e-7)",
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
    t.add_argument(
        "--recipe",
        choices=("paper", *SBNN_RECIPES),
        default=None,
        help="paper: the BSO authors' optimizers, schedules and loss (bso_snn.recipes.paper; SGD lr 0.1 "
        "momentum 0.9 for the float layers, the paper's gamma and betas decayed x0.1 every 50 epochs, "
        "CE + 0.05 MSE); data, model, --T, --batch-size and --epochs stay as given. --method sbnn: "
        f"{', '.join(SBNN_RECIPES)} (bso_snn.bayes.RECIPES; paper or none: the one of the dataset)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=_at_least_one(int),
        default=None,
        metavar="N",
        help="also write RUN_DIR/checkpoint.pt every N batches (it is always written at each epoch's end)",
    )
    t.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N; under torchrun, cuda means "
        "each process's cuda:LOCAL_RANK",
    )
    t.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: the forward pass under bfloat16 autocast (weights, gradients and optimizer "
        "state stay float32; binary weights stay exactly ±1)",
    )
    t.add_argument(
        "--workers",
        type=_at_least(0),
        default=0,
        help="data loader worker processes (default 0: load in the training process)",
    )
    t.add_argument(
        "--sync-bn",
        action="store_true",
        help="several processes (torchrun): BatchNorm statistics over the global batch (SyncBatchNorm)",
    )
    t.add_argument(
        "--check-ranks",
        action="store_true",
        help="several processes: after every optimizer step, check that all ranks hold bit-identical "
        "parameters and optimizer state (one all-gather of SHA-256 digests per step; for testing)",
    )
    t.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the interrupted run in RUN_DIR from its checkpoint.pt, with its saved settings "
        "(only --threads and --data-root may be given anew); ends bit-identical to an uninterrupted run",
    )
    add_sbnn_arguments(t)
    e = commands.add_parser(
        "eval",
        help="test accuracy of a saved model",
        description="Test accuracy of a run's model on its dataset: RUN_DIR (its model.bsosnn.pt / model.pt, "
        "else checkpoint.pt), or one CHECKPOINT file (checkpoint.pt, or a packed model beside its metrics.json).",
    )
    e.add_argument("path", metavar="RUN_DIR|CHECKPOINT")
    e.add_argument(
        "--data-root", default=None, help="data folder (default: the run's, else $BSO_SNN_DATA, ./data)"
    )
    e.add_argument("--threads", type=_at_least_one(int), default=1, help="torch CPU threads (default 1)")
    f = commands.add_parser("fetch", help="fetch and md5-verify MNIST / Fashion-MNIST / CIFAR-10 / CIFAR-100")
    add_fetch_arguments(f)
    return parser


def _refuse_existing_run(out: Path) -> str | None:
    """Why ``--out`` cannot take a new run, or None."""
    from .runstate import CHECKPOINT

    if (out / "metrics.json").exists():
        return (
            f"--out {out} already holds a finished run (metrics.json); choose another folder or delete it "
            f"(bso-snn train --resume RUN_DIR continues an interrupted run, one with checkpoint.pt and no "
            f"metrics.json)"
        )
    if (out / CHECKPOINT).exists():
        return (
            f"--out {out} holds an interrupted run ({CHECKPOINT}, no metrics.json); continue it with "
            f"bso-snn train --resume {out}, or choose another folder"
        )
    return None


def _prepare_out(out: Path) -> tuple[str | None, list[Path]]:
    """Create ``out`` and check it is writable: ``(error message or None, folders created)``."""
    problem = _refuse_existing_run(out)
    if problem:
        return problem, []
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _remove_empty(created)
        return (
            f"cannot write the run folder --out {out}: {exc.strerror or exc}. Choose a writable folder with --out"
        ), []
    return None, created


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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


class _StopRequest:
    """SIGINT / SIGTERM handler: the first signal asks training to stop after the current batch
    (it then writes checkpoint.pt); a second one stops at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"\nbso-snn: {signal.Signals(signum).name} received: finishing the current batch, then writing "
            f"checkpoint.pt (send it again to stop at once, without a checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> _StopRequest:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _config_from_args(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        model=args.model or "mlp",
        ecosystem=args.ecosystem,
        optimizer=args.optimizer or "tbso",
        T=args.T or 4,
        epochs=args.epochs or CATALOG[args.dataset].default_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        update="bptt" if args.optimizer == "fp" else (args.update or "realtime"),
        lr=args.lr or 1e-3,
        gamma=5e-7 if args.gamma is None else args.gamma,
        data_root=args.data_root,
        width=args.width,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        sync_bn=args.sync_bn,
        check_ranks=args.check_ranks,
        recipe=args.recipe,
    )


def _resume_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """``(config, payload, out)`` of the run to resume, or ``(message, None, None)``."""
    from .runstate import CHECKPOINT, RunCheckpointError, load_run
    from .train import TrainConfig

    defaults = vars(parser.parse_args(["train"]))
    given = [
        name
        for name, value in vars(args).items()
        if name not in ("command", "resume", *RESUME_KEEPS) and value != defaults[name]
    ]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(
            f"--resume continues a run with the settings saved in its {CHECKPOINT}; drop {options} "
            f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_KEEPS)} may be given anew)"
        )
    out = Path(args.resume)
    if (out / "metrics.json").exists():
        return f"--resume {out}: the run is complete (metrics.json exists); nothing to resume", None, None
    try:
        payload = load_run(out / CHECKPOINT)
    except RunCheckpointError as exc:
        return f"--resume {out}: {exc}", None, None
    saved = dict(payload["config"])
    try:
        cfg = TrainConfig(**saved)
    except TypeError as exc:
        return f"--resume {out}: {CHECKPOINT} holds an unknown config ({exc})", None, None
    cfg.threads, cfg.device, cfg.workers = args.threads, args.device, args.workers
    if args.data_root is not None:
        cfg.data_root = args.data_root
    return cfg, payload, out


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bso-snn train``: checks the device and process layout, joins the process group under
    torchrun, runs :func:`_run_train` and leaves the group (``--method sbnn``: :func:`run_train_sbnn`)."""
    from . import parallel, sbnn

    sbnn.check_args(args, parser)
    sbnn.validate_values(args, parser)
    if args.method == "sbnn":
        return run_train_sbnn(args)
    if args.recipe is not None:
        defaults = parser.parse_args(["train"])
        clashing = [
            flag
            for flag, key in (("--lr", "lr"), ("--gamma", "gamma"))
            if getattr(args, key) != getattr(defaults, key)
        ]
        if args.optimizer == "fp" or clashing:
            parser.error(
                f"--recipe {args.recipe} sets the optimizers itself (T-BSO/BSO and SGD lr 0.1, the paper's "
                f"gamma); it cannot be combined with "
                + (f"{' and '.join(clashing)}" if clashing else "--optimizer fp")
            )
    if args.optimizer == "fp" and args.update is not None:
        parser.error(
            "--update applies to tbso/bso only; the fp baseline is trained with backprop through time"
        )
    rank, world_size, local_rank = parallel.launch_layout()
    if world_size == 1 and (args.sync_bn or args.check_ranks):
        flag = "--sync-bn" if args.sync_bn else "--check-ranks"
        parser.error(
            f"{flag} needs several processes; start them with: torchrun --nproc_per_node N -m bso_snn train ..."
        )
    try:
        device = parallel.resolve_device(args.device, local_rank, world_size)
    except parallel.DeviceError as exc:
        return _error(str(exc), EXIT_USAGE)
    if args.sync_bn and device.type != "cuda":
        parser.error(f"--sync-bn needs --device cuda (torch's SyncBatchNorm runs on GPUs only), got {device}")
    runtime = parallel.Runtime(device, rank, world_size, local_rank)
    parallel.start(runtime)
    try:
        return _run_train(args, parser, runtime)
    finally:
        parallel.finish(runtime)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser, runtime) -> int:
    from . import parallel
    from .models import EcosystemMissingError, ModelInputError
    from .runstate import CHECKPOINT
    from .train import RunInterrupted, train

    main_rank = runtime.is_main
    say = print if main_rank else _quiet

    def fail(message: str, code: int) -> int:
        return _error(message, code) if main_rank else code

    created: list[Path] = []
    if args.resume is not None:
        cfg, payload, out = _resume_config(args, parser)
        if payload is None:
            return fail(cfg, EXIT_CHECKPOINT)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{args.dataset}-{args.optimizer or 'tbso'}"
        out = Path(args.out) if args.out else Path("runs") / name
        problem, created = _prepare_out(out) if main_rank else (None, [])  # rank 0 alone writes the run
        problem = parallel.from_main(problem, runtime)
        if problem:
            return fail(problem, EXIT_OUTPUT)
        cfg, payload = _config_from_args(args), None
    runtime.amp = cfg.amp
    say("bso-snn train " + " ".join(f"{k}={v}" for k, v in cfg.__dict__.items() if v is not None), flush=True)
    if runtime.distributed:
        say(
            f"{runtime.world_size} processes ({runtime.device.type}, backend "
            f"{'nccl' if runtime.device.type == 'cuda' else 'gloo'}); rank 0 writes {out}",
            flush=True,
        )
    if payload is not None:
        say(f"resuming {out} at epoch {payload['epoch'] + 1}, step {payload['step']}", flush=True)
    threads = torch.get_num_threads()
    try:
        with _StopRequest() as stop:
            metrics = train(
                cfg, out, resume=payload, stop=lambda: stop.received is not None, runtime=runtime, log=say
            )
    except RunInterrupted as exc:
        if main_rank:
            command = (
                f"torchrun --nproc_per_node {runtime.world_size} -m bso_snn train"
                if runtime.distributed
                else "bso-snn train"
            )
            print(
                f"bso-snn: interrupted after step {exc.step} (epoch {exc.epoch + 1}, batch {exc.batch}); the "
                f"run is saved in {out / CHECKPOINT}.\nResume it with: {command} --resume {out}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except (DatasetNotFoundError, DatasetChecksumError) as exc:
        return fail(str(exc), EXIT_DATA)
    except EcosystemMissingError as exc:
        return fail(str(exc), EXIT_ECOSYSTEM)
    except ModelInputError as exc:
        return fail(f"--model {cfg.model} does not fit --dataset {cfg.dataset}: {exc}", EXIT_USAGE)
    finally:
        _remove_empty(created)  # a run that failed before its first checkpoint leaves no folder behind
        torch.set_num_threads(threads)  # train() sets --threads; callers of main() get theirs back
    if main_rank:
        print(_summary(metrics, out))
    return 0


def _quiet(*_args, **_kwargs) -> None:
    """``print`` of the ranks other than 0."""


def run_train_sbnn(args: argparse.Namespace) -> int:
    """``bso-snn train --method sbnn``: see :mod:`bso_snn.cli.sbnn`."""
    from .models import ModelInputError
    from .sbnn import config_from_args, summary, train_sbnn

    cfg = config_from_args(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{stamp}-{args.dataset}-sbnn"
    problem, created = _prepare_out(out)
    if problem:
        return _error(problem, EXIT_OUTPUT)
    print(
        "bso-snn train --method sbnn "
        + " ".join(f"{k}={v}" for k, v in cfg.__dict__.items() if v is not None)
    )
    threads = torch.get_num_threads()
    try:
        metrics = train_sbnn(cfg, out)
    except (DatasetNotFoundError, DatasetChecksumError) as exc:
        return _error(str(exc), EXIT_DATA)
    except ModelInputError as exc:
        return _error(f"--model {cfg.model} does not fit --dataset {cfg.dataset}: {exc}", EXIT_USAGE)
    except ValueError as exc:
        return _error(f"--model {cfg.model} on --dataset {cfg.dataset}: {exc}", EXIT_USAGE)
    finally:
        _remove_empty(created)
        torch.set_num_threads(threads)
    print(summary(metrics, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return run_fetch(args)
    if args.command == "eval":
        from .evaluate import run_eval

        return run_eval(args)
    return run_train(args, parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]
