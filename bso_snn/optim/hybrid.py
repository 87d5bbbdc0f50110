"""Training binary and full-precision parameters together.

BSO/T-BSO train the ±1 weights of converted layers; everything else (first and last layers,
biases, normalisation) needs an ordinary optimizer (the BSO paper: SGD, lr 0.1, cosine).
:func:`split_parameters` splits a model's parameters by the converter's module tag, and
:class:`HybridOptimizer` presents several optimizers as one for the training loop and
checkpoints.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import binary_parameters
from .optimizers import BSO, TBSO, FlipStat


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(binary, real)``: every trainable parameter of ``model`` exactly once.

    ``binary`` are the ±1 weights of layers converted by ``bso_snn.convert`` (found through
    their modules, never by name); ``real`` are all other parameters with ``requires_grad``.

    Raises:
        ValueError: ``model`` has no binary parameter (it was not converted).
    """
    binary = [p for p in binary_parameters(model) if p.requires_grad]
    if not binary:
        raise ValueError(
            f"split_parameters: {type(model).__name__} has no trainable binary parameter; convert it "
            f"first with bso_snn.convert(model) (and check the report: with skip_first_last=True a "
            f"model of two weight layers keeps both in float)"
        )
    binary_ids = {id(p) for p in binary}
    real = [p for p in model.parameters() if p.requires_grad and id(p) not in binary_ids]
    return binary, real


class _MergedState(MutableMapping):
    """The inner optimizers' per-parameter state as one mapping; writes reach the owner's state."""

    def __init__(self, optimizers: tuple[torch.optim.Optimizer, ...]) -> None:
        self._optimizers = optimizers

    def _owner(self, param: Tensor) -> dict:
        for opt in self._optimizers:
            if any(param is p for group in opt.param_groups for p in group["params"]):
                return opt.state
        raise KeyError("the parameter is in none of the HybridOptimizer's optimizers")

    def __getitem__(self, param: Tensor) -> Any:
        for opt in self._optimizers:
            if param in opt.state:
                return opt.state[param]
        raise KeyError(param)

    def __setitem__(self, param: Tensor, value: Any) -> None:
        self._owner(param)[param] = value

    def __delitem__(self, param: Tensor) -> None:
        for opt in self._optimizers:
            if param in opt.state:
                del opt.state[param]
                return
        raise KeyError(param)

    def __iter__(self) -> Iterator[Tensor]:
        return (p for opt in self._optimizers for p in opt.state)

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._optimizers)


class HybridOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped, zeroed, scheduled and checkpointed as one ``torch.optim.Optimizer``.

    ``param_groups`` is the concatenation of the inner optimizers' groups (the same dict
    objects, looked up live), ``state`` their per-parameter state (writes reach the owning
    optimizer), ``state_dict()`` nests each inner optimizer's state dict, and
    ``reset_time_step`` / ``set_time_step`` / ``flip_stats`` reach the inner bso-snn
    optimizers. A parameter may belong to only one inner optimizer. Step hooks
    (``register_step_post_hook``) run around the hybrid's ``step()``.

    Schedulers: ``torch.optim.lr_scheduler`` schedulers (``StepLR(hybrid, ...)``,
    ``CosineAnnealingLR``, ``torch.optim.swa_utils.SWALR``) scale every group's ``'lr'``. Binary
    weights have no learning rate, so the groups of an inner optimizer without ``lr`` (BSO,
    T-BSO) carry ``lr = 0.0``: multiplicative schedules keep it at 0, and a scheduler that sets
    another value there (``OneCycleLR``, ``SWALR`` with one ``swa_lr`` for all groups) is refused
    at the next ``step()`` with the fix. Schedule ``gamma`` / ``betas`` with
    :class:`~bso_snn.optim.ParamScheduler` on the hybrid itself.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer, nonfinite: str | None = None) -> None:
        if not optimizers:
            raise ValueError(
                "HybridOptimizer needs at least one optimizer, e.g. HybridOptimizer(TBSO(...), SGD(...))"
            )
        for i, opt in enumerate(optimizers):
            if not isinstance(opt, torch.optim.Optimizer) or isinstance(opt, HybridOptimizer):
                raise TypeError(
                    f"HybridOptimizer argument {i} is a {type(opt).__name__}; pass torch.optim.Optimizer "
                    f"instances (BSO, TBSO, SGD, ...), not a HybridOptimizer"
                )
        owner: dict[int, int] = {}
        for i, opt in enumerate(optimizers):
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in owner and owner[id(p)] != i:
                        raise ValueError(
                            f"a parameter of shape {tuple(p.shape)} is in optimizer {owner[id(p)]} "
                            f"({type(optimizers[owner[id(p)]]).__name__}) and optimizer {i} "
                            f"({type(opt).__name__}); each parameter must have exactly one optimizer "
                            f"(bso_snn.optim.split_parameters(model) splits a model's parameters)"
                        )
                    owner[id(p)] = i
        self.nonfinite = _one_policy(optimizers, nonfinite)
        self.optimizers = tuple(optimizers)
        # torch.optim.Optimizer's own __init__ would copy the groups; its __setstate__ sets up
        # exactly the hooks and step profiling an optimizer needs, with the groups left live.
        torch.optim.Optimizer.__setstate__(self, {"defaults": {}})
        self._add_placeholder_lr()

    def _lr_free(self) -> list[torch.optim.Optimizer]:
        """Inner optimizers that have no learning rate (BSO, T-BSO)."""
        return [opt for opt in self.optimizers if "lr" not in opt.defaults]

    def _add_placeholder_lr(self) -> None:
        for opt in self._lr_free():
            for group in opt.param_groups:
                group.setdefault("lr", 0.0)

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> _MergedState:  # type: ignore[override]
        """The inner optimizers' per-parameter state, as one mapping."""
        return _MergedState(self.optimizers)

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "optimizers": self.optimizers, "nonfinite": self.nonfinite}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.optimizers, self.nonfinite = state["optimizers"], state["nonfinite"]
        torch.optim.Optimizer.__setstate__(self, {"defaults": state["defaults"]})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError(
            "HybridOptimizer.add_param_group: add the group to the inner optimizer that should train it, "
            "e.g. hybrid.optimizers[1].add_param_group(...)"
        )

    def _check_placeholder_lr(self) -> None:
        for opt in self._lr_free():
            for group in opt.param_groups:
                if group.get("lr", 0.0) != 0.0:
                    raise ValueError(
                        f"HybridOptimizer: a {type(opt).__name__} param group has lr={group['lr']!r}, but "
                        f"binary weights have no learning rate (their lr stays 0.0); an LR scheduler set it. "
                        f"Give that scheduler per-group values with 0.0 for the binary groups (e.g. "
                        f"SWALR(hybrid, swa_lr=[0.0, 0.05])), or schedule the float optimizer alone "
                        f"(hybrid.optimizers[i]); schedule gamma with bso_snn.optim.ParamScheduler"
                    )

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Evaluate ``closure`` once (if given), check everything, then step every inner optimizer.

        The checks come first, so a refused step changes no inner optimizer (their time indices
        stay aligned): the binary groups' hyperparameters, and the non-finite policy over every
        gradient (``'raise'``: ``FloatingPointError`` before any update; ``'skip'``: float
        parameters with a NaN/inf gradient are left out of this step with a warning, binary ones
        are skipped by their own optimizer).
        """
        self._check_placeholder_lr()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            check = getattr(opt, "_check_group", None)
            for group in opt.param_groups if check is not None else ():
                check(group)
        skipped = self._nonfinite_float_grads()
        saved = [(p, p.grad) for p in skipped]
        for p in skipped:
            p.grad = None  # torch optimizers leave a parameter without gradient (and its state) alone
        try:
            for opt in self.optimizers:
                opt.step()
        finally:
            for p, grad in saved:
                p.grad = grad
        return loss

    def _nonfinite_float_grads(self) -> list[Tensor]:
        """Float parameters whose gradient holds a NaN or inf (in ``'raise'`` mode: every
        parameter, and it raises). One host sync."""
        everything = self.nonfinite == "raise"
        params, index = [], []
        position = 0
        for opt in self.optimizers:
            checked = everything or not hasattr(opt, "nonfinite")
            for group in opt.param_groups:
                for p in group["params"]:
                    if checked and p.grad is not None and not p.grad.is_sparse and p.grad.numel():
                        params.append(p)
                        index.append(position)
                    position += 1
        if not params:
            return []
        sums = [p.grad.sum(dtype=torch.promote_types(p.grad.dtype, torch.float32)) for p in params]
        finite = torch.stack([s.to(torch.float64) for s in sums]).isfinite().tolist()
        bad = [i for i, ok in zip(index, finite, strict=True) if not ok]
        if not bad:
            return []
        message = f"HybridOptimizer: non-finite gradient (NaN or inf) in parameter(s) {bad} (indices over param_groups)"
        if self.nonfinite == "raise":
            raise FloatingPointError(message + "; nothing was updated in this step")
        warnings.warn(message + "; their update was skipped and their values and state kept", stacklevel=3)
        return [p for p, ok in zip(params, finite, strict=True) if not ok]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "types": [type(opt).__name__ for opt in self.optimizers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load every inner optimizer's state, after checking that all of them fit: a refused
        load leaves every inner optimizer as it was."""
        if not (isinstance(state_dict, dict) and {"optimizers", "types"} <= state_dict.keys()):
            raise ValueError(
                "HybridOptimizer.load_state_dict expects a dict saved by HybridOptimizer.state_dict() "
                "(keys 'optimizers' and 'types')"
            )
        mine = [type(opt).__name__ for opt in self.optimizers]
        if list(state_dict["types"]) != mine or len(state_dict["optimizers"]) != len(mine):
            raise ValueError(
                f"HybridOptimizer.load_state_dict: the saved state holds optimizers {list(state_dict['types'])} "
                f"but this HybridOptimizer has {mine}; build it with the same optimizers in the same order"
            )
        before = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]
        loaded = 0
        try:
            for opt, inner in zip(self.optimizers, state_dict["optimizers"], strict=True):
                opt.load_state_dict(inner)
                loaded += 1
        except Exception:
            for opt, saved in zip(self.optimizers[:loaded], before, strict=False):
                opt.load_state_dict(saved)
            raise
        self._add_placeholder_lr()

    def reset_time_step(self) -> None:
        """Rewind the time index of every inner optimizer that has one."""
        for opt in self.optimizers:
            rewind = getattr(opt, "reset_time_step", None)
            if rewind is not None:
                rewind()

    def set_time_step(self, t: int) -> None:
        """Set the time index of every inner optimizer that has one (T-BSO)."""
        timed = [opt for opt in self.optimizers if hasattr(opt, "set_time_step")]
        if not timed:
            raise TypeError(
                f"set_time_step: none of {[type(o).__name__ for o in self.optimizers]} has a time index (only TBSO has)"
            )
        for opt in timed:
            opt.set_time_step(t)

    def flip_stats(self) -> list[FlipStat]:
        """The inner optimizers' ``flip_stats()``, indexed over this optimizer's parameters."""
        stats, offset = [], 0
        for opt in self.optimizers:
            if hasattr(opt, "flip_stats"):
                for s in opt.flip_stats():
                    stats.append(FlipStat(index=s.index + offset, numel=s.numel, flips=s.flips, rate=s.rate))
            offset += sum(len(group["params"]) for group in opt.param_groups)
        return stats

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(opt).replace("\n", "\n  ") for opt in self.optimizers)
        return f"HybridOptimizer(\n  {inner}\n)"


