"""Bayesian binary / spiking networks (Walker, Khajehnejad & Razi 2025, arXiv 2505.17962), reconstructed.

Gaussian weights with local reparameterisation (:class:`SBNNLinear`, :class:`SBNNConv2d`), stochastic
LIF / binary neurons with the IW-ST estimator (:class:`SBNNLIF`, :class:`SBNNBinary`,
:func:`iwst_spike`), the auxiliary loss and the KL term. See docs/bayes.md.
"""

from .binarize import binarize_means_
from .estimators import IWSTSpike, importance_weight, iwst_spike, spike_probability
from .layers import SBNNConv2d, SBNNLinear, SynapseOutput
from .losses import aux_loss, aux_term, gaussian_kl, kl_divergence, sbnn_loss
from .neurons import (
    DEFAULT_BETA,
    SBNNLIF,
    LIFState,
    SBNNBinary,
    StepOutput,
    reset_sbnn,
    sbnn_lif_step,
    set_noise,
)

__all__ = [
    "DEFAULT_BETA",
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
