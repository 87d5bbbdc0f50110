r"""CIFAR10-DVS (Li et al. 2017) as in the BSO paper's Appendix B: events -> ``T`` frames by event
count, resized to 48x48, 9,000 / 1,000 split, normalised.

Files, in SpikingJelly's ``CIFAR10DVS(root)`` layout (``ROOT/CIFAR10DVS``), looked up in this order:

- ``events_np/<class>/<name>.npz``: events converted by SpikingJelly (arrays ``t, x, y, p``);
- ``extract/<class>/<name>.aedat``: the official recordings (the figshare zips, unpacked).

``<class>`` is one of :data:`CLASSES` (label = its index). An ``.aedat`` file is the jAER AEDAT 2.0
format: header lines starting with ``#``, then events of 8 bytes, a big-endian uint32 address and a
big-endian uint32 timestamp. As in SpikingJelly's reader: ``xa = (addr & 0xFE) >> 1``,
``ya = (addr & 0x7F00) >> 8``, ``pa = addr & 1``, and the event is at ``x = 127 - ya``,
``y = 127 - xa`` with polarity ``p = 1 - pa`` on a 128x128 sensor.

Frames (SpikingJelly's ``split_by='number'``): with ``N`` events and ``M = T`` frames and
``d = N // M``, frame ``j`` counts the events ``j*d .. (j+1)*d - 1`` (the last frame runs to ``N``)
per polarity and pixel: ``F[j, p, y, x]``. Then each frame is resized to 48x48 (bilinear, antialiased)
and the sample is divided by its maximum (values in [0, 1]; our reading of "normalised": the
authors' code feeds the resized counts as they are). Split: within each class the files sorted by name, the
first 90% (``ceil``) train and the rest test, as the authors' ``split_to_train_test_set(...,
random_split=False)``. Training augmentation, as the authors' ``DVSCifar10``: horizontal flip
(p=0.5) and a cyclic shift by up to 5 pixels in each direction.

No download: the official files are ten zips on figshare (see SpikingJelly's
``CIFAR10DVS.resource_url_md5``); unpack them into ``ROOT/CIFAR10DVS/extract/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import transforms as T

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "CIFAR10DVS"
SENSOR = 128
SIZE = (48, 48)
TRAIN_RATIO = 0.9
MAX_SHIFT = 5
LAYOUTS = (("events_np", ".npz"), ("extract", ".aedat"))


def read_aedat(path: Path) -> dict[str, np.ndarray]:
    """Events ``{t, x, y, p}`` (int64 arrays) of one CIFAR10-DVS ``.aedat`` file."""
    from . import DatasetChecksumError

    raw = path.read_bytes()
    start = 0
    while raw.startswith(b"#", start):  # header lines
        end = raw.find(b"\n", start)
        start = len(raw) if end < 0 else end + 1
    body = raw[start:]
    if len(body) % 8:
        raise DatasetChecksumError(
            f"{path}: {len(body)} bytes of events after the header, not a multiple of 8 "
            f"(address + timestamp per event): the file is truncated or not CIFAR10-DVS AEDAT"
        )
    words = np.frombuffer(body, dtype=">u4").astype(np.int64)
    address, t = words[0::2], words[1::2]
    xa, ya, pa = (address & 0xFE) >> 1, (address & 0x7F00) >> 8, address & 1
    return {"t": t, "x": SENSOR - 1 - ya, "y": SENSOR - 1 - xa, "p": 1 - pa}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Events ``{t, x, y, p}`` of one SpikingJelly ``events_np`` file."""
    from . import DatasetChecksumError

    with np.load(path) as f:
        missing = {"t", "x", "y", "p"} - set(f.files)
        if missing:
            raise DatasetChecksumError(
                f"{path}: an events file needs arrays t, x, y, p; missing {sorted(missing)}"
            )
        return {k: f[k].astype(np.int64) for k in ("t", "x", "y", "p")}


def frames_by_count(events: dict[str, np.ndarray], frames: int, size: int = SENSOR) -> np.ndarray:
    """``[frames, 2, size, size]`` float32 event counts, the events split into ``frames`` equal-count
    segments (the last takes the remainder)."""
    x, y, p = events["x"], events["y"], events["p"]
    n = len(x)
    if n and (x.min() < 0 or y.min() < 0 or x.max() >= size or y.max() >= size):
        raise ValueError(f"event coordinates outside the {size}x{size} sensor")
    step = n // frames
    segment = np.minimum(np.arange(n) // step, frames - 1) if step else np.full(n, frames - 1)
    index = ((segment * 2 + (p != 0)) * size + y) * size + x
    counts = np.bincount(index, minlength=frames * 2 * size * size)
    return counts.reshape(frames, 2, size, size).astype(np.float32)


def to_input(events: dict[str, np.ndarray], frames: int) -> torch.Tensor:
    """``[frames, 2, 48, 48]``: counts by event number, resized, divided by the sample's maximum."""
    x = T.resize(torch.from_numpy(frames_by_count(events, frames)), SIZE)
    peak = x.max()
    return x / peak if peak > 0 else x


class CifarDvs(Dataset):
    """Samples ``([T, 2, 48, 48] float32, int64 label)`` read from event files on demand."""

    def __init__(self, files: list[tuple[Path, int]], frames: int, augment: bool) -> None:
        self.files = files
        self.frames = frames
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.files[index]
        events = read_npz(path) if path.suffix == ".npz" else read_aedat(path)
        x = to_input(events, self.frames)
        if self.augment:
            x = T.random_roll(T.random_hflip(x), MAX_SHIFT)
        return x, torch.tensor(label)


def find_files(root: Path) -> list[tuple[Path, int]]:
    """``(file, label)`` for every recording of the first layout present under ``root/CIFAR10DVS``."""
    from . import DatasetNotFoundError

    base = root / FOLDER
    for folder, suffix in LAYOUTS:
        files = [
            (path, label)
            for label, name in enumerate(CLASSES)
            for path in sorted((base / folder / name).glob(f"*{suffix}"), key=lambda p: p.name)
        ]
        if files:
            return files
    looked = ", ".join(f"{base / folder}/<class>/*{suffix}" for folder, suffix in LAYOUTS)
    raise DatasetNotFoundError(
        f"cifar10-dvs not found: no event files in {looked} (classes: {', '.join(CLASSES)}). It cannot be "
        f"fetched by bso-snn: download the ten class zips of CIFAR10-DVS (figshare, listed with their md5 "
        f"in SpikingJelly's CIFAR10DVS.resource_url_md5) and unpack them into {base / 'extract'}"
    )


def split(files: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per class, the first ``ceil(0.9 n)`` files (in name order) train, the rest test."""
    train, test = [], []
    for label in range(len(CLASSES)):
        mine = [f for f in files if f[1] == label]
        cut = math.ceil(len(mine) * TRAIN_RATIO)
        train += mine[:cut]
        test += mine[cut:]
    return train, test


def load(name: str, root: Path, time_steps: int) -> tuple[CifarDvs, CifarDvs]:
    """``(train with augmentation, test)``; every sample is ``[time_steps, 2, 48, 48]``."""
    del name
    train, test = split(find_files(root))
    return CifarDvs(train, time_steps, augment=True), CifarDvs(test, time_steps, augment=False)
