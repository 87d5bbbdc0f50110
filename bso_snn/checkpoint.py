"""Bit-packed checkpoints: a converted model's ±1 weights at 1 bit each, everything else exact.

File layout (one ``torch.save`` of plain dicts, strings, ints and tensors, so it loads with
``torch.load(weights_only=True)``)::

    {"format": "bso-snn-packed", "version": 1,
     "binary": {key: {"shape": [...], "dtype": "float32", "layer": "torch.nn.modules.conv.Conv2d",
                      "bits": uint8 tensor}},        # bit 1 = +1, bit 0 = -1, numpy.packbits order
     "float": {key: tensor},                          # the rest of the state_dict, bit for bit
     "sha256": hex digest over all of the above}

``key`` is the ``state_dict`` key. :func:`load_packed` checks everything (format, version,
checksum, keys, shapes, dtypes, layer types, that the binary layers are converted) before it
changes anything, so a failed load leaves the model as it was. :func:`save_packed` writes to a
temporary file and renames it, so a failed save never damages an existing file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ._atomic import atomic_write
from ._classswap import original_class
from .layers import is_binary_layer
from .sign import is_binary_tensor

FORMAT = "bso-snn-packed"
VERSION = 1

PathLike = str | os.PathLike


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _binary_entries(model: nn.Module) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """``(state_dict key, layer, parameter)`` for every binary parameter, under every path a
    shared layer has (as ``state_dict`` lists it)."""
    for prefix, module in model.named_modules(remove_duplicate=False):
        if is_binary_layer(module):
            for pname in module.bso_binary_parameters:
                yield (f"{prefix}.{pname}" if prefix else pname), module, getattr(module, pname)


def pack_signs(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (±1) as a flat uint8 tensor of bits, 1 for +1 (``numpy.packbits`` order)."""
    bits = (weight.detach() > 0).reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(bits))


def unpack_signs(bits: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: a ±1 tensor of ``shape`` and ``dtype``."""
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.unpackbits(bits.numpy(), count=count).astype(bool)
    one = torch.ones((), dtype=dtype)
    return torch.where(torch.from_numpy(flat), one, -one).reshape(shape)


def _payload(model: nn.Module) -> dict:
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_packed expects an nn.Module as model, got {type(model).__name__}")
    state = model.state_dict()
    binary, packed = {}, {}
    for key, layer, param in _binary_entries(model):
        if not is_binary_tensor(param):
            raise ValueError(
                f"binary parameter {key!r} holds values other than ±1; the packed format stores only "
                f"signs. Restore it with bso_snn.sign.sign or save a plain state_dict instead."
            )
        if id(param) not in packed:  # a shared parameter is packed once (torch.save dedups it)
            packed[id(param)] = pack_signs(param)
        binary[key] = {
            "shape": list(param.shape),
            "dtype": _dtype_name(param.dtype),
            "layer": _qualname(original_class(layer)),
            "bits": packed[id(param)],
        }
    floats = {}
    for key, value in state.items():
        if key in binary:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; it cannot be packed"
            )
        floats[key] = value.detach().cpu()
    payload = {"format": FORMAT, "version": VERSION, "binary": binary, "float": floats}
    payload["sha256"] = _checksum(payload)
    return payload


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _checksum(payload: dict) -> str:
    """SHA-256 over a canonical encoding of the format tag, version and every entry."""
    h = hashlib.sha256(f"{payload['format']}\0{payload['version']}\0".encode())
    for key in sorted(payload["binary"]):
        entry = payload["binary"][key]
        h.update(f"b\0{key}\0{entry['shape']}\0{entry['dtype']}\0{entry['layer']}\0".encode())
        h.update(_tensor_bytes(entry["bits"]))
    for key in sorted(payload["float"]):
        value = payload["float"][key]
        h.update(f"f\0{key}\0{list(value.shape)}\0{_dtype_name(value.dtype)}\0".encode())
        h.update(_tensor_bytes(value))
    return h.hexdigest()


def packed_size(model: nn.Module) -> int:
    """Exact size in bytes of the file :func:`save_packed` would write (serialised in memory)."""
    buffer = io.BytesIO()
    torch.save(_payload(model), buffer)
    return buffer.tell()


def save_packed(model: nn.Module, path: PathLike) -> None:
    """Save ``model``'s ``state_dict`` with every binary weight at 1 bit (atomically)."""
    payload = _payload(model)
    atomic_write(path, lambda f: torch.save(payload, f))


def _read(path: str) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{path} cannot be read as a bso-snn packed checkpoint (the file is corrupted or was not "
            f"written by bso_snn.save_packed): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bso-snn packed checkpoint (no {FORMAT!r} format tag)")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has packed-checkpoint version {payload.get('version')!r}; this bso-snn reads "
            f"version {VERSION}. Load it with the bso-snn release that wrote it."
        )
    _check_structure(payload, path)
    if payload.get("sha256") != _checksum(payload):
        raise ValueError(f"{path}: checksum mismatch, the file is corrupted; nothing was loaded")
    return payload


