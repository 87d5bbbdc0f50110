"""CIFAR-10 / CIFAR-100: the python-batch reader, the paper's transforms, and fetch, on generated files."""

import hashlib
import io
import pickle
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from _datagen import cifar_batch, make_cifar10, make_cifar100

from bso_snn.data import DatasetChecksumError, DatasetNotFoundError, load_dataset
from bso_snn.data import transforms as T
from bso_snn.data.cifar import CIFAR, fetch


def test_cifar10_reader_decodes_planes_labels_and_normalises_the_test_set(tmp_path):
    made = make_cifar10(tmp_path, per_batch=4)
    train, test = load_dataset("cifar10", tmp_path)
    assert len(train) == 20 and len(test) == 4
    images, labels = made["test_batch"]
    x, y = test[2]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == labels[2]
    # pixel (row 5, col 7) of channel c is byte c*1024 + 5*32 + 7 of the row, by hand
    flat = images[2].reshape(-1)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    for c in range(3):
        expected = (flat[c * 1024 + 5 * 32 + 7] / 255.0 - mean[c]) / std[c]
        assert x[c, 5, 7].item() == pytest.approx(expected, abs=1e-6)
    # train order: data_batch_1 .. 5
    assert int(train[4][1]) == made["data_batch_2"][1][0]


def test_cifar100_reads_fine_labels_and_its_own_normalisation(tmp_path):
    made = make_cifar100(tmp_path)
    train, test = load_dataset("cifar100", tmp_path)
    assert len(train) == 48 and len(test) == 16
    images, labels = made["test"]
    x, y = test[0]
    assert int(y) == labels[0]
    assert x[1, 0, 0].item() == pytest.approx((images[0, 1, 0, 0] / 255 - 0.4867) / 0.2565, abs=1e-6)


def test_train_set_is_augmented_crop_flip_cutout_then_normalised(tmp_path):
    made = make_cifar10(tmp_path, per_batch=2)
    train, _ = load_dataset("cifar10", tmp_path)
    image = torch.from_numpy(made["data_batch_1"][0][0]).float() / 255
    torch.manual_seed(3)
    got = train[0][0]
    torch.manual_seed(3)
    by_hand = T.normalize(
        T.cutout(T.random_hflip(T.random_crop(image, 32, 4)), 16), CIFAR["cifar10"].mean, CIFAR["cifar10"].std
    )
    torch.testing.assert_close(got, by_hand, rtol=0, atol=0)
    draws = {tuple(train[0][0].flatten()[:64].tolist()) for _ in range(5)}
    assert len(draws) > 1, "augmentation draws differ"


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.arange(2 * 6 * 5, dtype=torch.float32).reshape(2, 6, 5) + 1
    torch.manual_seed(0)
    for _ in range(20):
        out = T.random_crop(x, 4, 2)
        padded = torch.zeros(2, 10, 9)
        padded[:, 2:8, 2:7] = x
        windows = [padded[:, i : i + 4, j : j + 4] for i in range(7) for j in range(6)]
        assert any(torch.equal(out, w) for w in windows)


def test_cutout_zeroes_one_clipped_square_in_every_channel():
    x = torch.ones(3, 32, 32)
    torch.manual_seed(1)
    for _ in range(20):
        out = T.cutout(x, 16)
        zero = out[0] == 0
        assert torch.equal(zero, out[1] == 0) and torch.equal(zero, out[2] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # clipped at most to half
        assert zero.sum() == len(rows) * len(cols)  # a rectangle
        assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


def test_flip_roll_and_normalize_by_hand():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    torch.manual_seed(0)
    flips = [T.random_hflip(x) for _ in range(40)]
    assert any(torch.equal(f, x) for f in flips) and any(torch.equal(f, x[..., [3, 2, 1, 0]]) for f in flips)
    rolled = T.random_roll(x, 1)
    assert any(torch.equal(rolled, torch.roll(x, (a, b), (-2, -1))) for a in (-1, 0, 1) for b in (-1, 0, 1))
    y = T.normalize(torch.full((2, 1, 1), 0.5), (0.25, 0.5), (0.5, 2.0))
    assert y.flatten().tolist() == [0.5, 0.0]


def test_missing_files_name_the_folder_and_the_fetch_command(tmp_path):
    make_cifar10(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(
        DatasetNotFoundError, match=r"missing data_batch_3 in .*cifar-10-batches-py.*fetch cifar10"
    ):
        load_dataset("cifar10", tmp_path)


def test_malformed_and_malicious_batches_are_refused(tmp_path):
    make_cifar10(tmp_path, per_batch=2)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    cifar_batch(batch, np.zeros((2, 3, 16, 16), np.uint8), [0, 1])
    with pytest.raises(DatasetChecksumError, match=r"'data' must be uint8 \[N, 3072\]"):
        load_dataset("cifar10", tmp_path)
    cifar_batch(batch, np.zeros((2, 3, 32, 32), np.uint8), [0, 10])
    with pytest.raises(DatasetChecksumError, match=r"label 10 outside 0..9"):
        load_dataset("cifar10", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batch.write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DatasetChecksumError, match=r"refusing to load builtins.print"):
        load_dataset("cifar10", tmp_path)


def _archive(tmp_path, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return path


def test_fetch_downloads_checks_md5_extracts_and_is_idempotent(tmp_path):
    src = tmp_path / "src"
    make_cifar10(src, per_batch=2)
    files = {p.name: p.read_bytes() for p in (src / "cifar-10-batches-py").iterdir()}
    archive = _archive(tmp_path, files)
    spec = replace(
        CIFAR["cifar10"],
        url=archive.as_uri(),  # a file:// URL: the same urllib download path as https
        archive_md5=hashlib.md5(archive.read_bytes()).hexdigest(),
        md5={n: hashlib.md5(d).hexdigest() for n, d in files.items()},
    )
    root = tmp_path / "root"
    log = []
    folder = fetch(spec, root, log=log.append)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert "downloading" in log[0]
    log.clear()
    fetch(spec, root, log=log.append)
    assert log == [f"cifar10: already present and verified (md5) in {folder}"]
    (folder / "test_batch").write_bytes(b"corrupted")
    fetch(spec, root, log=log.append)
    assert (folder / "test_batch").read_bytes() == files["test_batch"]


def test_fetch_refuses_an_archive_with_the_wrong_md5_and_changes_nothing(tmp_path):
    from bso_snn.data._fetch import FetchError

    archive = _archive(tmp_path, {"test_batch": b"x"})
    spec = replace(CIFAR["cifar10"], url=archive.as_uri())
    with pytest.raises(
        FetchError, match=r"md5 .*, expected c58f30108f718f92721af3b95e74349a; nothing was changed"
    ):
        fetch(spec, tmp_path / "root", log=lambda _: None)
    assert not (tmp_path / "root").exists()
