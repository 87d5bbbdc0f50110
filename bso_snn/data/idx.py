"""Catalog loader for the datasets of ``bso_snn.data`` itself (digits, MNIST, Fashion-MNIST)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import TensorDataset


def load(name: str, root: Path, time_steps: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """``bso_snn.data.load_dataset``'s static image datasets (``time_steps`` is not needed)."""
    from . import _load_builtin

    del time_steps
    return _load_builtin(name, root)
