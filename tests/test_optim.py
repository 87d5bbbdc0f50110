"""BSO / T-BSO: reference vs multi-tensor, paper formulas, properties, state, errors, non-finite."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bso_snn
from bso_snn.optim import BSO, TBSO, named_flip_stats
from bso_snn.optim import functional as F
from bso_snn.sign import is_binary_tensor

SHAPES = [(3,), (4, 5), (2, 3, 3, 3), (7, 1), (1,), (16, 8)]


def binary_param(shape, gen, dtype=torch.float32) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randint(0, 2, shape, generator=gen).to(dtype) * 2 - 1)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so that comparisons are bit for bit (also -0.0 vs 0.0)."""
    return t.reshape(-1).view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def make(kind: str, params, **kw):
    if kind == "tbso":
        kw.setdefault("time_steps", 3)
        return TBSO(params, **kw)
    return BSO(params, **kw)


def sequence_step(opt) -> None:
    """``sequence_step(opt)``; a T-BSO optimizer is rewound first when its sequence is complete (what
    ``bso_snn.reset(model, opt)`` does at the start of every sequence)."""
    if isinstance(opt, TBSO) and opt.time_step == opt.param_groups[0]["time_steps"]:
        opt.reset_time_step()
    opt.step()


def group_dicts(params, kind):
    """Three param groups with different hyperparameters (the last mixes float32 and float64)."""
    if kind == "bso":
        extra = [dict(gamma=2e-4, beta=0.9), dict(gamma=0.0, beta=0.5), dict(gamma=1e-3, reset_momentum=True)]
    else:
        extra = [
            dict(gamma=0.3, betas=(0.9, 0.99)),
            dict(gamma=0.0),
            dict(gamma=0.8, eps=1e-4, reset_momentum=True),
        ]
    return [
        {"params": params[:2], **extra[0]},
        {"params": params[2:4], **extra[1]},
        {"params": params[4:], **extra[2]},
    ]


def random_params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [binary_param(s, gen) for s in SHAPES]
    params.append(binary_param((5, 2), gen, torch.float64))
    return params


def set_random_grads(params, gen, step):
    for i, p in enumerate(params):
        if (i + step) % 5 == 4:
            p.grad = None  # a parameter without gradient this step
            continue
        scale = 10.0 ** torch.randint(-5, -1, (), generator=gen).item()
        p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype)


# ----------------------------------------------------------------------------- bit for bit


@pytest.mark.parametrize("kind", ["bso", "tbso"])
@pytest.mark.parametrize("reset_momentum", [False, True])
@pytest.mark.parametrize(
    "implementation",
    [dict(foreach=True), dict(fused=True), dict()],  # dict(): the default (the fused kernel here)
    ids=["foreach", "fused", "default"],
)
def test_fast_paths_match_single_tensor_reference_bit_for_bit(kind, reset_momentum, implementation):
    fast_params, ref_params = random_params(0), random_params(0)
    fast = make(kind, group_dicts(fast_params, kind), reset_momentum=reset_momentum, **implementation)
    ref = make(kind, group_dicts(ref_params, kind), reset_momentum=reset_momentum, foreach=False)
    gen_fast, gen_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    total_flips = 0
    for step in range(10):
        set_random_grads(fast_params, gen_fast, step)
        set_random_grads(ref_params, gen_ref, step)
        sequence_step(fast)
        sequence_step(ref)
        for p, q in zip(fast_params, ref_params, strict=True):
            assert_same_bits(p, q)
            assert fast.state[p].keys() == ref.state[q].keys()
            for key in fast.state[p]:
                assert_same_bits(fast.state[p][key], ref.state[q][key])
        assert fast.flip_stats() == ref.flip_stats()
        total_flips += sum(s.flips for s in fast.flip_stats())
    assert total_flips > 0  # the comparison covered actual flips


