"""One training epoch of an SBNN (or its deterministic baselines): ``CE + lam_aux * aux`` per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .losses import aux_loss, sbnn_loss


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    lam_aux: float,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Train on every ``(x, y)`` batch once: loss ``CE(model(x), y) + lam_aux * aux_loss(model)``.

    The model must reset its neurons in ``forward`` (``SBNNResNet`` does; else pass ``forward``
    calling :func:`reset_sbnn` first). Returns the mean ``loss``, ``aux`` and ``train_acc``.
    """
    run = forward or (lambda m, inputs: m(inputs))
    model.train()
    loss_sum = aux_sum = correct = seen = 0.0
    for x, y in batches:
        logits = run(model, x)
        aux = aux_loss(model)
        loss = sbnn_loss(logits, y, aux=aux, lam_aux=lam_aux)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(y)
        loss_sum += loss.item() * n
        aux_sum += float(aux.detach() if isinstance(aux, Tensor) else aux) * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
    if not seen:
        raise ValueError("train_epoch: batches is empty")
    return {"loss": loss_sum / seen, "aux": aux_sum / seen, "train_acc": correct / seen}