def _one_policy(optimizers, nonfinite: str | None) -> str:
    """The hybrid's non-finite policy: the one its bso-snn optimizers share (default ``'skip'``)."""
    policies = {opt.nonfinite for opt in optimizers if hasattr(opt, "nonfinite")}
    if nonfinite is not None and nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite={nonfinite!r} must be 'skip' or 'raise'")
    if nonfinite is not None:
        policies.add(nonfinite)
    if len(policies) > 1:
        raise ValueError(
            f"HybridOptimizer: its optimizers disagree on non-finite gradients ({sorted(policies)}); one "
            f"policy covers binary and float parameters: give every BSO/TBSO (and the hybrid) the same nonfinite"
        )
    return policies.pop() if policies else "skip"


KINDS = ("tbso", "bso", "fp")
"""What :func:`make_optimizer` builds: T-BSO or BSO on the binary weights (plus a float optimizer
on the rest), or ``'fp'``: the float optimizer on every parameter (an unconverted model)."""


def make_optimizer(
    model: nn.Module,
    kind: str = "tbso",
    *,
    time_steps: int | None = None,
    float_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    nonfinite: str = "skip",
    **binary_kwargs: Any,
) -> HybridOptimizer:
    """The one place optimizer kinds are dispatched (``bso-snn train`` calls it too).

    Args:
        model: a converted model (``'tbso'``, ``'bso'``) or any model (``'fp'``).
        kind: ``'tbso'``, ``'bso'``: T-BSO / BSO on ``model``'s binary parameters plus
            ``float_optimizer`` on the rest; ``'fp'``: ``float_optimizer`` on every trainable
            parameter (the full-precision baseline).
        time_steps: ``T``, required for ``'tbso'`` (and refused otherwise).
        float_optimizer: ``params -> Optimizer`` for the real parameters; default
            ``SGD(params, lr=0.1)`` (the paper's learning rate; add momentum, weight decay and a
            cosine schedule as you need). Not built when the model has no real parameter.
        nonfinite: the one policy for NaN/inf gradients of every parameter, binary and float:
            ``'skip'`` (that parameter's update is skipped, with a warning) or ``'raise'``.
        **binary_kwargs: passed to :class:`BSO` / :class:`TBSO` (``gamma``, ``beta``/``betas``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KINDS}")
    if kind != "tbso" and time_steps is not None:
        raise ValueError(
            f"time_steps={time_steps!r} is a T-BSO setting; kind={kind!r} has no time index (use kind='tbso')"
        )
    build = float_optimizer or (lambda params: torch.optim.SGD(params, lr=0.1))
    if kind == "fp":
        if binary_kwargs:
            raise ValueError(
                f"make_optimizer(kind='fp') trains no binary weights; {sorted(binary_kwargs)} are BSO/T-BSO "
                f"settings. Configure the float optimizer through float_optimizer=..."
            )
        return HybridOptimizer(build([p for p in model.parameters() if p.requires_grad]), nonfinite=nonfinite)
    binary, real = split_parameters(model)
    if kind == "tbso":
        if time_steps is None:
            raise ValueError(
                "make_optimizer(kind='tbso') needs time_steps=T (the number of time steps per sequence)"
            )
        inner = [TBSO(binary, time_steps=time_steps, nonfinite=nonfinite, **binary_kwargs)]
    else:
        inner = [BSO(binary, nonfinite=nonfinite, **binary_kwargs)]
    if real:
        inner.append(build(real))
    return HybridOptimizer(*inner, nonfinite=nonfinite)