@pytest.mark.parametrize("reset_momentum", [False, True])
@pytest.mark.parametrize("workspace", [F.WORKSPACE_NUMEL, 7])
@pytest.mark.parametrize("fast", [dict(foreach=True), dict(fused=True)], ids=["foreach", "fused"])
def test_functional_flip_paths_agree_bit_for_bit(reset_momentum, workspace, fast, monkeypatch):
    # workspace=7 splits tensors into pieces and batches across tensors; the last (transposed,
    # non-contiguous) tensor is larger than the workspace and is processed whole. fused=True: the
    # kernel takes the contiguous tensors, with and without a scale; the transposed one falls back.
    monkeypatch.setattr(F, "WORKSPACE_NUMEL", workspace)
    gen = torch.Generator().manual_seed(3)
    ws = [binary_param(s, gen).detach() for s in SHAPES]
    gs = [torch.randn(s, generator=gen) for s in SHAPES]
    ms = [torch.randn(s, generator=gen) for s in SHAPES]
    ws[-1], gs[-1], ms[-1] = ws[-1].t(), gs[-1].t(), ms[-1].t()
    assert not ws[-1].is_contiguous()
    scales = [None, torch.tensor(0.5), torch.tensor(0.1), None, torch.tensor(3.0), torch.tensor(0.7)]
    w2, m2 = copy.deepcopy(ws), copy.deepcopy(ms)
    kw = dict(gamma=0.3, beta=0.5, reset_momentum=reset_momentum)
    counts_fast = F.flip_(ws, gs, ms, scales, **kw, **fast)
    counts_ref = F.flip_(w2, gs, m2, scales, **kw, foreach=False)
    for a, b in zip(ws + ms, w2 + m2, strict=True):
        assert_same_bits(a, b)
    assert [int(c) for c in counts_fast] == [int(c) for c in counts_ref]
    assert sum(int(c) for c in counts_fast) > 0


# ----------------------------------------------------------------------------- paper formulas


def _decided(w_old, m, threshold, margin=1e-9):
    """Elements whose flip decision is not within rounding distance of the threshold."""
    return (w_old * m - threshold).abs() > margin * max(1.0, float(threshold))


@pytest.mark.parametrize("foreach", [True, False])
def test_bso_follows_the_paper_formula(foreach):
    gen = torch.Generator().manual_seed(5)
    gamma, beta = 1e-4, 0.9
    params = [binary_param(s, gen, torch.float64) for s in SHAPES]
    opt = BSO(params, gamma=gamma, beta=beta, foreach=foreach)
    ref_w = [p.detach().clone() for p in params]
    ref_m = [torch.zeros_like(p) for p in params]
    for _ in range(6):
        for p, w, m in zip(params, ref_w, ref_m, strict=True):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1e-3
            m.mul_(beta).add_((1 - beta) * p.grad)  # M <- beta M + (1 - beta) G
            decided = _decided(w, m, gamma)
            assert decided.float().mean() > 0.99
            w_new = torch.where(w * m > gamma, -w, w)  # flip where W*M > gamma
            m.copy_(torch.where(w_new != w, 0.0, m))  # M <- 0 where a weight flipped (default)
            w.copy_(torch.where(decided, w_new, p.detach()))  # (undecided: nothing to compare)
        sequence_step(opt)
        for p, w, m in zip(params, ref_w, ref_m, strict=True):
            torch.testing.assert_close(opt.state[p]["momentum"], m, rtol=1e-12, atol=1e-18)
            assert torch.equal(p.detach(), w)


