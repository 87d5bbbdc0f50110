r"""The per-batch online loop, for users who do not want to write it.

For one batch of ``T`` time steps, :func:`train_step` computes per step

.. math:: L[t] = \frac{1}{T}\,\ell(\text{model}(x[t]), y), \qquad \text{backward}(L[t])

(the per-step loss is scaled by ``1/T`` so that the summed gradient is that of the
time-averaged loss, as in OTTT / NDOT / BSO) and updates the parameters either after every
step (``update='realtime'``, the BSO paper's default) or once after the last step
(``update='accumulated'``). Writing the loop by hand is just as easy; ``docs/online.md``
shows both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from .. import registry
from ..layers import is_binary_layer
from .reset import reset

_UPDATES = ("realtime", "accumulated")
_STEP_MODES = ("s", "m", "sequence")
_OUTPUT_LAYOUTS = ("tn", "n")


class Optimizer(Protocol):
    """What the loop needs: a ``torch.optim.Optimizer``, or ``bso_snn.optim.HybridOptimizer``."""

    def step(self) -> object: ...

    def zero_grad(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What :func:`train_step` returns.

    Attributes:
        loss: the time-averaged loss ``mean_t loss_fn(output[t], target)`` (a float).
        output: the time-averaged model output ``mean_t output[t]``, detached.
    """

    loss: float
    output: torch.Tensor


def _check(inputs: torch.Tensor, update: str | None, step_mode: str, output_layout: str | None) -> None:
    if update is not None and update not in _UPDATES:
        raise ValueError(f"update={update!r} must be one of {_UPDATES}")
    if step_mode not in _STEP_MODES:
        raise ValueError(
            f"step_mode={step_mode!r} must be 's' (model takes [N, ...]), 'm' ([T, N, ...], fed one step "
            f"at a time) or 'sequence' ([T, N, ...], fed all T steps at once)"
        )
    if step_mode == "sequence" and update == "realtime":
        raise ValueError(
            "step_mode='sequence' runs one forward over all T steps, which gives one gradient: pass "
            "update='accumulated' (or step_mode='m' to update after every step)"
        )
    if output_layout is not None and output_layout not in _OUTPUT_LAYOUTS:
        raise ValueError(
            f"output_layout={output_layout!r} must be 'tn' (the model returns [T, N, ...]), 'n' "
            f"([N, ...], time already reduced inside the model) or None (told from the shape)"
        )
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a tensor [T, N, ...] (time first), got {shape}")
    if inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} holds no {'time step' if inputs.shape[0] == 0 else 'sample'}: "
            f"[T, N, ...] needs T >= 1 and N >= 1 (skip empty batches, e.g. DataLoader(drop_last=True))"
        )


def _start_sequence(model: nn.Module, optimizer: Optimizer) -> None:
    """Reset the model, and the optimizer's time index if it has one (T-BSO)."""
    reset(model)
    rewind = getattr(optimizer, "reset_time_step", None)
    if rewind is not None:
        rewind()


OutputFn = Callable[[Any], torch.Tensor]


def _model_output(model: nn.Module, x: torch.Tensor, output_fn: OutputFn | None) -> torch.Tensor:
    out = model(x)
    if output_fn is not None:
        out = output_fn(out)
    elif not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model returned {type(out).__name__}, not a tensor; pass output_fn to pick the tensor "
            f"to use, e.g. output_fn=lambda out: out[1] for snnTorch's (spk, mem)"
        )
    return out


