"""bso_snn.summary: per-layer bits and totals, checked against sizes written out by hand."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from bso_snn.checkpoint import save_packed
from bso_snn.convert import convert
from bso_snn.summary import ModelSummary, summary

A, B, C, D = 4, 3, 5, 2  # Linear(A,B) float, Linear(B,C) binary, BatchNorm1d(C), Linear(C,D) float


def small(dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(A, B), nn.Linear(B, C), nn.BatchNorm1d(C), nn.Linear(C, D)).to(dtype)
    convert(model, lam=0.5)
    return model


@pytest.mark.parametrize(("dtype", "width"), [(torch.float32, 32), (torch.float64, 64), (torch.bfloat16, 16)])
def test_totals_match_hand_count(dtype, width):
    s = summary(small(dtype))
    first, binary_w, binary_b, bn_affine, last = A * B + B, B * C, C, 2 * C, C * D + D
    bn_stats, bn_count_bits = 2 * C, 64  # running mean/var in the model dtype, num_batches_tracked int64
    assert isinstance(s, ModelSummary)
    assert s.params == first + binary_w + binary_b + bn_affine + last
    assert s.binary_params == binary_w
    assert s.binary_share == pytest.approx(binary_w / s.params)
    assert s.buffers == bn_stats + 1
    assert s.bits == width * (first + binary_b + bn_affine + last + bn_stats) + binary_w + bn_count_bits
    assert s.float32_bits == 32 * (first + binary_w + binary_b + bn_affine + last + bn_stats) + bn_count_bits
    assert s.compression == pytest.approx(s.float32_bits / s.bits)
    assert s.bytes == -(-s.bits // 8)
    binary_row = s.rows[1]
    assert (binary_row.name, binary_row.type, binary_row.binary) == ("1", "Linear", True)
    assert binary_row.params == binary_w + binary_b and binary_row.bits == binary_w + width * binary_b
    assert [r.binary for r in s.rows] == [False, True, False, False]


def test_unconverted_float32_model_has_no_compression():
    model = nn.Sequential(nn.Linear(A, B), nn.ReLU(), nn.Linear(B, C))
    s = summary(model)
    assert s.binary_params == 0 and s.binary_share == 0.0 and s.compression == 1.0
    assert [r.name for r in s.rows] == ["0", "2"]  # modules without tensors get no row


def test_shared_tensors_are_counted_once():
    shared = nn.Linear(C, C)
    model = nn.Sequential(nn.Linear(A, C), shared, shared, nn.Linear(C, C), nn.Linear(C, D))
    model[3].bias = model[0].bias  # a tied float parameter
    convert(model, lam=0.5)
    s = summary(model)
    assert s.params == sum(p.numel() for p in model.parameters())  # parameters() dedups too
    assert s.binary_params == 2 * C * C
    assert [r.name for r in s.rows] == ["0", "1", "3", "4"]
    assert s.rows[2].params == C * C  # its bias was counted with layer 0


def test_packed_size_estimate_and_measurement(tmp_path):
    model = small()
    s = summary(model)
    exact = summary(model, measure_packed=True)
    save_packed(model, tmp_path / "m.bso")
    on_disk = os.path.getsize(tmp_path / "m.bso")
    assert exact.packed_measured and exact.packed_bytes == on_disk
    data = -(-B * C // 8) + 4 * (A * B + B + C + 2 * C + 2 * C + C * D + D) + 8
    assert not s.packed_measured and s.packed_bytes == data
    assert data < on_disk < data + 1000 * len(model.state_dict())


def test_table_text():
    text = str(summary(small()))
    lines = text.splitlines()
    assert lines[1].split() == ["Layer", "Type", "Binary", "Params", "Buffers", "Bits", "Bytes"]
    assert lines[4].split()[:4] == ["1", "Linear", "yes", f"{B * C + C}"]
    params = A * B + B + B * C + C + 2 * C + C * D + D
    assert f"Params: {params} ({B * C} binary = {100 * B * C / params:.2f} %)" in text
    s = summary(small())
    assert f"Compression: {s.float32_bits / s.bits:.2f}x" in text
    assert (
        f"Packed checkpoint (save_packed): {s.packed_bytes} B, {s.float32_bytes / s.packed_bytes:.2f}x smaller"
        in text
    )
    assert "(data only; the file adds < 1 kB per tensor)" in text


def test_not_a_module():
    with pytest.raises(TypeError, match=r"summary expects an nn\.Module as model, got list"):
        summary([nn.Linear(2, 2)])


def test_model_without_tensors():
    s = summary(nn.ReLU())
    assert s.rows == [] and s.params == 0 and s.bits == 0 and s.compression == 1.0 and s.binary_share == 0.0
    assert "Params: 0 (0 binary = 0.00 %)" in str(s)
