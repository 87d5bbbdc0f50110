r"""DVS128 Gesture (Amir et al. 2017) as train_dvs.py uses it: events -> ``T`` frames by event count,
resized to 32x32, 11 classes.

Files under ``ROOT/DVS128Gesture``, looked up in this order (the first layout found is used):

- ``frames_number_<T>_split_by_number/{train,test}/<label>/*.npz``: frames already integrated
  (array ``frames`` ``[T, 2, 128, 128]``; SpikingJelly's ``DVS128Gesture(data_type='frame')`` and
  the authors' ``DVSGC_frames_number_49_split_by_number`` both have this form);
- ``events_np/{train,test}/<label>/*.npz``: events cut into samples by SpikingJelly (arrays ``t, x, y, p``);
- ``extract/DvsGesture/``: the official recordings: ``userXX_<lighting>.aedat`` (AEDAT 3.1), their
  ``userXX_<lighting>_labels.csv`` (``class,startTime_usec,endTime_usec``, classes 1..11) and
  ``trials_to_train.txt`` / ``trials_to_test.txt``. A sample is the events with
  ``start <= t < end`` of one csv row, label ``class - 1`` (as SpikingJelly cuts them).

AEDAT 3.1: ASCII header lines starting with ``#`` (the last is ``#!END-HEADER\r\n``), then packets:
a 28-byte little-endian header (``eventType`` uint16 at 0, ``eventSize`` uint32 at 4,
``eventTSOverflow`` uint32 at 12, ``eventCapacity`` uint32 at 16), then ``eventCapacity *
eventSize`` bytes. Polarity packets (``eventType == 1``) hold 8-byte events: ``data`` uint32 with
``x = (data >> 17) & 0x7FFF``, ``y = (data >> 2) & 0x7FFF``, ``p = (data >> 1) & 1``, and a uint32
timestamp, ``t = ts | overflow << 31``; other packets are skipped (SpikingJelly's ``load_aedat_v3``).

Frames: :func:`bso_snn.data.cifar10dvs.frames_by_count` (SpikingJelly's ``split_by='number'``),
then bilinear ``F.interpolate`` to 32x32 (``align_corners=False``), counts not rescaled, as
train_dvs.py's ``resize_to_32``. The authors' validation split (20% of the training trials) and
their gesture chains (``seq_len > 1``) are not reproduced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .cifar10dvs import frames_by_count, read_npz

FOLDER = "DVS128Gesture"
NUM_CLASSES = 11
SENSOR = 128
SIZE = (32, 32)
SPLITS = ("train", "test")


def read_aedat3(path: Path) -> dict[str, np.ndarray]:
    """Polarity events ``{t, x, y, p}`` (int64) of one AEDAT 3.1 file (module docstring)."""
    from . import DatasetChecksumError

    raw = path.read_bytes()
    start = 0
    while raw.startswith(b"#", start):
        end = raw.find(b"\n", start)
        start = len(raw) if end < 0 else end + 1
        if raw[:start].endswith(b"#!END-HEADER\r\n"):
            break
    parts: list[np.ndarray] = []
    while start < len(raw):
        if len(raw) - start < 28:
            raise DatasetChecksumError(f"{path}: a truncated packet header at byte {start}")
        e_type = int(np.frombuffer(raw, "<u2", 1, start)[0])
        e_size, _, e_overflow, e_capacity = (int(v) for v in np.frombuffer(raw, "<u4", 4, start + 4))
        body = start + 28
        length = e_capacity * e_size
        if body + length > len(raw):
            raise DatasetChecksumError(
                f"{path}: packet at byte {start} announces {length} bytes, only {len(raw) - body} remain "
                "(the file is truncated or not AEDAT 3.1)"
            )
        if e_type == 1:
            if e_size != 8:
                raise DatasetChecksumError(f"{path}: polarity events of {e_size} bytes, expected 8")
            words = np.frombuffer(raw, "<u4", 2 * e_capacity, body).astype(np.int64)
            parts.append(np.stack([words[1::2] | (e_overflow << 31), words[0::2]]))
        start = body + length
    t, data = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.int64)
    return {"t": t, "x": (data >> 17) & 0x7FFF, "y": (data >> 2) & 0x7FFF, "p": (data >> 1) & 1}


def read_labels(path: Path) -> np.ndarray:
    """``[n, 3]`` int64 rows ``(class 1..11, start_usec, end_usec)`` of a ``*_labels.csv`` file."""
    rows = np.loadtxt(path, dtype=np.int64, delimiter=",", skiprows=1, ndmin=2)
    if rows.shape[1] != 3 or rows.size and (rows[:, 0].min() < 1 or rows[:, 0].max() > NUM_CLASSES):
        from . import DatasetChecksumError

        raise DatasetChecksumError(f"{path}: expected rows class (1..11),startTime_usec,endTime_usec")
    return rows


def to_input(frames: np.ndarray) -> torch.Tensor:
    """``[T, 2, 128, 128]`` counts -> ``[T, 2, 32, 32]`` (bilinear, as train_dvs.py)."""
    return F.interpolate(
        torch.as_tensor(frames, dtype=torch.float32), size=SIZE, mode="bilinear", align_corners=False
    )


class DvsGesture(Dataset):
    """Samples ``([T, 2, 32, 32] float32, int64 label)``; ``items`` are (source, label) pairs where the
    source is a frames/events ``.npz`` path or ``(aedat path, start, end)``."""

    def __init__(self, items: list[tuple[object, int]], frames: int, kind: str) -> None:
        self.items, self.frames, self.kind = items, frames, kind
        self._aedat: dict[Path, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _events(self, source) -> dict[str, np.ndarray]:
        if self.kind == "events":
            return read_npz(source)
        path, t0, t1 = source
        if path not in self._aedat:
            self._aedat = {path: read_aedat3(path)}  # keep one recording: samples are grouped by file
        events = self._aedat[path]
        keep = (events["t"] >= t0) & (events["t"] < t1)
        return {k: v[keep] for k, v in events.items()}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        source, label = self.items[index]
        if self.kind == "frames":
            from . import DatasetChecksumError

            with np.load(source) as f:
                frames = f["frames"] if "frames" in f.files else None
            if frames is None or frames.shape[0] != self.frames or frames.shape[1] != 2:
                raise DatasetChecksumError(
                    f"{source}: needs an array 'frames' of shape [{self.frames}, 2, H, W]"
                )
        else:
            frames = frames_by_count(self._events(source), self.frames, SENSOR)
        return to_input(frames), torch.tensor(label)


def _labelled_npz(folder: Path) -> list[tuple[Path, int]]:
    return [
        (path, label)
        for label in range(NUM_CLASSES)
        for path in sorted((folder / str(label)).glob("*.npz"), key=lambda p: p.name)
    ]


def _official(extract: Path, split: str) -> list[tuple[tuple[Path, int, int], int]]:
    from . import DatasetNotFoundError

    trials = extract / f"trials_to_{split}.txt"
    if not trials.is_file():
        raise DatasetNotFoundError(f"dvs-gesture: {trials} is missing (it ships in DvsGesture.tar.gz)")
    items = []
    for name in trials.read_text().split():
        aedat = extract / name
        labels = aedat.with_name(aedat.stem + "_labels.csv")
        if not aedat.is_file() or not labels.is_file():
            raise DatasetNotFoundError(
                f"dvs-gesture: {trials} lists {name}, but {aedat} or {labels} is missing"
            )
        items += [((aedat, int(t0), int(t1)), int(c) - 1) for c, t0, t1 in read_labels(labels)]
    return items


def load(name: str, root: Path, time_steps: int) -> tuple[DvsGesture, DvsGesture]:
    """``(train, test)``; every sample is ``[time_steps, 2, 32, 32]`` (module docstring)."""
    from . import DatasetNotFoundError

    del name
    base = root / FOLDER
    frames_dir = base / f"frames_number_{time_steps}_split_by_number"
    if all(_labelled_npz(frames_dir / s) for s in SPLITS):
        return tuple(DvsGesture(_labelled_npz(frames_dir / s), time_steps, "frames") for s in SPLITS)
    if all(_labelled_npz(base / "events_np" / s) for s in SPLITS):
        return tuple(DvsGesture(_labelled_npz(base / "events_np" / s), time_steps, "events") for s in SPLITS)
    extract = base / "extract" / "DvsGesture"
    if extract.is_dir():
        return tuple(DvsGesture(_official(extract, s), time_steps, "aedat") for s in SPLITS)
    raise DatasetNotFoundError(
        f"dvs-gesture not found under {base}: looked for {frames_dir}/{{train,test}}/<0..10>/*.npz, "
        f"{base / 'events_np'}/{{train,test}}/<0..10>/*.npz and {extract}/ (trials_to_train.txt, *.aedat, "
        "*_labels.csv). It cannot be fetched by bso-snn: download DvsGesture.tar.gz (IBM; listed with its md5 "
        f"in SpikingJelly's DVS128Gesture.resource_url_md5) and unpack it into {base / 'extract'}"
    )
