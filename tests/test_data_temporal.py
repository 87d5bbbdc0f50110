"""SHD, DVS128 Gesture and row-wise MNIST loaders, on small files written here in the exact on-disk
formats (HDF5 spike trains; AEDAT 3.1 + label csv + trial lists; SpikingJelly npz) and on real MNIST."""

import os
import struct

import h5py  # the [shd] extra; scripts/test.sh installs it
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bso_snn.data import CATALOG, DatasetChecksumError, DatasetNotFoundError, load_dataset
from bso_snn.data.dvs_gesture import read_aedat3
from bso_snn.data.shd import bin_spikes


def _write_shd(path, samples):
    """An SHD-format file: spikes/times (vlen float), spikes/units (vlen uint16), labels (uint16)."""
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u, _) in enumerate(samples):
            times[i], units[i] = np.asarray(t, np.float32), np.asarray(u, np.uint16)
        f.create_dataset("labels", data=np.array([s[2] for s in samples], np.uint16))
        f.create_dataset("extra/speaker", data=np.zeros(len(samples), np.uint16))


def _shd_samples(rng, n):
    out = []
    for i in range(n):
        k = int(rng.integers(5, 40))
        out.append((rng.uniform(0, 1.5, k), rng.integers(0, 700, k), i % 20))
    return out


