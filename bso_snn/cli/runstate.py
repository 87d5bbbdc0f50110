"""The resumable run checkpoint ``RUN_DIR/checkpoint.pt`` and the data order it records.

``checkpoint.pt`` is one ``torch.save`` of plain dicts, lists, numbers, strings and tensors (it
loads with ``torch.load(weights_only=True)``), written atomically (temporary file, fsync, rename)::

    {"format": "bso-snn-run", "version": 1, "bso_snn": "0.1.0",
     "config": {...},                       # the TrainConfig of the run
     "model": state_dict, "optimizer": state_dict,
     "schedulers": {name: state_dict},      # every scheduler, by name
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor per device], "numpy": {...}, "python": (...)},
     "rng_ranks": [rng of rank 0, rng of rank 1, ...],  # torchrun: every process's generators
     "data_order": {"epoch": e, "batch": b}, # the next batch is batch b of epoch e (both from 0)
     "epoch": e, "step": batches trained so far,
     "progress": {...}}                     # the training loop's running sums, history and counters

The data order is a pure function of ``(seed, epoch, rank, world size)`` (:class:`EpochOrder`,
``DistributedSampler``'s order), so the position ``(epoch, batch)`` is all a resumed run needs to
feed exactly the batches an uninterrupted run would have seen, in one process or under torchrun
(resumed with the same number of processes).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .._atomic import atomic_write

FORMAT = "bso-snn-run"
VERSION = 1
CHECKPOINT = "checkpoint.pt"
KEYS = ("config", "model", "optimizer", "schedulers", "rng", "data_order", "epoch", "step", "progress")


class RunCheckpointError(ValueError):
    """``checkpoint.pt`` is missing, unreadable or not a bso-snn run checkpoint; the message says why."""


class EpochOrder(Sampler[int]):
    """The training order of epoch ``e`` for one rank, from position ``start``.

    The order is ``DistributedSampler``'s (``shuffle=True``, ``drop_last=False``), element for
    element: ``torch.randperm(n)`` from a generator seeded with ``seed + e``, padded by wrapping
    around to a multiple of ``world_size``, and every ``world_size``-th index from ``rank`` (one
    process: the whole permutation). ``set_position(epoch, start)`` picks the epoch and skips the
    first ``start`` indices of this rank's share (the batches a resumed run has trained on)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def permutation(self) -> torch.Tensor:
        """This rank's whole share of epoch ``epoch`` (before skipping ``start``)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        total = -(-self.n // self.world_size) * self.world_size
        if total > self.n:
            order = torch.cat([order, order.repeat(-(-(total - self.n) // self.n))[: total - self.n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self):
        return iter(self.permutation()[self.start :].tolist())

    def __len__(self) -> int:
        return max(-(-self.n // self.world_size) - self.start, 0)


def rng_state() -> dict[str, Any]:
    """Every random number generator a training run may draw from: torch (CPU and each CUDA
    device), numpy's global one and Python's ``random``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_run(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write a run checkpoint atomically (a crash or Ctrl-C leaves the previous one intact)."""
    from .. import __version__

    payload = {"format": FORMAT, "version": VERSION, "bso_snn": __version__, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run checkpoint; raises :class:`RunCheckpointError` with the reason."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RunCheckpointError(
            f"{path} does not exist; a run folder holds checkpoint.pt once its first epoch (or "
            f"--checkpoint-every step) is done"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunCheckpointError(
            f"{path} cannot be read as a bso-snn run checkpoint (corrupted, or not written by "
            f"bso-snn train): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RunCheckpointError(f"{path} is not a bso-snn run checkpoint (no {FORMAT!r} format tag)")
    if payload.get("version") != VERSION:
        raise RunCheckpointError(
            f"{path} has run-checkpoint version {payload.get('version')!r}; this bso-snn reads version "
            f"{VERSION}. Resume it with the bso-snn release that wrote it ({payload.get('bso_snn')!r})"
        )
    missing = [key for key in KEYS if key not in payload]
    if missing:
        raise RunCheckpointError(f"{path} is incomplete: it lacks {missing}; nothing was loaded")
    return payload
