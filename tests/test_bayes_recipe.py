"""The authors' recipes, the per-script aux forms, Monte Carlo evaluation and the recurrent SHD layer,
each against a plain transcription of the released code or a hand loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from bso_snn.bayes import (
    AUX_FORMS,
    RECIPES,
    SBNNLIF,
    SBNNRecurrent,
    SBNNResNet,
    SHDNet,
    accuracies,
    predict,
    recipe,
    reset_sbnn,
    set_noise,
)


def _released_lr(epoch, epochs, lr, divisor):
    """adjust_learning_rate of train_cifar.py / train_dvs.py (divisor 50) and train_shd.py (divisor 10)."""
    min_lr = lr / divisor
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_groups_and_cosine_follow_the_released_scripts(name):
    rec = recipe(name)
    if name == "shd":
        model = SHDNet(in_features=6, hidden=(4, 4), num_classes=3, time_steps=2)
    else:
        model = SBNNResNet(2, 3, widths=(2, 4), blocks_per_stage=1, bias_noise_std=rec.bias_noise_std)
    optimizer = rec.optimizer(model)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["base"]["lr"] == rec.lr and groups["sigma"]["lr"] == pytest.approx(10 * rec.lr)
    sigma_names = {n for n, p in model.named_parameters() if any(p is q for q in groups["sigma"]["params"])}
    assert sigma_names and all(n.endswith(("rho", "rho_rec")) for n in sigma_names)
    if rec.bias_noise_std is None:
        assert "bias_noise" not in groups
    else:
        assert groups["bias_noise"]["lr"] == pytest.approx(10 * rec.lr)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(model.parameters()))
    epochs = 7
    scheduler = rec.scheduler(optimizer, epochs)
    for epoch in range(epochs):
        want = _released_lr(epoch, epochs, rec.lr, rec.min_lr_divisor)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
        assert groups["sigma"]["lr"] == pytest.approx(10 * want, rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_recipe_constants_are_the_scripts():
    assert {n: r.lam_aux for n, r in RECIPES.items()} == {"cifar10": 1e-8, "dvs-gesture": 1e-10, "shd": 1e-6}
    assert {n: r.min_lr_divisor for n, r in RECIPES.items()} == {"cifar10": 50, "dvs-gesture": 50, "shd": 10}
    assert {n: r.aux_form for n, r in RECIPES.items()} == {
        "cifar10": "input",
        "dvs-gesture": "membrane-no-threshold",
        "shd": "input-step-std",
    }
    assert all(r.aux_form in AUX_FORMS for r in RECIPES.values())
    with pytest.raises(ValueError, match="choose one of cifar10, dvs-gesture, shd"):
        recipe("imagenet")
    bias_model = SBNNResNet(1, 2, widths=(2,), blocks_per_stage=0, bias_noise_std=0.3)
    with pytest.raises(ValueError, match="has no bias noise"):
        recipe("cifar10").param_groups(bias_model)


@pytest.mark.parametrize("form", list(AUX_FORMS))
def test_aux_forms_vs_hand_formulas(form):
    g = torch.Generator().manual_seed(0)
    theta, beta, bias_var = 1.0, 0.9, 0.04
    means = torch.randn(3, 2, 4, generator=g)
    variances = torch.rand(3, 2, 1, generator=g) * 0.3
    xis = torch.randn(3, 2, 4, generator=g)
    neuron = SBNNLIF(threshold=theta, beta=beta, aux_form=form)
    m, V, want = torch.zeros(2, 4), torch.zeros(2, 1), 0.0
    for t in range(3):
        neuron(means[t], variances[t], bias_var, xis[t])
        m_t = beta * m + means[t]
        V = beta**2 * V + variances[t]
        S = (V + bias_var).clamp_min(1e-6).sqrt()
        num, den = {
            "membrane": (m_t - theta, S),
            "input": (means[t], S),
            "membrane-no-threshold": (m_t, S),
            "input-step-std": (means[t], ((variances[t] + bias_var).clamp_min(1e-6) + bias_var).sqrt()),
        }[form]
        want += ((num / den) ** 2).sum(1).mean().item()
        s = (m_t - theta + S * xis[t] > 0).float()
        m = m_t - theta * s
    assert float(neuron.aux) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="aux_form='x'"):
        SBNNLIF(aux_form="x")


def test_predict_mc_is_the_mean_of_noisy_softmaxes():
    torch.manual_seed(0)
    model = SBNNResNet(1, 4, widths=(3, 6), blocks_per_stage=1)
    x = torch.rand(5, 1, 4, 4)
    torch.manual_seed(7)
    got = predict(model, x, "mc", samples=4)
    torch.manual_seed(7)
    with torch.no_grad():
        want = sum(model(x).softmax(-1) for _ in range(4)) / 4
    assert torch.allclose(got, want, atol=1e-7)
    torch.manual_seed(7)
    single = predict(model, x, "single")
    torch.manual_seed(7)
    assert torch.equal(single, model(x).softmax(-1).detach())
    set_noise(model, False)
    noiseless = model(x).softmax(-1).detach()
    set_noise(model, True)
    assert torch.equal(predict(model, x, "noiseless"), noiseless)
    assert all(m.noisy for m in model.modules() if isinstance(m, SBNNLIF))  # restored
    acc = accuracies(model, [(x, torch.zeros(5, dtype=torch.long))], samples=3)
    assert set(acc) == {"noiseless", "single", "mc3"} and all(0 <= v <= 1 for v in acc.values())
    with pytest.raises(ValueError, match="samples=0"):
        predict(model, x, "mc", samples=0)


def _released_shd_layer(layer: SBNNRecurrent, xs, xis):
    """train_shd.py's Bayesian layer loop for one layer (j = 0), with given standard-normal noise."""
    W, R = layer.weight.T, layer.recurrent_weight.T
    mask = 1 - torch.eye(layer.hidden)
    sig, sig_rec, sig_b = (F.softplus(p) for p in (layer.rho, layer.rho_rec, layer.rho_b))
    beta, theta = layer.neuron.beta, layer.neuron.threshold
    B = xs.shape[1]
    mem, total_var, spikes = (
        torch.zeros(B, layer.hidden),
        torch.zeros(B, layer.hidden),
        torch.zeros(B, layer.hidden),
    )
    out, reg = [], 0.0
    for t in range(xs.shape[0]):
        data = xs[t]
        added_var = (data**2).sum(1, keepdim=True) * sig**2 + (spikes**2).sum(1, keepdim=True) * sig_rec**2
        added_sd = (added_var + sig_b**2 > 0).float() * torch.sqrt(
            torch.clamp(added_var + sig_b**2, min=1e-6) + sig_b**2
        )
        total_var = beta**2 * total_var + added_var
        total_sd = ((total_var + sig_b**2) > 0).float() * torch.sqrt(
            torch.clamp(total_var + sig_b**2, min=1e-6)
        )
        noise = xis[t] * total_sd
        new_input = (data @ W + spikes @ (R * mask)) * layer.a[t] + layer.c[t]
        mem = beta * mem + new_input
        reg = reg + ((new_input / added_sd.clamp_min(1e-6)) ** 2).sum(1).mean()
        spikes = (mem - theta + noise > 0).float()
        mem = mem - theta * spikes
        out.append(spikes)
    return torch.stack(out), reg


def test_recurrent_layer_matches_the_released_shd_loop():
    torch.manual_seed(0)
    layer = SBNNRecurrent(6, 5, time_steps=4, aux_form="input-step-std")
    with torch.no_grad():
        layer.weight.mul_(4.0)
        layer.recurrent_weight.mul_(4.0)
    xs = (torch.rand(4, 3, 6) < 0.5).float()
    xis = torch.randn(4, 3, 5)
    reset_sbnn(layer)
    got = [layer(xs[t], t, xis[t]) for t in range(4)]
    want, reg = _released_shd_layer(layer, xs, xis)
    assert torch.equal(torch.stack(got), want)
    assert want.sum() > 0 and (want == 0).sum() > 0
    assert float(layer.neuron.aux.detach()) == pytest.approx(reg.item(), rel=1e-5)
    net = SHDNet(in_features=6, hidden=(5, 5), num_classes=3, time_steps=4)
    assert net(torch.rand(2, 4, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="needs 4 time steps"):
        net(torch.rand(2, 3, 6))
