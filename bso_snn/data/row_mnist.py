"""Row-wise sequential MNIST / Fashion-MNIST: an image read one row per time step.

A 28x28 image ``x`` becomes the sequence ``x[t] = image row t`` (28 values in [0, 1]) for
``t = 0..27``, so a sample is ``[28, 28]`` and the net sees one row per step: a temporal task on
real data that installs here. ``time_steps`` must be 28 (one row per step) or a divisor of 28
(``28 / T`` consecutive rows per step, flattened: ``[T, 28 * 28 / T]``).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import TensorDataset

ROWS = 28
BASE = {"mnist-rows": "mnist", "fashion-mnist-rows": "fashion-mnist"}


def load(name: str, root: Path, time_steps: int) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` TensorDatasets of ``[T, 784 / T]`` float32 sequences and int64 labels."""
    from . import _load_builtin

    if ROWS % time_steps:
        raise ValueError(
            f"{name}: time_steps={time_steps} must divide {ROWS} (one or more whole rows per step); use 28"
        )
    images = _load_builtin(BASE[name], root)
    return tuple(
        TensorDataset(d.tensors[0].reshape(len(d.tensors[0]), time_steps, -1), d.tensors[1]) for d in images
    )
