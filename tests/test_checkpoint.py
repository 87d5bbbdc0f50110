"""Bit-packed checkpoints: 1 bit per binary weight, bit-exact round trip, clear errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from bso_snn.checkpoint import (
    FORMAT,
    load_packed,
    pack_signs,
    packed_size,
    save_packed,
    unpack_signs,
)
from bso_snn.convert import convert
from bso_snn.layers import binarize_layer, binary_parameters, is_binary_layer
from bso_snn.registry import register_layer


def net(seed: int, dtype=torch.float32) -> nn.Sequential:
    """Conv + BatchNorm (float params and buffers) + Linear; layers 1 and 2 become binary."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 13),
        nn.ReLU(),
        nn.Linear(13, 3),
    ).to(dtype)


def trained(seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    """A converted net whose BN running stats and float weights moved away from their init."""
    model = net(seed, dtype)
    convert(model, lam=0.5)
    for _ in range(2):
        model(torch.rand(4, 1, 4, 4, dtype=dtype)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p not in set(binary_parameters(model)):
                    p.add_(p.grad, alpha=-0.1)
        model.zero_grad()
        for m in model.modules():
            if hasattr(m, "reset_trace"):
                m.reset_trace()
    return model


def bits_of(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_exact(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and bits_of(sa[key]) == bits_of(sb[key]), key


def state_copy(model: nn.Module) -> dict:
    return copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    source = trained(0, dtype)
    path = tmp_path / "m.bso"
    save_packed(source, path)
    target = net(1, dtype)
    convert(target, lam=0.5)
    load_packed(target, path)
    assert_bit_exact(source, target)
    assert os.path.getsize(path) == packed_size(source)
    assert torch.load(path, weights_only=True)["format"] == FORMAT  # safe loading works


def test_shared_layer_round_trip(tmp_path):
    def make(seed):
        torch.manual_seed(seed)
        shared = nn.Linear(6, 6)
        model = nn.Sequential(nn.Linear(6, 6), shared, nn.ReLU(), shared, nn.Linear(6, 2))
        convert(model, lam=0.5)
        return model

    source = make(0)
    save_packed(source, tmp_path / "m.bso")
    target = make(1)
    load_packed(target, tmp_path / "m.bso")
    assert_bit_exact(source, target)
    assert target[1] is target[3]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_pack_unpack_signs(n):
    torch.manual_seed(n)
    w = torch.where(torch.rand(n) > 0.5, 1.0, -1.0)
    bits = pack_signs(w)
    assert bits.dtype == torch.uint8 and bits.numel() == (n + 7) // 8
    assert torch.equal(unpack_signs(bits, (n,), torch.float32), w)


def vgg11() -> nn.Sequential:
    """VGG-11 for 32x32 inputs as in OTTT/BSO (convolutions with bias, no BatchNorm)."""
    layers, c = [], 3
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))


def test_vgg11_packed_file_is_at_most_a_thirtieth_of_float32(tmp_path):
    model = vgg11()
    convert(model, lam=0.5)
    binary_weights = sum(p.numel() for p in binary_parameters(model))
    binary_layer_bytes = sum(
        4 * p.numel() for m in model.modules() if is_binary_layer(m) for p in m.parameters()
    )
    path = tmp_path / "vgg11.bso"
    save_packed(model, path)
    size = os.path.getsize(path)
    float_bytes = sum(4 * p.numel() for p in model.parameters()) - 4 * binary_weights
    assert binary_weights == 9_216_000
    assert size <= binary_layer_bytes / 30, (size, binary_layer_bytes)
    # where the bytes go: 1 bit per binary weight, float32 for the rest, < 1 kB overhead per tensor
    n_tensors = len(model.state_dict())
    assert binary_weights / 8 + float_bytes < size < binary_weights / 8 + float_bytes + 1024 * n_tensors


# ---------------------------------------------------------------- errors (the model stays unchanged)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.bso"
    save_packed(trained(0), path)
    return path


def _fresh():
    model = net(1)
    convert(model, lam=0.5)
    return model


def _assert_load_fails(model, path, message):
    before = state_copy(model)
    with pytest.raises(ValueError, match=message):
        load_packed(model, path)
    for key, value in model.state_dict().items():
        assert bits_of(value) == bits_of(before[key]), key


def test_corrupted_weight_byte_fails_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    source = trained(0)
    needle = pack_signs(source[3].weight).numpy().tobytes()
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) == -1
    data[at + 5] ^= 0x10
    saved.write_bytes(bytes(data))
    _assert_load_fails(
        _fresh(), saved, r"m\.bso: checksum mismatch, the file is corrupted; nothing was loaded"
    )


def test_truncated_file_is_unreadable(saved):
    saved.write_bytes(saved.read_bytes()[:500])
    _assert_load_fails(
        _fresh(), saved, r"m\.bso cannot be read as a bso-snn packed checkpoint \(the file is corrupted"
    )


def test_foreign_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(_fresh().state_dict(), path)
    _assert_load_fails(
        _fresh(), path, r"plain\.pt is not a bso-snn packed checkpoint \(no 'bso-snn-packed' format tag\)"
    )


def test_other_version(tmp_path):
    path = tmp_path / "v2.bso"
    torch.save({"format": FORMAT, "version": 2}, path)
    _assert_load_fails(
        _fresh(), path, r"v2\.bso has packed-checkpoint version 2; this bso-snn reads version 1"
    )


def test_unconverted_model(saved):
    _assert_load_fails(
        net(1),
        saved,
        r"'3\.weight' is a binary weight in the file but the model's layer is not converted; call bso_snn\.convert",
    )


def test_binary_in_model_but_float_in_file(saved):
    model = net(1)
    convert(model, lam=0.5, skip_first_last=False)
    _assert_load_fails(model, saved, r"'0\.weight' is binary in the model but float in the file")


def test_wrong_shape(saved):
    model = net(1)
    model[3] = nn.Conv2d(8, 8, 5, padding=2)
    convert(model, lam=0.5)
    _assert_load_fails(
        model, saved, r"'3\.weight' has shape \(8, 8, 3, 3\) in the file but \(8, 8, 5, 5\) in the model"
    )


def test_wrong_float_shape(saved):
    model = net(1)
    model[9] = nn.Linear(13, 4)
    convert(model, lam=0.5)
    _assert_load_fails(
        model, saved, r"'9\.weight' has shape \(3, 13\) in the file but \(4, 13\) in the model"
    )


def test_wrong_dtype(saved):
    model = net(1, torch.float64)
    convert(model, lam=0.5)
    _assert_load_fails(model, saved, r"'3\.weight' has dtype float32 in the file but float64 in the model")


def test_missing_and_unexpected_keys(saved):
    model = nn.Sequential(*list(net(1))[:8])
    convert(model, lam=0.5, skip_first_last=False, filter_fn=lambda m, name: name in ("3", "7"))
    _assert_load_fails(
        model, saved, r"missing in the file: \[\], not in the model: \['9\.bias', '9\.weight'\]"
    )


@pytest.mark.usefixtures("restore_registry")
def test_layer_type_mismatch(saved):
    class MyConv(nn.Conv2d):
        pass

    register_layer(MyConv, binarize_layer)
    model = net(1)
    model[3] = MyConv(8, 8, 3, padding=1)
    convert(model, lam=0.5)
    _assert_load_fails(
        model,
        saved,
        r"'3\.weight' belongs to a torch\.nn\.modules\.conv\.Conv2d in the file but to a .*MyConv",
    )


def test_save_refuses_non_binary_values(tmp_path):
    model = _fresh()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"binary parameter '3\.weight' holds values other than ±1"):
        save_packed(model, tmp_path / "x.bso")
    assert not (tmp_path / "x.bso").exists()


def test_failed_save_keeps_the_existing_file(saved, monkeypatch):
    before = saved.read_bytes()

    def half_write_then_fail(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_packed(_fresh(), saved)
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]  # no temporary file left behind


@pytest.mark.parametrize("call", [save_packed, load_packed])
def test_not_a_module(call, tmp_path):
    with pytest.raises(TypeError, match=r"expects an nn\.Module as model, got dict"):
        call({}, tmp_path / "x.bso")
