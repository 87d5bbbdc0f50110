"""CIFAR-10 / CIFAR-100 from the canonical python batches, in torchvision's layout.

Files (what ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` unpack to)::

    ROOT/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   (10,000 images each)
    ROOT/cifar-100-python/train, test                                   (50,000 / 10,000 images)

Each file is a pickled dict with ``data`` (uint8 ``[N, 3072]``: 1,024 red, then green, then blue
values of a 32x32 image, row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100,
100 classes). Files are unpickled by a restricted unpickler that only accepts the numpy array
reconstruction the official files use (a pickle from elsewhere cannot run code).

Loading checks the format (keys, shapes, dtype, label range); the md5 of the archive and of every
file is checked by ``bso-snn fetch cifar10`` (which downloads from the canonical URL when files
are missing, and verifies them when present).

The paper's augmentation (the authors' ``build_cifar(cutout=True)``): random crop 32 with zero
padding 4, horizontal flip with p=0.5, cutout (one 16x16 hole), then per-channel normalisation;
the test set is only normalised.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import transforms as T


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    archive_md5: str
    md5: dict[str, str]  # every file's md5 (torchvision's values)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR = {
    "cifar10": CifarSpec(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    ),
}
PAD, CUTOUT = 4, 16

# The globals a CIFAR python batch may reference: numpy's array pickling (old and new module path),
# and _codecs.encode, which protocol-2 pickles written by Python 3 use for the array bytes.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR python batch holds only numpy arrays and lists"
            )
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one python batch file."""
    from . import DatasetChecksumError

    try:
        entry = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetChecksumError(
            f"{path} is not a CIFAR python batch ({exc}). Delete it and fetch again"
        ) from exc
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in dict(entry).items()}
    if "data" not in entry or label_key not in entry:
        raise DatasetChecksumError(
            f"{path}: a CIFAR batch needs the keys 'data' and {label_key!r}, found {sorted(entry)}"
        )
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetChecksumError(
            f"{path}: 'data' must be uint8 [N, 3072] with N labels, got {data.dtype} {list(data.shape)} "
            f"and {len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


class CifarImages(Dataset):
    """uint8 images ``[N, 3, 32, 32]`` + labels; items are ``(float32 [3, 32, 32], int64)``.

    ``augment=True``: crop (pad 4), flip, cutout 16, then normalise; else normalise only.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: CifarSpec, augment: bool) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(labels)
        self.spec = spec
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float().div_(255.0)
        if self.augment:
            x = T.cutout(T.random_hflip(T.random_crop(x, 32, PAD)), CUTOUT)
        return T.normalize(x, self.spec.mean, self.spec.std), self.labels[index]


def files_missing(spec: CifarSpec, root: Path) -> list[str]:
    return [f for f in spec.train_files + spec.test_files if not (root / spec.folder / f).is_file()]


def load(name: str, root: Path, time_steps: int | None = None) -> tuple[CifarImages, CifarImages]:
    """``(train with augmentation, test)`` of ``cifar10`` / ``cifar100`` under ``root``."""
    from . import DatasetChecksumError, DatasetNotFoundError, fetch_command

    del time_steps  # static images: the trainer repeats each image at every time step
    spec = CIFAR[name]
    missing = files_missing(spec, root)
    if missing:
        raise DatasetNotFoundError(
            f"{name} not found: missing {', '.join(missing)} in {(root / spec.folder).resolve()}. "
            f"Fetch it with:  {fetch_command(name, root)}   (downloads {spec.url}, md5 {spec.archive_md5}), "
            f"or unpack the official archive there"
        )
    parts = {}
    for split, files in (("train", spec.train_files), ("test", spec.test_files)):
        batches = [read_batch(root / spec.folder / f, spec.label_key) for f in files]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        bad = labels[(labels < 0) | (labels >= spec.num_classes)]
        if bad.size:
            raise DatasetChecksumError(
                f"{name} {split}: label {int(bad[0])} outside 0..{spec.num_classes - 1}; the files are not {name}"
            )
        parts[split] = CifarImages(images, labels, spec, augment=split == "train")
    return parts["train"], parts["test"]


def _valid(spec: CifarSpec, path: Path) -> bool:
    from ._idx import md5

    return path.is_file() and md5(path.read_bytes()) == spec.md5[path.name]


def fetch(spec: CifarSpec, root: Path, log=print, timeout_s: float = 60.0) -> Path:
    """Make ``root/<spec.folder>`` hold every file of ``spec`` with its canonical md5: files present
    and valid are kept; otherwise the archive is downloaded from ``spec.url``, its md5 checked, and
    the files extracted and checked. Returns the folder."""
    import hashlib
    import shutil
    import tarfile
    import tempfile
    import urllib.request

    from ._fetch import FetchError

    folder = root / spec.folder
    files = spec.train_files + spec.test_files
    bad = [f for f in files if not _valid(spec, folder / f)]
    if not bad:
        log(f"{spec.name}: already present and verified (md5) in {folder}")
        return folder
    for f in bad:
        if (folder / f).exists():
            log(f"  {folder / f}: checksum mismatch, replacing it")
    log(f"{spec.name}: downloading {spec.url}")
    with tempfile.TemporaryDirectory(prefix="bso-snn-fetch-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        try:
            with urllib.request.urlopen(spec.url, timeout=timeout_s) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise FetchError(
                f"could not download {spec.url}: {exc}. Download it elsewhere and unpack it into {root}"
            ) from exc
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != spec.archive_md5:
            raise FetchError(f"{spec.url}: md5 {digest}, expected {spec.archive_md5}; nothing was changed")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name in {f"{spec.folder}/{f}" for f in bad}]
            tar.extractall(tmp, members=members, filter="data")
        for f in bad:
            got = Path(tmp) / spec.folder / f
            if not _valid(spec, got):
                raise FetchError(f"{spec.url}: the archive's {f} is missing or has the wrong md5")
        folder.mkdir(parents=True, exist_ok=True)
        for f in bad:
            shutil.move(str(Path(tmp) / spec.folder / f), folder / f)
    log(f"{spec.name}: {len(files)} files verified (md5) in {folder}")
    return folder
