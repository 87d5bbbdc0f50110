"""The measured defects of issue 13, one test each (each failed before its fix)."""

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.checkpoint import _checksum, load_packed, save_packed
from bso_snn.optim import BSO, TBSO, HybridOptimizer, ParamScheduler, make_optimizer


def snn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8),
        bso_snn.LIF(),
        nn.Linear(8, 8),
        bso_snn.LIF(),
        nn.Linear(8, 8),
        bso_snn.LIF(),
        nn.Linear(8, 3),
    )


def converted(seed: int = 0) -> nn.Sequential:
    model = snn(seed)
    bso_snn.convert(model)
    return model


def batch(n: int = 5, T: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(T, n, 4, generator=gen) * 2, torch.randint(0, 3, (n,), generator=gen)


def ce(out, y):
    return nn.functional.cross_entropy(out, y)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# 1 ------------------------------------------------------------------------------------------
def test_1_param_scheduler_keeps_scheduling_after_optimizer_load_state_dict():
    p = nn.Parameter(torch.ones(3))
    opt = BSO([p], gamma=1e-3)
    sched = ParamScheduler(opt, "gamma", lambda e: 0.1**e)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # replaces the param-group dicts
    sched.step()
    assert opt.param_groups[0]["gamma"] == pytest.approx(1e-4)


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("foreach", [True, False])
def test_2_half_precision_parameters_keep_float32_state(dtype, foreach):
    p = nn.Parameter(torch.ones(4, dtype=dtype))
    opt = TBSO([p], gamma=1e9, time_steps=1, foreach=foreach)  # a huge gamma: nothing flips
    for _ in range(5000):
        p.grad = torch.full_like(p, -0.5)
        opt.step()
    m = opt.state[p]["momentum"]
    assert m.dtype == torch.float32 and opt.state[p]["v"].dtype == torch.float32
    expected = -0.5 * (1 - (1 - 1e-3) ** 5000)  # 0.497 (bf16 state gave 0.125)
    assert m[0].item() == pytest.approx(expected, rel=1e-3)
    assert p.dtype == dtype and torch.equal(p.detach(), torch.ones(4, dtype=dtype))
    # the state survives a state_dict round trip in float32
    opt2 = TBSO([p], gamma=1e9, time_steps=1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[p]["momentum"].dtype == torch.float32
    assert torch.equal(opt2.state[p]["momentum"], m)


def test_2_half_precision_flips_match_a_float32_run():
    torch.manual_seed(0)
    w = torch.randint(0, 2, (64,)).float() * 2 - 1
    grads = [torch.randn(64).to(torch.bfloat16) * 1e-3 for _ in range(50)]
    runs = []
    for dtype in (torch.bfloat16, torch.float32):
        p = nn.Parameter(w.clone().to(dtype))
        opt = BSO([p], gamma=1e-6)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        runs.append(p.detach().float())
    assert torch.equal(runs[0], runs[1])


# 3 ------------------------------------------------------------------------------------------
def test_3_a_failed_forward_leaves_no_stale_trace():
    model = converted()
    model.train()
    with pytest.raises(RuntimeError):
        model[2](torch.ones(5, 7))  # wrong feature size: F.linear fails after the trace was computed
    assert model[2].bso_trace is None
    model[2](torch.ones(5, 8))  # the next correct call works (it used to ask for a reset)


# 4 ------------------------------------------------------------------------------------------
def test_4_refused_load_state_dict_changes_nothing():
    plain = snn(seed=3).state_dict()  # float weights for the binary layers
    model = converted()
    before = snapshot(model)
    with pytest.raises(
        RuntimeError, match=r"2\.weight: the state_dict holds values other than ±1.*nothing was loaded"
    ):
        model.load_state_dict(plain)
    assert unchanged(model, before)  # 0.weight (float, loaded first) is untouched too


# 5 ------------------------------------------------------------------------------------------
def _stepped(opt_cls, **kwargs):
    p = nn.Parameter(torch.ones(2, 3))
    opt = opt_cls([p], **kwargs)
    p.grad = torch.full_like(p, 0.1)
    opt.step()
    return p, opt


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (
            lambda: _stepped(BSO)[1],
            lambda p: TBSO([p], time_steps=2),
            r"lacks \['betas', 'eps', 'time_step', 'time_steps'\]",
        ),
        (
            lambda: _stepped(TBSO, time_steps=2)[1],
            lambda p: BSO([p]),
            r"lacks \['beta'\], so it was saved by another optimizer",
        ),
        (
            lambda: _stepped(torch.optim.SGD, lr=0.1, momentum=0.9)[1],
            lambda p: TBSO([p], time_steps=2),
            r"lacks \['betas', 'eps', 'gamma',",
        ),
    ],
    ids=["bso-into-tbso", "tbso-into-bso", "sgd-into-tbso"],
)
def test_5_another_optimizers_state_is_refused(source, target, message):
    state = source().state_dict()
    p = nn.Parameter(torch.ones(2, 3))
    opt = target(p)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert opt.state_dict() == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda s: s["state"][0]["momentum"].fill_(float("nan")),
            r"momentum holds NaN or inf \(that layer would never flip",
        ),
        (
            lambda s: s["state"][0].update(momentum=torch.zeros(3)),
            r"momentum is \(3,\), expected shape \(2, 3\)",
        ),
        (lambda s: s["state"][0].update(v=torch.zeros(4)), r"v is \(4,\), expected shape \(2,\)"),
        (
            lambda s: s["param_groups"][0].update(time_steps=4),
            r"saved with time_steps=4 but this TBSO has time_steps=2",
        ),
        (lambda s: s["state"].update({7: {"momentum": torch.zeros(2, 3)}}), r"state index 7 is not one of"),
    ],
    ids=["nan-momentum", "momentum-shape", "v-shape", "time-steps", "index"],
)
def test_5_damaged_state_is_refused_before_anything_changes(damage, message):
    p, opt = _stepped(TBSO, time_steps=2)
    state = copy.deepcopy(opt.state_dict())
    damage(state)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert torch.equal(after["state"][0]["momentum"], before["state"][0]["momentum"])


