"""The one table of datasets ``bso-snn`` knows: name -> :class:`DatasetSpec`.

Each dataset lives in its own module under ``bso_snn.data``; its entry here says how to load it
and what the trainer must know about it. Add a dataset by writing its module and one entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetSpec:
    """What the trainer needs to know about one dataset.

    Attributes:
        name: the ``--dataset`` value.
        num_classes: number of labels (``0 .. num_classes-1``).
        input_shape: one time step's input, e.g. ``(3, 32, 32)``.
        temporal: ``True`` when a sample is already a sequence ``[T, *input_shape]`` (event data,
            ``T = time_steps``); ``False`` for a static input the trainer repeats at each of the
            ``T`` steps (direct encoding).
        loader: ``"module:function"`` in ``bso_snn.data``, called as
            ``function(name, root: Path, time_steps: int) -> (train, test)`` (two ``Dataset``s of
            ``(input, label)``).
        default_epochs: epochs when ``--epochs`` is not given.
        summary: one line for ``--help`` and the docs.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    temporal: bool
    loader: str
    default_epochs: int
    summary: str

    def load(self, root: Path, time_steps: int) -> tuple[Dataset, Dataset]:
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(f"bso_snn.data.{module}"), function)(
            self.name, root, time_steps
        )


CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", 10, (1, 8, 8), False, "idx:load", 10, "sklearn digits, 8x8 (embedded)"),
        DatasetSpec("mnist", 10, (1, 28, 28), False, "idx:load", 1, "MNIST idx files, 28x28"),
        DatasetSpec("fashion-mnist", 10, (1, 28, 28), False, "idx:load", 1, "Fashion-MNIST idx files"),
        DatasetSpec("cifar10", 10, (3, 32, 32), False, "cifar:load", 1, "CIFAR-10 python batches"),
        DatasetSpec("cifar100", 100, (3, 32, 32), False, "cifar:load", 1, "CIFAR-100 python batches"),
        DatasetSpec(
            "cifar10-dvs",
            10,
            (2, 48, 48),
            True,
            "cifar10dvs:load",
            1,
            "CIFAR10-DVS events -> T frames, 48x48",
        ),
        DatasetSpec(
            "dvs-gesture",
            11,
            (2, 32, 32),
            True,
            "dvs_gesture:load",
            1,
            "DVS128 Gesture events -> T frames, 32x32",
        ),
        DatasetSpec(
            "shd", 20, (700,), True, "shd:load", 1, "Spiking Heidelberg Digits (HDF5) -> T bins x 700"
        ),
        DatasetSpec("mnist-rows", 10, (28,), True, "row_mnist:load", 1, "MNIST read row by row (T=28)"),
        DatasetSpec(
            "fashion-mnist-rows", 10, (28,), True, "row_mnist:load", 1, "Fashion-MNIST read row by row (T=28)"
        ),
    )
}
