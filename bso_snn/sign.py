"""The one sign function of bso-snn.

``sign(x)`` is ``+1`` where ``x >= 0`` and ``-1`` elsewhere, in ``x``'s dtype. Unlike
``torch.sign`` it never returns 0, so a binary weight stays in ``{-1, +1}`` forever.
"""

from __future__ import annotations

import torch


def sign(x: torch.Tensor) -> torch.Tensor:
    """Return ``+1`` where ``x >= 0`` and ``-1`` elsewhere (never 0), in ``x``'s dtype."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


def is_binary_tensor(x: torch.Tensor) -> bool:
    """True when every element of ``x`` is exactly ``-1`` or ``+1``."""
    return bool(((x == 1) | (x == -1)).all())