_BINARY_ENTRY = {"shape": list, "dtype": str, "layer": str, "bits": torch.Tensor}


def _check_structure(payload: dict, path: str) -> None:
    """Every key and type the loader reads, checked before it reads them (a damaged file gives
    this error, never a bare KeyError or TypeError)."""

    def broken(what: str) -> ValueError:
        return ValueError(f"{path} is damaged: {what}; nothing was loaded. Save the model again")

    if not isinstance(payload.get("sha256"), str):
        raise broken("it has no sha256 checksum")
    for part in ("binary", "float"):
        if not isinstance(payload.get(part), dict):
            raise broken(f"its {part!r} section is missing or not a dict")
    for key, entry in payload["binary"].items():
        if not isinstance(entry, dict):
            raise broken(f"binary entry {key!r} is a {type(entry).__name__}, not a dict")
        for field, kind in _BINARY_ENTRY.items():
            if not isinstance(entry.get(field), kind):
                raise broken(f"binary entry {key!r} lacks {field!r} (a {kind.__name__})")
        if not all(isinstance(n, int) and n >= 0 for n in entry["shape"]):
            raise broken(f"binary entry {key!r} has shape {entry['shape']!r}")
        if entry["bits"].dtype != torch.uint8 or entry["bits"].dim() != 1:
            raise broken(
                f"binary entry {key!r} holds bits of dtype {entry['bits'].dtype}, not a flat uint8 tensor"
            )
        needed = (int(np.prod(entry["shape"], dtype=np.int64)) + 7) // 8
        if entry["bits"].numel() != needed:
            raise broken(
                f"binary entry {key!r} of shape {tuple(entry['shape'])} needs {needed} bytes of bits, "
                f"the file holds {entry['bits'].numel()}"
            )
    for key, value in payload["float"].items():
        if not isinstance(value, torch.Tensor):
            raise broken(f"float entry {key!r} is a {type(value).__name__}, not a tensor")


def _shape_dtype_error(path: str, key: str, what: str, in_file: object, in_model: object) -> ValueError:
    return ValueError(
        f"{path}: {key!r} has {what} {in_file} in the file but {in_model} in the model; build and "
        f"convert the model exactly as the one that was saved (same layers, dtype and convert options)"
    )


def _validated_state(model: nn.Module, payload: dict, path: str) -> dict[str, torch.Tensor]:
    """The full state_dict to load, after checking it against ``model``; raises on any mismatch."""
    target = model.state_dict()
    model_binary = {key: (layer, param) for key, layer, param in _binary_entries(model)}
    file_binary, file_float = payload["binary"], payload["float"]
    for key in file_binary:
        if key in target and key not in model_binary:
            raise ValueError(
                f"{path}: {key!r} is a binary weight in the file but the model's layer is not converted; "
                f"call bso_snn.convert(model, ...) with the options used before saving, then load_packed"
            )
    for key in model_binary:
        if key in file_float:
            raise ValueError(
                f"{path}: {key!r} is binary in the model but float in the file; convert the model with "
                f"the options used before saving (e.g. the same filter_fn / skip_first_last)"
            )
    missing = sorted(set(target) - set(file_binary) - set(file_float))
    unexpected = sorted((set(file_binary) | set(file_float)) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"{path}: the file does not match the model's state_dict (missing in the file: {missing}, "
            f"not in the model: {unexpected}); build the model as the one that was saved"
        )
    state = {}
    for key, entry in file_binary.items():
        layer, param = model_binary[key]
        if entry["layer"] != _qualname(original_class(layer)):
            raise ValueError(
                f"{path}: {key!r} belongs to a {entry['layer']} in the file but to a "
                f"{_qualname(original_class(layer))} in the model; build the model as the one that was saved"
            )
        if tuple(entry["shape"]) != tuple(param.shape):
            raise _shape_dtype_error(path, key, "shape", tuple(entry["shape"]), tuple(param.shape))
        if entry["dtype"] != _dtype_name(param.dtype):
            raise _shape_dtype_error(path, key, "dtype", entry["dtype"], _dtype_name(param.dtype))
        state[key] = unpack_signs(entry["bits"], tuple(param.shape), param.dtype)
    for key, value in file_float.items():
        if value.shape != target[key].shape:
            raise _shape_dtype_error(path, key, "shape", tuple(value.shape), tuple(target[key].shape))
        if value.dtype != target[key].dtype:
            raise _shape_dtype_error(
                path, key, "dtype", _dtype_name(value.dtype), _dtype_name(target[key].dtype)
            )
        state[key] = value
    return state


def load_packed(model: nn.Module, path: PathLike) -> None:
    """Load a file written by :func:`save_packed` into the converted ``model``, bit for bit.

    Raises:
        ValueError: corrupted or foreign file, or any mismatch with ``model`` (keys, shapes,
            dtypes, layer types, unconverted binary layers); ``model`` is then unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_packed expects an nn.Module as model, got {type(model).__name__}")
    path = os.fspath(path)
    state = _validated_state(model, _read(path), path)
    model.load_state_dict(state, strict=True)
