r"""``BSO`` and ``TBSO``: ``torch.optim.Optimizer`` classes over :mod:`bso_snn.optim.functional`.

The classes validate, initialise state lazily, gather lists and call the pure functions.
State per parameter: ``momentum`` (like the parameter) and, for T-BSO, ``v`` (``time_steps``
scalars on the parameter's device). Nothing else is kept per element.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..sign import is_binary_tensor
from . import _fused
from . import functional as F

_NONFINITE = ("skip", "raise")

_CONVERT_HINT = (
    "Convert the model first with bso_snn.convert(model) and pass bso_snn.binary_parameters(model), "
    "or split it with bso_snn.optim.split_parameters(model) -> (binary, real) and give the real "
    "parameters to a float optimizer (bso_snn.optim.HybridOptimizer combines both)"
)


@dataclasses.dataclass(frozen=True)
class FlipStat:
    """Flips of one parameter in the last optimizer step.

    Attributes:
        index: position of the parameter in the optimizer (over all param groups, in order).
        numel: number of weights.
        flips: how many weights changed sign.
        rate: ``flips / numel``.
    """

    index: int
    numel: int
    flips: int
    rate: float


def _check_number(name: str, value: Any, low: float, high: float, *, high_open: bool, hint: str) -> None:
    # numbers.Real: Python and numpy numbers alike (np.float32(1e-6) is a valid gamma)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name}={value!r} must be a finite number in {interval}; {hint}")


class _BinaryOptimizer(torch.optim.Optimizer):
    """What BSO and T-BSO share: validation, lazy state, non-finite handling, flip statistics."""

    _name = "BSO"

    def __init__(
        self,
        params: Iterable,
        defaults: dict[str, Any],
        *,
        foreach: bool | None,
        fused: bool | None,
        nonfinite: str,
    ) -> None:
        if foreach is not None and not isinstance(foreach, bool):
            raise TypeError(
                f"foreach={foreach!r} must be None (the fastest available), True (multi-tensor) or "
                f"False (single-tensor reference)"
            )
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused={fused!r} must be None (the fastest available), True or False")
        if fused and foreach:
            raise ValueError(
                "fused=True and foreach=True cannot be used together (as in torch.optim): pick one "
                "implementation, or leave both None for the fastest available"
            )
        if nonfinite not in _NONFINITE:
            raise ValueError(
                f"nonfinite={nonfinite!r} must be 'skip' (skip that parameter's update and warn) or "
                f"'raise' (raise FloatingPointError before anything is updated)"
            )
        self.foreach = foreach
        self.fused = fused
        self.nonfinite = nonfinite
        self._hyperparameters = tuple(defaults)  # what a saved group of this type must hold
        self._flip_counts: dict[int, Tensor] = {}
        super().__init__(params, defaults)

    # ---------------------------------------------------------------- validation
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            self._check_binary(group["params"])
        except Exception:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_number(
            "gamma",
            group["gamma"],
            0.0,
            math.inf,
            high_open=True,
            hint="it is the flip threshold (paper: 5e-7)",
        )
        if group.get("weight_decay", 0) != 0:
            raise ValueError(
                f"weight_decay={group['weight_decay']!r} is not supported by {self._name}: binary weights "
                f"are exactly ±1 and have no latent real value to decay. Put weight decay on the float "
                f"optimizer of the real-valued parameters instead (e.g. SGD(real, weight_decay=...))"
            )
        if not isinstance(group["reset_momentum"], bool):
            raise TypeError(f"reset_momentum={group['reset_momentum']!r} must be a bool")

    def _check_binary(self, params: list[Tensor]) -> None:
        offset = sum(len(g["params"]) for g in self.param_groups[:-1])
        for i, p in enumerate(params, start=offset):
            if not p.is_floating_point():
                raise TypeError(
                    f"{self._name}: parameter {i} has dtype {p.dtype}; binary parameters must be a "
                    f"floating-point tensor holding ±1. {_CONVERT_HINT}"
                )
            with torch.no_grad():
                if not is_binary_tensor(p):
                    bad = p[(p != 1) & (p != -1)].flatten()[0].item()
                    raise ValueError(
                        f"{self._name}: parameter {i} (shape {tuple(p.shape)}) is not binary: it holds "
                        f"{bad!r}, but every value must be exactly -1 or +1. {self._name} only trains ±1 "
                        f"weights (e.g. model.parameters() of an unconverted model will not do). {_CONVERT_HINT}"
                    )
            if self.fused:
                self._check_fused(i, p)

    def _check_fused(self, i: int, p: Tensor) -> None:
        """``fused=True`` needs the kernel for the parameter's dtype and device (built here on first use)."""
        reason = _fused.unavailable_reason(p.device)
        if p.dtype not in _fused.FUSED_DTYPES:
            reason = f"the kernel handles {[str(d) for d in _fused.FUSED_DTYPES]}, not {p.dtype}"
        if reason is not None:
            raise RuntimeError(
                f"{self._name}(fused=True): parameter {i} ({p.dtype} on {p.device}) cannot use the fused "
                f"kernel: {reason}. Leave fused=None to use it wherever it is available, or pass fused=False"
            )

    def _implementation(self, params: list[Tensor]) -> dict[str, bool]:
        """``foreach`` / ``fused`` for the functional update, torch.optim's way: an explicit choice
        is kept; with both None the fused kernel is used wherever it is available (it equals the
        reference bit for bit), the multi-tensor path elsewhere (warned once per device when the
        kernel could not be built)."""
        default = self.fused is None and self.foreach is None
        if default:
            for device in {p.device for p in params if p.device.type in ("cpu", "cuda")}:
                _fused.warn_unavailable_once(device)
        return {"foreach": self.foreach is not False, "fused": bool(self.fused) or default}

    # ---------------------------------------------------------------- time index (T-BSO only)
    def reset_time_step(self) -> None:
        """Rewind the time index to 0 (a no-op for BSO, which has none).

        Present on both classes so ``bso_snn.reset(model, optimizer)`` accepts either.
        """

    # ---------------------------------------------------------------- step
    def _gather(self, group: dict[str, Any], offset: int) -> tuple[list[int], list[Tensor], list[Tensor]]:
        """Indices, parameters and gradients of the group's parameters that have a gradient."""
        indices, params, grads = [], [], []
        for i, p in enumerate(group["params"], start=offset):
            if p.grad is None or p.numel() == 0:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{self._name} does not support sparse gradients (parameter {i})")
            indices.append(i)
            params.append(p)
            grads.append(p.grad)
        return indices, params, grads

    def _finite(self, indices: list[int], probes: list[Tensor]) -> list[bool]:
        """Which probes are finite (one host sync per device); warn once or raise about the others."""
        finite = _host_values([probe.isfinite().all() for probe in probes])
        bad = [i for i, ok in zip(indices, finite, strict=True) if not ok]
        if bad:
            message = (
                f"{self._name}: non-finite gradient (NaN or inf) in parameter(s) {bad} (indices over all "
                f"param groups)"
            )
            if self.nonfinite == "raise":
                raise FloatingPointError(message + "; nothing was updated in this step")
            warnings.warn(
                message + "; their update was skipped and their weights and state kept", stacklevel=4
            )
        return finite

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update momenta and flip weights; returns ``closure()``'s loss when given."""
        self._check_sequence()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered, offset = [], 0
        for group in self.param_groups:
            self._check_group(group)  # hyperparameters may have been changed by a scheduler
            indices, params, grads = self._gather(group, offset)
            offset += len(group["params"])
            gathered.append((group, indices, params, grads, self._probe(params, grads)))
        finite = self._finite(
            [i for _, indices, _, _, _ in gathered for i in indices],
            [probe for *_, probes in gathered for probe in probes],
        )
        self._flip_counts = {}
        position = 0
        for group, indices, params, grads, probes in gathered:  # only now, after every check passed
            keep = finite[position : position + len(indices)]
            position += len(indices)
            params, grads, probes, indices = (
                _kept(items, keep) for items in (params, grads, probes, indices)
            )
            counts = self._update_in_state_dtype(group, params, grads, probes)
            self._flip_counts.update(zip(indices, counts, strict=True))
            self._advance(group)
        return loss

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and ``copy.deepcopy`` keep the settings (the base class keeps only
        defaults, state and param groups)."""
        keys = ("foreach", "fused", "nonfinite", "_hyperparameters")
        settings = {k: self.__dict__[k] for k in keys if k in self.__dict__}
        return {**super().__getstate__(), **settings, "_flip_counts": {}}

    # ---------------------------------------------------------------- state dtype and loading
    _state_keys: tuple[str, ...] = ("momentum",)

    def _update_in_state_dtype(self, group, params, grads, probes) -> list[Tensor]:
        """``_update``, with half-precision (bf16/fp16) parameters updated through float32
        copies (exact: the weights are ±1), so their state is float32: in bf16 the momentum's
        ``lerp`` by ``1 - beta = 1e-3`` rounds away (0.125 instead of 0.497 after 5,000 steps
        of G = 0.5)."""
        low = [i for i, p in enumerate(params) if F.second_moment_dtype(p) != p.dtype]
        if not low:
            return self._update(group, params, grads, probes)
        work, work_grads = list(params), list(grads)
        for i in low:
            dtype = F.second_moment_dtype(params[i])
            work[i], work_grads[i] = params[i].detach().to(dtype), grads[i].to(dtype)
            state = self.state[params[i]]
            for key in self._state_keys:
                if key in state and state[key].dtype != dtype:
                    state[key] = state[key].to(dtype)
            self.state[work[i]] = state  # the copy shares the parameter's state dict
        try:
            counts = self._update(group, work, work_grads, probes)
            for i in low:
                params[i].copy_(work[i])
        finally:
            for i in low:
                del self.state[work[i]]
        return counts

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, after checking everything first (a
        refused state leaves the optimizer unchanged): the optimizer type (the saved groups
        have this optimizer's hyperparameters), valid hyperparameters, the same ``time_steps``,
        and state tensors of the right shape holding finite values. State stays in its own
        dtype (float32 for half-precision parameters); the base class would cast it."""
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            p = params[index]
            for key in self._state_keys:
                if key in saved:
                    self.state[p][key] = saved[key].to(
                        device=p.device, dtype=F.second_moment_dtype(p), copy=True
                    )

    def _check_loadable(self, state_dict: Any) -> None:
        name = f"{self._name}.load_state_dict"
        if not (isinstance(state_dict, dict) and {"state", "param_groups"} <= state_dict.keys()):
            raise ValueError(
                f"{name} expects a dict from {self._name}.state_dict() (keys 'state', 'param_groups')"
            )
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: the saved state has {len(groups)} param group(s), this optimizer {len(self.param_groups)}"
            )
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups, strict=True)):
            missing = sorted(set(self._hyperparameters) - set(saved))
            if missing:
                keys = sorted(set(saved) - {"params"})
                raise ValueError(
                    f"{name}: saved param group {i} lacks {missing}, so it was saved by another optimizer "
                    f"type (its hyperparameters are {keys}); load a state dict saved by {self._name}"
                )
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(
                    f"{name}: saved param group {i} has {len(saved['params'])} parameters, this one "
                    f"{len(mine['params'])}; build the optimizer on the same parameters"
                )
            if "time_steps" in mine and saved["time_steps"] != mine["time_steps"]:
                raise ValueError(
                    f"{name}: the state was saved with time_steps={saved['time_steps']!r} but this {self._name} "
                    f"has time_steps={mine['time_steps']!r}; build it with time_steps={saved['time_steps']!r}"
                )
            self._check_group({**saved, "params": mine["params"]})
        params = [p for group in self.param_groups for p in group["params"]]
        expected = {"momentum": lambda p, g: tuple(p.shape), "v": lambda p, g: (g["time_steps"],)}
        owner = [g for g in groups for _ in g["params"]]
        for index, saved in state_dict["state"].items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(params):
                raise ValueError(
                    f"{name}: state index {index!r} is not one of this optimizer's 0..{len(params) - 1}"
                )
            unknown = sorted(set(saved) - set(self._state_keys))
            if unknown:
                raise ValueError(
                    f"{name}: parameter {index}'s state has {unknown}, which {self._name} does not keep "
                    f"(it keeps {list(self._state_keys)}); the state was saved by another optimizer type"
                )
            for key, value in saved.items():
                shape = expected[key](params[index], owner[index])
                if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                    got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"{name}: parameter {index}'s {key} is {got}, expected shape {shape}")
                if not bool(value.isfinite().all()):
                    raise ValueError(
                        f"{name}: parameter {index}'s {key} holds NaN or inf (that layer would never flip "
                        f"again); the saved state is damaged, nothing was loaded"
                    )

    def _probe(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Per gradient, a 0-dim tensor that is not finite when the gradient holds a NaN or inf:
        its sum (one cheap pass, no temporary; in float32 for half-precision gradients). A finite
        gradient whose sum overflows (elements near the dtype's maximum) is also treated as
        non-finite."""
        return [g.sum(dtype=F.second_moment_dtype(p)) for p, g in zip(params, grads, strict=True)]

    def _momenta(self, params: list[Tensor]) -> list[Tensor]:
        momenta = []
        for p in params:
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            momenta.append(state["momentum"])
        return momenta

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], probes: list[Tensor]
    ) -> list[Tensor]:
        raise NotImplementedError  # each subclass defines its update

    def _check_sequence(self) -> None:
        """Raise before anything is updated when the step does not fit the sequence (T-BSO)."""

    def _advance(self, group: dict[str, Any]) -> None:
        """Move the group's time index on after a step (T-BSO)."""

    # ---------------------------------------------------------------- statistics
    def flip_stats(self) -> list[FlipStat]:
        """Flips per parameter in the last step, for every parameter that was updated in it.

        The counts are kept on the parameters' devices during training; this call reads them
        (one host sync), so calling it only when logging keeps the training loop sync-free.
        """
        if not self._flip_counts:
            return []
        params = [p for group in self.param_groups for p in group["params"]]
        indices = list(self._flip_counts)
        counts = _host_values([self._flip_counts[i] for i in indices])
        return [
            FlipStat(index=i, numel=params[i].numel(), flips=c, rate=c / params[i].numel())
            for i, c in zip(indices, counts, strict=True)
        ]


class BSO(_BinaryOptimizer):
    r"""Binary Spiking Online optimizer (Liang et al., ICML 2025).

    For each binary weight tensor, with its gradient :math:`G`:

    .. math::
        M \leftarrow \beta M + (1-\beta) G, \qquad
        W \leftarrow -W \text{ where } W \odot M > \gamma \text{ (strictly), else } W,

    then :math:`M \leftarrow 0` where a weight flipped (``reset_momentum=True``, the default): the
    authors' BSO (hamingsi/BSO, ``modules/Bop.py``, ``reset=True`` branch). A tie
    :math:`W \odot M = \gamma` keeps its sign and its momentum (the authors' code would set the
    weight to 0 and halve its momentum).

    Args:
        params: binary (±1) parameters or param-group dicts (e.g.
            ``bso_snn.binary_parameters(model)``); anything else is refused.
        gamma: flip threshold ``>= 0`` (paper: 5e-7; 1e-6 for DVS data).
        beta: momentum decay in ``[0, 1)`` (paper: ``1 - 1e-3``).
        reset_momentum: set the momentum of a flipped weight to 0 (default True, as the authors'
            BSO; False keeps it, as in Bop).
        weight_decay: must be 0 (binary weights cannot decay); present to refuse it clearly.
        foreach: ``True``: the multi-tensor implementation; ``False``: the single-tensor reference.
        fused: ``True``: the fused kernel (one pass per tensor; C++ on CPU, CUDA C on GPUs, built
            on first use; refused at construction when it cannot be used). With ``foreach`` and
            ``fused`` both ``None`` (the default) the fused kernel is used wherever it is available
            and the multi-tensor path elsewhere; all three give bit-identical results.
        nonfinite: ``'skip'`` a parameter whose gradient has a NaN/inf (its weights and state are
            kept; a warning names it) or ``'raise'`` ``FloatingPointError`` before updating.

    ``flip_stats()`` gives the flips of the last step.
    """

    _name = "BSO"

    def __init__(
        self,
        params: Iterable,
        gamma: float = 5e-7,
        beta: float = 1 - 1e-3,
        *,
        reset_momentum: bool = True,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str = "skip",
    ) -> None:
        defaults = dict(gamma=gamma, beta=beta, reset_momentum=reset_momentum, weight_decay=weight_decay)
        super().__init__(params, defaults, foreach=foreach, fused=fused, nonfinite=nonfinite)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        _check_number(
            "beta", group["beta"], 0.0, 1.0, high_open=True, hint="it is the momentum decay (paper: 1-1e-3)"
        )

    def _update(self, group, params, grads, probes):
        return F.bso(
            params,
            grads,
            self._momenta(params),
            gamma=float(group["gamma"]),
            beta=float(group["beta"]),
            reset_momentum=group["reset_momentum"],
            **self._implementation(params),
        )


class TBSO(_BinaryOptimizer):
    r"""Temporal-aware BSO (Liang et al., ICML 2025).

    As :class:`BSO` with :math:`\beta_1`, and the momentum normalised per layer and time step:

    .. math::
        v[t] \leftarrow \beta_2 v[t] + (1-\beta_2)\,\mathrm{mean}(G^2), \qquad
        W \leftarrow -W \text{ where } \frac{W \odot M}{\sqrt{v[t]} + \epsilon} > \gamma,

    the authors' T-BSO (hamingsi/BSO, ``modules/Bop.py``, the ``reset=False`` branch their
    training loop calls; no momentum reset by default). A tie keeps its sign.

    ``v`` holds ``time_steps`` scalars per parameter tensor, on its device. The time index moves
    on by one after every ``step()``, from 0 up to ``time_steps - 1``; a further step in the same
    sequence raises ``RuntimeError`` (it would use a wrong ``v[t]``), so rewind the index at the
    start of each sequence: ``bso_snn.reset(model, optimizer)`` (or ``reset_time_step()``; the
    training helper ``bso_snn.online.train_step`` does it). ``set_time_step(t)`` sets the index
    the next step uses. With ``time_steps=1`` (one update per sequence, gradients accumulated
    over all time steps) every step is the sequence's only one and no rewind is needed.

    Args:
        params: binary (±1) parameters or param-group dicts.
        gamma: base flip threshold ``>= 0`` (paper: 5e-7).
        betas: ``(beta1, beta2)``, momentum and second-moment decays in ``[0, 1)``
            (paper: ``(1 - 1e-3, 1 - 1e-5)``).
        eps: ``> 0``, added to ``sqrt(v[t])`` (the authors' code: 1e-10).
        time_steps: ``T``, the number of time steps per sequence (required).
        reset_momentum, weight_decay, foreach, fused, nonfinite: as in :class:`BSO`. A parameter is
            skipped as non-finite when ``mean(G^2)`` is not finite (a NaN/inf gradient, or one
            whose square overflows), so ``v`` never becomes NaN or inf.
    """

    _name = "TBSO"
    _state_keys = ("momentum", "v")

    def __init__(
        self,
        params: Iterable,
        gamma: float = 5e-7,
        betas: tuple[float, float] = (1 - 1e-3, 1 - 1e-5),
        eps: float = 1e-10,
        *,
        time_steps: int,
        reset_momentum: bool = False,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str = "skip",
    ) -> None:
        defaults = dict(
            gamma=gamma,
            betas=betas,
            eps=eps,
            time_steps=time_steps,
            time_step=0,
            reset_momentum=reset_momentum,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults, foreach=foreach, fused=fused, nonfinite=nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups and "time_step" not in param_group:
            param_group = {**param_group, "time_step": self.param_groups[0]["time_step"]}  # stay aligned
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2) (paper: (1-1e-3, 1-1e-5))")
        _check_number(
            "betas[0]", betas[0], 0.0, 1.0, high_open=True, hint="it is the momentum decay (paper: 1-1e-3)"
        )
        _check_number(
            "betas[1]", betas[1], 0.0, 1.0, high_open=True, hint="it is the decay of v (paper: 1-1e-5)"
        )
        eps = group["eps"]
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < math.inf):
            raise ValueError(
                f"eps={eps!r} must be a finite number > 0: it keeps (W*M)/(sqrt(v[t]) + eps) finite "
                f"when v[t] = 0 (the authors' code: 1e-10)"
            )
        steps = group["time_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"time_steps={steps!r} must be a positive int: the number of time steps T per sequence "
                f"(use time_steps=1 when the optimizer steps once per sequence)"
            )
        t = group["time_step"]
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= steps:
            raise ValueError(
                f"time step {t!r} is out of range: it must be an int with 0 <= t < time_steps={steps} "
                f"(or t == time_steps after the last step of a sequence)"
            )

    def _check_sequence(self) -> None:
        for group in self.param_groups:
            if group["time_step"] == group["time_steps"]:
                steps = group["time_steps"]
                raise RuntimeError(
                    f"TBSO got more than time_steps={steps} step() calls in one sequence (time "
                    f"index {steps} does not exist; nothing was updated). Rewind the time index at "
                    f"the start of every sequence with bso_snn.reset(model, optimizer) or "
                    f"optimizer.reset_time_step(), or build TBSO with time_steps equal to the number "
                    f"of optimizer steps per sequence (time_steps=1 for one accumulated update per "
                    f"sequence)"
                )

    @property
    def time_step(self) -> int:
        """The time index the next ``step()`` uses (``time_steps`` once a sequence is complete:
        the next step then needs a rewind)."""
        return self.param_groups[0]["time_step"]

    def set_time_step(self, t: int) -> None:
        """Make the next ``step()`` use time index ``t`` (``0 <= t < time_steps``) in every group."""
        for group in self.param_groups:
            steps = group["time_steps"]
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < steps:
                raise ValueError(f"set_time_step({t!r}): t must be an int with 0 <= t < time_steps={steps}")
        for group in self.param_groups:
            group["time_step"] = t

    def reset_time_step(self) -> None:
        """Rewind the time index to 0 (start of a new sequence)."""
        self.set_time_step(0)

    def _second_moments(self, params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        moments = []
        for p in params:
            state = self.state[p]
            if "v" not in state:
                state["v"] = torch.zeros(group["time_steps"], dtype=F.second_moment_dtype(p), device=p.device)
            v = state["v"]
            if v.shape != (group["time_steps"],):
                raise ValueError(
                    f"TBSO: a parameter's v has {v.numel()} time steps but its group now has "
                    f"time_steps={group['time_steps']}; time_steps cannot change after training started"
                )
            moments.append(v)
        return moments

    def _probe(self, params, grads):
        """``mean(G^2)`` per gradient: finite exactly when ``v`` can be updated safely."""
        return [F.mean_square(g, F.second_moment_dtype(p)) for p, g in zip(params, grads, strict=True)]

    def _update(self, group, params, grads, probes):
        beta1, beta2 = group["betas"]
        return F.tbso(
            params,
            grads,
            self._momenta(params),
            self._second_moments(params, group),
            time_step=group["time_step"],
            gamma=float(group["gamma"]),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            mean_squares=probes,
            reset_momentum=group["reset_momentum"],
            **self._implementation(params),
        )

    def _advance(self, group: dict[str, Any]) -> None:
        """One step further in the sequence; with ``time_steps=1`` every step is index 0."""
        group["time_step"] = 0 if group["time_steps"] == 1 else group["time_step"] + 1


def _kept(items: list, keep: list[bool]) -> list:
    return [item for item, ok in zip(items, keep, strict=True) if ok]


def _host_values(tensors: list[Tensor]) -> list:
    """Python values of 0-dim tensors, with one host transfer per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    values: list = [None] * len(tensors)
    for index in by_device.values():
        for i, value in zip(index, torch.stack([tensors[i] for i in index]).tolist(), strict=True):
            values[i] = value
    return values


def named_flip_stats(optimizer: Any, model: nn.Module) -> dict[str, FlipStat]:
    """``optimizer.flip_stats()`` keyed by the parameters' names in ``model``."""
    names = {id(p): name for name, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {names.get(id(params[s.index]), f"param{s.index}"): s for s in optimizer.flip_stats()}
