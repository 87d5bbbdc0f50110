"""``bso-snn train``: train a small binary-weight SNN online and write a run folder.

Optimizers:

- ``tbso`` / ``bso``: the model is converted (``bso_snn.convert``: middle weight layers ±1, first and
  last float, neurons online) and trained with ``bso_snn.online.train_step``: per time step a loss
  ``CE(output[t], y) / T`` and a backward through that step only (presynaptic traces). The binary
  weights are updated by T-BSO / BSO, everything else (first/last layer, BatchNorm) by Adam, through
  one ``HybridOptimizer`` built by ``bso_snn.optim.make_optimizer``. ``--update realtime`` steps
  after every time step (the paper's choice), ``accumulated`` once per batch.
- ``fp``: the full-precision baseline. The same network, not converted (float32 weights), trained
  by Adam with backprop through time (loss averaged over the T steps, one backward per batch).

Inputs are direct-encoded: the image is the input current at each of the T time steps.

Resuming: ``RUN_DIR/checkpoint.pt`` (:mod:`bso_snn.cli.runstate`) is written at the end of every
epoch and every ``checkpoint_every`` batches; ``train(..., resume=payload)`` continues from it and
ends bit-identical to an uninterrupted run. ``stop()`` is polled after every batch: when it
returns True the checkpoint is written and :class:`RunInterrupted` is raised.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import checkpoint, convert, data, reset
from .._atomic import atomic_write, atomic_write_text
from ..bayes.models import normalisation_layers
from ..convert import ConversionReport, load_adapters
from ..online import evaluate, train_step
from ..summary import summary
from . import parallel, runstate
from .models import build_model, convert_filter

TEST_HOLD_ENV = "BSO_SNN_TEST_HOLD_AT_STEP"
"""Test hook: after batch number N (counted over the whole run, from 1) and its checkpoint, the
run waits (up to 60 s) until ``stop()`` is True, so a test can interrupt it at a known point."""
TEST_STOP_ENV = "BSO_SNN_TEST_STOP_AT_STEP"
"""Test hook: after batch number N the run stops as if a signal had come (for runs under torchrun,
whose signal handling is torchrun's own)."""


@dataclass
class TrainConfig:
    dataset: str = "digits"
    model: str = "mlp"
    ecosystem: str = "torch"
    optimizer: str = "tbso"
    T: int = 4
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    update: str = "realtime"
    lr: float = 1e-3
    gamma: float = 5e-7
    data_root: str | None = None
    width: int | None = None
    threads: int = 1
    log_every: int = 10  # flip-rate samples per epoch
    checkpoint_every: int | None = None  # batches between mid-epoch checkpoints (None: epoch ends only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (see bso_snn.cli.parallel)
    amp: bool = False  # forward under bfloat16 autocast
    workers: int = 0  # DataLoader worker processes
    sync_bn: bool = False  # several processes: SyncBatchNorm
    check_ranks: bool = False  # several processes: compare parameters and optimizer state after every step
    recipe: str | None = None  # "paper": optimizers, schedules and loss of bso_snn.recipes.paper


class RunInterrupted(Exception):
    """Training stopped on request after a batch; ``checkpoint.pt`` holds the state to resume from."""

    def __init__(self, out: Path, epoch: int, batch: int, step: int) -> None:
        super().__init__(f"interrupted after step {step} (epoch {epoch + 1}, batch {batch})")
        self.out, self.epoch, self.batch, self.step = out, epoch, batch, step


@dataclass
class FlipCounter:
    """Counts flips per binary layer after every optimizer step (a step post-hook on the BSO/T-BSO)."""

    names: dict[int, str]  # index in the optimizer's parameter list -> parameter name
    optimizer: torch.optim.Optimizer
    total: dict[str, int] = field(default_factory=dict)
    window: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    window_steps: int = 0

    def __post_init__(self) -> None:
        self.optimizer.register_step_post_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.steps += 1
        self.window_steps += 1
        for stat in self.optimizer.flip_stats():
            name = self.names[stat.index]
            self.total[name] = self.total.get(name, 0) + stat.flips
            self.window[name] = self.window.get(name, 0) + stat.flips

    def take_window(self, numel: dict[str, int]) -> dict[str, float]:
        """Mean fraction of each layer's weights flipped per optimizer step since the last call."""
        rates = {n: self.window.get(n, 0) / (numel[n] * max(self.window_steps, 1)) for n in numel}
        self.window, self.window_steps = {}, 0
        return rates

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("total", "window", "steps", "window_steps")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class Progress:
    """Where the run is, and what it has measured so far (all of it goes into ``checkpoint.pt``)."""

    epoch: int = 0  # epochs completed; the current epoch's index
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # batches completed in the whole run
    loss_sum: float = 0.0  # current epoch, summed over samples
    correct: int = 0
    seen: int = 0
    epoch_seconds: float = 0.0  # time spent in the current epoch before this process
    seconds: float = 0.0  # time spent in earlier processes (resumed runs)
    rss_before: float | None = None
    history: list[dict] = field(default_factory=list)
    flip_trace: list[dict] = field(default_factory=list)

    def end_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0
        self.loss_sum, self.correct, self.seen, self.epoch_seconds = 0.0, 0, 0, 0.0


@dataclass
class Setup:
    """Everything a run is built from (identical for a fresh and a resumed run)."""

    train_set: torch.utils.data.TensorDataset
    test_set: torch.utils.data.TensorDataset
    model: nn.Module
    report: ConversionReport | None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def model_sizes(model: nn.Module) -> dict[str, int]:
    """Model size from :func:`bso_snn.summary` (parameters and buffers such as BatchNorm statistics;
    neuron state is not saved): binary weights at 1 bit vs every floating-point tensor at float32."""
    table = summary(model)
    return {
        "binary_weights": table.binary_params,
        "float_values": table.params - table.binary_params + table.buffers,
        "bytes_1bit": table.bytes,
        "bytes_float32": table.float32_bytes,
    }


def time_major(x: torch.Tensor, T: int, temporal: bool) -> torch.Tensor:
    """``[T, N, ...]`` inputs of a batch: a sequence batch ``[N, T, ...]`` transposed (event data),
    or a static batch ``[N, ...]`` repeated at every step (direct encoding)."""
    return x.transpose(0, 1) if temporal else x.unsqueeze(0).expand(T, *x.shape)


def _accuracy(
    model: nn.Module,
    loader: DataLoader,
    T: int,
    temporal: bool = False,
    runtime: parallel.Runtime | None = None,
    forward: nn.Module | None = None,
) -> float:
    """Test accuracy of ``model`` (called through ``forward``, e.g. its autocast wrapper); with several
    processes each rank counts its shard and the counts are summed."""
    device = runtime.device if runtime is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = evaluate(forward or model, time_major(x, T, temporal))
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    if runtime is not None:
        correct, total = parallel.sum_over_ranks([correct, total], runtime)
    return correct / total


def _bptt_step(model, inputs, y, optimizer) -> tuple[float, torch.Tensor]:
    """Full-precision baseline: one backward through all T steps of ``inputs`` ``[T, N, ...]``."""
    reset(model)
    optimizer.zero_grad()
    outputs = torch.stack([model(x) for x in inputs])
    loss = sum(F.cross_entropy(out, y) for out in outputs) / len(inputs)
    loss.backward()
    optimizer.step()
    return loss.item(), outputs.detach().mean(0)


def build_setup(cfg: TrainConfig, log=print) -> Setup:
    """Load the data and build (and, for tbso/bso, convert) the model, seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    spec = data.CATALOG[cfg.dataset]
    train_set, test_set = data.load_dataset(cfg.dataset, cfg.data_root, time_steps=cfg.T)
    model = build_model(cfg.model, cfg.ecosystem, spec.input_shape, spec.num_classes, cfg.width)
    if cfg.optimizer == "fp":
        load_adapters(model)  # registers the library's neurons so bso_snn.reset can reset them
        return Setup(train_set, test_set, model, None)
    report = convert(model, filter_fn=convert_filter(cfg.model))
    log(str(report))
    return Setup(train_set, test_set, model, report)


def _make_optimizer(model: nn.Module, cfg: TrainConfig):
    """``(optimizer to step, binary optimizer or None, {index: name} of the binary parameters)``,
    built by :func:`bso_snn.optim.make_optimizer` as a user would."""
    from ..optim import make_optimizer

    if cfg.recipe == "paper":
        optimizer = paper_recipe(cfg).optimizer_for(model, update=cfg.update)
        return optimizer, optimizer.optimizers[0], _binary_names(model, optimizer.optimizers[0])

    def adam(params):
        return torch.optim.Adam(params, lr=cfg.lr)

    if cfg.optimizer == "fp":
        return make_optimizer(model, "fp", float_optimizer=adam), None, {}
    time_steps = (cfg.T if cfg.update == "realtime" else 1) if cfg.optimizer == "tbso" else None
    optimizer = make_optimizer(
        model, cfg.optimizer, time_steps=time_steps, float_optimizer=adam, gamma=cfg.gamma
    )
    bin_opt = optimizer.optimizers[0]
    return optimizer, bin_opt, _binary_names(model, bin_opt)


def _binary_names(model: nn.Module, bin_opt) -> dict[int, str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {i: names[id(p)] for i, p in enumerate(bin_opt.param_groups[0]["params"])}


def paper_recipe(cfg: TrainConfig):
    """``bso_snn.recipes.paper`` for the run's dataset (DVS data: ``'dvs'``, CIFAR-100:
    ``'cifar100'``, anything else the CIFAR-10 recipe), optimizer and ``T``."""
    from ..recipes import paper

    name = "dvs" if "dvs" in cfg.dataset else ("cifar100" if cfg.dataset == "cifar100" else "cifar10")
    return paper(name, optimizer=cfg.optimizer, time_steps=cfg.T)


def _hold_for_test(step: int, stop: Callable[[], bool]) -> None:
    if os.environ.get(TEST_HOLD_ENV) != str(step):
        return
    print(f"bso-snn: test hold after step {step}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60.0
    while not stop() and time.monotonic() < deadline:
        time.sleep(0.01)


def train(
    cfg: TrainConfig,
    out: Path,
    log=print,
    *,
    resume: dict | None = None,
    stop: Callable[[], bool] = lambda: False,
    runtime: parallel.Runtime | None = None,
) -> dict:
    """Train per ``cfg``; writes ``checkpoint.pt`` (every epoch end, every ``checkpoint_every``
    batches), then ``metrics.json``, ``loss_acc.png``, ``flip_rate.png`` and the model
    (``model.bsosnn.pt``, or ``model.pt`` for fp) to ``out``, each atomically.

    ``resume``: a payload from :func:`bso_snn.cli.runstate.load_run` to continue from.
    ``runtime``: device and processes (default: ``cfg.device``, one process). With several
    processes only rank 0 logs and writes files; the others return ``{}``.
    """
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    if runtime is None:
        runtime = parallel.Runtime(parallel.resolve_device(cfg.device), amp=cfg.amp)
    if not runtime.is_main:
        log = _silent
    setup = build_setup(cfg, log)
    spec = data.CATALOG[cfg.dataset]
    model = setup.model
    if cfg.sync_bn and runtime.distributed:
        model = setup.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(runtime.device)
    if runtime.distributed:
        torch.manual_seed(cfg.seed + runtime.rank)  # each rank its own augmentation draws
    optimizer, bin_opt, index_names = _make_optimizer(model, cfg)
    forward = parallel.forward_model(model, runtime, train=True)
    eval_forward = parallel.forward_model(model, runtime, train=False)
    rank_check = None
    if cfg.check_ranks and runtime.distributed:
        rank_check = parallel.RankCheck(model, optimizer, optimizer, runtime)
    if cfg.recipe == "paper":  # cosine of the float lr to 0, and the decay of gamma and 1 - beta
        schedulers = paper_recipe(cfg).schedulers(optimizer, cfg.epochs)
        loss_fn = paper_recipe(cfg).step_loss
    else:
        schedulers = {"lr": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)}
        loss_fn = F.cross_entropy
    numel = {n: p.numel() for n, p in model.named_parameters() if n in index_names.values()}
    counter = FlipCounter(index_names, bin_opt) if bin_opt is not None else None
    # DistributedSampler's order, and a position a resumed run can start from (also mid-epoch)
    order = runstate.EpochOrder(len(setup.train_set), cfg.seed, runtime.rank, runtime.world_size)
    pin = runtime.device.type == "cuda"
    train_loader = DataLoader(
        setup.train_set,
        batch_size=cfg.batch_size,
        sampler=order,
        num_workers=cfg.workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(cfg.seed),  # the loader's own draws leave torch's RNG alone
    )
    test_loader = DataLoader(
        parallel.test_shard(setup.test_set, runtime), batch_size=512, num_workers=cfg.workers, pin_memory=pin
    )
    batches = math.ceil(len(order) / cfg.batch_size)
    progress = Progress()
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        for key, scheduler in schedulers.items():
            scheduler.load_state_dict(resume["schedulers"][key])
        if counter is not None:
            counter.load_state_dict(resume["progress"]["flip_counter"])
        progress = Progress(**resume["progress"]["loop"])
        ranks = resume.get("rng_ranks") or [resume["rng"]]
        runstate.set_rng_state(ranks[runtime.rank] if runtime.rank < len(ranks) else resume["rng"])
    if progress.rss_before is None:
        progress.rss_before = peak_rss_mb()
    log_interval = max(1, batches // cfg.log_every)

    def save_checkpoint() -> None:
        rng = parallel.gather(runstate.rng_state(), runtime)  # every rank's generators (a collective)
        if not runtime.is_main:
            return
        runstate.save_run(
            out / runstate.CHECKPOINT,
            {
                "config": dataclasses.asdict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedulers": {key: scheduler.state_dict() for key, scheduler in schedulers.items()},
                "rng": rng[0],
                "rng_ranks": rng,
                "data_order": {"epoch": progress.epoch, "batch": progress.batch},
                "epoch": progress.epoch,
                "step": progress.step,
                "progress": {
                    "loop": dataclasses.asdict(
                        dataclasses.replace(
                            progress,
                            seconds=progress.seconds + time.perf_counter() - t_start,
                            epoch_seconds=progress.epoch_seconds + time.perf_counter() - t_epoch,
                        )
                    ),
                    "flip_counter": counter.state_dict() if counter else None,
                },
            },
        )

    def interrupt_if_asked(saved: bool) -> None:
        _hold_for_test(progress.step, stop)
        asked = stop() or os.environ.get(TEST_STOP_ENV) == str(progress.step)
        if parallel.any_rank(asked, runtime):
            if not saved:
                save_checkpoint()
            raise RunInterrupted(out, progress.epoch, progress.batch, progress.step)

    model.train()
    while progress.epoch < cfg.epochs:
        epoch = progress.epoch
        t_epoch = time.perf_counter()
        order.set_position(epoch, progress.batch * cfg.batch_size)
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            initial=progress.batch,
            total=batches,
            file=sys.stderr,
            mininterval=0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line every 10 s
            disable=not runtime.is_main,
        )
        for x, y in bar:
            x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
            inputs = time_major(x, cfg.T, spec.temporal)
            if cfg.optimizer == "fp":
                loss, output = _bptt_step(forward, inputs, y, optimizer)
            else:
                result = train_step(forward, inputs, y, loss_fn, optimizer, update=cfg.update)
                loss, output = result.loss, result.output
            progress.loss_sum += loss * len(y)
            progress.correct += (output.argmax(1) == y).sum().item()
            progress.seen += len(y)
            progress.batch += 1
            progress.step += 1
            i = progress.batch
            bar.set_postfix(
                loss=f"{progress.loss_sum / progress.seen:.3f}", acc=f"{progress.correct / progress.seen:.3f}"
            )
            if counter is not None and (i % log_interval == 0 or i == batches):
                rates = counter.take_window(numel)
                progress.flip_trace.append({"epoch": epoch + i / batches, "rate": rates})
            if i < batches:  # the epoch's last batch is checkpointed with the epoch's end below
                due = bool(cfg.checkpoint_every) and progress.step % cfg.checkpoint_every == 0
                if due:
                    save_checkpoint()
                interrupt_if_asked(saved=due)
        bar.close()
        for scheduler in schedulers.values():
            scheduler.step()
        test_acc = _accuracy(model, test_loader, cfg.T, spec.temporal, runtime, eval_forward)
        seconds = progress.epoch_seconds + time.perf_counter() - t_epoch
        progress.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": progress.loss_sum / progress.seen,  # online: outputs while the weights change
                "train_acc": progress.correct / progress.seen,
                "test_acc": test_acc,
                "seconds": seconds,
                "flips": dict(counter.total) if counter else {},
            }
        )
        log(
            f"epoch {epoch + 1}: train loss {progress.loss_sum / progress.seen:.4f}  train acc "
            f"{progress.correct / progress.seen:.4f} (during updates)  test acc {test_acc:.4f}  ({seconds:.0f} s)"
        )
        progress.end_epoch()
        t_epoch = time.perf_counter()
        save_checkpoint()
        interrupt_if_asked(saved=True)
    train_seconds = progress.seconds + time.perf_counter() - t_start
    if not runtime.is_main:
        return {}
    return _write_results(cfg, out, setup, counter, numel, progress, train_seconds, runtime, rank_check)


def _silent(*_args, **_kwargs) -> None:
    """The log of ranks other than 0."""


def _write_results(cfg, out, setup, counter, numel, progress, train_seconds, runtime, rank_check) -> dict:
    """The model file, ``metrics.json`` and the two plots, each written atomically."""
    from .plots import plot_flip_rate, plot_loss_acc

    model, report = setup.model, setup.report
    ckpt = out / ("model.bsosnn.pt" if report is not None else "model.pt")
    if report is not None:
        checkpoint.save_packed(model, ckpt)
    else:
        state = model.state_dict()
        atomic_write(ckpt, lambda f: torch.save(state, f))
    history = progress.history
    metrics = {
        "config": cfg.__dict__,
        "test_acc": history[-1]["test_acc"],
        "epochs": history,
        "seconds_total": train_seconds,
        "device": str(runtime.device),
        "world_size": runtime.world_size,
        "peak_cuda_mib": (
            torch.cuda.max_memory_allocated(runtime.device) / 2**20 if runtime.device.type == "cuda" else None
        ),
        "amp": f"autocast {parallel.AMP_DTYPE}".replace("torch.", "") if runtime.amp else None,
        "rank_check": {"steps_verified": rank_check.steps} if rank_check else None,
        "peak_rss_mb": {"before_training": progress.rss_before, "end": peak_rss_mb()},
        "model_size": model_sizes(model),
        "normalisation_layers": normalisation_layers(model),  # their count (BatchNorm, LayerNorm, ...)
        "checkpoint": {"file": ckpt.name, "bytes": ckpt.stat().st_size, "bit_packed": report is not None},
        "binary_layers": report.converted if report else [],
        "float_layers": sorted(report.skipped) if report else "all (full-precision baseline)",
        "flips_per_layer": dict(counter.total) if counter else {},
        "weights_per_layer": numel,
        "optimizer_steps": counter.steps if counter else None,
        "flip_rate_trace": progress.flip_trace,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            **_ecosystem_version(cfg),
        },
    }
    for name, plot, series in (
        ("loss_acc.png", plot_loss_acc, history),
        ("flip_rate.png", plot_flip_rate, progress.flip_trace),
    ):
        image = io.BytesIO()
        plot(series, image, title=_title(cfg))
        atomic_write(out / name, lambda f, image=image: f.write(image.getvalue()))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # last: marks the run done
    return metrics


def _title(cfg: TrainConfig) -> str:
    return f"{cfg.optimizer} | {cfg.dataset} {cfg.model} ({cfg.ecosystem}) | T={cfg.T}"


def _ecosystem_version(cfg: TrainConfig) -> dict[str, str]:
    if cfg.ecosystem == "torch":
        return {}
    module = __import__(cfg.ecosystem)
    return {cfg.ecosystem: getattr(module, "__version__", "unknown")}