@pytest.mark.parametrize("foreach", [True, False])
def test_tbso_follows_the_paper_formula(foreach):
    gen = torch.Generator().manual_seed(6)
    gamma, beta1, beta2, eps, steps = 0.5, 0.9, 0.99, 1e-10, 3
    params = [binary_param(s, gen, torch.float64) for s in SHAPES]
    opt = TBSO(params, gamma=gamma, betas=(beta1, beta2), eps=eps, time_steps=steps, foreach=foreach)
    ref_w = [p.detach().clone() for p in params]
    ref_m = [torch.zeros_like(p) for p in params]
    ref_v = [[0.0] * steps for _ in params]
    flips = 0
    for k in range(7):
        t = k % steps  # step number k uses time index k mod T
        for i, (p, w, m) in enumerate(zip(params, ref_w, ref_m, strict=True)):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 10.0 ** (-i % 3)
            p.grad = g
            m.mul_(beta1).add_((1 - beta1) * g)
            mean_sq = sum(x * x for x in g.flatten().tolist()) / g.numel()
            ref_v[i][t] = beta2 * ref_v[i][t] + (1 - beta2) * mean_sq
            scale = math.sqrt(ref_v[i][t]) + eps
            decided = _decided(w, m / scale, gamma)
            w_new = torch.where(w * m / scale > gamma, -w, w)
            flips += int((w_new != w).sum())
            w.copy_(torch.where(decided, w_new, p.detach()))
        sequence_step(opt)
        for i, (p, w, m) in enumerate(zip(params, ref_w, ref_m, strict=True)):
            torch.testing.assert_close(opt.state[p]["momentum"], m, rtol=1e-12, atol=1e-18)
            torch.testing.assert_close(
                opt.state[p]["v"], torch.tensor(ref_v[i], dtype=torch.float64), rtol=1e-12, atol=0
            )
            assert torch.equal(p.detach(), w)
    assert flips > 0


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 0.25])
def test_a_tie_keeps_its_sign_and_flips_are_strict(foreach, gamma):
    # beta=0 makes M == G exactly, so W*M hits the threshold exactly.
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
    opt = BSO([p], gamma=gamma, beta=0.0, foreach=foreach)
    p.grad = torch.tensor([gamma, -gamma, -0.0, 0.0, gamma + 0.5, -gamma - 0.5])
    sequence_step(opt)
    assert p.tolist() == [1.0, -1.0, 1.0, -1.0, -1.0, 1.0]
    assert opt.flip_stats()[0].flips == 2


@pytest.mark.parametrize("foreach", [True, False])
def test_tbso_tie_at_its_temporal_threshold_keeps_its_sign(foreach):
    # betas=(0, 0): M == G and v[0] == mean(G^2), so (W*M)/(sqrt(v)+eps) == 2/(2+eps) exactly
    # when |G| == 2 everywhere; gamma is set to that very float.
    eps = 2.0**-20
    gamma = float(torch.tensor(2.0) / (torch.tensor(2.0) + eps))
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    opt = TBSO([p], gamma=gamma, betas=(0.0, 0.0), eps=eps, time_steps=1, foreach=foreach)
    p.grad = torch.tensor([2.0, -2.0, -2.0, 2.0])  # W*M = +2 for the 1st and 4th: a tie
    sequence_step(opt)
    assert p.tolist() == [1.0, 1.0, -1.0, -1.0]
    assert torch.equal(opt.state[p]["momentum"], p.grad)  # the tie also keeps its momentum
    p.grad = torch.tensor([4.0, 0.0, -4.0, 0.0])  # mean 8 -> (W*M)/s = 4/(2*sqrt(2)+eps) > gamma
    sequence_step(opt)
    assert p.tolist() == [-1.0, 1.0, 1.0, -1.0]


def test_mean_square_matches_a_plain_mean_of_squares():
    g = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        F.mean_square(g, torch.float32), (g.double() ** 2).mean().float(), rtol=1e-6, atol=0
    )


# ----------------------------------------------------------------------------- properties

grad_values = st.one_of(
    st.floats(-1e30, 1e30, allow_nan=False),
    st.floats(-1e-3, 1e-3, allow_nan=False),
    st.sampled_from([0.0, -0.0, 5e-7, -5e-7]),
)
shapes = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=3)
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _params_from(shape_list, seed):
    gen = torch.Generator().manual_seed(seed)
    return [binary_param(s, gen) for s in shape_list]


def _grads_from(data, params):
    return [
        torch.tensor(
            data.draw(st.lists(grad_values, min_size=p.numel(), max_size=p.numel())), dtype=p.dtype
        ).reshape(p.shape)
        for p in params
    ]


