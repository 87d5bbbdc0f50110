"""The benchmark network, the seven training methods of ``reproduce.py``, and one training run.

Every row trains the same VGG-style conv SNN (:func:`build_network`) on Fashion-MNIST:

    conv 1->16 (float) BN AvgPool LIF | conv 16->32 BN LIF | conv 32->64 BN AvgPool LIF |
    conv 64->64 BN AvgPool LIF | Linear 576->10 (float)

The three middle convolutions hold 59,904 of the 66,346 parameters (90.3 %); they are the layers
a method makes binary. Pooling sits before each neuron, so every middle convolution reads a
neuron's spikes directly (NDOT needs the presynaptic membrane).

Methods (``METHODS``):

- ``frozen``: online (OTTT traces, real-time updates), binary middle layers that keep their
  random ±1 initial signs (no optimizer touches them): the floor any flip rule must beat.
- ``bso`` / ``tbso``: online, binary, trained by :class:`bso_snn.optim.BSO` / ``TBSO``.
- ``ottt`` / ``ndot``: online, full precision: the middle layers use bso-snn's traced layers
  (OTTT or NDOT traces) with their float weights kept, trained by the float optimizer.
- ``fp-bptt``: full-precision SNN, backprop through time (one backward over all T steps).
- ``latent-ste-bptt``: latent real weights, ``sign`` in the forward with a straight-through
  estimator clipped to ``|w| <= 1`` (BinaryConnect / XNOR-style), BPTT.

All rows use the same loss (the BSO authors' per-step ``(0.95*CE + 0.05*MSE(out, one_hot)) / T``)
and the same float optimizer for the float layers (SGD lr 0.1, momentum 0.9, cosine to 0 per
batch). Online rows take an optimizer step after every time step; BPTT rows once per batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import bso_snn
from bso_snn.neurons import LIF
from bso_snn.optim import BSO, TBSO, HybridOptimizer
from bso_snn.recipes import paper

ONLINE = ("frozen", "bso", "tbso", "ottt", "ndot")
BPTT = ("fp-bptt", "latent-ste-bptt")
METHODS = ("frozen", "fp-bptt", "ottt", "ndot", "latent-ste-bptt", "bso", "tbso")
BINARY = ("frozen", "latent-ste-bptt", "bso", "tbso")  # methods whose middle layers end up ±1
CHANNELS = (16, 32, 64, 64)
MIDDLE = (4, 7, 11)  # indices of the middle convolutions in build_network()
# The authors' recipe (bso_snn.recipes, each value with its source): the per-step loss, SGD lr 0.1 and
# momentum 0.9 for the float layers, 1 - beta1 = 1e-3, 1 - beta2 = 1e-5. Deliberate deviation: the
# learning rate is cosine-annealed per batch (the recipe anneals per epoch, which in a one-epoch run
# would keep it constant). gamma is chosen on the validation split, not taken from the recipe, and
# the recipe's gamma / beta decay every 50 epochs is never reached in these runs.
RECIPE = paper("cifar10")
EVAL_BATCH = 100  # images per evaluation batch (rows without "eval_batch" used 1000)
LATENT_LR = 1e-3  # Adam on the latent weights of the STE baseline (the usual BNN choice)


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run (one row of the results)."""

    method: str
    T: int
    seed: int
    epochs: int
    n_train: int
    n_val: int
    n_test: int
    batch: int = 128
    gamma: float | None = None  # BSO / T-BSO flip threshold
    bso_reset: bool | None = None  # BSO's momentum reset (None: the optimizer's default)
    beta1_complement: float = RECIPE.one_minus_beta1  # 1 - beta (BSO) / 1 - beta1 (T-BSO)
    beta2_complement: float = RECIPE.one_minus_beta2  # 1 - beta2 (T-BSO)
    memory_batches: int = 2  # training batches inside the profiled window of the memory probe

    def key(self) -> str:
        parts = [self.method, f"T{self.T}", f"seed{self.seed}", f"e{self.epochs}", f"n{self.n_train}"]
        if self.gamma is not None:
            parts.append(f"gamma{self.gamma:g}")
        if self.bso_reset is not None:
            parts.append(f"reset{int(self.bso_reset)}")
        if (self.beta1_complement, self.beta2_complement) != (RECIPE.one_minus_beta1, RECIPE.one_minus_beta2):
            parts.append(f"b{self.beta1_complement:g}_{self.beta2_complement:g}")
        return "/".join(parts)


