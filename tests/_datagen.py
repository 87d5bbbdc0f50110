"""Small files in the exact on-disk formats of CIFAR-10/100 and CIFAR10-DVS, for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_batch(path: Path, images: np.ndarray, labels, label_key: str = "labels") -> None:
    """One python batch: a pickled dict (protocol 2, as the official files) of uint8 ``data``
    ``[N, 3072]`` (R plane, G plane, B plane, each row-major) and a list of labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "batch_label": "generated batch",
        label_key: [int(v) for v in labels],
        "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    if label_key == "fine_labels":
        entry["coarse_labels"] = [int(v) // 5 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def make_cifar10(root: Path, per_batch: int = 16, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` with five train batches and a test batch of ``per_batch`` images."""
    rng = np.random.default_rng(seed)
    made = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        cifar_batch(root / "cifar-10-batches-py" / name, images, labels)
        made[name] = (images, labels)
    return made


def make_cifar100(root: Path, n_train: int = 48, n_test: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    made = {}
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 100, n)
        cifar_batch(root / "cifar-100-python" / name, images, labels, "fine_labels")
        made[name] = (images, labels)
    return made


def aedat_bytes(x, y, p, t) -> bytes:
    """A CIFAR10-DVS AEDAT 2.0 recording of events at sensor position ``(x, y)`` with polarity ``p``
    (the coordinates SpikingJelly's reader returns); the address encodes them the way the camera
    does: ``xa = 127 - y`` in bits 1-7, ``ya = 127 - x`` in bits 8-14, ``pa = 1 - p`` in bit 0."""
    x, y, p, t = (np.asarray(v, dtype=np.int64) for v in (x, y, p, t))
    address = ((127 - x) << 8) | ((127 - y) << 1) | (1 - p)
    words = np.empty(2 * len(x), dtype=">u4")
    words[0::2], words[1::2] = address, t
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 timestamp (8 bytes total)\r\n"
    return header + words.tobytes()


def random_events(rng, n: int):
    return (
        rng.integers(0, 128, n),
        rng.integers(0, 128, n),
        rng.integers(0, 2, n),
        np.sort(rng.integers(0, 10**6, n)),
    )


def make_cifar10dvs(
    root: Path, per_class: int = 10, events: int = 400, layout: str = "extract", seed: int = 0
):
    """``root/CIFAR10DVS/extract/<class>/cifar10_<class>_<i>.aedat`` (or ``events_np/... .npz``)."""
    rng = np.random.default_rng(seed)
    made = {}
    for name in DVS_CLASSES:
        folder = root / "CIFAR10DVS" / layout / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x, y, p, t = random_events(rng, events)
            if layout == "extract":
                path = folder / f"cifar10_{name}_{i}.aedat"
                path.write_bytes(aedat_bytes(x, y, p, t))
            else:
                path = folder / f"cifar10_{name}_{i}.npz"
                np.savez_compressed(path, t=t, x=x, y=y, p=p)
            made[path] = (x, y, p, t)
    return made
