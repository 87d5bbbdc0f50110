"""``bso-snn train --method sbnn``: the Bayesian path (bso_snn.bayes) from the command line.

Models (``--model``):

- ``resnet``: the normalisation-free residual SBNN (:class:`bso_snn.bayes.SBNNResNet`) for image and
  frame data: stage widths ``w, 2w, 4w, 8w`` (the DVS recipe: ``w, 2w, 4w``), ``--blocks`` residual
  blocks per stage (the released nets: 3), as many stages as the input size allows
  (each later stage halves it, down to at least 2x2);
- ``recurrent``: two recurrent SBNN layers of ``--width`` units (:class:`bso_snn.bayes.SHDNet`) for
  1-d sequences (SHD, row-wise MNIST).

Training follows the recipe ``--recipe`` (``paper`` or none: ``dvs-gesture`` for DVS Gesture,
``shd`` for 1-d sequences, else ``cifar10``): Adam with the sigma and bias-noise parameters at 10x ``--lr``,
the per-epoch cosine to ``lr / min_lr_divisor``, the recipe's ``lam_aux`` (``--lam-aux``) and aux
form, threshold and bias noise. The test accuracy is reported noiseless, with one noisy sample
(``test_acc``, what the released code reports) and, with ``--mc N``, as the Monte Carlo mean of N
noisy passes. ``--neuron sg|st`` trains the deterministic baselines of the same net instead.
It runs in one process on the CPU (``--device``, ``--amp`` and torchrun belong to ``--method bso``).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

SBNN_MODELS = ("resnet", "recurrent")
SBNN_RECIPES = ("cifar10", "dvs-gesture", "shd")  # the keys of bso_snn.bayes.RECIPES
ROWS_T = {"mnist-rows": 28, "fashion-mnist-rows": 28}  # one image row per step
NEURONS = ("sbnn", "sg", "st")


@dataclass
class SBNNConfig:
    dataset: str = "digits"
    model: str = "resnet"
    recipe: str = "cifar10"
    neuron: str = "sbnn"
    p: float = 0.0
    T: int = 1
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    lr: float = 5e-3
    lam_aux: float = 1e-8
    width: int = 64
    blocks: int = 3
    mc: int = 0
    data_root: str | None = None
    threads: int = 1


def default_recipe(dataset: str) -> str:
    from ..data import CATALOG

    spec = CATALOG[dataset]
    if dataset == "dvs-gesture":
        return "dvs-gesture"
    return "shd" if spec.temporal and len(spec.input_shape) == 1 else "cifar10"


def _stages(wanted: int, size: tuple[int, int]) -> int:
    stages = wanted
    while stages > 1 and any(s % 2 ** (stages - 1) or s // 2 ** (stages - 1) < 2 for s in size):
        stages -= 1
    return stages


def build_sbnn_model(cfg: SBNNConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The ``cfg.model`` net for one step's input ``input_shape`` (module docstring)."""
    from ..bayes import SBNNResNet, SHDNet, recipe
    from .models import ModelInputError

    rec = recipe(cfg.recipe)
    if cfg.model == "recurrent":
        if len(input_shape) != 1:
            raise ModelInputError(f"--model recurrent needs 1-d steps (SHD, mnist-rows), got {input_shape}")
        kwargs = {
            "threshold": rec.threshold,
            "p": cfg.p,
            "aux_form": rec.aux_form,
            "sigma_init": rec.sigma_init,
        }
        if rec.bias_noise_std is not None:
            kwargs["bias_noise_std"] = rec.bias_noise_std
        if cfg.neuron != "sbnn":
            raise ModelInputError("--model recurrent has no deterministic baseline here; use --neuron sbnn")
        return SHDNet(input_shape[0], (cfg.width, cfg.width), num_classes, cfg.T, batch_first=False, **kwargs)
    if len(input_shape) != 3:
        raise ModelInputError(f"--model resnet needs [C, H, W] steps, got {input_shape}")
    stages = _stages(3 if cfg.recipe == "dvs-gesture" else 4, input_shape[1:])
    return SBNNResNet(
        input_shape[0],
        num_classes,
        widths=tuple(cfg.width * 2**k for k in range(stages)),
        blocks_per_stage=cfg.blocks,
        time_steps=cfg.T,
        neuron=cfg.neuron,
        p=cfg.p,
        threshold=rec.threshold,
        bias_noise_std=rec.bias_noise_std,
        sigma_init=rec.sigma_init,
        aux_form=rec.aux_form,
    )