# ---------------------------------------------------------------------------- network
def build_network() -> nn.Sequential:
    """The benchmark SNN (float32, unconverted; neurons keep their state in the graph)."""
    a, b, c, d = CHANNELS
    return nn.Sequential(
        nn.Conv2d(1, a, 3, padding=1), nn.BatchNorm2d(a), nn.AvgPool2d(2), LIF(tau=2.0),  # 28 -> 14
        nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), LIF(tau=2.0),
        nn.Conv2d(b, c, 3, padding=1), nn.BatchNorm2d(c), nn.AvgPool2d(2), LIF(tau=2.0),  # 14 -> 7
        nn.Conv2d(c, d, 3, padding=1), nn.BatchNorm2d(d), nn.AvgPool2d(2), LIF(tau=2.0),  # 7 -> 3
        nn.Flatten(), nn.Linear(d * 9, 10),
    )  # fmt: skip


class _SignSTE(torch.autograd.Function):
    """``sign(w)`` (``+1`` for ``w >= 0``) forward; ``grad * 1[|w| <= 1]`` backward."""

    @staticmethod
    def forward(ctx, w):  # type: ignore[override]
        ctx.save_for_backward(w)
        return bso_snn.sign(w)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


class LatentSignConv2d(nn.Conv2d):
    """A convolution with latent real weights used through ``sign`` and a straight-through estimator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _SignSTE.apply(self.weight), self.bias)


def _latent_sign(conv: nn.Conv2d) -> LatentSignConv2d:
    new = LatentSignConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    new.load_state_dict(conv.state_dict())
    return new


def _middle_filter(model: nn.Sequential) -> Callable[[nn.Module, str], bool]:
    names = {str(i) for i in MIDDLE}
    return lambda module, name: name in names


def _traced_float(model: nn.Sequential, trace: str) -> None:
    """Give the middle convolutions bso-snn's trace-based weight gradient but keep their float weights.

    ``bso_snn.convert`` has no traced-but-float layer, so this converts the layers (which makes their
    weights ±1 and installs the traced forward/backward) and then copies the float weights back:
    the traced op uses ``layer.weight`` as it is, so the layer computes with float weights and its
    weight gradient is ``sum_t g[t] a_hat[t]^T`` (OTTT) or with NDOT's decays.
    """
    saved = {i: model[i].weight.detach().clone() for i in MIDDLE}
    bso_snn.convert(model, trace=trace, filter_fn=_middle_filter(model))
    with torch.no_grad():
        for i, weight in saved.items():
            model[i].weight.copy_(weight)


def prepare(method: str) -> nn.Sequential:
    """The network for ``method``, converted as that method needs (call after seeding)."""
    model = build_network()
    if method in ("frozen", "bso", "tbso"):
        bso_snn.convert(model, filter_fn=_middle_filter(model))  # OTTT traces, online neurons
    elif method in ("ottt", "ndot"):
        _traced_float(model, method)
    elif method == "latent-ste-bptt":
        for i in MIDDLE:
            model[i] = _latent_sign(model[i])
    elif method != "fp-bptt":
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    return model


def _middle_params(model: nn.Sequential) -> list[nn.Parameter]:
    return [model[i].weight for i in MIDDLE]


def _other_params(model: nn.Sequential) -> list[nn.Parameter]:
    middle = {id(p) for p in _middle_params(model)}
    return [p for p in model.parameters() if id(p) not in middle]


# ---------------------------------------------------------------------------- optimizers
@dataclasses.dataclass
class Training:
    """The optimizer (stepped by the loop) and the schedulers stepped once per batch."""

    optimizer: Any
    schedulers: list[Any]
    binary_optimizer: torch.optim.Optimizer | None


def make_training(model: nn.Sequential, cfg: Config, total_batches: int) -> Training:
    """Optimizers and per-batch cosine schedules for ``cfg.method``."""
    float_params = _other_params(model) if cfg.method in BINARY else list(model.parameters())
    sgd = torch.optim.SGD(float_params, lr=RECIPE.lr, momentum=RECIPE.momentum)
    inner: list[torch.optim.Optimizer] = [sgd]
    binary_opt = None
    if cfg.method == "bso":
        kwargs = {} if cfg.bso_reset is None else {"reset_momentum": cfg.bso_reset}
        binary_opt = BSO(_middle_params(model), gamma=cfg.gamma, beta=1 - cfg.beta1_complement, **kwargs)
    elif cfg.method == "tbso":
        betas = (1 - cfg.beta1_complement, 1 - cfg.beta2_complement)
        binary_opt = TBSO(_middle_params(model), gamma=cfg.gamma, betas=betas, time_steps=cfg.T)
    elif cfg.method == "frozen":
        for weight in _middle_params(model):
            weight.requires_grad_(False)  # never updated, so no gradient is computed or kept
    elif cfg.method == "latent-ste-bptt":
        inner.append(torch.optim.Adam(_middle_params(model), lr=LATENT_LR))
    if binary_opt is not None:
        inner.insert(0, binary_opt)
    schedulers = [
        torch.optim.lr_scheduler.CosineAnnealingLR(o, total_batches) for o in inner if "lr" in o.defaults
    ]
    optimizer = inner[0] if len(inner) == 1 else HybridOptimizer(*inner)
    return Training(optimizer, schedulers, binary_opt)


# ---------------------------------------------------------------------------- loss and steps
def train_batch(
    model: nn.Module, method: str, x: torch.Tensor, y: torch.Tensor, T: int, training: Training
) -> float:
    """One batch of ``T`` steps (direct encoding: the image at every step); returns the mean loss."""
    inputs = x.unsqueeze(0).expand(T, *x.shape)
    if method in ONLINE:
        return bso_snn.train_step(model, inputs, y, RECIPE.step_loss, training.optimizer).loss
    bso_snn.reset(model)
    training.optimizer.zero_grad()
    loss = sum(RECIPE.step_loss(model(inputs[t]), y) for t in range(T)) / T
    loss.backward()
    training.optimizer.step()
    return loss.item()


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, T: int, batch: int = EVAL_BATCH
) -> float:
    """Accuracy of the time-averaged output in eval mode (BatchNorm running statistics), in batches
    of ``batch`` (100 ran 1.7x faster than 1000 on this CPU: the activations stay in cache)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        out = bso_snn.evaluate(model, x.unsqueeze(0).expand(T, *x.shape))
        correct += (out.argmax(1) == labels[i : i + batch]).sum().item()
    model.train()
    return correct / len(images)


