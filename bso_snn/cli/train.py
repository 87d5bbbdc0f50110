"""``bso-snn train``: train a small binary-weight SNN online and write a run folder.

Optimizers:

- ``tbso`` / ``bso``: the model is converted (``bso_snn.convert``: middle weight layers ±1, first and
  last float, neurons online) and trained with ``bso_snn.online.train_step``: per time step a loss
  ``CE(output[t], y) / T`` and a backward through that step only (presynaptic traces). The binary
  weights are updated by T-BSO / BSO, everything else (first/last layer, BatchNorm) by Adam, through
  one ``HybridOptimizer``. ``--update realtime`` steps after every time step (the paper's choice),
  ``accumulated`` once per batch.
- ``fp``: the full-precision baseline. The same network, not converted (float32 weights), trained
  by Adam with backprop through time (loss averaged over the T steps, one backward per batch).

Inputs are direct-encoded: the image is the input current at each of the T time steps.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import checkpoint, convert, data, reset
from ..convert import load_adapters
from ..online import evaluate, train_step
from ..summary import summary
from .models import build_model, convert_filter


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


def _accuracy(model: nn.Module, loader: DataLoader, T: int) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = evaluate(model, x.unsqueeze(0).expand(T, *x.shape))
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    return correct / total


def _bptt_step(model, x, y, T, optimizer) -> tuple[float, torch.Tensor]:
    """Full-precision baseline: one backward through all T steps."""
    reset(model)
    optimizer.zero_grad()
    outputs = torch.stack([model(x) for _ in range(T)])
    loss = sum(F.cross_entropy(out, y) for out in outputs) / T
    loss.backward()
    optimizer.step()
    return loss.item(), outputs.detach().mean(0)


def _make_optimizer(model: nn.Module, cfg: TrainConfig):
    """``(optimizer to step, binary optimizer or None, {index: name} of the binary parameters)``."""
    from ..optim import BSO, TBSO, HybridOptimizer, split_parameters

    if cfg.optimizer == "fp":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr), None, {}
    binary, real = split_parameters(model)
    adam = torch.optim.Adam(real, lr=cfg.lr)
    steps_per_sequence = cfg.T if cfg.update == "realtime" else 1
    if cfg.optimizer == "tbso":
        bin_opt = TBSO(binary, gamma=cfg.gamma, time_steps=steps_per_sequence)
    else:
        bin_opt = BSO(binary, gamma=cfg.gamma)
    names = {id(p): n for n, p in model.named_parameters()}
    index_names = {i: names[id(p)] for i, p in enumerate(binary)}
    return HybridOptimizer(bin_opt, adam), bin_opt, index_names


def train(cfg: TrainConfig, out: Path, log=print) -> dict:
    """Train per ``cfg``; writes ``metrics.json``, ``loss_acc.png``, ``flip_rate.png``, ``model.bsosnn.pt`` to ``out``."""
    from tqdm import tqdm

    from .plots import plot_flip_rate, plot_loss_acc

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    train_set, test_set = data.load_dataset(cfg.dataset, cfg.data_root)
    x0, _ = train_set[0]
    num_classes = int(train_set.tensors[1].max()) + 1
    model = build_model(cfg.model, cfg.ecosystem, tuple(x0.shape), num_classes, cfg.width)
    if cfg.optimizer == "fp":
        load_adapters(model)  # registers the library's neurons so bso_snn.reset can reset them
        report = None
    else:
        report = convert(model, filter_fn=convert_filter(cfg.model))
        log(str(report))
    optimizer, bin_opt, index_names = _make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer if cfg.optimizer == "fp" else optimizer.optimizers[1], T_max=cfg.epochs
    )
    numel = {n: p.numel() for n, p in model.named_parameters() if n in index_names.values()}
    counter = FlipCounter(index_names, bin_opt) if bin_opt is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    test_loader = DataLoader(test_set, batch_size=512)
    rss_before = peak_rss_mb()
    history: list[dict] = []
    flip_trace: list[dict] = []
    log_interval = max(1, len(train_loader) // cfg.log_every)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        loss_sum = correct = seen = 0
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            file=sys.stderr,
            mininterval=0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line every 10 s
        )
        for i, (x, y) in enumerate(bar, 1):
            inputs = x.unsqueeze(0).expand(cfg.T, *x.shape)
            if cfg.optimizer == "fp":
                loss, output = _bptt_step(model, x, y, cfg.T, optimizer)
            else:
                result = train_step(model, inputs, y, F.cross_entropy, optimizer, update=cfg.update)
                loss, output = result.loss, result.output
            loss_sum += loss * len(y)
            correct += (output.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            if counter is not None and (i % log_interval == 0 or i == len(train_loader)):
                rates = counter.take_window(numel)
                flip_trace.append({"epoch": epoch - 1 + i / len(train_loader), "rate": rates})
        scheduler.step()
        test_acc = _accuracy(model, test_loader, cfg.T)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,  # online: outputs while the weights are being updated
                "train_acc": correct / seen,
                "test_acc": test_acc,
                "seconds": time.perf_counter() - t_epoch,
                "flips": dict(counter.total) if counter else {},
            }
        )
        log(
            f"epoch {epoch}: train loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f} (during updates)  "
            f"test acc {test_acc:.4f}  ({time.perf_counter() - t_epoch:.0f} s)"
        )
    train_seconds = time.perf_counter() - t_start
    sizes = model_sizes(model)
    ckpt = out / ("model.bsosnn.pt" if report is not None else "model.pt")
    if report is not None:
        checkpoint.save_packed(model, ckpt)
    else:
        torch.save(model.state_dict(), ckpt)
    metrics = {
        "config": cfg.__dict__,
        "test_acc": history[-1]["test_acc"],
        "epochs": history,
        "seconds_total": train_seconds,
        "peak_rss_mb": {"before_training": rss_before, "end": peak_rss_mb()},
        "model_size": sizes,
        "checkpoint": {"file": ckpt.name, "bytes": ckpt.stat().st_size, "bit_packed": report is not None},
        "binary_layers": report.converted if report else [],
        "float_layers": sorted(report.skipped) if report else "all (full-precision baseline)",
        "flips_per_layer": dict(counter.total) if counter else {},
        "weights_per_layer": numel,
        "optimizer_steps": counter.steps if counter else None,
        "flip_rate_trace": flip_trace,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            **_ecosystem_version(cfg),
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_loss_acc(history, out / "loss_acc.png", title=_title(cfg))
    plot_flip_rate(flip_trace, out / "flip_rate.png", title=_title(cfg))
    return metrics


def _title(cfg: TrainConfig) -> str:
    return f"{cfg.optimizer} | {cfg.dataset} {cfg.model} ({cfg.ecosystem}) | T={cfg.T}"


def _ecosystem_version(cfg: TrainConfig) -> dict[str, str]:
    if cfg.ecosystem == "torch":
        return {}
    module = __import__(cfg.ecosystem)
    return {cfg.ecosystem: getattr(module, "__version__", "unknown")}
