"""BSO / T-BSO against plain loop transcriptions of the authors' released rules.

Reference: repository hamingsi/BSO, ``modules/Bop.py``, ``Bop.step(t, t_max, reset)``, with the
authors' parameterisation ``b1 = 1 - beta1`` and ``b2 = 1 - beta2``:

- BSO (``reset=True``):  ``M = (1-b1) M + b1 G``; ``r = -sign(W*M - gamma)``; ``W = sign(r W)``;
  ``M = (r+1)/2 * M`` (the momentum of a flipped weight becomes 0).
- T-BSO (``reset=False``): ``M = (1-b1) M + b1 G``; ``v[t] = (1-b2) v[t] + mean(b2 G G)``;
  ``r = -sign(W*M / (sqrt(v[t]) + 1e-10) - gamma)``; ``W = sign(r W)``.

The transcriptions below loop over elements in float64 Python arithmetic. A weight exactly at the
threshold would become 0 in the authors' code (we keep its sign, see docs/optimizers.md); the
random data here never produces one, and the loops assert that. 300 steps, 4 tensors, float64:
weights and flip counts must match exactly, for both implementations (foreach False / True).
"""

from __future__ import annotations

import math

import pytest
import torch

from bso_snn.optim import BSO, TBSO

SHAPES = [(6, 5), (4, 3, 2, 2), (9,), (3, 7)]
STEPS = 300
B1, B2 = 1e-3, 1e-5  # the authors' beta1, beta2 (train_cifar.sh: --beta1 0.999 --beta2 0.99999)


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


def _gradient_stream(seed: int, steps: int):
    """Per step, one float64 gradient per tensor: a fixed per-element drift plus noise and rare
    large outliers, at a different scale per tensor, so that flips happen at every gamma tested."""
    gen = torch.Generator().manual_seed(seed)
    drift = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.7 for s in SHAPES]
    for _ in range(steps):
        grads = []
        for i, (shape, d) in enumerate(zip(SHAPES, drift, strict=True)):
            noise = torch.randn(shape, generator=gen, dtype=torch.float64)
            outlier = (torch.rand(shape, generator=gen, dtype=torch.float64) < 0.02) * 8.0
            grads.append((d + noise * (1 + outlier)) * 10.0 ** (-2 - i))
        yield grads


def _initial_weights(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1000)
    return [torch.randint(0, 2, s, generator=gen).to(torch.float64) * 2 - 1 for s in SHAPES]


def _authors_bso(weights, grad_stream, gamma):
    """Loop transcription of the authors' BSO (reset=True). Returns weights after each step and
    the flip count per step and tensor."""
    w = [x.flatten().tolist() for x in weights]
    m = [[0.0] * len(x) for x in w]
    history, flips = [], []
    for grads in grad_stream:
        step_flips = []
        for i, g in enumerate(grads):
            g = g.flatten().tolist()
            n = 0
            for j in range(len(g)):
                m[i][j] = (1 - B1) * m[i][j] + B1 * g[j]
                r = -_sign(w[i][j] * m[i][j] - gamma)
                assert r != 0, "an exact tie: the authors' rule would set this weight to 0"
                new = _sign(r * w[i][j])
                n += new != w[i][j]
                w[i][j] = new
                m[i][j] = (r + 1) / 2 * m[i][j]
            step_flips.append(n)
        history.append([list(x) for x in w])
        flips.append(step_flips)
    return history, flips


def _authors_tbso(weights, grad_stream, gamma, time_steps):
    """Loop transcription of the authors' T-BSO (reset=False), time index t = k mod T."""
    w = [x.flatten().tolist() for x in weights]
    m = [[0.0] * len(x) for x in w]
    v = [[0.0] * time_steps for _ in w]
    history, flips = [], []
    for k, grads in enumerate(grad_stream):
        t = k % time_steps
        step_flips = []
        for i, g in enumerate(grads):
            g = g.flatten().tolist()
            v[i][t] = (1 - B2) * v[i][t] + sum(B2 * x * x for x in g) / len(g)
            scale = math.sqrt(v[i][t]) + 1e-10
            n = 0
            for j in range(len(g)):
                m[i][j] = (1 - B1) * m[i][j] + B1 * g[j]
                r = -_sign(w[i][j] * m[i][j] / scale - gamma)
                assert r != 0, "an exact tie: the authors' rule would set this weight to 0"
                new = _sign(r * w[i][j])
                n += new != w[i][j]
                w[i][j] = new
            step_flips.append(n)
        history.append([list(x) for x in w])
        flips.append(step_flips)
    return history, flips


def _run_ours(opt, params, grad_stream, time_steps=None):
    history, flips = [], []
    for k, grads in enumerate(grad_stream):
        if time_steps is not None and k % time_steps == 0:
            opt.reset_time_step()  # what bso_snn.reset(model, opt) does at each sequence start
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        history.append([p.detach().flatten().tolist() for p in params])
        counts = {s.index: s.flips for s in opt.flip_stats()}
        flips.append([counts[i] for i in range(len(params))])
    return history, flips


def _compare(ours, theirs):
    (w_ours, f_ours), (w_theirs, f_theirs) = ours, theirs
    weight_mismatches = sum(
        a != b
        for step_o, step_t in zip(w_ours, w_theirs, strict=True)
        for x_o, x_t in zip(step_o, step_t, strict=True)
        for a, b in zip(x_o, x_t, strict=True)
    )
    count_mismatches = sum(
        a != b for s_o, s_t in zip(f_ours, f_theirs, strict=True) for a, b in zip(s_o, s_t, strict=True)
    )
    total = sum(sum(s) for s in f_theirs)
    return weight_mismatches, count_mismatches, total


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("gamma", [5e-7, 2e-6, 1e-5])
def test_bso_matches_the_authors_rule(gamma, foreach):
    seed = 11
    theirs = _authors_bso(_initial_weights(seed), _gradient_stream(seed, STEPS), gamma)
    params = [torch.nn.Parameter(w.clone()) for w in _initial_weights(seed)]
    opt = BSO(params, gamma=gamma, beta=1 - B1, foreach=foreach)  # defaults: the authors' reset
    ours = _run_ours(opt, params, _gradient_stream(seed, STEPS))
    weight_mismatches, count_mismatches, total = _compare(ours, theirs)
    assert total >= 50, "the comparison must cover flips"
    assert (weight_mismatches, count_mismatches) == (0, 0), f"{total} flips by the authors' rule"


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("gamma", [5e-7, 0.1, 1.0, 3.0])
def test_tbso_matches_the_authors_rule(gamma, foreach):
    seed, time_steps = 12, 4
    theirs = _authors_tbso(_initial_weights(seed), _gradient_stream(seed, STEPS), gamma, time_steps)
    params = [torch.nn.Parameter(w.clone()) for w in _initial_weights(seed)]
    opt = TBSO(params, gamma=gamma, betas=(1 - B1, 1 - B2), time_steps=time_steps, foreach=foreach)
    ours = _run_ours(opt, params, _gradient_stream(seed, STEPS), time_steps)
    weight_mismatches, count_mismatches, total = _compare(ours, theirs)
    assert total > 20, "the comparison must cover flips"
    assert (weight_mismatches, count_mismatches) == (0, 0), f"{total} flips by the authors' rule"