# ---------------------------------------------------------------------------- memory
def peak_training_bytes(method: str, T: int, x: torch.Tensor, y: torch.Tensor, cfg: Config) -> int:
    """Peak live tensor bytes while building ``method``'s model and optimizer and training
    ``cfg.memory_batches`` batches, recorded by ``torch.profiler(profile_memory=True)`` (every
    allocation and free of the CPU allocator: activations saved for backward, gradients, traces,
    optimizer state, model). One unprofiled run first, so one-time process caches are not counted."""

    def run() -> None:
        torch.manual_seed(0)
        model = prepare(method)
        training = make_training(model, dataclasses.replace(cfg, method=method, T=T), total_batches=10)
        for _ in range(cfg.memory_batches):
            train_batch(model, method, x, y, T, training)

    run()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------------------- model size
def model_sizes(model: nn.Module, method: str) -> dict[str, int]:
    """Bytes of the trained model with 1-bit binary weights and with every tensor in float32
    (parameters and BatchNorm buffers). Full-precision methods store float32 weights."""
    floats = sum(t.numel() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point())
    binary = sum(p.numel() for p in _middle_params(model)) if method in BINARY else 0
    return {
        "model_bytes": math.ceil((32 * (floats - binary) + binary) / 8),
        "model_bytes_float32": 4 * floats,
    }


# ---------------------------------------------------------------------------- one run
@dataclasses.dataclass
class Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_data(n_train: int, n_val: int, n_test: int, split_seed: int = 12345) -> Data:
    """Fashion-MNIST: ``n_val`` validation images held out of the official training set, then
    ``n_train`` training images from the rest (both by one fixed permutation, the same for every
    row), and the first ``n_test`` images of the official test set (all 10k in the full run)."""
    from bso_snn.data import load_dataset

    train, test = load_dataset("fashion-mnist")
    x, y = train.tensors
    if n_val + n_train > len(x):
        raise ValueError(f"n_val + n_train = {n_val + n_train} exceeds the {len(x)} training images")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    val, tr = order[:n_val], order[n_val : n_val + n_train]
    tx, ty = test.tensors
    return Data(x[tr], y[tr], x[val], y[val], tx[:n_test], ty[:n_test])


