"""The bad-input table of ``docs/reliability.md``: every row is one case here.

Each case builds its subjects (models, optimizers, files), feeds one bad input, and must get the
named exception (or CLI exit code) with a message naming the argument, the value or the fix; the
subjects must be unchanged afterwards. ``test_the_docs_table_lists_exactly_these_cases`` keeps the
page and this list identical (regenerate the rows with ``python tests/test_bad_input.py``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import bso_snn
from bso_snn.checkpoint import _checksum, load_packed, save_packed
from bso_snn.cli import main
from bso_snn.cli.runstate import RunCheckpointError, load_run
from bso_snn.layers import binarize_layer
from bso_snn.optim import BSO, TBSO, HybridOptimizer, ParamScheduler, make_optimizer, split_parameters

ROOT = Path(__file__).resolve().parents[1]


class CliExit(Exception):
    """What a CLI case raises: ``exit N: <stderr>``."""


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    input: str  # what the user does (the docs table's column)
    outcome: str  # the exception or exit code, and what the message says
    build: Callable  # tmp_path -> (subjects to keep unchanged, the bad call)
    error: type
    match: str


def model(seed: int = 0, width: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, width), bso_snn.LIF(), nn.Linear(width, width), bso_snn.LIF(), nn.Linear(width, 3)
    )


def converted(seed: int = 0, width: int = 8) -> nn.Sequential:
    m = model(seed, width)
    bso_snn.convert(m)
    return m


def stepped_optimizer(kind: str = "tbso"):
    m = converted()
    opt = make_optimizer(m, kind, time_steps=2 if kind == "tbso" else None)
    bso_snn.train_step(
        m, torch.rand(2, 5, 4), torch.tensor([0, 1, 2, 0, 1]), nn.functional.cross_entropy, opt
    )
    return m, opt


def binary_param(shape=(2, 3)) -> nn.Parameter:
    return nn.Parameter(torch.ones(shape))


def call(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


def cli(*argv: str):
    def run():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code
        raise CliExit(f"exit {code}: {err.getvalue()}")

    return run


def packed_file(tmp_path: Path, edit=None, reseal=False) -> Path:
    path = tmp_path / "model.bsosnn.pt"
    save_packed(converted(), path)
    if edit is not None:
        payload = edit(torch.load(path, weights_only=True))
        if reseal:
            payload["sha256"] = _checksum(payload)
        torch.save(payload, path)
    return path


def run_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    return out


def _v(payload, key, **update):
    payload["binary"]["2.weight"].update(update)
    return payload


# ------------------------------------------------------------------------------------------ cases
C = Case
CASES = [
    # ---- convert
    C("convert-not-a-module", "convert", "`convert('net')`", "TypeError: expects an nn.Module",
      lambda t: ([], call(bso_snn.convert, "net")), TypeError, r"convert expects an nn.Module as model, got str"),
    C("convert-lam-above-1", "convert", "`convert(m, lam=1.5)`", "ValueError: lam must be in [0, 1]",
      lambda t: ([m := model()], call(bso_snn.convert, m, lam=1.5)), ValueError, r"lam=1.5 must be a number in \[0, 1\]"),
    C("convert-lam-negative", "convert", "`convert(m, lam=-0.1)`", "ValueError: lam must be in [0, 1]",
      lambda t: ([m := model()], call(bso_snn.convert, m, lam=-0.1)), ValueError, r"lam=-0.1 must be a number in \[0, 1\]"),
    C("convert-lam-nan", "convert", "`convert(m, lam=nan)`", "ValueError: lam must be in [0, 1]",
      lambda t: ([m := model()], call(bso_snn.convert, m, lam=float("nan"))), ValueError, r"lam=nan must be a number in \[0, 1\]"),
    C("convert-lam-bool", "convert", "`convert(m, lam=True)`", "ValueError: lam must be a number",
      lambda t: ([m := model()], call(bso_snn.convert, m, lam=True)), ValueError, r"lam=True must be a number"),
    C("convert-trace-mode", "convert", "`convert(m, trace='bptt')`", "ValueError: names the supported modes",
      lambda t: ([m := model()], call(bso_snn.convert, m, trace="bptt")), ValueError, r"trace='bptt' is not supported; use one of \('ottt', 'ndot'\)"),
    C("convert-filter-not-callable", "convert", "`convert(m, filter_fn=3)`", "TypeError: must be callable",
      lambda t: ([m := model()], call(bso_snn.convert, m, filter_fn=3)), TypeError, r"filter_fn must be callable as filter_fn\(module, name\), got 3"),
    C("convert-skip-not-bool", "convert", "`convert(m, skip_first_last='yes')`", "TypeError: must be True or False",
      lambda t: ([m := model()], call(bso_snn.convert, m, skip_first_last="yes")), TypeError, r"skip_first_last must be True or False, got 'yes'"),
    C("convert-online-not-bool", "convert", "`convert(m, online=1)`", "TypeError: must be True or False",
      lambda t: ([m := model()], call(bso_snn.convert, m, online=1)), TypeError, r"online must be True or False, got 1"),
    C("convert-inplace-not-bool", "convert", "`convert(m, inplace=None)`", "TypeError: must be True or False",
      lambda t: ([m := model()], call(bso_snn.convert, m, inplace=None)), TypeError, r"inplace must be True or False, got None"),
    # ---- layers and neurons
    C("binarize-relu", "layers", "`binarize_layer(nn.ReLU())`", "TypeError: supports Linear and Conv layers",
      lambda t: ([], call(binarize_layer, nn.ReLU())), TypeError, r"binarize_layer supports Linear and \(non-transposed\) Conv layers, got ReLU"),
    C("binarize-conv-transpose", "layers", "`binarize_layer(nn.ConvTranspose2d(1, 1, 3))`", "TypeError: non-transposed only",
      lambda t: ([layer := nn.ConvTranspose2d(1, 1, 3)], call(binarize_layer, layer)), TypeError, r"got ConvTranspose2d"),
    C("layer-wrong-features", "layers", "a binary `Linear(8, 8)` fed `[5, 7]`", "RuntimeError from F.linear; no trace is kept",
      lambda t: ([m := converted().train()], call(m[2], torch.ones(5, 7))), RuntimeError, r"shapes cannot be multiplied"),
    C("layer-trace-of-another-batch", "layers", "a second batch of another size without `reset`", "RuntimeError: call bso_snn.reset(model)",
      lambda t: ([m := converted().train()], (m[2](torch.ones(5, 8)), call(m[2], torch.ones(3, 8)))[1]), RuntimeError, r"stored trace is \(5, 8\).*call bso_snn.reset\(model\)"),
    C("layer-bad-step-mode", "layers", "`layer.bso_step_mode = 'x'`, then a training forward", "ValueError: use 's' or 'm'",
      lambda t: ([m := converted().train()], (setattr(m[2], "bso_step_mode", "x"), call(m[2], torch.ones(5, 8)))[1]), ValueError, r"bso_step_mode='x'; use 's' for \[N, \.\.\.\] input or 'm'"),
    C("layer-flat-steps-zero", "layers", "`layer.bso_flat_steps = 0`", "ValueError: must be T >= 1 or None",
      lambda t: ([m := converted().train()], (setattr(m[2], "bso_flat_steps", 0), call(m[2], torch.ones(4, 8)))[1]), ValueError, r"bso_flat_steps=0; it must be the number of time steps T >= 1"),
    C("layer-flat-steps-not-dividing", "layers", "`bso_flat_steps = 3` with a batch of 4", "ValueError: not a multiple of bso_flat_steps",
      lambda t: ([m := converted().train()], (setattr(m[2], "bso_flat_steps", 3), call(m[2], torch.ones(4, 8)))[1]), ValueError, r"batch dimension 4 is not a multiple of bso_flat_steps=3"),
    C("load-float-weights", "layers", "`converted.load_state_dict(float_state)`", "RuntimeError: values other than ±1; nothing loaded",
      lambda t: ([m := converted()], call(m.load_state_dict, model(3).state_dict())), RuntimeError, r"2\.weight: the state_dict holds values other than ±1.*nothing was loaded"),
    C("lif-tau-below-1", "layers", "`LIF(tau=0.5)`", "ValueError: tau must be >= 1",
      lambda t: ([], call(bso_snn.LIF, tau=0.5)), ValueError, r"tau=0.5 must be >= 1"),
    C("lif-alpha-zero", "layers", "`LIF(alpha=0)`", "ValueError: alpha must be > 0",
      lambda t: ([], call(bso_snn.LIF, alpha=0)), ValueError, r"alpha=0 must be > 0"),
    C("lif-step-mode", "layers", "`LIF(step_mode='x')`", "ValueError: 's' or 'm'",
      lambda t: ([], call(bso_snn.LIF, step_mode="x")), ValueError, r"step_mode='x' must be 's' \(single step\) or 'm'"),
    C("lif-multi-step-1d", "layers", "`LIF(step_mode='m')` fed a 1-D tensor", "ValueError: expects [T, N, ...]",
      lambda t: ([], call(bso_snn.LIF(step_mode="m"), torch.ones(3))), ValueError, r"LIF in step_mode='m' expects \[T, N, \.\.\.\] input, got \(3,\)"),
    C("lif-state-shape", "layers", "a LIF stepped with batch 5, then batch 3 without reset", "RuntimeError: call bso_snn.reset(model)",
      lambda t: ([], (n := bso_snn.LIF(), n(torch.ones(5, 2)), call(n, torch.ones(3, 2)))[2]), RuntimeError, r"LIF state has shape \(5, 2\) but the input is \(3, 2\); call bso_snn.reset"),
    # ---- train_step / evaluate
    C("step-inputs-list", "train_step/evaluate", "`train_step(m, [x], ...)`", "ValueError: inputs must be a tensor [T, N, ...]",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, [1], torch.zeros(1), nn.functional.cross_entropy, o)), ValueError, r"inputs must be a tensor \[T, N, \.\.\.\] \(time first\), got list"),
    C("step-inputs-1d", "train_step/evaluate", "`train_step` with 1-D inputs", "ValueError: names the shape",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(4), torch.zeros(1), nn.functional.cross_entropy, o)), ValueError, r"inputs must be a tensor \[T, N, \.\.\.\] \(time first\), got \(4,\)"),
    C("step-no-time-steps", "train_step/evaluate", "`train_step` with T = 0", "ValueError: needs T >= 1",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(0, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o)), ValueError, r"holds no time step: \[T, N, \.\.\.\] needs T >= 1"),
    C("step-empty-batch", "train_step/evaluate", "`train_step` with N = 0", "ValueError: needs N >= 1; no optimizer step",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(2, 0, 4), torch.zeros(0, dtype=torch.long), nn.functional.cross_entropy, o)), ValueError, r"holds no sample.*drop_last=True"),
    C("step-update-mode", "train_step/evaluate", "`train_step(..., update='online')`", "ValueError: lists the modes",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(2, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o, update="online")), ValueError, r"update='online' must be one of \('realtime', 'accumulated'\)"),
    C("step-step-mode", "train_step/evaluate", "`train_step(..., step_mode='x')`", "ValueError: lists the step modes",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(2, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o, step_mode="x")), ValueError, r"step_mode='x' must be 's'"),
    C("step-sequence-realtime", "train_step/evaluate", "`step_mode='sequence'` with `update='realtime'`", "ValueError: pass update='accumulated'",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(2, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o, step_mode="sequence")), ValueError, r"step_mode='sequence' runs one forward.*update='accumulated'"),
    C("step-output-layout", "train_step/evaluate", "`output_layout='x'`", "ValueError: 'tn', 'n' or None",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(2, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o, output_layout="x")), ValueError, r"output_layout='x' must be 'tn'"),
    C("step-eval-mode", "train_step/evaluate", "`train_step` on a model in eval mode", "ValueError: call model.train() first",
      lambda t: ([m := converted().eval(), o := make_optimizer(m, "bso")], call(bso_snn.train_step, m, torch.ones(2, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o)), ValueError, r"is in eval mode.*call model.train\(\) first"),
    C("step-tuple-output", "train_step/evaluate", "a model returning a tuple, no `output_fn`", "TypeError: pass output_fn",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso")], (m.append(_Pair()), call(bso_snn.train_step, m, torch.ones(2, 5, 4), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o))[1]), TypeError, r"the model returned tuple, not a tensor; pass output_fn"),
    C("step-nan-input-raise", "train_step/evaluate", "NaN in the input with `nonfinite='raise'`", "FloatingPointError: nothing was updated",
      lambda t: ([m := converted(), o := make_optimizer(m, "bso", nonfinite="raise")], call(bso_snn.train_step, m, torch.full((2, 5, 4), float("nan")), torch.zeros(5, dtype=torch.long), nn.functional.cross_entropy, o)), FloatingPointError, r"non-finite gradient \(NaN or inf\) in parameter\(s\).*nothing was updated"),
    C("evaluate-step-mode", "train_step/evaluate", "`evaluate(m, x, step_mode='x')`", "ValueError: lists the step modes",
      lambda t: ([m := converted()], call(bso_snn.evaluate, m, torch.ones(2, 5, 4), step_mode="x")), ValueError, r"step_mode='x' must be 's'"),
    C("evaluate-empty", "train_step/evaluate", "`evaluate` with N = 0", "ValueError: needs N >= 1",
      lambda t: ([m := converted()], call(bso_snn.evaluate, m, torch.ones(2, 0, 4))), ValueError, r"holds no sample"),
    # ---- optimizers
    C("bso-float-params", "optimizers", "`BSO(unconverted.parameters())`", "ValueError: not binary; convert first",
      lambda t: ([], call(BSO, model().parameters())), ValueError, r"BSO: parameter 0 \(shape \(8, 4\)\) is not binary.*bso_snn.convert"),
    C("bso-int-param", "optimizers", "`BSO([int tensor])`", "TypeError: must be floating point",
      lambda t: ([], call(BSO, [torch.ones(3, dtype=torch.long)])), TypeError, r"parameter 0 has dtype torch.int64; binary parameters must be a floating-point tensor"),
    C("bso-gamma-negative", "optimizers", "`BSO(p, gamma=-1)`", "ValueError: gamma in [0, inf)",
      lambda t: ([], call(BSO, [binary_param()], gamma=-1.0)), ValueError, r"gamma=-1.0 must be a finite number in \[0.0, inf\)"),
    C("bso-gamma-nan", "optimizers", "`BSO(p, gamma=nan)`", "ValueError: gamma must be finite",
      lambda t: ([], call(BSO, [binary_param()], gamma=float("nan"))), ValueError, r"gamma=nan must be a finite number"),
    C("bso-gamma-string", "optimizers", "`BSO(p, gamma='1e-6')`", "ValueError: gamma must be a number",
      lambda t: ([], call(BSO, [binary_param()], gamma="1e-6")), ValueError, r"gamma='1e-6' must be a finite number"),
    C("bso-beta-one", "optimizers", "`BSO(p, beta=1.0)`", "ValueError: beta in [0, 1)",
      lambda t: ([], call(BSO, [binary_param()], beta=1.0)), ValueError, r"beta=1.0 must be a finite number in \[0.0, 1.0\)"),
    C("bso-weight-decay", "optimizers", "`BSO(p, weight_decay=1e-4)`", "ValueError: put weight decay on the float optimizer",
      lambda t: ([], call(BSO, [binary_param()], weight_decay=1e-4)), ValueError, r"weight_decay=0.0001 is not supported by BSO.*float optimizer"),
    C("bso-reset-momentum", "optimizers", "`BSO(p, reset_momentum='yes')`", "TypeError: must be a bool",
      lambda t: ([], call(BSO, [binary_param()], reset_momentum="yes")), TypeError, r"reset_momentum='yes' must be a bool"),
    C("bso-nonfinite-mode", "optimizers", "`BSO(p, nonfinite='ignore')`", "ValueError: 'skip' or 'raise'",
      lambda t: ([], call(BSO, [binary_param()], nonfinite="ignore")), ValueError, r"nonfinite='ignore' must be 'skip'"),
    C("tbso-no-time-steps", "optimizers", "`TBSO(p)`", "TypeError: time_steps is required",
      lambda t: ([], call(TBSO, [binary_param()])), TypeError, r"time_steps"),
    C("tbso-time-steps-zero", "optimizers", "`TBSO(p, time_steps=0)`", "ValueError: a positive int T",
      lambda t: ([], call(TBSO, [binary_param()], time_steps=0)), ValueError, r"time_steps=0 must be a positive int"),
    C("tbso-betas-single", "optimizers", "`TBSO(p, betas=(0.9,))`", "ValueError: must be a pair",
      lambda t: ([], call(TBSO, [binary_param()], betas=(0.9,), time_steps=2)), ValueError, r"betas=\(0.9,\) must be a pair"),
    C("tbso-eps-negative", "optimizers", "`TBSO(p, eps=-1)`", "ValueError: eps >= 0",
      lambda t: ([], call(TBSO, [binary_param()], eps=-1.0, time_steps=2)), ValueError, r"eps=-1.0 must be a finite number"),
    C("tbso-set-time-step", "optimizers", "`tbso.set_time_step(5)` with T = 2", "ValueError: 0 <= t < time_steps",
      lambda t: ([o := TBSO([binary_param()], time_steps=2)], call(o.set_time_step, 5)), ValueError, r"set_time_step\(5\): t must be an int with 0 <= t < time_steps=2"),
    C("tbso-load-bso-state", "optimizers", "`tbso.load_state_dict(bso.state_dict())`", "ValueError: saved by another optimizer type",
      lambda t: ([o := TBSO([p := binary_param()], time_steps=2)], call(o.load_state_dict, BSO([p]).state_dict())), ValueError, r"lacks \['betas', 'eps', 'time_step', 'time_steps'\], so it was saved by another optimizer type"),
    C("bso-load-sgd-state", "optimizers", "`bso.load_state_dict(sgd.state_dict())`", "ValueError: saved by another optimizer type",
      lambda t: ([o := BSO([p := binary_param()])], call(o.load_state_dict, torch.optim.SGD([p], lr=0.1).state_dict())), ValueError, r"lacks \['beta', 'gamma', 'reset_momentum'\]"),
    C("tbso-load-nan-momentum", "optimizers", "a saved momentum holding NaN", "ValueError: holds NaN or inf; nothing loaded",
      lambda t: ([o := stepped_optimizer()[1].optimizers[0]], call(o.load_state_dict, _damaged(o, "momentum", float("nan")))), ValueError, r"momentum holds NaN or inf"),
    C("tbso-load-wrong-shape", "optimizers", "a saved momentum of another shape", "ValueError: expected shape",
      lambda t: ([o := stepped_optimizer()[1].optimizers[0]], call(o.load_state_dict, _damaged(o, "momentum", None))), ValueError, r"momentum is \(3,\), expected shape \(8, 8\)"),
    C("tbso-load-time-steps", "optimizers", "a T = 4 state into `TBSO(time_steps=2)`", "ValueError: build it with time_steps=4",
      lambda t: ([o := TBSO([p := binary_param()], time_steps=2)], call(o.load_state_dict, TBSO([p], time_steps=4).state_dict())), ValueError, r"saved with time_steps=4 but this TBSO has time_steps=2; build it with time_steps=4"),
    C("hybrid-empty", "optimizers", "`HybridOptimizer()`", "ValueError: needs at least one optimizer",
      lambda t: ([], call(HybridOptimizer)), ValueError, r"needs at least one optimizer"),
    C("hybrid-not-an-optimizer", "optimizers", "`HybridOptimizer('sgd')`", "TypeError: pass torch.optim.Optimizer instances",
      lambda t: ([], call(HybridOptimizer, "sgd")), TypeError, r"argument 0 is a str; pass torch.optim.Optimizer instances"),
    C("hybrid-shared-parameter", "optimizers", "one parameter in two inner optimizers", "ValueError: exactly one optimizer",
      lambda t: ([], call(HybridOptimizer, BSO([p := binary_param()]), torch.optim.SGD([p], lr=0.1))), ValueError, r"each parameter must have exactly one optimizer"),
    C("hybrid-add-param-group", "optimizers", "`hybrid.add_param_group(...)`", "TypeError: add it to the inner optimizer",
      lambda t: ([o := stepped_optimizer()[1]], call(o.add_param_group, {"params": [binary_param()]})), TypeError, r"add the group to the inner optimizer"),
    C("hybrid-binary-lr", "optimizers", "an LR scheduler giving binary groups lr > 0, then `step()`", "ValueError: binary weights have no learning rate",
      lambda t: ([m := stepped_optimizer()[0]], _binary_lr_step(m)), ValueError, r"a TBSO param group has lr=0.5, but binary weights have no learning rate"),
    C("hybrid-load-other-types", "optimizers", "`hybrid.load_state_dict` of (BSO, SGD) into (TBSO, SGD)", "ValueError: same optimizers in the same order",
      lambda t: ([o := stepped_optimizer()[1]], call(o.load_state_dict, stepped_optimizer("bso")[1].state_dict())), ValueError, r"holds optimizers \['BSO', 'SGD'\] but this HybridOptimizer has \['TBSO', 'SGD'\]"),
    C("hybrid-mixed-policies", "optimizers", "inner optimizers with different `nonfinite`", "ValueError: one policy for binary and float",
      lambda t: ([], call(HybridOptimizer, BSO([binary_param()], nonfinite="raise"), torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1), nonfinite="skip")), ValueError, r"disagree on non-finite gradients"),
    C("make-optimizer-kind", "optimizers", "`make_optimizer(m, 'adam')`", "ValueError: lists the kinds",
      lambda t: ([m := converted()], call(make_optimizer, m, "adam")), ValueError, r"kind='adam' must be one of \('tbso', 'bso', 'fp'\)"),
    C("make-optimizer-no-time-steps", "optimizers", "`make_optimizer(m, 'tbso')`", "ValueError: needs time_steps=T",
      lambda t: ([m := converted()], call(make_optimizer, m, "tbso")), ValueError, r"needs time_steps=T"),
    C("make-optimizer-fp-gamma", "optimizers", "`make_optimizer(m, 'fp', gamma=1e-6)`", "ValueError: BSO/T-BSO settings",
      lambda t: ([m := model()], call(make_optimizer, m, "fp", gamma=1e-6)), ValueError, r"trains no binary weights; \['gamma'\] are BSO/T-BSO settings"),
    C("split-unconverted", "optimizers", "`split_parameters(unconverted)`", "ValueError: convert it first",
      lambda t: ([m := model()], call(split_parameters, m)), ValueError, r"has no trainable binary parameter; convert it first"),
    C("scheduler-unknown-key", "optimizers", "`ParamScheduler(bso, 'momentum', fn)`", "KeyError: lists the groups' keys",
      lambda t: ([o := BSO([binary_param()])], call(ParamScheduler, o, "momentum", lambda e: 1.0)), KeyError, r"no param group of BSO has the key 'momentum'"),
    C("scheduler-fn-not-callable", "optimizers", "`ParamScheduler(bso, 'gamma', 0.5)`", "TypeError: fn must be callable",
      lambda t: ([o := BSO([binary_param()])], call(ParamScheduler, o, "gamma", 0.5)), TypeError, r"fn must be callable"),
    C("scheduler-nan-factor", "optimizers", "a schedule returning NaN", "ValueError: fn must return finite factors",
      lambda t: ([o := BSO([binary_param()])], call(ParamScheduler, o, "gamma", lambda e: float("nan"))), ValueError, r"the scheduled gamma is nan; fn must return finite factors"),
    # ---- checkpoints
    C("save-not-a-module", "checkpoints", "`save_packed('model', path)`", "TypeError: expects an nn.Module",
      lambda t: ([t], call(save_packed, "model", t / "m.pt")), TypeError, r"save_packed expects an nn.Module as model, got str"),
    C("save-non-binary-weight", "checkpoints", "`save_packed` of a binary weight holding 0.5", "ValueError: restore it with sign; the old file is kept",
      lambda t: ([t], (save_packed(m := converted(), t / "m.pt"), m[2].weight.data.fill_(0.5), call(save_packed, m, t / "m.pt"))[2]), ValueError, r"binary parameter '2.weight' holds values other than ±1"),
    C("load-missing-file", "checkpoints", "`load_packed(m, 'missing.pt')`", "FileNotFoundError",
      lambda t: ([m := converted()], call(load_packed, m, t / "missing.pt")), FileNotFoundError, r"missing.pt"),
    C("load-garbage", "checkpoints", "`load_packed` of a file that is not a checkpoint", "ValueError: corrupted or not written by save_packed",
      lambda t: ([m := converted()], ((t / "g.pt").write_bytes(b"not a checkpoint"), call(load_packed, m, t / "g.pt"))[1]), ValueError, r"cannot be read as a bso-snn packed checkpoint"),
    C("load-foreign-dict", "checkpoints", "`load_packed` of a plain `torch.save(state_dict)`", "ValueError: no format tag",
      lambda t: ([m := converted()], (torch.save(m.state_dict(), t / "s.pt"), call(load_packed, m, t / "s.pt"))[1]), ValueError, r"is not a bso-snn packed checkpoint \(no 'bso-snn-packed' format tag\)"),
    C("load-version", "checkpoints", "a packed file of version 99", "ValueError: load it with the release that wrote it",
      lambda t: ([m := converted()], call(load_packed, m, packed_file(t, lambda p: {**p, "version": 99}))), ValueError, r"has packed-checkpoint version 99"),
    C("load-checksum", "checkpoints", "a packed file with one float value changed", "ValueError: checksum mismatch",
      lambda t: ([m := converted()], call(load_packed, m, packed_file(t, _changed_float))), ValueError, r"checksum mismatch, the file is corrupted; nothing was loaded"),
    C("load-only-format-version", "checkpoints", "a file holding only format and version", "ValueError: damaged, no sha256",
      lambda t: ([m := converted()], call(load_packed, m, packed_file(t, lambda p: {"format": p["format"], "version": p["version"]}))), ValueError, r"is damaged: it has no sha256 checksum"),
    C("load-short-bits", "checkpoints", "a too-short `bits` tensor with a recomputed checksum", "ValueError: needs N bytes of bits",
      lambda t: ([m := converted()], call(load_packed, m, packed_file(t, _short_bits, reseal=True))), ValueError, r"needs 8 bytes of bits, the file holds 7"),
    C("load-into-unconverted", "checkpoints", "`load_packed` into an unconverted model", "ValueError: convert the model first",
      lambda t: ([m := model()], call(load_packed, m, packed_file(t))), ValueError, r"binary weight in the file but the model's layer is not converted"),
    C("load-other-width", "checkpoints", "`load_packed` into a model of another width", "ValueError: names the key and both shapes",
      lambda t: ([m := converted(width=16)], call(load_packed, m, packed_file(t))), ValueError, r"has shape \(8, 4\) in the file but \(16, 4\) in the model|has shape \(8, 8\) in the file but \(16, 16\)"),
    C("run-checkpoint-garbage", "checkpoints", "`load_run` of a damaged checkpoint.pt", "RunCheckpointError: corrupted",
      lambda t: ([t], ((t / "checkpoint.pt").write_bytes(b"\x00" * 10), call(load_run, t / "checkpoint.pt"))[1]), RunCheckpointError, r"cannot be read as a bso-snn run checkpoint"),
    C("run-checkpoint-incomplete", "checkpoints", "a checkpoint.pt lacking entries", "RunCheckpointError: names what is missing",
      lambda t: ([t], (torch.save({"format": "bso-snn-run", "version": 1}, t / "checkpoint.pt"), call(load_run, t / "checkpoint.pt"))[1]), RunCheckpointError, r"is incomplete: it lacks \['config', 'model'"),
    # ---- CLI
    C("cli-T-zero", "CLI", "`bso-snn train --T 0`", "exit 2: --T must be >= 1",
      lambda t: ([t], cli("train", "--T", "0", "--out", str(t / "r"))), CliExit, r"exit 2: .*argument --T: must be >= 1, got 0"),
    C("cli-checkpoint-every-zero", "CLI", "`bso-snn train --checkpoint-every 0`", "exit 2: must be >= 1",
      lambda t: ([t], cli("train", "--checkpoint-every", "0")), CliExit, r"exit 2: .*argument --checkpoint-every: must be >= 1, got 0"),
    C("cli-resume-missing", "CLI", "`bso-snn train --resume nowhere`", "exit 6: checkpoint.pt does not exist",
      lambda t: ([t], cli("train", "--resume", str(t / "nowhere"))), CliExit, r"exit 6: .*checkpoint.pt does not exist"),
    C("cli-resume-with-options", "CLI", "`bso-snn train --resume RUN --epochs 5`", "exit 2: drop --epochs",
      lambda t: ([t], cli("train", "--resume", str(t), "--epochs", "5")), CliExit, r"exit 2: .*--resume continues a run with the settings saved in its checkpoint.pt; drop --epochs"),
    C("cli-resume-with-out", "CLI", "`bso-snn train --resume RUN --out OTHER`", "exit 2: drop --out",
      lambda t: ([t], cli("train", "--resume", str(t), "--out", str(t / "x"))), CliExit, r"exit 2: .*drop --out"),
    C("cli-resume-complete", "CLI", "`--resume` of a finished run", "exit 6: the run is complete",
      lambda t: ([d := run_folder(t, {"metrics.json": b"{}", "checkpoint.pt": b"x"})], cli("train", "--resume", str(d))), CliExit, r"exit 6: .*the run is complete \(metrics.json exists\)"),
    C("cli-resume-damaged", "CLI", "`--resume` of a damaged checkpoint.pt", "exit 6: cannot be read",
      lambda t: ([d := run_folder(t, {"checkpoint.pt": b"garbage"})], cli("train", "--resume", str(d))), CliExit, r"exit 6: .*cannot be read as a bso-snn run checkpoint"),
    C("cli-out-finished-run", "CLI", "`--out` a folder holding a finished run", "exit 4: explains --resume; files kept",
      lambda t: ([d := run_folder(t, {"metrics.json": b"{}"})], cli("train", "--out", str(d))), CliExit, r"exit 4: .*already holds a finished run.*--resume RUN_DIR continues an interrupted run"),
    C("cli-out-interrupted-run", "CLI", "`--out` a folder holding an interrupted run", "exit 4: continue it with --resume",
      lambda t: ([d := run_folder(t, {"checkpoint.pt": b"x"})], cli("train", "--out", str(d))), CliExit, r"exit 4: .*holds an interrupted run.*bso-snn train --resume"),
    C("cli-missing-data", "CLI", "`bso-snn train --dataset mnist` without the files", "exit 3: the fetch command; no folder left",
      lambda t: ([t], cli("train", "--dataset", "mnist", "--data-root", str(t / "nodata"), "--out", str(t / "r"))), CliExit, r"exit 3: .*mnist not found under.*fetch mnist"),
    C("cli-eval-missing", "CLI", "`bso-snn eval nowhere`", "exit 6: does not exist",
      lambda t: ([t], cli("eval", str(t / "nowhere"))), CliExit, r"exit 6: .*nowhere does not exist; pass a run folder or a checkpoint file"),
    C("cli-eval-empty-folder", "CLI", "`bso-snn eval` of a folder that holds no run", "exit 6: pass a run folder",
      lambda t: ([d := run_folder(t, {})], cli("eval", str(d))), CliExit, r"exit 6: .*holds neither a finished run"),
    C("cli-eval-model-without-metrics", "CLI", "`bso-snn eval model.bsosnn.pt` without metrics.json", "exit 6: pass checkpoint.pt instead",
      lambda t: ([d := run_folder(t, {"model.bsosnn.pt": b"x"})], cli("eval", str(d / "model.bsosnn.pt"))), CliExit, r"exit 6: .*metrics.json.*is missing; pass the run's checkpoint.pt instead"),
    C("cli-eval-sbnn-run", "CLI", "`bso-snn eval` of a `--method sbnn` run folder", "exit 6: evaluates BSO/T-BSO/fp runs",
      lambda t: ([d := run_folder(t, {"metrics.json": b'{"config": {"dataset": "digits", "lam_aux": 1e-8}}', "model.pt": b"x"})], cli("eval", str(d))), CliExit, r"exit 6: .*its config has \['lam_aux'\].*bso-snn eval evaluates BSO/T-BSO/fp runs"),
    C("cli-eval-garbage-checkpoint", "CLI", "`bso-snn eval` of a damaged checkpoint.pt", "exit 6: cannot be read",
      lambda t: ([d := run_folder(t, {"checkpoint.pt": b"garbage"})], cli("eval", str(d / "checkpoint.pt"))), CliExit, r"exit 6: .*cannot be read as a bso-snn run checkpoint"),
]  # fmt: skip


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


def _damaged(opt, key, value):
    state = copy.deepcopy(opt.state_dict())
    if value is None:
        state["state"][0][key] = torch.zeros(3)
    else:
        state["state"][0][key].fill_(value)
    return state


def _binary_lr_step(m):
    opt = make_optimizer(m, "tbso", time_steps=2)
    opt.param_groups[0]["lr"] = 0.5  # what OneCycleLR or SWALR(swa_lr=0.5) would do
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    return opt.step


def _changed_float(payload):
    payload["float"]["0.weight"] = payload["float"]["0.weight"] + 1
    return payload


def _short_bits(payload):
    entry = payload["binary"]["2.weight"]
    entry["bits"] = entry["bits"][:-1]
    return payload


# ------------------------------------------------------------------------------------------ checks
def _fingerprint(subject):
    """What must not change: a model's state_dict, an optimizer's state, a folder's files."""
    if isinstance(subject, nn.Module):
        return {k: v.detach().clone() for k, v in subject.state_dict().items()}
    if isinstance(subject, torch.optim.Optimizer):
        return copy.deepcopy(subject.state_dict())
    if isinstance(subject, Path):
        return {
            str(p.relative_to(subject)): p.read_bytes() for p in sorted(subject.rglob("*")) if p.is_file()
        }
    raise TypeError(subject)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_error_and_changes_nothing(case, tmp_path, one_thread):
    subjects, bad_call = case.build(tmp_path)
    before = [_fingerprint(s) for s in subjects]
    with pytest.raises(case.error, match=re.compile(case.match, re.DOTALL)):
        bad_call()
    for subject, old in zip(subjects, before, strict=True):
        assert _same(_fingerprint(subject), old), f"{case.id} changed {type(subject).__name__}"
    if case.id == "cli-missing-data":
        assert not (tmp_path / "r").exists()
    if case.id == "layer-wrong-features":
        assert subjects[0][2].bso_trace is None


def table_rows() -> list[str]:
    return [f"| `{c.id}` | {c.area} | {c.input} | {c.outcome} |" for c in CASES]


def test_cases_are_unique_and_cover_every_area():
    assert len({c.id for c in CASES}) == len(CASES) >= 60
    areas = {c.area for c in CASES}
    assert areas == {"convert", "layers", "train_step/evaluate", "optimizers", "checkpoints", "CLI"}


def test_the_docs_table_lists_exactly_these_cases():
    page = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows == table_rows()
    assert f"{len(CASES)} cases" in page
    assert f"{len(CASES)} bad-input cases" in (ROOT / "README.md").read_text()


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write("\n".join(table_rows()) + "\n")