def _batches(loader: DataLoader, temporal: bool):
    """``(x, y)`` with ``x`` time-major ``[T, B, ...]`` for sequences, ``[B, C, H, W]`` for images."""
    for x, y in loader:
        yield (x.transpose(0, 1) if temporal else x), y


def train_sbnn(cfg: SBNNConfig, out: Path, log=print) -> dict:
    """Train per ``cfg``; writes ``metrics.json``, ``loss_acc.png`` and ``model.pt`` to ``out``."""
    from .. import data
    from ..bayes import SBNNConv2d, accuracies, normalisation_layers, recipe, train_epoch
    from .plots import plot_loss_acc

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    spec = data.CATALOG[cfg.dataset]
    train_set, test_set = data.load_dataset(cfg.dataset, cfg.data_root, cfg.T if spec.temporal else None)
    sample = train_set[0][0]  # one step's shape from the data (mnist-rows with T < 28 groups rows)
    step_shape = tuple(sample.shape[1:]) if spec.temporal else tuple(sample.shape)
    model = build_sbnn_model(cfg, step_shape, spec.num_classes)
    rec = recipe(cfg.recipe)
    optimizer = rec.optimizer(model, lr=cfg.lr)
    scheduler = rec.scheduler(optimizer, cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    test_loader = DataLoader(test_set, batch_size=256)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        stats = train_epoch(model, _batches(train_loader, spec.temporal), optimizer, cfg.lam_aux)
        scheduler.step()
        acc = accuracies(model, _batches(test_loader, spec.temporal), samples=cfg.mc)
        history.append(
            {
                "epoch": epoch,
                "train_loss": stats["loss"],
                "train_acc": stats["train_acc"],
                "aux": stats["aux"],
                "test_acc": acc["single"],
                "test_accuracy": acc,
                "seconds": time.perf_counter() - t_epoch,
            }
        )
        log(
            f"epoch {epoch}: loss {stats['loss']:.4f}  train acc {stats['train_acc']:.4f}  test "
            + "  ".join(f"{k} {v:.4f}" for k, v in acc.items())
            + f"  ({time.perf_counter() - t_epoch:.0f} s)"
        )
    torch.save(model.state_dict(), out / "model.pt")
    sigmas = {
        name: {"sigma": m.sigma.item(), "sigma_init": rec.sigma_init / math.sqrt(m.fan_in)}
        for name, m in model.named_modules()
        if isinstance(m, SBNNConv2d)
    }
    metrics = {
        "config": asdict(cfg),
        "method": "sbnn",
        "recipe": asdict(rec),
        "test_acc": history[-1]["test_acc"],
        "test_accuracy": history[-1]["test_accuracy"],
        "epochs": history,
        "seconds_total": time.perf_counter() - t_start,
        "normalisation_layers": normalisation_layers(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sbnn_convs": len(sigmas),
        "sigma_per_layer": sigmas,
        "checkpoint": {"file": "model.pt", "bytes": (out / "model.pt").stat().st_size},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"sbnn ({cfg.neuron}, p={cfg.p}) | {cfg.dataset} {cfg.model} | T={cfg.T}"
    plot_loss_acc(history, out / "loss_acc.png", title=title)
    return metrics


def summary(metrics: dict, out: Path) -> str:
    acc = metrics["test_accuracy"]
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    return "\n".join(
        [
            "",
            "test accuracy     "
            + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
            + f"  (after {len(metrics['epochs'])} epoch(s), {metrics['seconds_total']:.0f} s)",
            f"model             {metrics['parameters']} parameters, {metrics['sbnn_convs']} SBNN convs, "
            f"{metrics['normalisation_layers']} normalisation layers",
            f"run folder        {out}  ({files})",
        ]
    )


def config_from_args(args) -> SBNNConfig:
    from ..bayes import recipe
    from ..data import CATALOG

    spec = CATALOG[args.dataset]
    rec_name = default_recipe(args.dataset) if args.recipe in (None, "paper") else args.recipe
    rec = recipe(rec_name)
    model = args.model or ("recurrent" if len(spec.input_shape) == 1 else "resnet")
    return SBNNConfig(
        dataset=args.dataset,
        model=model,
        recipe=rec_name,
        neuron=args.neuron,
        p=args.p,
        T=args.T or ROWS_T.get(args.dataset) or (rec.time_steps if spec.temporal else 1),
        epochs=args.epochs or spec.default_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr or rec.lr,
        lam_aux=rec.lam_aux if args.lam_aux is None else args.lam_aux,
        width=args.width or (256 if model == "recurrent" else 32 if rec_name == "dvs-gesture" else 64),
        blocks=args.blocks,
        mc=args.mc,
        data_root=args.data_root,
        threads=args.threads,
    )


def check_args(args, parser) -> None:
    """Usage errors of ``--method`` and the options of the other method."""
    from .models import MODELS

    if args.method == "sbnn":
        if args.model not in (None, *SBNN_MODELS):
            parser.error(f"--method sbnn takes --model {' or '.join(SBNN_MODELS)}, got --model {args.model}")
        bso_only = {"optimizer": None, "update": None, "gamma": None, "ecosystem": "torch",
                    "checkpoint_every": None, "resume": None, "device": "auto", "amp": False,
                    "workers": 0, "sync_bn": False, "check_ranks": False}  # fmt: skip
        given = [k for k, default in bso_only.items() if getattr(args, k) != default]
        if given:
            parser.error(
                "--method sbnn trains with the Bayesian recipe; "
                + ", ".join("--" + k.replace("_", "-") for k in given)
                + " belong to --method bso"
            )
        return
    if args.model not in (None, *MODELS):
        parser.error(
            f"--model {args.model} is an SBNN model; add --method sbnn (bso models: {', '.join(MODELS)})"
        )
    if args.recipe in SBNN_RECIPES:
        parser.error(f"--recipe {args.recipe} is an SBNN recipe; add --method sbnn (bso: --recipe paper)")
    sbnn_only = {"mc": 0, "p": 0.0, "neuron": "sbnn", "lam_aux": None, "blocks": 3}
    given = [k for k, default in sbnn_only.items() if getattr(args, k) != default]
    if given:
        parser.error(
            ", ".join("--" + k.replace("_", "-") for k in given)
            + " belong to --method sbnn (add --method sbnn)"
        )


def add_arguments(t) -> None:
    """The ``--method`` option and the SBNN options of ``bso-snn train``."""
    t.add_argument(
        "--method",
        choices=("bso", "sbnn"),
        default="bso",
        help="bso (default): binary weights trained online by --optimizer; sbnn: the Bayesian SBNN path",
    )
    t.add_argument("--mc", type=int, default=0, metavar="N",
                   help="sbnn: also report the Monte Carlo test accuracy, the mean of N noisy passes")  # fmt: skip
    t.add_argument(
        "--p", type=float, default=0.0, help="sbnn: IW-ST p in [0, 1] (0: straight-through, 1: AGR_0)"
    )
    t.add_argument("--neuron", choices=NEURONS, default="sbnn",
                   help="sbnn: the unit; sg / st: deterministic surrogate-gradient / straight-through baselines")  # fmt: skip
    t.add_argument(
        "--lam-aux", type=float, default=None, help="sbnn: auxiliary-loss weight (default: the recipe's)"
    )
    t.add_argument("--blocks", type=int, default=3, help="sbnn resnet: residual blocks per stage (default 3)")


def validate_values(args, parser) -> None:
    if args.mc < 0:
        parser.error(f"--mc {args.mc}: the number of Monte Carlo samples must be >= 0 (0: none)")
    if not 0.0 <= args.p <= 1.0:
        parser.error(f"--p {args.p} is outside [0, 1]")
    if args.lam_aux is not None and not (args.lam_aux >= 0 and math.isfinite(args.lam_aux)):
        parser.error(f"--lam-aux {args.lam_aux} must be a finite number >= 0")
    if args.blocks < 1:
        parser.error(f"--blocks {args.blocks} must be >= 1")


__all__ = ["SBNNConfig", "add_arguments", "build_sbnn_model", "train_sbnn"]
