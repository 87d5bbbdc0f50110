"""split_parameters, HybridOptimizer, make_optimizer, ParamScheduler."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.optim import BSO, TBSO, HybridOptimizer, ParamScheduler, make_optimizer, split_parameters


def converted_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.Linear(8, 6, bias=False), nn.Linear(6, 3)
    )
    bso_snn.convert(model, lam=0.5)
    return model


def fill_grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2


def test_split_parameters_gives_every_trainable_parameter_exactly_once():
    model = converted_model()
    model[0].bias.requires_grad_(False)
    binary, real = split_parameters(model)
    assert [p.shape for p in binary] == [(8, 8), (6, 8)]
    assert binary == [model[2].weight, model[3].weight]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    ids = [id(p) for p in binary + real]
    assert len(ids) == len(set(ids)) and set(ids) == trainable


def test_split_parameters_refuses_an_unconverted_model():
    with pytest.raises(ValueError, match=r"Sequential has no trainable binary parameter; convert it first"):
        split_parameters(nn.Sequential(nn.Linear(2, 2)))


def hybrid_for(model: nn.Module, **tbso) -> HybridOptimizer:
    binary, real = split_parameters(model)
    return HybridOptimizer(
        TBSO(binary, gamma=1e-4, time_steps=3, **tbso), torch.optim.SGD(real, lr=0.1, momentum=0.9)
    )


def sequence_step(hybrid: HybridOptimizer) -> None:
    """``hybrid.step()``, rewinding T-BSO's time index first when its sequence is complete."""
    tbso = hybrid.optimizers[0]
    if tbso.time_step == tbso.param_groups[0]["time_steps"]:
        hybrid.reset_time_step()
    hybrid.step()


def test_hybrid_steps_and_zeroes_both_and_concatenates_param_groups():
    model = converted_model()
    hybrid = hybrid_for(model)
    tbso, sgd = hybrid.optimizers
    assert hybrid.param_groups == tbso.param_groups + sgd.param_groups
    assert all(a is b for a, b in zip(hybrid.param_groups, tbso.param_groups + sgd.param_groups, strict=True))
    before = copy.deepcopy(model.state_dict())
    fill_grads(model, 1)
    hybrid.step()
    after = model.state_dict()
    assert not torch.equal(after["0.weight"], before["0.weight"])  # SGD moved a float weight
    assert not torch.equal(after["2.weight"], before["2.weight"])  # T-BSO flipped a binary one
    assert set(hybrid.state) == set(tbso.state) | set(sgd.state)
    assert tbso.time_step == 1
    hybrid.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_hybrid_state_dict_round_trip_continues_identically():
    model_a, model_b = converted_model(), converted_model()
    hybrid_a = hybrid_for(model_a)
    for seed in range(4):
        fill_grads(model_a, seed)
        sequence_step(hybrid_a)
    model_b.load_state_dict(model_a.state_dict())
    hybrid_b = hybrid_for(model_b)
    hybrid_b.load_state_dict(copy.deepcopy(hybrid_a.state_dict()))
    for seed in range(10, 15):
        fill_grads(model_a, seed)
        fill_grads(model_b, seed)
        sequence_step(hybrid_a)
        sequence_step(hybrid_b)
        for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert hybrid_a.flip_stats() == hybrid_b.flip_stats()


def test_hybrid_load_state_dict_refuses_a_different_set_of_optimizers():
    model = converted_model()
    binary, real = split_parameters(model)
    saved = HybridOptimizer(BSO(binary), torch.optim.SGD(real, lr=0.1)).state_dict()
    other = HybridOptimizer(TBSO(binary, time_steps=2), torch.optim.SGD(real, lr=0.1))
    with pytest.raises(
        ValueError, match=r"holds optimizers \['BSO', 'SGD'\] but this HybridOptimizer has \['TBSO', 'SGD'\]"
    ):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"expects a dict saved by HybridOptimizer.state_dict\(\)"):
        other.load_state_dict(other.optimizers[0].state_dict())


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((), ValueError, r"needs at least one optimizer"),
        (("sgd",), TypeError, r"argument 0 is a str; pass torch.optim.Optimizer instances"),
    ],
)
def test_hybrid_refuses_bad_arguments(args, error, message):
    with pytest.raises(error, match=message):
        HybridOptimizer(*args)


