"""CIFAR10-DVS: the AEDAT reader, frames by event count, split and transforms, on generated files."""

import numpy as np
import pytest
import torch
from _datagen import aedat_bytes, make_cifar10dvs, random_events

from bso_snn.data import DatasetChecksumError, DatasetNotFoundError, load_dataset
from bso_snn.data.cifar10dvs import frames_by_count, read_aedat, read_npz, to_input


def test_aedat_reader_recovers_the_events_spikingjelly_would(tmp_path):
    x, y, p, t = random_events(np.random.default_rng(0), 50)
    path = tmp_path / "cifar10_cat_0.aedat"
    path.write_bytes(aedat_bytes(x, y, p, t))
    ev = read_aedat(path)
    for key, want in zip("xypt", (x, y, p, t), strict=True):
        np.testing.assert_array_equal(ev[key], want)


def test_aedat_address_bits_by_hand(tmp_path):
    # address 0x00000503: pa = 1, xa = 0b0000001 (bits 1-7), ya = 5 (bits 8-14) -> x = 122, y = 126, p = 0
    path = tmp_path / "one.aedat"
    path.write_bytes(b"#!AER-DAT2.0\r\n" + bytes.fromhex("00000503") + (77).to_bytes(4, "big"))
    ev = read_aedat(path)
    assert (ev["x"].tolist(), ev["y"].tolist(), ev["p"].tolist(), ev["t"].tolist()) == (
        [122],
        [126],
        [0],
        [77],
    )
    path.write_bytes(b"#!AER-DAT2.0\r\n" + b"\x00" * 12)
    with pytest.raises(
        DatasetChecksumError, match="12 bytes of events after the header, not a multiple of 8"
    ):
        read_aedat(path)


def _frames_by_loop(ev, frames, size=128):
    n = len(ev["x"])
    d = n // frames
    out = np.zeros((frames, 2, size, size), np.float32)
    for j in range(frames):
        lo, hi = j * d, (n if j == frames - 1 else (j + 1) * d)
        for i in range(lo, hi):
            out[j, ev["p"][i], ev["y"][i], ev["x"][i]] += 1
    return out


@pytest.mark.parametrize(("n", "frames"), [(103, 10), (40, 4), (3, 5), (0, 2)])
def test_frames_by_event_count_match_a_loop(n, frames):
    x, y, p, t = random_events(np.random.default_rng(n), n)
    ev = {"x": x, "y": y, "p": p, "t": t}
    np.testing.assert_array_equal(frames_by_count(ev, frames), _frames_by_loop(ev, frames))


def test_sample_is_resized_to_48_and_divided_by_its_maximum():
    x, y, p, t = random_events(np.random.default_rng(1), 5000)
    out = to_input({"x": x, "y": y, "p": p, "t": t}, 10)
    assert out.shape == (10, 2, 48, 48) and out.max().item() == 1.0 and out.min().item() >= 0
    const = to_input({"x": np.arange(128).repeat(128), "y": np.tile(np.arange(128), 128),
                      "p": np.zeros(128 * 128, int), "t": np.arange(128 * 128)}, 1)  # fmt: skip
    torch.testing.assert_close(const[0, 0], torch.ones(48, 48))  # one event per pixel: flat after resize


@pytest.mark.parametrize("layout", ["extract", "events_np"])
def test_split_is_nine_to_one_per_class_in_name_order(tmp_path, layout):
    make_cifar10dvs(tmp_path, per_class=10, events=50, layout=layout)
    train, test = load_dataset("cifar10-dvs", tmp_path, time_steps=4)
    assert len(train) == 90 and len(test) == 10
    names = [p.name for p, _ in train.files if _ == 3]
    assert names == sorted(names) and len(names) == 9  # lexicographic: _0, _1, _2, ... (as DatasetFolder)
    assert [label for _, label in test.files] == list(range(10))
    x, y = test[0]
    assert x.shape == (4, 2, 48, 48) and int(y) == 0
    path = test.files[0][0]
    ev = read_npz(path) if layout == "events_np" else read_aedat(path)
    torch.testing.assert_close(x, to_input(ev, 4))  # the test set is not augmented


def test_train_augmentation_flips_or_shifts_all_frames_alike(tmp_path):
    make_cifar10dvs(tmp_path, per_class=2, events=300)
    train, _ = load_dataset("cifar10-dvs", tmp_path, time_steps=3)
    plain = to_input(read_aedat(train.files[0][0]), 3)
    torch.manual_seed(0)
    for _ in range(5):
        got = train[0][0]
        candidates = [torch.roll(f, (a, b), (-2, -1)) for f in (plain, plain.flip(-1))
                      for a in range(-5, 6) for b in range(-5, 6)]  # fmt: skip
        assert any(torch.equal(got, c) for c in candidates)


def test_missing_data_names_the_layouts_and_time_steps_are_required(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR10DVS/extract/<class>/\*.aedat.*cannot be fetched"):
        load_dataset("cifar10-dvs", tmp_path, time_steps=10)
    with pytest.raises(ValueError, match="cifar10-dvs is event data: pass time_steps >= 1"):
        load_dataset("cifar10-dvs", tmp_path)
