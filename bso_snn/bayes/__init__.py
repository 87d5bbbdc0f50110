"""Bayesian binary / spiking networks (Walker, Khajehnejad & Razi 2025, arXiv 2505.17962), reconstructed.

Gaussian weights with local reparameterisation (:class:`SBNNLinear`, :class:`SBNNConv2d`), stochastic
LIF / binary neurons with the IW-ST estimator (:class:`SBNNLIF`, :class:`SBNNBinary`,
:func:`iwst_spike`), the auxiliary loss and the KL term; the normalisation-free residual nets
(:class:`SBNNResNet`) and the recurrent SHD layer (:class:`SBNNRecurrent`), the surrogate-gradient
baselines (:class:`SurrogateLIF`), the authors' recipes (:data:`RECIPES`) and Monte Carlo
evaluation (:func:`predict`). See docs/bayes.md.
"""

from .binarize import binarize_means_
from .estimators import IWSTSpike, importance_weight, iwst_spike, spike_probability
from .evaluation import accuracies, predict
from .layers import SBNNConv2d, SBNNLinear, SynapseOutput
from .losses import aux_loss, aux_term, gaussian_kl, kl_divergence, sbnn_loss
from .models import SBNNResNet, cifar_sbnn_resnet, dvs_sbnn_resnet, normalisation_layers
from .neurons import (
    AUX_FORMS,
    DEFAULT_BETA,
    SBNNLIF,
    LIFState,
    SBNNBinary,
    StepOutput,
    SurrogateLIF,
    reset_sbnn,
    sbnn_lif_step,
    set_noise,
)
from .recipe import RECIPES, SBNNRecipe, recipe
from .recurrent import SBNNRecurrent, SHDNet
from .trainer import train_epoch

__all__ = [
    "AUX_FORMS",
    "DEFAULT_BETA",
    "RECIPES",
    "SBNNRecipe",
    "SBNNRecurrent",
    "SBNNResNet",
    "SHDNet",
    "SurrogateLIF",
    "accuracies",
    "cifar_sbnn_resnet",
    "dvs_sbnn_resnet",
    "normalisation_layers",
    "predict",
    "recipe",
    "train_epoch",
    "IWSTSpike",
    "LIFState",
    "SBNNBinary",
    "SBNNConv2d",
    "SBNNLIF",
    "SBNNLinear",
    "StepOutput",
    "SynapseOutput",
    "aux_loss",
    "aux_term",
    "binarize_means_",
    "gaussian_kl",
    "importance_weight",
    "iwst_spike",
    "kl_divergence",
    "reset_sbnn",
    "sbnn_lif_step",
    "sbnn_loss",
    "set_noise",
    "spike_probability",
]