def test_hybrid_refuses_a_parameter_in_two_optimizers():
    model = converted_model()
    binary, real = split_parameters(model)
    with pytest.raises(
        ValueError, match=r"is in optimizer 0 \(BSO\) and optimizer 1 \(SGD\); each parameter"
    ):
        HybridOptimizer(BSO(binary), torch.optim.SGD(real + binary[:1], lr=0.1))


def test_hybrid_time_index_reaches_the_inner_tbso():
    model = converted_model()
    hybrid = hybrid_for(model)
    hybrid.set_time_step(2)
    assert hybrid.optimizers[0].time_step == 2
    bso_snn.reset(model, hybrid)
    assert hybrid.optimizers[0].time_step == 0
    binary, real = split_parameters(model)
    untimed = HybridOptimizer(BSO(binary), torch.optim.SGD(real, lr=0.1))
    untimed.reset_time_step()  # fine: nothing to rewind
    with pytest.raises(TypeError, match=r"none of \['BSO', 'SGD'\] has a time index"):
        untimed.set_time_step(1)


def test_hybrid_closure_is_evaluated_once():
    model = converted_model()
    hybrid = hybrid_for(model)
    calls = []

    def closure():
        calls.append(1)
        hybrid.zero_grad()
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        return loss

    bso_snn.reset(model)
    assert isinstance(hybrid.step(closure), torch.Tensor)
    assert len(calls) == 1


def test_hybrid_flip_stats_index_the_hybrids_parameters():
    model = converted_model()
    binary, real = split_parameters(model)
    hybrid = HybridOptimizer(torch.optim.SGD(real, lr=0.1), BSO(binary, gamma=0.0, beta=0.0))
    fill_grads(model, 3)
    hybrid.step()
    params = [p for g in hybrid.param_groups for p in g["params"]]
    stats = hybrid.flip_stats()
    assert [params[s.index] for s in stats] == binary
    assert all(s.flips > 0 for s in stats)
    names = bso_snn.optim.named_flip_stats(hybrid, model)
    assert list(names) == ["2.weight", "3.weight"]


def test_torch_lr_scheduler_on_the_inner_float_optimizer_works_through_the_hybrid():
    model = converted_model()
    hybrid = hybrid_for(model)
    sgd = hybrid.optimizers[1]
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=4)
    lrs = []
    for seed in range(4):
        fill_grads(model, seed)
        sequence_step(hybrid)
        cosine.step()
        lrs.append(sgd.param_groups[0]["lr"])
    expected = [0.05 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)]
    assert lrs == pytest.approx(expected)


# ----------------------------------------------------------------------------- ParamScheduler


def test_param_scheduler_decays_gamma_like_lambda_lr_and_leaves_other_groups_alone():
    model = converted_model()
    hybrid = hybrid_for(model)
    sched = ParamScheduler(hybrid, "gamma", lambda epoch: 0.5**epoch)
    tbso_group, sgd_group = hybrid.param_groups
    assert tbso_group["gamma"] == 1e-4 and "gamma" not in sgd_group
    values = []
    for _ in range(3):
        sched.step()
        values.append(tbso_group["gamma"])
    assert values == pytest.approx([5e-5, 2.5e-5, 1.25e-5])
    assert sched.get_last_value() == [tbso_group["gamma"]]
    lr = ParamScheduler(hybrid, "lr", lambda epoch: 1 - epoch / 10)
    lr.step()
    assert sgd_group["lr"] == pytest.approx(0.09) and tbso_group["lr"] == 0.0  # binary: the 0.0 placeholder