# 6 ------------------------------------------------------------------------------------------
def test_6_nan_input_is_caught_by_one_policy_for_binary_and_float_parameters():
    x, y = batch()
    x[0, 0, 0] = float("nan")
    model = converted()
    opt = make_optimizer(model, "tbso", time_steps=3, gamma=1e-6)
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"HybridOptimizer: non-finite gradient .* parameter\(s\) \[2, 3\]"):
        bso_snn.train_step(model, x, y, ce, opt)
    assert torch.equal(model[0].weight, before["0.weight"])  # the first (float) layer was not given NaN
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    model = converted()
    opt = make_optimizer(model, "tbso", time_steps=3, gamma=1e-6, nonfinite="raise")
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient .*nothing was updated"):
        bso_snn.train_step(model, x, y, ce, opt)
    assert unchanged(model, before) and opt.optimizers[0].time_step == 0


def test_6_hybrid_refuses_optimizers_with_different_policies():
    model = converted()
    binary, real = bso_snn.split_parameters(model)
    with pytest.raises(ValueError, match=r"disagree on non-finite gradients \(\['raise', 'skip'\]\)"):
        HybridOptimizer(
            TBSO(binary, time_steps=2, nonfinite="raise"), torch.optim.SGD(real, lr=0.1), nonfinite="skip"
        )