def test_shd_bins_like_a_hand_loop(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "SHD").mkdir()
    train, test = _shd_samples(rng, 6), _shd_samples(rng, 3)
    _write_shd(tmp_path / "SHD" / "shd_train.h5", train)
    _write_shd(tmp_path / "SHD" / "shd_test.h5", test)
    tr, te = load_dataset("shd", tmp_path, time_steps=10)
    assert (len(tr), len(te)) == (6, 3) and CATALOG["shd"].temporal
    for i, (times, units, label) in enumerate(train):
        x, y = tr[i]
        assert x.shape == (10, 700) and y.item() == label
        want = torch.zeros(10, 700)
        for s, u in zip(np.float32(times).astype(np.float64), units, strict=True):
            b = int(s // 0.14)  # bins of width 1.4 / 10; spikes at s >= 1.4 are dropped
            if s < 1.4 and b < 10:
                want[b, u] += 1
        edge_cases = [s for s in times if abs(s / 0.14 - round(s / 0.14)) < 1e-6]
        assert not edge_cases  # no spike sits on a bin edge, where float rounding could differ
        assert torch.equal(x, want)
    assert torch.equal(
        bin_spikes(np.array([0.0, 1.39, 1.4]), np.array([3, 4, 5]), 2)[:, 3:6],
        torch.tensor([[1.0, 0, 0], [0, 1, 0]]),
    )


def test_shd_missing_and_malformed_files_say_what_to_do(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="gunzip"):
        load_dataset("shd", tmp_path, time_steps=4)
    (tmp_path / "hdspikes").mkdir()
    for split in ("train", "test"):
        with h5py.File(tmp_path / "hdspikes" / f"shd_{split}.h5", "w") as f:
            f.create_dataset("labels", data=np.zeros(2, np.uint16))
    with pytest.raises(DatasetChecksumError, match="missing spikes/times"):
        load_dataset("shd", tmp_path, time_steps=4)


def _aedat3(events_by_packet, extra_packet=True):
    """AEDAT 3.1 bytes: header, then per packet a 28-byte header and 8-byte polarity events."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n", b"#!END-HEADER\r\n"]
    for overflow, events in events_by_packet:
        n = len(events)
        out.append(struct.pack("<HHIIIIII", 1, 1, 8, 4, overflow, n, n, n))
        for t, x, y, p in events:
            out.append(struct.pack("<II", (x << 17) | (y << 2) | (p << 1) | 1, t))
        if extra_packet:  # a special-event packet (type 0, 8-byte events): must be skipped
            out.append(struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 1, 1, 1) + struct.pack("<II", 12345, 7))
    return b"".join(out)


def _gesture_events(rng, t0, t1, n):
    t = np.sort(rng.integers(t0, t1, n))
    return [
        (int(a), int(rng.integers(0, 128)), int(rng.integers(0, 128)), int(rng.integers(0, 2))) for a in t
    ]


def _hand_frames(events, T):
    """[T, 2, 128, 128] counts, events split into T equal-count segments (the last takes the rest)."""
    out = torch.zeros(T, 2, 128, 128)
    d = len(events) // T
    for i, (_, x, y, p) in enumerate(events):
        out[min(i // d, T - 1), p, y, x] += 1
    return out


def test_aedat3_reader_decodes_packets_and_overflow(tmp_path):
    rng = np.random.default_rng(1)
    first, second = _gesture_events(rng, 0, 1000, 30), _gesture_events(rng, 1000, 2000, 20)
    path = tmp_path / "a.aedat"
    path.write_bytes(_aedat3([(0, first), (1, second)]))
    ev = read_aedat3(path)
    want = first + [(t | 1 << 31, x, y, p) for t, x, y, p in second]
    assert [tuple(int(ev[k][i]) for k in "txyp") for i in range(len(want))] == want
    assert len(ev["t"]) == 50  # the special events were skipped
    path.write_bytes(_aedat3([(0, first)])[:-5])
    with pytest.raises(DatasetChecksumError, match="truncated"):
        read_aedat3(path)


def test_dvs_gesture_official_layout_cuts_samples_by_the_label_csv(tmp_path):
    rng = np.random.default_rng(2)
    extract = tmp_path / "DVS128Gesture" / "extract" / "DvsGesture"
    extract.mkdir(parents=True)
    recordings = {"user01_led": "train", "user24_led": "test"}
    expected = {"train": [], "test": []}
    for name, split in recordings.items():
        segments = [(3, 100, 5000), (11, 6000, 9000)]
        events = _gesture_events(rng, 0, 10000, 400)
        (extract / f"{name}.aedat").write_bytes(_aedat3([(0, events)]))
        rows = "\n".join(f"{c},{a},{b}" for c, a, b in segments)
        (extract / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + rows + "\n")
        for c, a, b in segments:
            expected[split].append(([e for e in events if a <= e[0] < b], c - 1))
    (extract / "trials_to_train.txt").write_text("user01_led.aedat\n")
    (extract / "trials_to_test.txt").write_text("user24_led.aedat\n")
    T = 4
    train, test = load_dataset("dvs-gesture", tmp_path, time_steps=T)
    for dataset, split in ((train, "train"), (test, "test")):
        assert len(dataset) == 2
        for (x, y), (events, label) in zip(dataset, expected[split], strict=True):
            assert y.item() == label and x.shape == (T, 2, 32, 32)
            want = F.interpolate(_hand_frames(events, T), size=(32, 32), mode="bilinear", align_corners=False)
            assert torch.allclose(x, want, atol=1e-5)
    # the same samples from SpikingJelly's events_np layout, and from integrated frames
    ev_root = tmp_path / "sj" / "DVS128Gesture"
    for split in ("train", "test"):
        for k, (events, label) in enumerate(expected[split]):
            folder = ev_root / "events_np" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            t, x, y, p = (np.array(v) for v in zip(*events, strict=True))
            np.savez(folder / f"s{k}.npz", t=t, x=x, y=y, p=p)
            frames = ev_root / f"frames_number_{T}_split_by_number" / split / str(label)
            frames.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(frames / f"s{k}.npz", frames=_hand_frames(events, T).numpy())
    sj_train, _ = load_dataset("dvs-gesture", tmp_path / "sj", time_steps=T)
    assert torch.allclose(sj_train[0][0], train[0][0], atol=1e-5)
    with pytest.raises(DatasetNotFoundError, match="DvsGesture.tar.gz"):
        load_dataset("dvs-gesture", tmp_path / "nothing", time_steps=T)


def test_row_mnist_is_the_real_images_row_by_row(tmp_path):
    try:
        images, _ = load_dataset("mnist")
    except DatasetNotFoundError:
        if os.environ.get("BSO_SNN_REQUIRE_DATA") == "1":
            pytest.fail("MNIST missing although BSO_SNN_REQUIRE_DATA=1")
        pytest.skip("MNIST not fetched (python -m bso_snn.data fetch mnist)")
    rows, _ = load_dataset("mnist-rows", time_steps=28)
    x, y = rows[5]
    assert x.shape == (28, 28) and torch.equal(x, images[5][0][0]) and y == images[5][1]
    four, _ = load_dataset("mnist-rows", time_steps=4)
    assert torch.equal(four[5][0][1], images[5][0][0, 7:14].flatten())
    with pytest.raises(ValueError, match="time_steps=5 must divide 28"):
        load_dataset("mnist-rows", time_steps=5)