def _agreement(opt, group, p, w, m, t):
    """``(W*M)/s``: ``s = sqrt(v[t]) + eps`` for T-BSO, no division for BSO."""
    if isinstance(opt, TBSO):
        return w * m / (torch.sqrt(opt.state[p]["v"][t]) + group["eps"])
    return w * m


@HYP
@given(
    kind=st.sampled_from(["bso", "tbso"]),
    shape_list=shapes,
    gamma=st.one_of(st.just(0.0), st.floats(1e-9, 1e-1)),
    beta=st.floats(0.0, 0.999),
    reset_momentum=st.booleans(),
    foreach=st.booleans(),
    n_steps=st.integers(1, 5),
    data=st.data(),
)
def test_weights_stay_binary_and_flip_exactly_where_the_rule_says(
    kind, shape_list, gamma, beta, reset_momentum, foreach, n_steps, data
):
    params = _params_from(shape_list, 0)
    kw = dict(betas=(beta, 0.9)) if kind == "tbso" else dict(beta=beta)
    opt = make(kind, params, gamma=gamma, reset_momentum=reset_momentum, foreach=foreach, **kw)
    group = opt.param_groups[0]
    for _ in range(n_steps):
        if kind == "tbso" and group["time_step"] == group["time_steps"]:
            opt.reset_time_step()
        t = group.get("time_step", 0)
        grads = _grads_from(data, params)
        old_w = [p.detach().clone() for p in params]
        old_m = [opt.state[p]["momentum"].clone() if p in opt.state else torch.zeros_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # T-BSO skips gradients whose square overflows
            sequence_step(opt)
        stats = {s.index: s for s in opt.flip_stats()}
        for i, (p, w, m_old, g) in enumerate(zip(params, old_w, old_m, grads, strict=True)):
            assert is_binary_tensor(p)
            if i not in stats:  # skipped as non-finite: untouched
                assert torch.equal(p, w)
                continue
            m = m_old.lerp(g, 1 - (group["betas"][0] if kind == "tbso" else group["beta"]))
            flip = _agreement(opt, group, p, w, m, t) > group["gamma"]
            assert torch.equal(p.detach(), torch.where(flip, -w, w))
            assert torch.equal(opt.state[p]["momentum"], torch.where(flip, 0.0, m) if reset_momentum else m)
            assert stats[i].flips == int(flip.sum()) == int((p != w).sum())
            assert stats[i].rate == stats[i].flips / p.numel()


@HYP
@given(kind=st.sampled_from(["bso", "tbso"]), shape_list=shapes, n_steps=st.integers(1, 4), data=st.data())
def test_no_flips_when_gamma_is_huge(kind, shape_list, n_steps, data):
    params = _params_from(shape_list, 1)
    before = [p.detach().clone() for p in params]
    opt = make(kind, params, gamma=1e30)
    for _ in range(n_steps):
        for p in params:
            p.grad = torch.tensor(
                data.draw(st.lists(st.floats(-1e3, 1e3), min_size=p.numel(), max_size=p.numel()))
            ).reshape(p.shape)
        sequence_step(opt)
        assert all(s.flips == 0 for s in opt.flip_stats())
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


@HYP
@given(kind=st.sampled_from(["bso", "tbso"]), shape_list=shapes, steps=st.integers(1, 6), with_grad=st.data())
def test_state_holds_exactly_the_expected_keys_and_sizes(kind, shape_list, steps, with_grad):
    params = _params_from(shape_list, 2)
    has_grad = [with_grad.draw(st.booleans()) for _ in params]
    opt = make(kind, params, time_steps=steps) if kind == "tbso" else make(kind, params)
    for p, g in zip(params, has_grad, strict=True):
        p.grad = torch.randn_like(p) if g else None
    sequence_step(opt)
    for p, g in zip(params, has_grad, strict=True):
        if not g:
            assert p not in opt.state
            continue
        state = opt.state[p]
        expected = {"momentum", "v"} if kind == "tbso" else {"momentum"}
        assert set(state) == expected
        assert state["momentum"].shape == p.shape and state["momentum"].dtype == p.dtype
        if kind == "tbso":
            assert state["v"].shape == (steps,) and state["v"].dtype == torch.float32
            assert state["v"].device == p.device


# ----------------------------------------------------------------------------- time index


def test_step_k_uses_time_index_k_and_more_steps_than_T_raise():
    p = torch.nn.Parameter(torch.ones(4))
    opt = TBSO([p], time_steps=3)

    def step_and_updated_index():
        before = opt.state[p]["v"].clone() if p in opt.state else torch.zeros(3)
        p.grad = torch.full((4,), 1e-2)
        opt.step()
        changed = (opt.state[p]["v"] != before).nonzero().flatten().tolist()
        assert len(changed) == 1
        return changed[0]

    assert [step_and_updated_index() for _ in range(3)] == [0, 1, 2]
    assert opt.time_step == 3
    state = copy.deepcopy(opt.state_dict())
    p.grad = torch.full((4,), 1e-2)
    with pytest.raises(
        RuntimeError,
        match=r"more than time_steps=3 step\(\) calls in one sequence.*"
        r"bso_snn.reset\(model, optimizer\)",
    ):
        opt.step()
    assert str(opt.state_dict()) == str(state)  # nothing was updated
    opt.reset_time_step()
    assert [step_and_updated_index() for _ in range(3)] == [0, 1, 2]
    opt.set_time_step(2)
    assert step_and_updated_index() == 2
    opt.set_time_step(1)
    opt.reset_time_step()
    assert step_and_updated_index() == 0


def test_bso_snn_reset_rewinds_the_time_index_and_accepts_bso():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    bso_snn.convert(model, lam=0.5)
    binary = list(bso_snn.binary_parameters(model))
    tbso, bso = TBSO(binary, time_steps=4), BSO(binary)
    tbso.set_time_step(3)
    bso_snn.reset(model, tbso, bso)
    assert tbso.time_step == 0


def test_added_param_group_starts_at_the_current_time_index():
    opt = TBSO([torch.nn.Parameter(torch.ones(2))], time_steps=4)
    opt.set_time_step(2)
    opt.add_param_group({"params": [torch.nn.Parameter(-torch.ones(3))]})
    assert [g["time_step"] for g in opt.param_groups] == [2, 2]


# ----------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize("kind", ["bso", "tbso"])
@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip_mid_training_continues_bit_identically(kind, foreach):
    params = random_params(7)
    opt = make(kind, group_dicts(params, kind), foreach=foreach)
    gen = torch.Generator().manual_seed(8)
    for step in range(4):  # 4 is not a multiple of T=3: resume mid-sequence
        set_random_grads(params, gen, step)
        sequence_step(opt)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_params = [torch.nn.Parameter(w.clone()) for w in saved["params"]]
    resumed = make(kind, group_dicts(resumed_params, kind), foreach=foreach)
    resumed.load_state_dict(saved["opt"])
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for step in range(5):
        set_random_grads(params, gen_a, step)
        set_random_grads(resumed_params, gen_b, step)
        sequence_step(opt)
        sequence_step(resumed)
        for p, q in zip(params, resumed_params, strict=True):
            assert_same_bits(p, q)
            for key in opt.state[p]:
                assert_same_bits(opt.state[p][key], resumed.state[q][key])
        assert opt.flip_stats() == resumed.flip_stats()


# ----------------------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("kind", ["bso", "tbso"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_gradient_skips_that_parameter_and_warns(kind, bad):
    params = random_params(10)[:3]
    opt = make(kind, params, gamma=1e-6)
    gen = torch.Generator().manual_seed(11)
    for step in range(2):
        set_random_grads(params, gen, step)
        sequence_step(opt)
    before = copy.deepcopy(([p.detach() for p in params], {i: opt.state[p] for i, p in enumerate(params)}))
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    params[1].grad.view(-1)[0] = bad
    with pytest.warns(
        UserWarning,
        match=r"non-finite gradient \(NaN or inf\) in parameter\(s\) \[1\] \(indices over all param groups\)",
    ):
        sequence_step(opt)
    assert_same_bits(params[1].detach(), before[0][1])
    for key, value in before[1][1].items():
        assert_same_bits(opt.state[params[1]][key], value)
    assert not torch.equal(opt.state[params[0]]["momentum"], before[1][0]["momentum"])  # others updated
    assert [s.index for s in opt.flip_stats()] == [0, 2]


@pytest.mark.parametrize("kind", ["bso", "tbso"])
def test_nonfinite_raise_mode_updates_nothing(kind):
    params = random_params(12)
    opt = make(kind, group_dicts(params, kind), nonfinite="raise")
    for p in params:
        p.grad = torch.randn_like(p)
    params[-1].grad.view(-1)[-1] = math.nan
    before = [p.detach().clone() for p in params]
    with pytest.raises(
        FloatingPointError,
        match=r"parameter\(s\) \[6\] \(indices over all param groups\); nothing was updated",
    ):
        sequence_step(opt)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert not opt.state


def test_tbso_skips_a_finite_gradient_whose_square_overflows():
    p = torch.nn.Parameter(torch.ones(3))
    opt = TBSO([p], time_steps=2)
    p.grad = torch.tensor([1e30, 0.0, 0.0])
    with pytest.warns(UserWarning, match="non-finite"):
        sequence_step(opt)
    assert p not in opt.state  # v never became inf


# ----------------------------------------------------------------------------- flip statistics


def test_flip_stats_count_sign_changes_and_name_parameters():
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Linear(6, 5), torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)
    )
    bso_snn.convert(model, lam=0.5)
    binary = list(bso_snn.binary_parameters(model))
    opt = BSO(binary, gamma=0.0, beta=0.0)
    assert opt.flip_stats() == []
    before = [p.detach().clone() for p in binary]
    for p in binary:
        p.grad = torch.randn_like(p)
    sequence_step(opt)
    named = named_flip_stats(opt, model)
    assert list(named) == ["1.weight", "2.weight"]
    for p, b, stat in zip(binary, before, named.values(), strict=True):
        assert stat.flips == int((p != b).sum()) > 0
        assert stat.numel == p.numel() and stat.rate == stat.flips / p.numel()