def _time_first(out: torch.Tensor, steps: int, batch: int, output_layout: str | None) -> bool:
    """Whether a multi-step model's output ``out`` for ``steps`` time steps of ``batch`` samples is
    ``[steps, batch, ...]`` (time first) or ``[batch, ...]`` (time reduced inside the model)."""
    if output_layout is not None:
        expected = (steps, batch) if output_layout == "tn" else (batch,)
        if tuple(out.shape[: len(expected)]) != expected:
            raise ValueError(
                f"output_layout={output_layout!r} but the model returned shape {tuple(out.shape)} for "
                f"{steps} time step(s) of {batch} sample(s); expected {expected + ('...',)}"
            )
        return output_layout == "tn"
    time_first = out.dim() >= 2 and tuple(out.shape[:2]) == (steps, batch)
    reduced = out.dim() >= 1 and out.shape[0] == batch
    if time_first and reduced:
        raise ValueError(
            f"the model returned shape {tuple(out.shape)} for {steps} time step(s) of {batch} sample(s): "
            f"that is [T, N, ...] or [N, ...] alike; pass output_layout='tn' (time first) or 'n' (time "
            f"reduced inside the model)"
        )
    if not (time_first or reduced):
        raise ValueError(
            f"the model returned shape {tuple(out.shape)} for {steps} time step(s) of {batch} sample(s): "
            f"neither [T, N, ...] = {(steps, batch)} nor [N, ...] = ({batch},) leading; pass output_fn "
            f"to pick the output tensor"
        )
    return time_first


def _forward_step(
    model: nn.Module,
    inputs: torch.Tensor,
    t: int,
    step_mode: str,
    output_fn: OutputFn | None,
    output_layout: str | None,
) -> torch.Tensor:
    """The model's output ``[N, ...]`` for time step ``t``."""
    if step_mode == "s":
        return _model_output(model, inputs[t], output_fn)
    out = _model_output(model, inputs[t : t + 1], output_fn)
    return out[0] if _time_first(out, 1, inputs.shape[1], output_layout) else out


def _forward_sequence(
    model: nn.Module, inputs: torch.Tensor, output_fn: OutputFn | None, output_layout: str | None
) -> tuple[torch.Tensor, bool]:
    """The model's output over all of ``inputs`` in one call, and whether it is time first
    (``[T, N, ...]``) rather than ``[N, ...]`` (time reduced inside the model)."""
    out = _model_output(model, inputs, output_fn)
    return out, _time_first(out, inputs.shape[0], inputs.shape[1], output_layout)


def train_step(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: Optimizer,
    *,
    update: str = "realtime",
    step_mode: str = "s",
    output_fn: OutputFn | None = None,
    output_layout: str | None = None,
) -> StepResult:
    """Train ``model`` on one batch of ``T`` time steps, online.

    Args:
        model: a converted model (``bso_snn.convert``) in training mode.
        inputs: ``[T, N, ...]``, time first.
        target: what ``loss_fn`` compares each step's output with.
        loss_fn: ``loss_fn(output_t, target) -> scalar``; each step's loss is divided by ``T``.
        optimizer: a ``torch.optim.Optimizer`` (e.g. ``bso_snn.optim.TBSO``) or a
            ``bso_snn.optim.HybridOptimizer``. Its ``reset_time_step()`` is called at the start when it has
            one (plain torch optimizers have none and are used as they are).
        update: ``'realtime'``: ``optimizer.step()`` after every time step's backward (the BSO
            paper's default); ``'accumulated'``: gradients of all ``T`` steps are summed and
            one ``optimizer.step()`` is taken at the end.
        step_mode: ``'s'`` if the model takes one step ``[N, ...]`` per call, ``'m'`` if it
            takes ``[T, N, ...]`` (it is then fed ``inputs[t:t+1]`` per step, so memory stays
            constant in ``T``), ``'sequence'`` for a model that needs all ``T`` steps in one call
            (e.g. temporal attention): one forward over ``inputs``, one backward of the
            time-averaged loss (the converted layers still take their weight gradient from
            their traces, summed over ``t``), one ``optimizer.step()``; needs
            ``update='accumulated'``; memory grows with ``T``.
        output_fn: picks the tensor to use from what the model returns (e.g.
            ``lambda out: out[1]`` for snnTorch's ``(spk, mem)``); without it the model must
            return a tensor.
        output_layout: for ``step_mode='m'`` / ``'sequence'``: ``'tn'`` when the model returns
            ``[T, N, ...]``, ``'n'`` when it returns ``[N, ...]`` (time reduced inside, e.g.
            ``x.mean(0)``; the loss is then taken on that output). ``None`` (default) tells it
            from the shape and raises when the shape fits both or neither.

    The model's neuron state, traces and the optimizer's time index are reset at the start,
    and gradients are zeroed at the start (and after each real-time step).
    """
    _check(inputs, update, step_mode, output_layout)
    if not model.training:
        raise ValueError(
            f"train_step: the model ({type(model).__name__}) is in eval mode, where binary layers keep no "
            f"trace and BatchNorm uses its running statistics; call model.train() first (use "
            f"bso_snn.evaluate for inference)"
        )
    steps = inputs.shape[0]
    _start_sequence(model, optimizer)
    optimizer.zero_grad()
    if step_mode == "sequence":
        return _train_sequence(model, inputs, target, loss_fn, optimizer, output_fn, output_layout)
    losses = []
    output_sum = None
    for t in range(steps):
        out = _forward_step(model, inputs, t, step_mode, output_fn, output_layout)
        loss = loss_fn(out, target)
        (loss / steps).backward()
        if update == "realtime":
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.detach())  # kept on the device: no host sync inside the loop
        output_sum = out.detach() if output_sum is None else output_sum + out.detach()
    if update == "accumulated":
        optimizer.step()
    total_loss = torch.stack(losses).double().sum().item()  # the batch's one host sync
    return StepResult(loss=total_loss / steps, output=output_sum / steps)


