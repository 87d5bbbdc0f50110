"""The authors' training recipe per dataset (neurips2025-anon/bayesian_snn), as one object.

All three scripts: Adam; the weight means, per-step affine ``a``/``c``, readout (and BatchNorm in the
``sg`` runs) at ``lr``; the sigma parameters (``rho``, and ``rho_rec`` for SHD) at ``10 * lr``; the
bias-noise parameter ``rho_b`` (DVS, SHD) at ``10 * lr`` too; the rate set at the start of every
epoch ``e`` of ``E`` by a cosine from ``lr`` down towards ``lr / min_lr_divisor``:

    lr_e = lr/d + (lr - lr/d) * (1 + cos(pi * e / E)) / 2          (d = min_lr_divisor)

The scripts' ``adjust_learning_rate`` sets every group at epoch 0, so train_shd.py's initial rates
(1e-3 weights, 1e-2 sigma) never act: its effective rates are 5e-3 / 5e-2, as in the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

SIGMA_PARAMS = ("rho", "rho_rec")  # softplus^-1 of the weight std (feed-forward, recurrent)
BIAS_NOISE_PARAMS = ("rho_b",)  # softplus^-1 of the bias-noise std


@dataclass(frozen=True)
class SBNNRecipe:
    """One dataset's settings from the released script named in ``source`` (see the module docstring)."""

    name: str
    source: str
    lr: float
    sigma_lr_factor: float
    bias_noise_lr_factor: float | None  # None: the script has no bias noise
    min_lr_divisor: float
    lam_aux: float
    aux_form: str  # see bso_snn.bayes.neurons.AUX_FORMS
    threshold: float
    time_steps: int
    batch_size: int
    epochs: int
    bias_noise_std: float | None  # softplus(rho_b) at init
    sigma_init: float = 0.5  # sigma = sigma_init / sqrt(fan_in) at init ("learnable" scale style)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Adam groups: everything at ``lr``; sigma at ``sigma_lr_factor * lr``; bias noise at its own rate."""
        groups: dict[str, list] = {"base": [], "sigma": [], "bias_noise": []}
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in SIGMA_PARAMS:
                groups["sigma"].append(param)
            elif leaf in BIAS_NOISE_PARAMS:
                if self.bias_noise_lr_factor is None:
                    raise ValueError(
                        f"recipe {self.name!r}: the model has bias-noise parameter {name} but {self.source} "
                        "has no bias noise; build the model with bias_noise_std=None"
                    )
                groups["bias_noise"].append(param)
            else:
                groups["base"].append(param)
        factors = {"base": 1.0, "sigma": self.sigma_lr_factor, "bias_noise": self.bias_noise_lr_factor}
        return [
            {"params": params, "lr": self.lr * factors[kind], "name": kind}
            for kind, params in groups.items()
            if params
        ]

    def optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Adam:
        """``Adam(param_groups(model))``; ``lr`` overrides the base rate (the factors are kept)."""
        recipe = self if lr is None else _replace_lr(self, lr)
        return torch.optim.Adam(recipe.param_groups(model))

    def lr_factor(self, epoch: int, epochs: int) -> float:
        """``lr_e / lr`` at the start of ``epoch`` (0-based) of ``epochs``."""
        floor = 1.0 / self.min_lr_divisor
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-epoch cosine of every group (call ``scheduler.step()`` once after each epoch)."""
        if epochs < 1:
            raise ValueError(f"SBNNRecipe.scheduler: epochs={epochs} must be >= 1")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: self.lr_factor(e, epochs))


def _replace_lr(recipe: SBNNRecipe, lr: float) -> SBNNRecipe:
    from dataclasses import replace

    if not lr > 0:
        raise ValueError(f"SBNNRecipe.optimizer: lr={lr} must be > 0")
    return replace(recipe, lr=lr)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


RECIPES = {
    "cifar10": SBNNRecipe(
        name="cifar10",
        source="train_cifar.py",
        lr=5e-3,
        sigma_lr_factor=10.0,
        bias_noise_lr_factor=None,
        min_lr_divisor=50.0,
        lam_aux=1e-8,
        aux_form="input",
        threshold=0.0,
        time_steps=1,
        batch_size=256,
        epochs=200,
        bias_noise_std=None,
        notes=("model: cifar_sbnn_resnet (12 blocks, 25 convs)", "data: RandomCrop(32, 4), flip, normalise"),
    ),
    "dvs-gesture": SBNNRecipe(
        name="dvs-gesture",
        source="train_dvs.py",
        lr=5e-3,
        sigma_lr_factor=10.0,
        bias_noise_lr_factor=10.0,
        min_lr_divisor=50.0,
        lam_aux=1e-10,
        aux_form="membrane-no-threshold",
        threshold=1.0,
        time_steps=49,
        batch_size=16,
        epochs=70,
        bias_noise_std=_softplus(-1.0),
        notes=("model: dvs_sbnn_resnet (9 blocks, 19 convs)", "data: 49 frames split by number, 32x32"),
    ),
    "shd": SBNNRecipe(
        name="shd",
        source="train_shd.py",
        lr=5e-3,
        sigma_lr_factor=10.0,
        bias_noise_lr_factor=10.0,
        min_lr_divisor=10.0,
        lam_aux=1e-6,
        aux_form="input-step-std",
        threshold=1.0,
        time_steps=100,
        batch_size=32,
        epochs=30,
        bias_noise_std=_softplus(-2.0),
        notes=(
            "model: 2 x SBNNRecurrent(256), bias-free readout",
            "data: 700 channels, 100 bins over 1.4 s",
            "initial rates 1e-3 / 1e-2 in the script are overwritten at epoch 0 by adjust_learning_rate",
        ),
    ),
}


def recipe(name: str) -> SBNNRecipe:
    """The recipe ``name`` (``cifar10``, ``dvs-gesture``, ``shd``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown SBNN recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