# ----------------------------------------------------------------------------- bad input

_NOT_BINARY = torch.nn.Parameter(torch.tensor([1.0, 0.5, -1.0]))


def _one():
    return [torch.nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize(
    "build, error, message",
    [
        (
            lambda: BSO(torch.nn.Linear(3, 2).parameters()),
            ValueError,
            r"parameter 0 \(shape \(2, 3\)\) is not binary",
        ),
        (
            lambda: TBSO([_NOT_BINARY], time_steps=2),
            ValueError,
            r"holds 0.5, but every value must be exactly -1 or \+1",
        ),
        (
            lambda: BSO([torch.nn.Parameter(torch.ones(2)), _NOT_BINARY]),
            ValueError,
            r"bso_snn.convert\(model\)",
        ),
        (lambda: BSO([torch.ones(2, dtype=torch.int64)]), TypeError, r"parameter 0 has dtype torch.int64"),
        (lambda: BSO(_one(), gamma=-1.0), ValueError, r"gamma=-1.0 must be a finite number in \[0.0, inf\)"),
        (lambda: BSO(_one(), gamma=math.nan), ValueError, r"gamma=nan must be a finite number"),
        (lambda: BSO(_one(), beta=1.0), ValueError, r"beta=1.0 must be a finite number in \[0.0, 1.0\)"),
        (lambda: BSO(_one(), weight_decay=1e-4), ValueError, r"weight_decay=0.0001 is not supported by BSO"),
        (
            lambda: TBSO([{"params": _one(), "weight_decay": 5e-4}], time_steps=2),
            ValueError,
            r"not supported by TBSO",
        ),
        (lambda: BSO(_one(), reset_momentum=1), TypeError, r"reset_momentum=1 must be a bool"),
        (lambda: BSO(_one(), foreach="yes"), TypeError, r"foreach='yes' must be None .* True .* or False"),
        (lambda: BSO(_one(), fused=1), TypeError, r"fused=1 must be None .* True or False"),
        (
            lambda: TBSO(_one(), time_steps=2, fused=True, foreach=True),
            ValueError,
            r"fused=True and foreach=True",
        ),
        (
            lambda: BSO([torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))], fused=True),
            RuntimeError,
            r"BSO\(fused=True\): parameter 0 \(torch.bfloat16 on cpu\) cannot use the fused kernel: .*float32",
        ),
        (lambda: BSO(_one(), nonfinite="ignore"), ValueError, r"nonfinite='ignore' must be 'skip'"),
        (lambda: TBSO(_one()), TypeError, r"missing 1 required keyword-only argument: 'time_steps'"),
        (lambda: TBSO(_one(), time_steps=0), ValueError, r"time_steps=0 must be a positive int"),
        (lambda: TBSO(_one(), time_steps=2.0), ValueError, r"time_steps=2.0 must be a positive int"),
        (lambda: TBSO(_one(), betas=(0.9,), time_steps=2), ValueError, r"betas=\(0.9,\) must be a pair"),
        (lambda: TBSO(_one(), betas=(0.9, 1.5), time_steps=2), ValueError, r"betas\[1\]=1.5 must be"),
        (lambda: TBSO(_one(), eps=-1e-8, time_steps=2), ValueError, r"eps=-1e-08 must be a finite number"),
        (
            lambda: TBSO(_one(), time_steps=4).set_time_step(4),
            ValueError,
            r"set_time_step\(4\): t must be an int with 0 <= t < time_steps=4",
        ),
        (lambda: TBSO(_one(), time_steps=4).set_time_step(-1), ValueError, r"0 <= t < time_steps=4"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_a_refused_param_group_is_not_kept():
    opt = BSO(_one())
    with pytest.raises(ValueError, match="gamma=-2"):
        opt.add_param_group({"params": _one(), "gamma": -2})
    assert len(opt.param_groups) == 1


def test_a_scheduler_setting_a_bad_value_is_caught_at_the_next_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = BSO([p])
    opt.param_groups[0]["gamma"] = -1e-3
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"gamma=-0.001 must be"):
        sequence_step(opt)


def test_sparse_gradients_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    opt = BSO([p])
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match=r"BSO does not support sparse gradients \(parameter 0\)"):
        sequence_step(opt)