# 7 ------------------------------------------------------------------------------------------
def _write(path, payload: dict, reseal: bool) -> None:
    if reseal:
        payload["sha256"] = _checksum(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


def _short_bits(p: dict) -> dict:
    p["binary"]["2.weight"]["bits"] = p["binary"]["2.weight"]["bits"][:-1]
    return p


@pytest.mark.parametrize(
    ("edit", "reseal", "message"),
    [
        (
            lambda p: {"format": p["format"], "version": p["version"]},
            False,
            r"damaged: it has no sha256 checksum",
        ),
        (
            lambda p: p["binary"]["2.weight"].pop("dtype") and p,
            False,
            r"binary entry '2.weight' lacks 'dtype'",
        ),
        (_short_bits, True, r"needs 8 bytes of bits, the file holds 7"),
    ],
    ids=["only-format-and-version", "dtype-key-lost", "short-bits-resealed"],
)
def test_7_corrupted_packed_checkpoint_gives_a_clear_error(tmp_path, edit, reseal, message):
    path = tmp_path / "m.pt"
    save_packed(converted(), path)
    _write(path, edit(torch.load(path, weights_only=True)), reseal)
    target = converted(seed=5)
    before = snapshot(target)
    with pytest.raises(ValueError, match=message):
        load_packed(target, path)
    assert unchanged(target, before)


def test_7_a_flipped_bit_in_the_pickled_dtype_key_is_a_clear_error(tmp_path):
    model = converted()
    path = tmp_path / "m.pt"
    save_packed(model, path)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"dtype")
    raw[at] ^= 0x01  # 'dtype' -> 'etype'
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"lacks 'dtype'|cannot be read|checksum"):
        load_packed(converted(), path)


# 8 ------------------------------------------------------------------------------------------
def test_8_deepcopy_and_convert_copy_work_right_after_train_step():
    model = converted()
    opt = make_optimizer(model, "bso", gamma=1e-6)
    x, y = batch()
    bso_snn.train_step(model, x, y, ce, opt)
    copy.deepcopy(model)
    # neuron state still attached to the graph (as library neurons keep it between steps)
    model[1].v = model[1].v + 0 * model[0].weight.sum()
    assert model[1].v.grad_fn is not None
    clone = copy.deepcopy(model)
    assert clone[1].v.grad_fn is None and torch.equal(clone[1].v, model[1].v)
    copied = bso_snn.convert(model, inplace=False).model
    assert copied is not model
    assert pickle.loads(pickle.dumps(model))[1].v.grad_fn is None


# smaller ------------------------------------------------------------------------------------
def test_empty_batch_is_refused_before_any_step():
    model = converted()
    opt = make_optimizer(model, "bso")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"holds no sample: \[T, N, \.\.\.\] needs T >= 1 and N >= 1"):
        bso_snn.train_step(model, torch.zeros(3, 0, 4), torch.zeros(0, dtype=torch.long), ce, opt)
    with pytest.raises(ValueError, match=r"holds no time step"):
        bso_snn.train_step(model, torch.zeros(0, 5, 4), torch.zeros(5, dtype=torch.long), ce, opt)
    assert unchanged(model, before) and not opt.state


def test_train_step_refuses_a_model_in_eval_mode():
    model = converted().eval()
    opt = make_optimizer(model, "bso")
    with pytest.raises(ValueError, match=r"is in eval mode.*call model.train\(\) first"):
        bso_snn.train_step(model, *batch(), ce, opt)


def test_a_refused_step_in_a_hybrid_keeps_time_indices_aligned():
    model = converted()
    binary, real = bso_snn.split_parameters(model)
    first, second = TBSO([binary[0]], time_steps=3), TBSO([binary[1]], time_steps=3)
    hybrid = HybridOptimizer(first, second, torch.optim.SGD(real, lr=0.1))
    second.param_groups[0]["gamma"] = -1.0  # e.g. a bad schedule
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"gamma=-1.0 must be a finite number"):
        hybrid.step()
    assert first.time_step == second.time_step == 0


def test_numpy_numbers_are_accepted_as_hyperparameters():
    p = nn.Parameter(torch.ones(3))
    opt = TBSO([p], gamma=np.float32(1e-6), betas=(np.float64(0.999), np.float32(0.99999)), time_steps=2)
    p.grad = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert BSO([p], gamma=np.float32(1e-6), beta=np.float32(0.9)).defaults["gamma"] == np.float32(1e-6)


def test_optimizer_copies_keep_their_settings():
    p = nn.Parameter(torch.ones(3))
    opt = BSO([p], nonfinite="raise", foreach=False)
    clone = copy.deepcopy(opt)
    assert (clone.nonfinite, clone.foreach) == ("raise", False)
    clone.param_groups[0]["params"][0].grad = torch.ones(3)
    clone.step()


# run files ----------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from bso_snn._atomic import atomic_write

    path = tmp_path / "metrics.json"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1