def test_param_scheduler_scales_tuple_hyperparameters():
    p = torch.nn.Parameter(torch.ones(2))
    opt = TBSO([p], betas=(0.8, 0.9), time_steps=2)
    sched = ParamScheduler(opt, "betas", lambda epoch: (1.0, 1.0 - 0.1 * epoch))
    sched.step()
    assert opt.param_groups[0]["betas"] == pytest.approx((0.8, 0.81))
    ParamScheduler(opt, "betas", lambda epoch: 0.5)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.4, 0.45))


def test_param_scheduler_state_dict_resumes_with_the_optimizer():
    p = torch.nn.Parameter(torch.ones(2))
    opt = BSO([p], gamma=1e-3)
    sched = ParamScheduler(opt, "gamma", lambda epoch: 0.1**epoch)
    sched.step()
    sched.step()
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), sched.state_dict()
    q = torch.nn.Parameter(torch.ones(2))
    opt2 = BSO([q], gamma=1e-3)
    opt2.load_state_dict(saved_opt)
    sched2 = ParamScheduler(opt2, "gamma", lambda epoch: 0.1**epoch, last_epoch=saved_sched["last_epoch"] - 1)
    sched2.load_state_dict(saved_sched)
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["gamma"] == opt.param_groups[0]["gamma"] == pytest.approx(1e-6)


@pytest.mark.parametrize(
    "key, fn, error, message",
    [
        (
            "lr",
            lambda e: 1.0,
            KeyError,
            r"no param group of BSO has the key 'lr'; the groups have \['beta', 'gamma'",
        ),
        ("gamma", 0.5, TypeError, r"fn must be callable as fn\(epoch\) -> factor"),
        (
            "gamma",
            lambda e: math.inf,
            ValueError,
            r"the scheduled gamma is inf; fn must return finite factors",
        ),
        ("gamma", lambda e: (1.0, 1.0), ValueError, r"fn returned a tuple \(1.0, 1.0\) for the scalar gamma"),
    ],
)
def test_param_scheduler_refuses_bad_input(key, fn, error, message):
    opt = BSO([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(error, match=message):
        ParamScheduler(opt, key, fn)


def test_param_scheduler_load_refuses_another_key():
    opt = TBSO([torch.nn.Parameter(torch.ones(2))], time_steps=2)
    with pytest.raises(
        ValueError, match=r"the saved scheduler schedules 'betas', this one schedules 'gamma'"
    ):
        ParamScheduler(opt, "gamma", lambda e: 1.0).load_state_dict({"key": "betas", "last_epoch": 3})


# ----------------------------------------------------------------------------- make_optimizer


def test_make_optimizer_builds_tbso_plus_sgd():
    model = converted_model()
    hybrid = make_optimizer(model, "tbso", time_steps=4, gamma=1e-6)
    tbso, sgd = hybrid.optimizers
    assert isinstance(tbso, TBSO) and tbso.param_groups[0]["time_steps"] == 4
    assert tbso.param_groups[0]["gamma"] == 1e-6
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.1
    adam = make_optimizer(model, "bso", float_optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    assert [type(o).__name__ for o in adam.optimizers] == ["BSO", "Adam"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="tbso"), r"make_optimizer\(kind='tbso'\) needs time_steps=T"),
        (dict(kind="bso", time_steps=4), r"time_steps=4 is a T-BSO setting"),
        (dict(kind="adam"), r"kind='adam' must be one of \('tbso', 'bso', 'fp'\)"),
    ],
)
def test_make_optimizer_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(converted_model(), **kwargs)