def test_step_with_closure_returns_the_loss_and_zero_grad_clears():
    p = torch.nn.Parameter(torch.ones(3))
    opt = TBSO([p], gamma=0.0, time_steps=2)

    def closure():
        opt.zero_grad()
        loss = (p * torch.tensor([1.0, -1.0, 2.0])).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 2.0
    assert p.tolist() == [-1.0, 1.0, -1.0]  # flipped where W*M > 0
    opt.zero_grad()
    assert p.grad is None


def test_nonfinite_gradients_in_several_groups_give_one_warning_per_step():
    params = random_params(13)
    opt = BSO(group_dicts(params, "bso"))
    for p in params:
        p.grad = torch.randn_like(p)
    params[0].grad.view(-1)[0] = math.inf
    params[5].grad.view(-1)[0] = math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sequence_step(opt)
    assert [str(w.message).split(";")[0] for w in caught] == [
        "BSO: non-finite gradient (NaN or inf) in parameter(s) [0, 5] (indices over all param groups)"
    ]


def test_a_large_finite_half_precision_gradient_is_not_mistaken_for_non_finite():
    p = torch.nn.Parameter(torch.ones(70_000, dtype=torch.float16))
    opt = BSO([p], gamma=0.0)
    p.grad = torch.ones_like(p)  # its float16 sum (70000) would overflow float16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sequence_step(opt)
    assert opt.flip_stats()[0].flips == 70_000
