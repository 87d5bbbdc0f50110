"""In-place class swaps that survive ``copy.deepcopy`` and ``torch.save``/``torch.load``.

Converting a layer or a neuron keeps the *same object* (so hooks, parameter identity,
optimizer references and ``state_dict`` keys are untouched) and changes its class to a
generated subclass ``(Mixin, OriginalClass)``. Generated classes are not importable by
name, so they pickle through :func:`_rebuild`, which regenerates the class from the mixin
and the original class (both importable).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

_CACHE: dict[tuple[type, type], type] = {}


def _rebuild(mixin: type, base: type) -> nn.Module:
    cls = swapped_class(mixin, base)
    return cls.__new__(cls)


def _detached(value: Any) -> Any:
    """``value`` with every non-leaf tensor in it (also inside dicts, lists and tuples) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach() if value.grad_fn is not None else value
    if isinstance(value, dict):
        if not any(_has_graph(v) for v in value.values()):
            return value
        copied = copy.copy(value)  # keeps the dict's type (OrderedDict, ...)
        for k, v in value.items():
            copied[k] = _detached(v)
        return copied
    if isinstance(value, (list, tuple)) and any(_has_graph(v) for v in value):
        return type(value)(_detached(v) for v in value)
    return value


def _has_graph(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.grad_fn is not None
    if isinstance(value, dict):
        return any(_has_graph(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_graph(v) for v in value)
    return False


def _reduce_ex(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    """Pickle/deepcopy through :func:`_rebuild`. State still attached to an autograd graph (a
    neuron's membrane right after a training step) is saved detached: only graph leaves can be
    copied, and the graph is not part of the module."""
    state = {k: _detached(v) for k, v in self.__dict__.items()}
    return (_rebuild, (type(self)._bso_mixin, type(self)._bso_base), state)


def swapped_class(mixin: type, base: type) -> type:
    """The (cached) class ``type(mixin.__name__ + base.__name__, (mixin, base))``."""
    key = (mixin, base)
    cls = _CACHE.get(key)
    if cls is None:
        name = mixin.__name__.replace("Mixin", "") + base.__name__
        cls = type(
            name,
            (mixin, base),
            {
                "__module__": mixin.__module__,
                "__qualname__": name,
                "_bso_mixin": mixin,
                "_bso_base": base,
                "__reduce_ex__": _reduce_ex,
            },
        )
        _CACHE[key] = cls
    return cls


def swap_class(module: nn.Module, mixin: type) -> None:
    """Change ``module``'s class in place to ``(mixin, type(module))``; a no-op when ``module``
    already carries ``mixin``.

    Raises:
        TypeError: ``module`` already carries another bso-snn mixin (swaps do not stack: the
            generated class would not pickle).
    """
    current = getattr(type(module), "_bso_mixin", None)
    if current is mixin:
        return
    if current is not None:
        raise TypeError(
            f"{type(module).__name__} already carries {current.__name__}; bso-snn cannot add "
            f"{mixin.__name__} on top of it (class swaps do not stack)"
        )
    module.__class__ = swapped_class(mixin, type(module))


def original_class(module: nn.Module) -> type:
    """The class ``module`` had before any bso-snn swap."""
    return getattr(type(module), "_bso_base", type(module))
