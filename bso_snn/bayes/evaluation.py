"""Evaluating an SBNN: noiseless, one noisy sample (what the released code reports), or Monte Carlo.

    noiseless:  p(y|x) = softmax(f(x; xi = 0))
    single:     p(y|x) = softmax(f(x; xi)),              xi ~ N(0, I) once
    mc (N):     p(y|x) = (1/N) sum_n softmax(f(x; xi_n)),  N independent noisy forward passes

The Monte Carlo mean is over predictive probabilities (the posterior predictive estimate), not
logits. The model's noise switch (:func:`set_noise`) is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .neurons import SBNNLIF, set_noise

MODES = ("noiseless", "single", "mc")


def _noise_state(model: nn.Module) -> list[tuple[SBNNLIF, bool]]:
    return [(m, m.noisy) for m in model.modules() if isinstance(m, SBNNLIF)]


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    mode: str = "mc",
    samples: int = 8,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> Tensor:
    """Class probabilities ``[B, classes]`` for ``mode`` in ``noiseless``, ``single``, ``mc`` (``samples`` passes).

    ``forward(model, x) -> logits`` defaults to ``model(x)`` (the model resets its own state).
    """
    if mode not in MODES:
        raise ValueError(f"predict: mode={mode!r} is not one of {', '.join(MODES)}")
    if mode == "mc" and samples < 1:
        raise ValueError(f"predict: samples={samples} must be >= 1 for Monte Carlo evaluation")
    run = forward or (lambda m, inputs: m(inputs))
    saved = _noise_state(model)
    try:
        set_noise(model, mode != "noiseless")
        n = samples if mode == "mc" else 1
        probs = run(model, x).softmax(-1)
        for _ in range(n - 1):
            probs = probs + run(model, x).softmax(-1)
        return probs / n
    finally:
        for module, noisy in saved:
            module.noisy = noisy


def accuracies(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    samples: int = 0,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Test accuracy ``{"noiseless", "single"[, "mc<samples>"]}`` over ``batches`` of ``(x, y)``.

    ``samples = 0`` skips the Monte Carlo one. The model is put in eval mode and restored.
    """
    modes = [("noiseless", 1), ("single", 1)] + ([("mc", samples)] if samples else [])
    correct = {mode: 0 for mode, _ in modes}
    total = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            for mode, n in modes:
                correct[mode] += (predict(model, x, mode, n, forward).argmax(1) == y).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if not total:
        raise ValueError("accuracies: batches is empty")
    return {(f"mc{samples}" if mode == "mc" else mode): c / total for mode, c in correct.items()}
