"""Resumable ``bso-snn train``: interrupted by a real signal in a subprocess, resumed, and compared
with an uninterrupted run (losses, flips, optimizer state and final weights exactly equal)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from bso_snn.cli import main
from bso_snn.cli.runstate import EpochOrder, load_run
from bso_snn.cli.train import TEST_HOLD_ENV

ARGS = [
    "train",
    "--epochs",
    "3",
    "--T",
    "2",
    "--width",
    "32",
    "--batch-size",
    "128",
    "--checkpoint-every",
    "5",
]
BATCHES = 12  # ceil(1437 / 128) digits training batches per epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    assert main([*ARGS, "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads
    return out


def _interrupt(out, hold_step: int, sig: int) -> subprocess.CompletedProcess:
    """Run ``bso-snn train`` in a subprocess that holds after ``hold_step`` (a test hook, so the
    interruption point is exact), send it ``sig`` and wait for it to exit."""
    env = {**os.environ, TEST_HOLD_ENV: str(hold_step)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bso_snn", *ARGS, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f"test hold after step {hold_step}" in line:
            break
    else:
        proc.wait(timeout=60)
        pytest.fail("the run never reached the hold:\n" + "".join(seen))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(seen) + stderr)


def _same_run(a, b) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for key in ("test_acc", "flips_per_layer", "optimizer_steps", "flip_rate_trace", "weights_per_layer"):
        assert ma[key] == mb[key], key
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in ma["epochs"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in mb["epochs"]]
    ca, cb = load_run(a / "checkpoint.pt"), load_run(b / "checkpoint.pt")
    assert ca["step"] == cb["step"] == 3 * BATCHES
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for inner_a, inner_b in zip(ca["optimizer"]["optimizers"], cb["optimizer"]["optimizers"], strict=True):
        assert inner_a["param_groups"] == inner_b["param_groups"]
        for index, state in inner_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, inner_b["state"][index][name]), (index, name)
    assert ca["schedulers"] == cb["schedulers"]


@pytest.mark.parametrize(
    ("hold_step", "sig", "epoch", "batch"),
    [(BATCHES, signal.SIGINT, 1, 0), (BATCHES + 5 + 2, signal.SIGTERM, 1, 7)],
    ids=["sigint-after-epoch-1", "sigterm-mid-epoch-2"],
)
def test_interrupted_then_resumed_run_is_bit_identical(reference, tmp_path, hold_step, sig, epoch, batch):
    out = tmp_path / "run"
    proc = _interrupt(out, hold_step, sig)
    assert proc.returncode == 130, proc.stderr
    assert f"Resume it with: bso-snn train --resume {out}" in proc.stderr
    assert not (out / "metrics.json").exists()
    saved = load_run(out / "checkpoint.pt")
    assert (saved["epoch"], saved["data_order"], saved["step"]) == (
        epoch,
        {"epoch": epoch, "batch": batch},
        hold_step,
    )
    # the --out refusal points at --resume
    assert main([*ARGS, "--out", str(out)]) == 4
    assert main(["train", "--resume", str(out)]) == 0
    _same_run(reference, out)
    assert main(["train", "--resume", str(out)]) == 6  # complete: nothing left to resume


def test_eval_reproduces_metrics_json(reference, capsys):
    metrics = json.loads((reference / "metrics.json").read_text())
    for target in (reference, reference / "checkpoint.pt", reference / "model.bsosnn.pt"):
        assert main(["eval", str(target)]) == 0
        printed = capsys.readouterr().out
        assert f"test accuracy {metrics['test_acc']:.4f}" in printed
    assert "(identical)" in printed


def test_epoch_order_is_a_function_of_seed_and_epoch_and_skips_what_was_trained():
    order = EpochOrder(10, seed=3)
    order.set_position(2)
    full = list(order)
    assert full == torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
    order.set_position(2, start=4)
    assert list(order) == full[4:] and len(order) == 6
    order.set_position(1)
    assert list(order) != full
