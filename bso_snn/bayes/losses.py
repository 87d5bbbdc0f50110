"""Auxiliary bias-minimising loss, Gaussian KL to the prior, and their ELBO-style combination.

    aux  = sum_{layers, steps} mean_batch sum_neurons ((m - theta)/S)^2 * 1[S > 0]
    KL_l = n_l * (log(sigma_p/sigma_l) + sigma_l^2/(2 sigma_p^2) - 1/2) + ||mu_l||^2/(2 sigma_p^2)
    loss = CE(logits, y) + lam_aux * aux + kl_weight * sum_l KL_l     (kl_weight = 1/N_train: ELBO)

The KL is for ``q = prod N(mu_i, sigma_l^2)`` against the prior ``N(0, sigma_p^2)``; the released code
has no KL term (default ``kl_weight = 0``) and ``sigma_p`` (default ``1/sqrt(fan_in)``) is our choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import _SBNNSynapse

S_MIN = 1e-6


def aux_term(u: Tensor, S: Tensor) -> Tensor:
    """``mean_batch sum_neurons (u/S)^2`` over units with ``S > 0``; ``u = m - theta``, dim 0 is the batch."""
    if u.shape != S.shape:
        raise ValueError(f"aux_term: u {tuple(u.shape)} and S {tuple(S.shape)} must have one shape")
    ratio_sq = (u / S.clamp_min(S_MIN)) ** 2 * (S > 0).to(u.dtype)
    return ratio_sq.flatten(1).sum(1).mean()


def gaussian_kl(mu: Tensor, sigma: Tensor, prior_std: float) -> Tensor:
    """KL( prod_i N(mu_i, sigma^2) || prod_i N(0, prior_std^2) ) for one shared scalar ``sigma``."""
    if not prior_std > 0:
        raise ValueError(f"gaussian_kl: prior_std={prior_std} must be > 0")
    n, var_p = mu.numel(), prior_std**2
    per_weight = math.log(prior_std) - torch.log(sigma) + sigma**2 / (2 * var_p) - 0.5
    return n * per_weight + mu.pow(2).sum() / (2 * var_p)


def kl_divergence(model: nn.Module, prior_std: float | None = None) -> Tensor:
    """Sum of :func:`gaussian_kl` over the SBNN weight layers of ``model`` (prior std ``1/sqrt(fan_in)``
    per layer when ``prior_std`` is None). Bias noise and the affine ``a``, ``c`` are not random here."""
    layers = [m for m in model.modules() if isinstance(m, _SBNNSynapse)]
    if not layers:
        raise ValueError("kl_divergence: model has no SBNNLinear / SBNNConv2d layer")
    return sum(
        gaussian_kl(layer.weight, layer.sigma, prior_std or 1.0 / math.sqrt(layer.fan_in)) for layer in layers
    )


def aux_loss(model: nn.Module) -> Tensor | float:
    """Sum of ``aux`` over every SBNN neuron of ``model`` (accumulated since the last reset)."""
    from .neurons import SBNNLIF  # neurons imports this module

    return sum((m.aux for m in model.modules() if isinstance(m, SBNNLIF)), 0.0)


def sbnn_loss(
    logits: Tensor,
    target: Tensor,
    aux: Tensor | float = 0.0,
    lam_aux: float = 1e-8,
    kl: Tensor | float = 0.0,
    kl_weight: float = 0.0,
) -> Tensor:
    """``CE(logits, target) + lam_aux * aux + kl_weight * kl`` (module docstring)."""
    if lam_aux < 0 or kl_weight < 0:
        raise ValueError(f"sbnn_loss: lam_aux={lam_aux} and kl_weight={kl_weight} must be >= 0")
    return F.cross_entropy(logits, target) + lam_aux * aux + kl_weight * kl
