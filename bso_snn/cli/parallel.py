"""Where ``bso-snn train`` runs: the device, mixed precision, and several processes (DDP).

- Device: ``auto`` (``cuda`` when available, else ``cpu``), ``cpu``, ``cuda`` (under ``torchrun``:
  ``cuda:LOCAL_RANK``) or ``cuda:N``.
- ``--amp``: the forward pass (model and loss input) runs under ``torch.autocast`` in bfloat16, on
  CUDA and CPU alike. Parameters, gradients and optimizer state stay float32, so binary weights stay
  exactly ±1. (bfloat16 has float32's exponent range, so no loss scaling is needed; float16 would
  need a ``GradScaler`` inside every per-time-step update.)
- Several processes: started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``), joined with ``torch.distributed`` (NCCL on CUDA, gloo on the
  CPU); the model is wrapped in ``DistributedDataParallel``, so every backward (one per time step in
  real-time training) averages the gradients over all ranks before the optimizer sees them, and
  every rank then applies the same flips. Each rank reads its own shard of each epoch
  (``DistributedSampler``'s split, resumable: ``runstate.EpochOrder``, seeded by ``--seed``); the global batch is ``world_size x --batch-size``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

AMP_DTYPE = torch.bfloat16


class DeviceError(ValueError):
    """``--device`` names a device this machine does not have."""


@dataclass
class Runtime:
    """The device and process layout of one training process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_layout() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The ``torch.device`` for ``--device spec``; raises :class:`DeviceError` with the fix."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise DeviceError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N (N a GPU index)")
    if not torch.cuda.is_available():
        built = (
            "without CUDA"
            if torch.version.cuda is None
            else f"with CUDA {torch.version.cuda}, but no GPU is visible"
        )
        raise DeviceError(
            f"--device {spec}: CUDA is not available (torch {torch.__version__} is built {built}). "
            f"Use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU"
        )
    if spec == "cuda":
        index = local_rank if world_size > 1 else torch.cuda.current_device()
    else:
        if world_size > 1:
            raise DeviceError(
                f"--device {spec}: under torchrun each process takes the GPU of its LOCAL_RANK; use --device "
                f"cuda (or auto), and pick GPUs with CUDA_VISIBLE_DEVICES"
            )
        index = int(spec[5:])
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device cuda:{index}: this machine has {count} visible GPU(s) (0..{count - 1})")
    return torch.device("cuda", index)


def start(runtime: Runtime) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) when there are several processes."""
    if runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    if runtime.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if runtime.device.type == "cuda" else "gloo")


def finish(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class AutocastForward(nn.Module):
    """Runs ``inner``'s forward under ``torch.autocast(device_type, bfloat16)`` and returns float32."""

    def __init__(self, inner: nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner = inner
        self.device_type = device_type

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=AMP_DTYPE):
            out = self.inner(*args, **kwargs)
        return out.float()


def forward_model(model: nn.Module, runtime: Runtime, *, train: bool) -> nn.Module:
    """What the training loop calls: ``model`` under autocast (``--amp``) and, for training with
    several processes, inside ``DistributedDataParallel`` (the module saved is still ``model``)."""
    wrapped = AutocastForward(model, runtime.device.type) if runtime.amp else model
    if train and runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
    return wrapped


def any_rank(flag: bool, runtime: Runtime) -> bool:
    """True when ``flag`` is True on any rank (every rank must call it)."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([int(flag)], device=runtime.device)
    dist.all_reduce(t)
    return bool(t.item())


def from_main(value, runtime: Runtime):
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not runtime.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, runtime: Runtime) -> list:
    """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
    if not runtime.distributed:
        return [value]
    values = [None] * runtime.world_size
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(values: list[int], runtime: Runtime) -> list[int]:
    if not runtime.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def test_shard(dataset: Dataset, runtime: Runtime) -> Dataset:
    """Rank ``r``'s share of the test set: samples ``r, r + world_size, ...`` (no padding, so the
    summed counts are exact)."""
    if not runtime.distributed:
        return dataset
    return Subset(dataset, range(runtime.rank, len(dataset), runtime.world_size))


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankCheck:
    """``--check-ranks``: after every binary optimizer step, compare a SHA-256 of every parameter and
    every optimizer state tensor (momenta, T-BSO's ``v``, the float optimizer's state) across ranks;
    raises ``RuntimeError`` naming the step when any rank differs."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, hook_on, runtime: Runtime) -> None:
        self.model, self.optimizer, self.runtime = model, optimizer, runtime
        self.steps = 0
        hook_on.register_step_post_hook(lambda *_: self.check())

    def digest(self) -> str:
        """SHA-256 of the bytes of every parameter and optimizer state tensor, in a fixed order."""
        return _digest(self._tensors())

    def _tensors(self):
        yield from self.model.parameters()
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                yield from (v for _, v in sorted(state.items()) if isinstance(v, torch.Tensor))

    def check(self) -> None:
        self.steps += 1
        gathered = [None] * self.runtime.world_size
        dist.all_gather_object(gathered, self.digest())
        if len(set(gathered)) != 1:
            raise RuntimeError(
                f"--check-ranks: after binary optimizer step {self.steps} the ranks differ in their parameters "
                f"or optimizer state (SHA-256 per rank: {gathered})"
            )
