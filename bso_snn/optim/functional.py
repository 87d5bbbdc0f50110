r"""The BSO / T-BSO update as pure functions on lists of tensors.

One flip rule, for binary weights :math:`W \in \{-1, +1\}`, a threshold :math:`\gamma \ge 0` and a
positive scale :math:`s` per tensor:

.. math::
    M &\leftarrow \beta M + (1 - \beta) G \\
    W &\leftarrow \begin{cases} -W & \text{if } (W \odot M) / s > \gamma \\ W & \text{otherwise} \end{cases}

optionally followed by :math:`M \leftarrow 0` where a weight flipped (``reset_momentum``). A tie
``(W*M)/s == gamma`` keeps its sign. BSO uses :math:`s = 1` (no division at all); T-BSO uses one
scale per layer and time step,

.. math::
    v[t] \leftarrow \beta_2 v[t] + (1 - \beta_2)\,\overline{G^2}, \qquad s = \sqrt{v[t]} + \epsilon,

with :math:`\overline{G^2}` the mean of the squared gradient over the whole tensor. These are the
rules of the authors' code (repository hamingsi/BSO, ``modules/Bop.py``): BSO is its
``reset=True`` branch, T-BSO its other branch (``docs/optimizers.md`` lists the deviations).

Rounding, defined once and shared by both implementations: the momentum update is
``M.lerp_(G, 1 - beta)`` (the same formulation as ``torch.optim.Adam``'s first moment; equal to
``beta*M + (1-beta)*G`` up to the last bit), ``W*M`` is exact because ``|W| = 1`` (so
``(W*M)/s == W*(M/s)``), the division by ``s`` is one IEEE division per element, and
``mean(G^2)`` is :func:`mean_square`. Each function has a plain single-tensor reference
(``foreach=False``) and a multi-tensor implementation on ``torch._foreach_*`` ops, grouped by
device and dtype (``foreach=True``, the default), which agree bit for bit (tested). The flip has a
third, fused implementation (``fused=True``: one pass per tensor in a C++ or CUDA kernel,
:mod:`bso_snn.optim._fused`), also bit-identical (tested; the kernel's ``lerp`` rounding is
checked against torch's on each device before first use). ``mean(G^2)`` is reduced per tensor
by the same call in all of them, so it agrees on every device; flip counts are exact integers.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from . import _fused

Scale = Tensor | None
"""T-BSO's ``sqrt(v[t]) + eps``: a positive 0-dim tensor on the parameter's device; ``None`` for
BSO's ``s = 1`` (no division)."""