class FlipCounter:
    """Counts, per binary weight, how often its sign changed: a post-step hook on the binary
    optimizer compares every weight with its value before the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, weights: list[nn.Parameter]) -> None:
        self.weights = weights
        self.previous = [w.detach().clone() for w in weights]
        self.counts = [torch.zeros_like(w, dtype=torch.int32) for w in weights]
        self.events = 0
        optimizer.register_step_post_hook(lambda *_: self._after_step())

    @torch.no_grad()
    def _after_step(self) -> None:
        for w, prev, count in zip(self.weights, self.previous, self.counts, strict=True):
            changed = w != prev
            count += changed
            self.events += int(changed.sum())
            prev.copy_(w)

    def summary(self, initial: list[torch.Tensor]) -> dict[str, Any]:
        """Flip events, and the share of weights that never flipped, flipped, flipped >= 10 times,
        or end with a sign other than their initial one (overall and per layer)."""
        total = sum(w.numel() for w in self.weights)
        counts = torch.cat([c.flatten() for c in self.counts])
        changed = [
            (w.detach() != w0).float().mean().item() for w, w0 in zip(self.weights, initial, strict=True)
        ]
        return {
            "flip_events": self.events,
            "flip_events_per_weight": self.events / total,
            "never_flipped_fraction": (counts == 0).float().mean().item(),
            "flipped_10_plus_fraction": (counts >= 10).float().mean().item(),
            "max_flips_of_a_weight": int(counts.max()),
            "changed_sign_fraction": sum(c * w.numel() for c, w in zip(changed, self.weights, strict=True))
            / total,
            "changed_sign_fraction_per_layer": changed,
        }


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one configuration from scratch; returns its result row."""
    torch.set_num_threads(1)
    data = load_data(cfg.n_train, cfg.n_val, cfg.n_test)
    mem_x, mem_y = data.train_x[: cfg.batch], data.train_y[: cfg.batch]
    peak = peak_training_bytes(cfg.method, cfg.T, mem_x, mem_y, cfg)

    torch.manual_seed(cfg.seed)
    model = prepare(cfg.method)
    batches = math.ceil(cfg.n_train / cfg.batch)
    training = make_training(model, cfg, total_batches=batches * cfg.epochs)
    initial = [w.detach().clone() for w in _middle_params(model)]
    counter = (
        FlipCounter(training.binary_optimizer, _middle_params(model)) if training.binary_optimizer else None
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    epochs = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(cfg.n_train, generator=generator)
        wall, cpu = time.perf_counter(), time.process_time()
        losses, flips_before = [], counter.events if counter else 0
        for b in range(batches):
            idx = order[b * cfg.batch : (b + 1) * cfg.batch]
            losses.append(
                train_batch(model, cfg.method, data.train_x[idx], data.train_y[idx], cfg.T, training)
            )
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"{cfg.key()}: loss {losses[-1]} in epoch {epoch} batch {b}")
            for scheduler in training.schedulers:
                scheduler.step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        epochs.append({"epoch": epoch, "loss": sum(losses) / len(losses), "wall_s": wall, "cpu_s": cpu})
        if counter:
            epochs[-1]["flip_events"] = counter.events - flips_before
        log(f"{cfg.key()} epoch {epoch}: loss {epochs[-1]['loss']:.4f}, {wall:.0f} s")
    row: dict[str, Any] = {
        "key": cfg.key(),
        "kind": "train",
        **dataclasses.asdict(cfg),
        "val_acc": accuracy(model, data.val_x, data.val_y, cfg.T),
        "test_acc": accuracy(model, data.test_x, data.test_y, cfg.T),
        "train_time_per_epoch_s": sorted(e["wall_s"] for e in epochs)[len(epochs) // 2],
        "cpu_time_per_epoch_s": sorted(e["cpu_s"] for e in epochs)[len(epochs) // 2],
        "peak_train_mem_bytes": peak,
        "eval_batch": EVAL_BATCH,
        "epochs_log": epochs,
        **model_sizes(model, cfg.method),
    }
    if counter:
        row.update(counter.summary(initial))
    return row
