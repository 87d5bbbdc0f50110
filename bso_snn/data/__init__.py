"""Datasets: sklearn digits (embedded), MNIST and Fashion-MNIST (checksummed idx files), and the
paper's CIFAR-10, CIFAR-100 (``bso_snn.data.cifar``) and CIFAR10-DVS (``bso_snn.data.cifar10dvs``).

``load_dataset(name, root=None, time_steps=None) -> (train, test)``; every dataset is one entry of
``bso_snn.data.catalog.CATALOG``. For digits / MNIST / Fashion-MNIST: two ``TensorDataset``s of
float32 images in [0, 1] shaped ``[N, 1, H, W]`` and int64 labels.

- ``"digits"``: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits shipped inside
  scikit-learn, values 0..16 divided by 16). No official split exists; we use a fixed stratified
  80/20 split (``train_test_split(test_size=0.2, stratify=y, random_state=0)``): 1,437 / 360 images.
- ``"mnist"``, ``"fashion-mnist"``: the official 60k/10k idx files, found under ``root`` in either
  layout ``root/mnist/<file>`` (what ``fetch`` writes) or torchvision's ``root/MNIST/raw/<file>``
  (``root/FashionMNIST/raw/<file>``), each file plain or ``.gz``. The md5 of every file's
  uncompressed bytes is checked against the canonical value.

``root`` defaults to ``$BSO_SNN_DATA``, else ``./data``. Fetch with
``python -m bso_snn.data fetch mnist fashion-mnist`` (see ``bso_snn.data.fetch``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._idx import md5, parse_idx, read_bytes
from .catalog import CATALOG, DatasetSpec

DATASETS = tuple(CATALOG)
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class IdxDataset:
    """Where an idx dataset lives and what its files must hash to."""

    name: str
    folder: str  # our layout: root/<folder>/<file>
    torchvision_folder: str  # torchvision's layout: root/<torchvision_folder>/raw/<file>
    md5: dict[str, str]  # md5 of the *uncompressed* files


IDX_DATASETS = {
    "mnist": IdxDataset(
        "mnist",
        "mnist",
        "MNIST",
        {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion-mnist": IdxDataset(
        "fashion-mnist",
        "fashion-mnist",
        "FashionMNIST",
        {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says which and the command that fetches them."""


class DatasetChecksumError(ValueError):
    """A dataset file's content differs from the canonical one; the message names the file and the fix."""


def default_root() -> Path:
    """``$BSO_SNN_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("BSO_SNN_DATA") or "data")


def fetch_command(names: str | list[str], root: str | os.PathLike | None = None) -> str:
    """The exact shell command that fetches ``names`` into ``root``."""
    names = [names] if isinstance(names, str) else list(names)
    cmd = "python -m bso_snn.data fetch " + " ".join(names)
    return cmd if root is None else f"{cmd} --root {root}"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def candidate_paths(spec: IdxDataset, root: Path, file: str) -> list[Path]:
    """Where ``file`` may live, in lookup order: our layout first, then torchvision's; plain before .gz."""
    folders = (root / spec.folder, root / spec.torchvision_folder / "raw")
    return [folder / (file + ext) for folder in folders for ext in ("", ".gz")]


def find_file(spec: IdxDataset, root: Path, file: str) -> Path | None:
    return next((p for p in candidate_paths(spec, root, file) if p.is_file()), None)


def read_verified(spec: IdxDataset, path: Path, file: str, root: Path) -> bytes:
    """The uncompressed bytes of ``path``; raises ``DatasetChecksumError`` unless their md5 is canonical."""
    data = read_bytes(path)
    actual, expected = md5(data), spec.md5[file]
    if actual != expected:
        raise DatasetChecksumError(
            f"checksum mismatch for {path}: md5 of its uncompressed content is {actual}, expected {expected} "
            f"(the canonical {spec.name} {file}). The file is corrupted or not the official one. "
            f"Fix: delete it and fetch again:  rm {path} && {fetch_command(spec.name, root)}"
        )
    return data


def load_idx_arrays(name: str, root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The four verified arrays of an idx dataset, keyed by file name (uint8)."""
    spec = IDX_DATASETS[name]
    base = default_root() if root is None else Path(root)
    paths = {file: find_file(spec, base, file) for file in FILES}
    missing = [file for file, path in paths.items() if path is None]
    if missing:
        looked = "; ".join(str(p) for file in missing for p in candidate_paths(spec, base, file))
        raise DatasetNotFoundError(
            f"{name} not found under {base.resolve()}: missing {', '.join(missing)} (looked for {looked}). "
            f"Fetch it with:  {fetch_command(name, base)}   (or: bso-snn fetch {name} --root {base})"
        )
    return {file: parse_idx(read_verified(spec, path, file, base), str(path)) for file, path in paths.items()}


def _to_dataset(images: np.ndarray, labels: np.ndarray, scale: float) -> TensorDataset:
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(scale).unsqueeze(1)
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    return TensorDataset(x, y)


def load_digits_split() -> tuple[TensorDataset, TensorDataset]:
    """sklearn digits, fixed stratified 80/20 split (seed 0): 1,437 train / 360 test 8x8 images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return _to_dataset(x_tr, y_tr, 16.0), _to_dataset(x_te, y_te, 16.0)


def load_dataset(name: str, root: str | os.PathLike | None = None, time_steps: int | None = None):
    """``(train, test)`` datasets of ``(input, label)`` pairs.

    ``name`` is a key of :data:`DATASETS`: ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` give
    TensorDatasets of images float32 in [0, 1] shaped [N, 1, H, W] and int64 labels; ``"cifar10"``,
    ``"cifar100"`` normalised [3, 32, 32] images (train with the paper's augmentation);
    ``"cifar10-dvs"`` frame sequences ``[time_steps, 2, 48, 48]`` (``time_steps`` required).
    ``root`` defaults to ``$BSO_SNN_DATA`` else ``./data``. Raises ``DatasetNotFoundError`` (missing
    files, with the fetch command) or ``DatasetChecksumError`` (corrupted file, with the fix).
    """
    _check_name(name)
    spec = CATALOG[name]
    if spec.temporal and (time_steps is None or time_steps < 1):
        raise ValueError(
            f"{name} is event data: pass time_steps >= 1 (frames per sample), got {time_steps!r}"
        )
    return spec.load(default_root() if root is None else Path(root), time_steps)


def _load_builtin(name: str, root: Path) -> tuple[TensorDataset, TensorDataset]:
    if name == "digits":
        return load_digits_split()
    arrays = load_idx_arrays(name, root)
    train = _to_dataset(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"], 255.0)
    test = _to_dataset(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"], 255.0)
    return train, test


def fetch(names, root=None, source="auto", log=print):
    """Fetch idx datasets into ``root``; see ``bso_snn.data._fetch.fetch``."""
    from ._fetch import fetch as _fetch

    return _fetch(names, root=root, source=source, log=log)


__all__ = [
    "CATALOG",
    "DATASETS",
    "DatasetSpec",
    "DatasetChecksumError",
    "DatasetNotFoundError",
    "default_root",
    "fetch",
    "fetch_command",
    "load_dataset",
]
