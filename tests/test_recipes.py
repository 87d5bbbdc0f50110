"""bso_snn.recipes.paper: the authors' settings with sources, the optimizers/schedules/loss it builds for
converted SpikingJelly and snnTorch models, and ``bso-snn train --recipe paper``."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

import bso_snn
from bso_snn.cli import main
from bso_snn.cli.models import build_model
from bso_snn.online import train_step
from bso_snn.optim import BSO, TBSO
from bso_snn.recipes import paper
from bso_snn.sign import is_binary_tensor

DATASETS = ["cifar10", "cifar100", "dvs", "imagenet-pretrain", "imagenet-finetune"]


@pytest.mark.parametrize("name", DATASETS)
def test_every_number_has_a_source(name):
    recipe = paper(name)
    numeric = [
        f.name
        for f in dataclasses.fields(recipe)
        if isinstance(getattr(recipe, f.name), (int, float)) and not isinstance(getattr(recipe, f.name), bool)
    ]
    assert set(numeric) <= set(recipe.sources), set(numeric) - set(recipe.sources)
    assert all(recipe.sources[key] for key in numeric)


def test_the_papers_numbers():
    gammas = {name: paper(name).gamma for name in DATASETS}
    assert gammas == {
        "cifar10": 5e-7,
        "cifar100": 5e-7,
        "dvs": 1e-6,
        "imagenet-pretrain": 1e-6,
        "imagenet-finetune": 1e-11,
    }
    r = paper("cifar10")
    assert (r.one_minus_beta1, r.one_minus_beta2, r.decay_every, r.decay_factor) == (1e-3, 1e-5, 50, 0.1)
    assert (r.lr, r.momentum, r.lam_mse, r.batch_size, r.epochs) == (0.1, 0.9, 0.05, 128, 400)
    assert (r.tau, r.v_threshold, r.surrogate_alpha, r.update, r.optimizer) == (
        2.0,
        1.0,
        4.0,
        "realtime",
        "tbso",
    )
    assert paper("cifar10", time_steps=4).time_steps == 4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paper("mnist"), r"dataset='mnist' has no paper recipe; choose one of"),
        (lambda: paper("cifar10", optimizer="adam"), r"optimizer='adam' must be one of \('tbso', 'bso'\)"),
        (lambda: paper("cifar10", time_steps=0), r"time_steps=0 must be a positive int"),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_step_loss_is_ce_plus_mse_to_one_hot_by_hand():
    out = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    ce = -sum(out[i, y[i]] - out[i].exp().sum().log() for i in range(5)) / 5
    mse = sum((out[i, j] - float(j == y[i])) ** 2 for i in range(5) for j in range(4)) / 20
    torch.testing.assert_close(paper("cifar10").step_loss(out, y), 0.95 * ce + 0.05 * mse, rtol=1e-12, atol=0)


def test_decay_follows_the_authors_custom_scheduler():
    """Their loop: train epoch e with the current values, then CustomScheduler.step(e), which multiplies
    by 0.1 when e > 0 and e % 50 == 0 (hamingsi/BSO modules/Bop.py, train_cifar_main.py)."""
    recipe = paper("cifar10")
    value, used = 1.0, []
    for epoch in range(160):
        used.append(value)
        if epoch % 50 == 0 and epoch > 0:
            value *= 0.1
    for epoch, expected in enumerate(used):
        assert recipe.decay(epoch) == pytest.approx(expected, rel=1e-12), epoch


def sj_vgg():
    model = build_model("vgg11", "spikingjelly", (3, 32, 32), 10, width=4)
    bso_snn.convert(model)
    return model


def snntorch_net():
    model = build_model("conv", "snntorch", (1, 8, 8), 10, width=4)
    bso_snn.convert(model)
    return model


@pytest.mark.parametrize(
    "build, shape, kind",
    [(sj_vgg, (3, 32, 32), "tbso"), (snntorch_net, (1, 8, 8), "tbso"), (snntorch_net, (1, 8, 8), "bso")],
    ids=["sj-vgg-tbso", "snntorch-tbso", "snntorch-bso"],
)
def test_builds_optimizers_schedules_and_loss_for_a_converted_model(build, shape, kind):
    model = build()
    setup = paper("cifar10", optimizer=kind, time_steps=2).build(model, epochs=60)
    binary, sgd = setup.optimizer.optimizers
    binary_ids = {id(p) for p in bso_snn.binary_parameters(model)}
    assert {id(p) for g in binary.param_groups for p in g["params"]} == binary_ids
    assert {id(p) for g in sgd.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if id(p) not in binary_ids
    }
    group, float_group = binary.param_groups[0], sgd.param_groups[0]
    assert isinstance(sgd, torch.optim.SGD) and (float_group["lr"], float_group["momentum"]) == (0.1, 0.9)
    if kind == "tbso":
        assert isinstance(binary, TBSO) and group["time_steps"] == 2 and not group["reset_momentum"]
        assert group["betas"] == (1 - 1e-3, 1 - 1e-5) and group["eps"] == 1e-10
    else:
        assert isinstance(binary, BSO) and group["beta"] == 1 - 1e-3 and group["reset_momentum"]
    assert group["gamma"] == 5e-7
    # one real-time batch trains (the loss is the recipe's), the weights stay binary
    x, y = torch.rand(2, 3, *shape), torch.randint(0, 10, (3,))
    output_fn = (lambda out: out[0]) if isinstance(model(x[0]), tuple) else None
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, x, y, setup.loss, setup.optimizer, output_fn=output_fn)
    assert math.isfinite(result.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(is_binary_tensor(p) for p in bso_snn.binary_parameters(model))
    # 51 epochs later: gamma and 1 - beta decayed once, the float lr on its cosine to 0 over 60 epochs
    for _ in range(51):
        setup.end_epoch()
    assert group["gamma"] == pytest.approx(5e-8, rel=1e-12)
    betas = group["betas"] if kind == "tbso" else (group["beta"],)
    assert 1 - betas[0] == pytest.approx(1e-4, rel=1e-9)
    if kind == "tbso":
        assert 1 - betas[1] == pytest.approx(1e-6, rel=1e-6)
    assert float_group["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 51 / 60)), rel=1e-9)
    assert group["lr"] == 0.0  # the binary groups' placeholder lr is untouched by the cosine


def test_cli_train_with_the_paper_recipe(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "paper", "--epochs", "1", "--T", "2", "--width", "32", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["recipe"] == "paper" and len(m["epochs"]) == 1  # --epochs honoured
    assert m["test_acc"] > 0.3, "digits after one epoch; chance is 0.1"
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert set(state["schedulers"]) == {"lr", "gamma", "beta"}
    assert state["schedulers"]["gamma"]["last_epoch"] == 1  # stepped after the epoch


@pytest.mark.parametrize("extra", [["--optimizer", "fp"], ["--lr", "0.01"], ["--gamma", "1e-3"]])
def test_cli_refuses_settings_the_recipe_owns(tmp_path, extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "paper", *extra, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "--recipe paper sets the optimizers itself" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_recipe_loss_equals_train_step_per_step_division():
    """train_step divides each step's loss by T: the recipe's step_loss then gives the paper's
    ((1-0.05) CE + 0.05 MSE) / T per step (checked on a gradient)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 4)
    x, y = torch.rand(2, 5, 3), torch.randint(0, 4, (5,))
    recipe = paper("cifar10")
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    train_step(layer, x, y, recipe.step_loss, opt, update="accumulated")
    grad = layer.weight.grad.clone()
    layer.zero_grad()
    for t in range(2):
        out = layer(x[t])
        loss = (0.95 * F.cross_entropy(out, y) + 0.05 * F.mse_loss(out, F.one_hot(y, 4).float())) / 2
        loss.backward()
    torch.testing.assert_close(grad, layer.weight.grad)