def mean_square(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """``mean(grad**2)`` over all elements, as a 0-dim tensor of ``dtype`` (one pass, no temporary)."""
    return torch.linalg.vector_norm(grad, dtype=dtype).square() / grad.numel()


def second_moment_dtype(param: Tensor) -> torch.dtype:
    """The dtype of T-BSO's ``v``: float64 for float64 parameters, float32 otherwise."""
    return torch.promote_types(param.dtype, torch.float32)


def _group_by_device_and_dtype(tensors: list[Tensor]) -> list[list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return list(groups.values())


# --------------------------------------------------------------------------- the flip rule


def _single_tensor_flip(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    scales: list[Scale],
    gamma: float,
    beta: float,
    reset_momentum: bool,
) -> list[Tensor]:
    counts = []
    for w, g, m, scale in zip(params, grads, momenta, scales, strict=True):
        m.lerp_(g, 1 - beta)
        agreement = w * m if scale is None else (w * m) / scale
        flip = agreement > gamma
        w.copy_(torch.where(flip, -w, w))
        if reset_momentum:
            m.masked_fill_(flip, 0.0)
        counts.append(flip.sum())
    return counts


WORKSPACE_NUMEL = 1 << 20
"""Elements of the scratch buffer the multi-tensor flip reuses for ``W*M`` (4 MB in float32).

Large tensors are processed in pieces of at most this size, so no full-size temporary is
allocated (on CPU, fresh allocations of that size cost more than the arithmetic) and each
piece is still in cache when its flip mask is applied."""


def _pieces(w: Tensor, m: Tensor, owner: int) -> list[tuple[int, Tensor, Tensor]]:
    """``(owner, w_piece, m_piece)``: flat views of at most WORKSPACE_NUMEL elements, or the
    whole tensors when they are not both contiguous."""
    if not (w.is_contiguous() and m.is_contiguous()):
        return [(owner, w, m)]
    w_pieces, m_pieces = w.view(-1).split(WORKSPACE_NUMEL), m.view(-1).split(WORKSPACE_NUMEL)
    return [(owner, wp, mp) for wp, mp in zip(w_pieces, m_pieces, strict=True)]


def _count(flip: Tensor) -> Tensor:
    """The number of ones in a 0/1 float tensor: its sum, accumulated in float32 (exact below
    2**24 elements) or float64 (larger tensors)."""
    dtype = second_moment_dtype(flip) if flip.numel() <= 1 << 24 else torch.float64
    return flip.sum(dtype=dtype)


def _batches(pieces: list[tuple[int, Tensor, Tensor]]) -> list[list[tuple[int, Tensor, Tensor]]]:
    """Consecutive pieces grouped so that each batch fits the workspace (an oversized
    non-contiguous tensor gets a batch of its own)."""
    batches: list[list[tuple[int, Tensor, Tensor]]] = [[]]
    size = 0
    for piece in pieces:
        if batches[-1] and size + piece[1].numel() > WORKSPACE_NUMEL:
            batches.append([])
            size = 0
        batches[-1].append(piece)
        size += piece[1].numel()
    return batches


def _multi_tensor_flip(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    scales: list[Scale],
    gamma: float,
    beta: float,
    reset_momentum: bool,
) -> list[Tensor]:
    counts: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    for index in _group_by_device_and_dtype(params):
        ms = [momenta[i] for i in index]
        torch._foreach_lerp_(ms, [grads[i] for i in index], 1 - beta)
        first = params[index[0]]
        pieces = [piece for i in index for piece in _pieces(params[i], momenta[i], i)]
        batches = _batches(pieces)
        largest = max(sum(piece[1].numel() for piece in batch) for batch in batches)
        workspace = torch.empty(largest, dtype=first.dtype, device=first.device)
        owners, flip_sums = [], []
        for batch in batches:
            owner, ws, ms_ = (list(x) for x in zip(*batch, strict=True))
            sizes = [w.numel() for w in ws]
            flips = [f.view(w.shape) for f, w in zip(workspace[: sum(sizes)].split(sizes), ws, strict=True)]
            for w, m, flip, i in zip(ws, ms_, flips, owner, strict=True):
                torch.mul(w, m, out=flip)
                if scales[i] is not None:
                    flip.div_(scales[i])
                flip.gt_(gamma)  # 1.0 where (W*M)/s > gamma, else 0.0
            torch._foreach_addcmul_(ws, ws, flips, value=-2.0)  # W - 2W*flip: exactly -W or W
            if reset_momentum:
                torch._foreach_addcmul_(ms_, ms_, flips, value=-1.0)  # M - M*flip: exactly 0 or M
            owners += owner
            flip_sums += [_count(flip) for flip in flips]
        totals = torch.zeros(len(params), dtype=torch.float64, device=first.device)
        sums = torch.stack([f.to(torch.float64) for f in flip_sums])
        totals.index_add_(0, torch.tensor(owners, device=first.device), sums)
        for i in index:
            counts[i] = totals[i].to(torch.int64)
    return counts


def flip_(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    scales: list[Scale] | None = None,
    *,
    gamma: float,
    beta: float,
    reset_momentum: bool,
    foreach: bool = True,
    fused: bool = False,
) -> list[Tensor]:
    """Update each momentum in place and flip each weight where ``(W*M)/s > gamma``.

    Args:
        params: binary weights (exactly ±1), updated in place.
        grads: their gradients.
        momenta: their momenta ``M``, updated in place.
        scales: one positive scale ``s`` per parameter (a 0-dim tensor on its device, or
            ``None`` for ``s = 1``); ``None`` for all: ``s = 1`` everywhere (BSO).
        gamma: the flip threshold, ``>= 0``.
        beta: momentum decay.
        reset_momentum: set ``M`` to 0 where a weight flipped.
        foreach: multi-tensor implementation (True) or the single-tensor reference (False).
        fused: the fused kernel (:mod:`bso_snn.optim._fused`) on every tensor it supports and
            whose device has it; the others take the multi-tensor path. Overrides ``foreach``.

    Returns:
        The number of flipped weights per parameter (0-dim int64 tensors on its device).
    """
    if not params:
        return []
    if scales is None:
        scales = [None] * len(params)
    impl = _fused_flip if fused else _multi_tensor_flip if foreach else _single_tensor_flip
    return impl(params, grads, momenta, scales, gamma, beta, reset_momentum)


def _fused_flip(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    scales: list[Scale],
    gamma: float,
    beta: float,
    reset_momentum: bool,
) -> list[Tensor]:
    """One fused kernel call per (device, scaled) group of supported tensors; the multi-tensor
    path for the rest (same results: both equal the reference bit for bit)."""
    groups: dict[tuple[torch.device, bool], list[int]] = defaultdict(list)
    rest = []
    for i, (w, g, m, s) in enumerate(zip(params, grads, momenta, scales, strict=True)):
        if _fused.supports(w, g, m, s) and _fused.unavailable_reason(w.device) is None:
            groups[(w.device, s is not None)].append(i)
        else:
            rest.append(i)
    counts: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
    for (_, scaled), index in groups.items():
        got = _fused.flip_(
            _take(params, index),
            _take(grads, index),
            _take(momenta, index),
            _take(scales, index) if scaled else None,
            gamma=gamma,
            beta=beta,
            reset_momentum=reset_momentum,
        )
        for i, count in zip(index, got, strict=True):
            counts[i] = count
    if rest:
        taken = (_take(items, rest) for items in (params, grads, momenta, scales))
        got = _multi_tensor_flip(*taken, gamma, beta, reset_momentum)
        for i, count in zip(rest, got, strict=True):
            counts[i] = count
    return counts


def _take(items: list, index: list[int]) -> list:
    return [items[i] for i in index]


# --------------------------------------------------------------------------- T-BSO scales


def _single_tensor_scales(
    second_moments: list[Tensor], mean_squares: list[Tensor], time_step: int, beta2: float, eps: float
) -> list[Tensor]:
    scales = []
    for v, mean_sq in zip(second_moments, mean_squares, strict=True):
        v_t = v[time_step]
        v_t.lerp_(mean_sq, 1 - beta2)
        scales.append(torch.sqrt(v_t) + eps)
    return scales


def _multi_tensor_scales(
    second_moments: list[Tensor], mean_squares: list[Tensor], time_step: int, beta2: float, eps: float
) -> list[Tensor]:
    v_t = [v[time_step] for v in second_moments]
    torch._foreach_lerp_(v_t, mean_squares, 1 - beta2)
    scales = torch._foreach_sqrt(v_t)
    torch._foreach_add_(scales, eps)
    return list(scales)


def temporal_scales_(
    second_moments: list[Tensor],
    mean_squares: list[Tensor],
    *,
    time_step: int,
    beta2: float,
    eps: float,
    foreach: bool = True,
) -> list[Tensor]:
    """T-BSO: update ``v[time_step]`` of each parameter in place and return its scale
    ``sqrt(v[time_step]) + eps`` (0-dim, on ``v``'s device).

    ``mean_squares`` are :func:`mean_square` of the gradients, in ``v``'s dtype.
    """
    if not second_moments:
        return []
    impl = _multi_tensor_scales if foreach else _single_tensor_scales
    return impl(second_moments, mean_squares, time_step, beta2, eps)


# --------------------------------------------------------------------------- the two updates


def bso(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    *,
    gamma: float,
    beta: float,
    reset_momentum: bool = True,
    foreach: bool = True,
    fused: bool = False,
) -> list[Tensor]:
    """One BSO step in place (flip where ``W*M > gamma``; by default the momentum of a flipped
    weight is reset to 0, as in the authors' code); returns the flip count per parameter."""
    return flip_(
        params,
        grads,
        momenta,
        None,
        gamma=gamma,
        beta=beta,
        reset_momentum=reset_momentum,
        foreach=foreach,
        fused=fused,
    )


def tbso(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    second_moments: list[Tensor],
    *,
    time_step: int,
    gamma: float,
    beta1: float,
    beta2: float,
    eps: float,
    mean_squares: list[Tensor] | None = None,
    reset_momentum: bool = False,
    foreach: bool = True,
    fused: bool = False,
) -> list[Tensor]:
    """One T-BSO step at ``time_step`` in place (flip where ``(W*M)/(sqrt(v[t]) + eps) > gamma``);
    returns the flip count per parameter.

    ``second_moments`` are the per-parameter ``v`` vectors (length ``T``). ``mean_squares``
    may pass precomputed :func:`mean_square` values of ``grads`` (the optimizer computes them
    once to check that they are finite); they are computed here when ``None``.
    """
    if mean_squares is None:
        mean_squares = [mean_square(g, v.dtype) for g, v in zip(grads, second_moments, strict=True)]
    scales = temporal_scales_(
        second_moments, mean_squares, time_step=time_step, beta2=beta2, eps=eps, foreach=foreach
    )
    return flip_(
        params,
        grads,
        momenta,
        scales,
        gamma=gamma,
        beta=beta1,
        reset_momentum=reset_momentum,
        foreach=foreach,
        fused=fused,
    )
