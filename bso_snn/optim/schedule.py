"""``ParamScheduler``: ``LambdaLR`` for any param-group hyperparameter (``gamma``, ``betas``, ``lr``).

``torch.optim.lr_scheduler`` schedulers only touch ``'lr'``, which BSO and T-BSO do not have.
The BSO paper's convergence result decays ``gamma`` and the momentum factors; this scheduler
sets ``group[key] = initial * fn(epoch)`` in every param group that has ``key``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Factor = float | tuple[float, ...]


class ParamScheduler:
    """Set ``group[key] = group['initial_<key>'] * fn(epoch)`` on each ``step()``.

    Works like ``torch.optim.lr_scheduler.LambdaLR`` on any key: construction applies
    ``fn(0)``, every ``step()`` moves to the next epoch (or step, as you call it). Groups that lack
    ``key`` are left alone, so on a :class:`~bso_snn.optim.HybridOptimizer` ``key='gamma'``
    schedules the binary groups and ``key='lr'`` the float ones. For a tuple hyperparameter
    (``betas``) ``fn`` may return one factor for every element or a tuple of factors.

    With ``complement=True`` the scheduled quantity is ``1 - value`` (a decay's "rate", as the BSO
    authors write their momentum factors): ``group[key] = 1 - (1 - initial) * fn(epoch)``, so
    ``ParamScheduler(opt, "betas", lambda e: 0.1 ** (e // 50), complement=True)`` multiplies
    ``1 - beta1`` and ``1 - beta2`` by 0.1 every 50 epochs.

    Args:
        optimizer: anything with ``param_groups`` (BSO, TBSO, HybridOptimizer, torch optimizers).
        key: the hyperparameter to schedule.
        fn: ``epoch -> factor`` (a number, or a tuple for tuple hyperparameters).
        last_epoch: as in torch schedulers; ``-1`` starts fresh.
        complement: schedule ``1 - value`` instead of ``value`` (see above).
    """

    def __init__(
        self,
        optimizer: Any,
        key: str,
        fn: Callable[[int], Factor],
        last_epoch: int = -1,
        *,
        complement: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(epoch) -> factor, got {fn!r}")
        self.optimizer = optimizer
        self.key = key
        if not self.groups:
            keys = sorted({k for group in optimizer.param_groups for k in group if k != "params"})
            raise KeyError(
                f"ParamScheduler: no param group of {type(optimizer).__name__} has the key {key!r}; "
                f"the groups have {keys}"
            )
        self.fn = fn
        self.complement = bool(complement)
        initial = f"initial_{key}"
        if last_epoch != -1 and any(initial not in group for group in self.groups):
            raise KeyError(f"ParamScheduler: last_epoch={last_epoch} but a param group lacks {initial!r}")
        self.last_epoch = last_epoch
        self.step()

    @property
    def groups(self) -> list[dict[str, Any]]:
        """The optimizer's param groups that have ``key``, looked up on every use: after
        ``optimizer.load_state_dict`` (which replaces the group dicts) the scheduler keeps working."""
        return [group for group in self.optimizer.param_groups if self.key in group]

    def step(self) -> None:
        """Move to the next epoch and set the scheduled values (all computed and checked first:
        a factor that is refused changes nothing)."""
        initial = f"initial_{self.key}"
        groups = self.groups
        factor = self.fn(self.last_epoch + 1)
        values = [
            _scale(group.get(initial, group[self.key]), factor, self.key, self.complement) for group in groups
        ]
        self.last_epoch += 1
        for group, value in zip(groups, values, strict=True):
            group.setdefault(initial, group[self.key])  # the first step (or a group added later)
            group[self.key] = value

    def get_last_value(self) -> list[Any]:
        """The current value of ``key`` in each scheduled group."""
        return [group[self.key] for group in self.groups]

    def state_dict(self) -> dict[str, Any]:
        """``key`` and ``last_epoch`` (the values themselves live in the optimizer's state dict)."""
        return {"key": self.key, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("key") != self.key:
            raise ValueError(
                f"ParamScheduler.load_state_dict: the saved scheduler schedules {state_dict.get('key')!r}, "
                f"this one schedules {self.key!r}"
            )
        self.last_epoch = state_dict["last_epoch"]


def _scale(initial: Any, factor: Factor, key: str, complement: bool = False) -> Any:
    if isinstance(initial, (tuple, list)):
        factors = factor if isinstance(factor, (tuple, list)) else (factor,) * len(initial)
        if len(factors) != len(initial):
            raise ValueError(f"ParamScheduler: fn returned {len(factors)} factors for {key}={initial!r}")
        return type(initial)(_one(v, f, key, complement) for v, f in zip(initial, factors, strict=True))
    if isinstance(factor, (tuple, list)):
        raise ValueError(f"ParamScheduler: fn returned a tuple {factor!r} for the scalar {key}={initial!r}")
    return _one(initial, factor, key, complement)


def _one(initial: float, factor: float, key: str, complement: bool) -> float:
    return _check(1 - (1 - initial) * factor if complement else initial * factor, key)


def _check(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"ParamScheduler: the scheduled {key} is {value!r}; fn must return finite factors")
    return value