def _train_sequence(model, inputs, target, loss_fn, optimizer, output_fn, output_layout) -> StepResult:
    """``train_step(step_mode='sequence')``: one forward, one backward, one update."""
    out, time_first = _forward_sequence(model, inputs, output_fn, output_layout)
    if time_first:
        loss = torch.stack([loss_fn(out[t], target) for t in range(out.shape[0])]).mean()
        output = out.detach().mean(0)
    else:
        loss, output = loss_fn(out, target), out.detach()
    loss.backward()
    optimizer.step()
    return StepResult(loss=loss.item(), output=output)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    step_mode: str = "s",
    output_fn: OutputFn | None = None,
    output_layout: str | None = None,
) -> torch.Tensor:
    """The time-averaged output ``mean_t model(x[t])`` over ``inputs`` ``[T, N, ...]``.

    Runs under ``torch.no_grad()`` (layers do not trace) after resetting the model; the
    model's train/eval mode is left as it is. ``step_mode``, ``output_fn`` and ``output_layout``
    as in :func:`train_step` (``'sequence'``: one call on all of ``inputs``).
    """
    _check(inputs, None, step_mode, output_layout)
    reset(model)
    if step_mode == "sequence":
        out, time_first = _forward_sequence(model, inputs, output_fn, output_layout)
        return out.mean(0) if time_first else out
    steps = inputs.shape[0]
    outputs = [_forward_step(model, inputs, t, step_mode, output_fn, output_layout) for t in range(steps)]
    return torch.stack(outputs).mean(0)


def set_step_mode(model: nn.Module, step_mode: str) -> None:
    """Set ``step_mode`` (``'s'`` or ``'m'``) on every converted layer and every neuron that has
    one, nested anywhere in ``model``.

    Converted layers get ``bso_step_mode`` (or SpikingJelly's own ``step_mode`` when they have
    it); registered neurons with a ``step_mode`` attribute (``bso_snn.neurons.LIF``,
    SpikingJelly neurons) get ``step_mode``. Float layers are not touched: make sure they accept
    ``[T, N, ...]`` themselves (``nn.Linear`` does; ``nn.Conv2d`` does not).
    """
    if step_mode not in ("s", "m"):
        raise ValueError(f"step_mode={step_mode!r} must be 's' or 'm'")
    for module in model.modules():
        if is_binary_layer(module):
            if getattr(module, "step_mode", None) in ("s", "m"):
                module.step_mode = step_mode
            module.bso_step_mode = step_mode
        elif registry.registered_neuron_support(module) is not None and hasattr(module, "step_mode"):
            module.step_mode = step_mode