def test_online_train_step_keeps_the_tbso_time_index_aligned_with_the_model():
    from bso_snn.neurons import LIF
    from bso_snn.online import train_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), LIF(), nn.Linear(8, 8), LIF(), nn.Linear(8, 3))
    bso_snn.convert(model)
    hybrid = make_optimizer(model, "tbso", time_steps=4)
    tbso = hybrid.optimizers[0]
    tbso.set_time_step(2)  # stale index from an interrupted sequence
    x, y = torch.rand(4, 5, 4) * 3, torch.randint(0, 3, (5,))
    train_step(model, x, y, nn.functional.cross_entropy, hybrid)
    v = tbso.state[model[2].weight]["v"]
    assert (v > 0).all() and tbso.time_step == 4  # steps used t = 0, 1, 2, 3: sequence complete
    before = v.clone()
    train_step(model, x[:3], y, nn.functional.cross_entropy, hybrid)  # a shorter sequence
    assert tbso.time_step == 3
    assert torch.equal((v != before).nonzero().flatten(), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- a real torch Optimizer


def test_hybrid_is_a_torch_optimizer_that_torch_lr_schedulers_and_swa_accept():
    model = converted_model()
    hybrid = hybrid_for(model)
    assert isinstance(hybrid, torch.optim.Optimizer)
    tbso_group, sgd_group = hybrid.param_groups
    step_lr = torch.optim.lr_scheduler.StepLR(hybrid, step_size=1, gamma=0.5)
    fill_grads(model, 1)
    hybrid.step()
    step_lr.step()
    assert sgd_group["lr"] == 0.05 and tbso_group["lr"] == 0.0
    assert step_lr.get_last_lr() == [0.0, 0.05]
    swa = torch.optim.swa_utils.SWALR(hybrid, swa_lr=[0.0, 0.01], anneal_epochs=1)
    hybrid.step()
    swa.step()
    assert sgd_group["lr"] == pytest.approx(0.01) and tbso_group["lr"] == 0.0
    averaged = torch.optim.swa_utils.AveragedModel(model)
    averaged.update_parameters(model)
    # step hooks run around the hybrid's step, like any optimizer's
    calls = []
    hybrid.register_step_post_hook(lambda opt, args, kwargs: calls.append(opt))
    hybrid.step()
    assert calls == [hybrid]


def test_hybrid_refuses_a_scheduler_that_gives_binary_groups_a_learning_rate():
    model = converted_model()
    hybrid = hybrid_for(model)
    torch.optim.lr_scheduler.OneCycleLR(
        hybrid, max_lr=0.1, total_steps=10, cycle_momentum=False
    )  # sets every group's lr
    weights = [p.detach().clone() for p in model.parameters()]
    fill_grads(model, 1)
    with pytest.raises(ValueError, match=r"a TBSO param group has lr=.*binary weights have no learning rate"):
        hybrid.step()
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_hybrid_state_is_one_mapping_that_writes_to_the_owner():
    model = converted_model()
    hybrid = hybrid_for(model)
    fill_grads(model, 1)
    hybrid.step()
    tbso, sgd = hybrid.optimizers
    assert len(hybrid.state) == len(tbso.state) + len(sgd.state)
    p = model[0].weight
    hybrid.state[p] = {"momentum_buffer": torch.zeros_like(p)}
    assert sgd.state[p] is hybrid.state[p]
    with pytest.raises(TypeError, match=r"add the group to the inner optimizer"):
        hybrid.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
    clone = copy.deepcopy(hybrid)
    assert isinstance(clone, HybridOptimizer) and len(clone.param_groups) == 2


def test_hybrid_load_state_dict_is_all_or_nothing():
    model = converted_model()
    hybrid = hybrid_for(model)
    fill_grads(model, 1)
    hybrid.step()
    state = hybrid.state_dict()
    bad = copy.deepcopy(state)
    bad["optimizers"][1]["param_groups"][0]["params"] = []  # the SGD part does not fit
    before = copy.deepcopy(hybrid.state_dict())
    for group in bad["optimizers"][0]["param_groups"]:
        group["gamma"] = 123.0
    with pytest.raises(ValueError):
        hybrid.load_state_dict(bad)
    assert hybrid.param_groups[0]["gamma"] == before["optimizers"][0]["param_groups"][0]["gamma"]
