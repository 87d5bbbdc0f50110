"""Image and frame transforms in plain torch (the paper's augmentation; no torchvision needed).

Every function takes a float tensor ``[..., C, H, W]`` (one image, or ``[T, C, H, W]`` frames that
get the same random draw) and returns a new tensor; randomness comes from ``torch``'s global RNG,
which ``DataLoader`` seeds per worker, so runs are reproducible for a fixed ``--seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _randint(high: int) -> int:
    """A uniform integer in ``[0, high)`` from torch's RNG."""
    return int(torch.randint(high, ()).item())


def random_crop(x: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side, then cut a ``size x size`` window at a uniform
    offset (torchvision's ``RandomCrop(size, padding)``)."""
    padded = F.pad(x, (padding, padding, padding, padding))
    h, w = padded.shape[-2:]
    top, left = _randint(h - size + 1), _randint(w - size + 1)
    return padded[..., top : top + size, left : left + size].clone()


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror left-right with probability ``p``."""
    return x.flip(-1) if torch.rand(()).item() < p else x


def cutout(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero one ``length x length`` square (clipped at the borders) centred at a uniform pixel, in
    every channel (DeVries & Taylor 2017, ``n_holes=1``, as the authors' ``Cutout``)."""
    h, w = x.shape[-2:]
    cy, cx = _randint(h), _randint(w)
    y0, y1 = max(cy - length // 2, 0), min(cy + length // 2, h)
    x0, x1 = max(cx - length // 2, 0), min(cx + length // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = 0.0
    return out


def random_roll(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift cyclically by a uniform ``(dy, dx)`` in ``[-max_shift, max_shift]^2`` (the authors'
    CIFAR10-DVS augmentation, ``torch.roll``)."""
    dy, dx = (_randint(2 * max_shift + 1) - max_shift for _ in range(2))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean[c]) / std[c]`` per channel ``c`` (the channel axis is ``-3``)."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[..., C, H, W]`` to ``size`` with antialiasing (what torchvision's
    ``Resize`` does to tensors)."""
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, *out.shape[-3:])


def compose(*steps: Transform) -> Transform:
    """Apply ``steps`` left to right."""

    def run(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return run
