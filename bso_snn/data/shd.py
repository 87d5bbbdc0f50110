"""Spiking Heidelberg Digits (Cramer et al. 2020) as train_shd.py bins it: ``[T, 700]`` spike counts.

Files: ``shd_train.h5`` and ``shd_test.h5`` under ``ROOT/SHD`` or ``ROOT/hdspikes`` (the authors'
cache folder), as released (gunzip the ``.h5.gz`` downloads first). Each HDF5 file holds
``spikes/times`` (per sample a float array of spike times in seconds), ``spikes/units`` (per
sample the matching channel 0..699) and ``labels`` (0..19). Needs ``h5py``
(``pip install 'bso-snn[shd]'``).

Binning (train_shd.py's ``preprocess_sparsetensor``): ``edges = linspace(0, 1.4, T + 1)``, a spike at
time ``s`` falls in bin ``digitize(s, edges) - 1`` and each bin counts its spikes per channel.
Spikes at ``s >= 1.4`` s (bin ``T``) are dropped; the released code would index past the tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

CHANNELS = 700
NUM_CLASSES = 20
MAX_TIME = 1.4
FOLDERS = ("SHD", "hdspikes")


def bin_spikes(
    times: np.ndarray, units: np.ndarray, time_steps: int, max_time: float = MAX_TIME
) -> torch.Tensor:
    """``[time_steps, 700]`` float32 spike counts (module docstring)."""
    edges = np.linspace(0, max_time, num=time_steps + 1)
    step = np.digitize(times, edges) - 1
    keep = (step >= 0) & (step < time_steps)
    counts = np.bincount(
        step[keep] * CHANNELS + units[keep].astype(np.int64), minlength=time_steps * CHANNELS
    )
    return torch.from_numpy(counts.reshape(time_steps, CHANNELS).astype(np.float32))


class SHD(Dataset):
    """Samples ``([T, 700] float32 counts, int64 label)`` binned on access from one HDF5 file."""

    def __init__(self, path: Path, time_steps: int) -> None:
        import h5py

        from . import DatasetChecksumError

        self.path, self.time_steps = path, time_steps
        with h5py.File(path, "r") as f:
            missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
            if missing:
                raise DatasetChecksumError(f"{path}: not an SHD file, missing {', '.join(missing)}")
            self.labels = torch.from_numpy(np.asarray(f["labels"], dtype=np.int64))
        self._file = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._file is None:  # opened on first access (each DataLoader worker opens its own)
            import h5py

            self._file = h5py.File(self.path, "r")
        times = self._file["spikes/times"][index]
        units = self._file["spikes/units"][index]
        return bin_spikes(np.asarray(times), np.asarray(units), self.time_steps), self.labels[index]

    def __getstate__(self):
        return {**self.__dict__, "_file": None}


def load(name: str, root: Path, time_steps: int) -> tuple[SHD, SHD]:
    """``(train, test)`` of ``[time_steps, 700]`` counts."""
    from . import DatasetNotFoundError

    del name
    for folder in FOLDERS:
        paths = [root / folder / f"shd_{split}.h5" for split in ("train", "test")]
        if all(p.is_file() for p in paths):
            try:
                import h5py  # noqa: F401
            except ImportError as exc:
                raise DatasetNotFoundError(
                    f"shd: reading {paths[0]} needs h5py ({exc}); install it with: pip install 'bso-snn[shd]'"
                ) from exc
            return SHD(paths[0], time_steps), SHD(paths[1], time_steps)
    looked = " or ".join(str(root / f / "shd_{train,test}.h5") for f in FOLDERS)
    raise DatasetNotFoundError(
        f"shd not found: no {looked}. It cannot be fetched by bso-snn: download shd_train.h5.gz and "
        f"shd_test.h5.gz (zenkelab datasets page; md5 4c9bde4f3c354a47ea1a188d0ea2d902 and "
        f"cdb1e533941cbd71e6143fd372cb9af4) into {root / 'SHD'} and gunzip them"
    )
