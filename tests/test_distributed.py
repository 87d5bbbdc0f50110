"""Several processes (torchrun, DDP over gloo on the CPU), --device, --amp and --workers."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bso_snn.cli import main
from bso_snn.cli.parallel import DeviceError, RankCheck, Runtime, resolve_device
from bso_snn.cli.runstate import EpochOrder, load_run
from bso_snn.cli.train import TEST_STOP_ENV

TINY = ["--dataset", "digits", "--epochs", "1", "--T", "2", "--width", "32", "--batch-size", "64"]


def _torchrun(*args: str, stop_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if stop_at is not None:
        env[TEST_STOP_ENV] = str(stop_at)
    return subprocess.run(
        # python -m torch.distributed.run is the torchrun command (its console script)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "bso_snn", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_torchrun_two_gloo_ranks_stay_bit_identical_and_rank_0_alone_writes(tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(*TINY, "--check-ranks", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["device"] == "cpu"
    # every binary optimizer step (12 batches of 64 per rank from 719 samples x T=2) was checked
    assert m["optimizer_steps"] == 12 * 2 == m["rank_check"]["steps_verified"]
    assert proc.stdout.count("test accuracy") == 1 and proc.stdout.count("bso-snn train ") == 1
    assert "2 processes (cpu, backend gloo)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "flip_rate.png", "loss_acc.png", "metrics.json", "model.bsosnn.pt"
    ]  # fmt: skip

    # stopped mid-epoch on both ranks, resumed under torchrun: the same run, bit for bit
    stopped = tmp_path / "stopped"
    proc = _torchrun(*TINY, "--check-ranks", "--out", str(stopped), stop_at=7)
    # each worker exits 130 (torchrun itself then reports the failure and exits 1)
    assert "exitcode: 130" in proc.stderr
    assert (
        proc.stderr.count(f"Resume it with: torchrun --nproc_per_node 2 -m bso_snn train --resume {stopped}")
        == 1
    )
    saved = load_run(stopped / "checkpoint.pt")
    assert saved["data_order"] == {"epoch": 0, "batch": 7} and len(saved["rng_ranks"]) == 2
    proc = _torchrun("--resume", str(stopped))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((stopped / "metrics.json").read_text())
    for key in ("test_acc", "flips_per_layer", "optimizer_steps", "flip_rate_trace"):
        assert resumed[key] == m[key], key
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in m["epochs"]]
    a, b = load_run(out / "checkpoint.pt")["model"], load_run(stopped / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_order_is_distributed_samplers_order():
    data = torch.utils.data.TensorDataset(torch.arange(11))
    for world in (1, 2, 3, 4):
        for rank in range(world):
            reference = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, seed=5)
            reference.set_epoch(3)
            order = EpochOrder(11, seed=5, rank=rank, world_size=world)
            order.set_position(3)
            assert list(order) == list(reference) and len(order) == len(reference)
            order.set_position(3, start=2)
            assert list(order) == list(reference)[2:]


def test_rank_check_digest_sees_every_weight_momentum_and_v_bit():
    from bso_snn import convert
    from bso_snn.cli.models import build_model
    from bso_snn.optim import make_optimizer

    def trained():
        torch.manual_seed(0)
        model = build_model("mlp", "torch", (1, 8, 8), 10, width=8)
        convert(model)
        opt = make_optimizer(model, "tbso", time_steps=1, float_optimizer=lambda p: torch.optim.Adam(p))
        torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.arange(4)).backward()
        opt.step()
        return model, opt

    (m1, o1), (m2, o2) = trained(), trained()
    c1, c2 = (RankCheck(m, o, o, Runtime(torch.device("cpu"))) for m, o in ((m1, o1), (m2, o2)))
    assert c1.digest() == c2.digest()
    binary = m2[4].weight

    def one_ulp(t):  # the smallest change of the first element
        first = t.view(-1)[0]
        first.copy_(torch.nextafter(first, torch.tensor(float("inf"), dtype=t.dtype)))

    tweaks = [
        lambda: binary.view(-1)[0].neg_(),  # flip one binary weight
        lambda: one_ulp(o2.state[binary]["momentum"]),
        lambda: one_ulp(o2.state[binary]["v"]),
        lambda: one_ulp(m2[1].bias),
        lambda: one_ulp(o2.state[m2[1].weight]["exp_avg_sq"]),
    ]
    for tweak in tweaks:
        before = c2.digest()
        with torch.no_grad():
            tweak()
        assert c2.digest() != before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_device_cuda_without_cuda_exits_2_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "Use --device cpu (or auto)" in err
    assert not out.exists()
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "gpu"], "--device 'gpu': use auto, cpu, cuda or cuda:N"),
        (["--sync-bn"], "--sync-bn needs several processes; start them with: torchrun"),
        (["--check-ranks"], "--check-ranks needs several processes"),
        (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    ],
)
def test_bad_device_and_process_options_exit_2(tmp_path, capsys, argv, message):
    try:
        code = main(["train", *argv, "--out", str(tmp_path / "r")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_amp_keeps_binary_weights_exactly_pm1_and_optimizer_state_float32(tmp_path, one_thread):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--amp", "--workers", "1", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["amp"] == "autocast bfloat16" and m["config"]["workers"] == 1
    assert m["test_acc"] > 0.2, "digits, chance 0.1"
    payload = load_run(out / "checkpoint.pt")
    binary = set(m["weights_per_layer"])
    for name, value in payload["model"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, name
        if name in binary:
            assert set(value.unique().tolist()) == {-1.0, 1.0}, name

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                yield from tensors(v)

    state = list(tensors(payload["optimizer"]))
    assert state and all(
        t.dtype in (torch.float32, torch.int64) for t in state if t.is_floating_point() or t.dim()
    )
    assert all(t.dtype == torch.float32 for t in state if t.is_floating_point())


def test_amp_forward_runs_in_bfloat16_and_returns_float32():
    from bso_snn import convert
    from bso_snn.cli.models import build_model
    from bso_snn.cli.parallel import AutocastForward

    torch.manual_seed(0)
    model = build_model("conv", "torch", (1, 8, 8), 10, width=4)
    convert(model)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = AutocastForward(model, "cpu")(torch.rand(2, 1, 8, 8))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
