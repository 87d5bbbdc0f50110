"""``bso_snn.summary(model)``: what a binary-weight model costs, layer by layer, in bits.

In the spirit of ``larq.models.summary``. Every tensor is counted at its own width (a bfloat16
parameter at 16 bits, a float64 one at 64) except the ±1 weights of converted layers, which
count 1 bit each. Buffers (e.g. BatchNorm running statistics) are model state and count as
stored (float). The float32 reference counts every floating-point parameter and buffer at 32
bits. A parameter or buffer shared by several modules is counted once, in the first row that
holds it. Sizes are in decimal units (1 kB = 1000 bytes).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ._classswap import original_class
from .checkpoint import packed_size
from .layers import is_binary_layer


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One module that directly holds parameters or buffers.

    Attributes:
        name: qualified module name (``''`` for the root).
        type: the module's class name before conversion (e.g. ``'Conv2d'``).
        binary: the module is a converted sign-weight layer.
        params: number of parameter elements held directly by the module.
        binary_params: how many of them are ±1 weights (1 bit each).
        buffers: number of buffer elements (counted as stored, e.g. float32).
        bits: storage in bits with 1-bit binary weights.
    """

    name: str
    type: str
    binary: bool
    params: int
    binary_params: int
    buffers: int
    bits: int

    @property
    def bytes(self) -> int:
        return math.ceil(self.bits / 8)


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals; ``str(summary)`` is a table.

    Attributes:
        rows: one :class:`LayerRow` per module holding parameters or buffers.
        params: parameter elements in the model (each shared parameter once).
        binary_params: ±1 weights among them.
        buffers: buffer elements.
        bits: model size in bits with 1-bit binary weights (parameters and buffers).
        float32_bits: the same model with every floating-point tensor at 32 bits.
        packed_bytes: size of the :func:`bso_snn.checkpoint.save_packed` file: the data bytes
            (1 bit per binary weight, rounded up per tensor, plus the float state) unless
            measured exactly with ``summary(model, measure_packed=True)``.
        packed_measured: whether ``packed_bytes`` is the exact file size.
    """

    rows: list[LayerRow]
    params: int
    binary_params: int
    buffers: int
    bits: int
    float32_bits: int
    packed_bytes: int
    packed_measured: bool

    @property
    def binary_share(self) -> float:
        """Fraction of parameters that are binary."""
        return self.binary_params / self.params if self.params else 0.0

    @property
    def bytes(self) -> int:
        return math.ceil(self.bits / 8)

    @property
    def float32_bytes(self) -> int:
        return math.ceil(self.float32_bits / 8)

    @property
    def compression(self) -> float:
        """float32 size / size with 1-bit binary weights."""
        return self.float32_bits / self.bits if self.bits else 1.0

    def __str__(self) -> str:
        header = ("Layer", "Type", "Binary", "Params", "Buffers", "Bits", "Bytes")
        body = [
            (r.name or "(root)", r.type, "yes" if r.binary else "no", f"{r.params:,}", f"{r.buffers:,}",
             f"{r.bits:,}", _size(r.bytes))
            for r in self.rows
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        right = {3, 4, 5, 6}

        def line(cells):
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        rule = "-" * len(line(header))
        packed = "exact" if self.packed_measured else "data only; the file adds < 1 kB per tensor"
        totals = [
            f"Params: {self.params:,} ({self.binary_params:,} binary = {100 * self.binary_share:.2f} %)",
            f"Buffers: {self.buffers:,} elements (e.g. BatchNorm statistics), counted at their stored width",
            f"Size with 1-bit binary weights: {_size(self.bytes)}",
            f"Size in float32: {_size(self.float32_bytes)}",
            f"Compression: {self.compression:.2f}x",
            f"Packed checkpoint (save_packed): {_size(self.packed_bytes)}, "
            f"{self.float32_bytes / max(self.packed_bytes, 1):.2f}x smaller than float32 ({packed})",
        ]
        return "\n".join([rule, line(header), rule, *map(line, body), rule, *totals])


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} B"


def _bits(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() * 8


def _float32_bits(t: torch.Tensor) -> int:
    return t.numel() * 32 if t.is_floating_point() else _bits(t)


@dataclasses.dataclass
class _Tally:
    """Running counts for one module's own tensors."""

    params: int = 0
    binary_params: int = 0
    buffers: int = 0
    bits: int = 0
    float32_bits: int = 0
    packed_bytes: int = 0


def _tally(module: nn.Module, seen: set[int]) -> _Tally:
    """Count the tensors ``module`` holds directly and that no earlier module held."""
    tally = _Tally()
    binary_names = set(module.bso_binary_parameters) if is_binary_layer(module) else set()
    for name, p in module.named_parameters(recurse=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        tally.params += p.numel()
        tally.float32_bits += _float32_bits(p)
        if name in binary_names:
            tally.binary_params += p.numel()
            tally.bits += p.numel()
            tally.packed_bytes += math.ceil(p.numel() / 8)
        else:
            tally.bits += _bits(p)
            tally.packed_bytes += _bits(p) // 8
    for name, b in module.named_buffers(recurse=False):
        if id(b) in seen:
            continue
        seen.add(id(b))
        tally.buffers += b.numel()
        tally.bits += _bits(b)
        tally.float32_bits += _float32_bits(b)
        if name not in module._non_persistent_buffers_set:  # only persistent buffers are saved
            tally.packed_bytes += _bits(b) // 8
    return tally


def summary(model: nn.Module, *, measure_packed: bool = False) -> ModelSummary:
    """Per-layer and total storage of ``model`` with 1-bit binary weights vs. float32.

    Args:
        model: any ``nn.Module``, converted or not.
        measure_packed: serialise the packed checkpoint in memory to report its exact file
            size (otherwise its data bytes are computed).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects an nn.Module as model, got {type(model).__name__}")
    seen: set[int] = set()
    rows, float32_bits, packed = [], 0, 0
    for name, module in model.named_modules():
        t = _tally(module, seen)
        float32_bits += t.float32_bits
        packed += t.packed_bytes
        if t.params or t.buffers:
            kind = original_class(module).__name__
            rows.append(
                LayerRow(name, kind, is_binary_layer(module), t.params, t.binary_params, t.buffers, t.bits)
            )
    return ModelSummary(
        rows=rows,
        params=sum(r.params for r in rows),
        binary_params=sum(r.binary_params for r in rows),
        buffers=sum(r.buffers for r in rows),
        bits=sum(r.bits for r in rows),
        float32_bits=float32_bits,
        packed_bytes=packed_size(model) if measure_packed else packed,
        packed_measured=measure_packed,
    )
