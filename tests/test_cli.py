"""The ``bso-snn`` command: run folder contents, reproducible checkpoint, and every user error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bso_snn import convert
from bso_snn.checkpoint import load_packed
from bso_snn.cli import main
from bso_snn.cli.models import build_model
from bso_snn.cli.train import _accuracy
from bso_snn.data import load_dataset
from bso_snn.data._idx import write_idx

SMALL = ["--epochs", "2", "--T", "2", "--width", "64", "--batch-size", "128"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(tmp_path, *args):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(out), *args]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_train_tbso_writes_run_folder_and_a_checkpoint_that_reproduces_the_accuracy(tmp_path, capsys):
    threads = torch.get_num_threads()
    out, m = _train(tmp_path)
    assert m["config"]["threads"] == 1 and torch.get_num_threads() == threads  # --threads is restored
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "flip_rate.png",
        "loss_acc.png",
        "metrics.json",
        "model.bsosnn.pt",
    ]
    for png in ("flip_rate.png", "loss_acc.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert (
        m["config"]["optimizer"] == "tbso" and m["config"]["update"] == "realtime" and len(m["epochs"]) == 2
    )
    assert m["test_acc"] > 0.6, "digits, chance is 0.1"
    assert m["normalisation_layers"] == 3  # the mlp's three BatchNorm1d
    # flips: counted per binary layer, at least one flip, every optimizer step counted (12 batches x T=2 x 2 epochs)
    assert set(m["flips_per_layer"]) == set(m["weights_per_layer"]) == {"4.weight", "7.weight"}
    assert m["optimizer_steps"] == 12 * 2 * 2 and sum(m["flips_per_layer"].values()) > 0
    assert m["model_size"]["binary_weights"] == 2 * 64 * 64
    assert m["model_size"]["bytes_1bit"] < m["model_size"]["bytes_float32"]
    assert m["peak_rss_mb"]["end"] >= m["peak_rss_mb"]["before_training"] > 0
    for line in ("test accuracy", "1-bit weights vs", "peak RSS", "4.weight", "7.weight"):
        assert line in printed
    # the packed checkpoint restores a model with exactly the reported test accuracy
    model = build_model("mlp", "torch", (1, 8, 8), 10, width=64)
    convert(model)
    load_packed(model, out / "model.bsosnn.pt")
    _, test = load_dataset("digits")
    assert _accuracy(model, DataLoader(test, batch_size=512), T=2) == pytest.approx(m["test_acc"], abs=1e-12)
    assert all(set(model[i].weight.unique().tolist()) == {-1.0, 1.0} for i in (4, 7))


@pytest.mark.parametrize(
    ("args", "update", "checkpoint"),
    [
        (["--optimizer", "fp"], "bptt", "model.pt"),
        (
            ["--optimizer", "bso", "--update", "accumulated", "--epochs", "1"],
            "accumulated",
            "model.bsosnn.pt",
        ),
        (["--ecosystem", "spikingjelly", "--epochs", "1"], "realtime", "model.bsosnn.pt"),
        (["--ecosystem", "snntorch", "--epochs", "1"], "realtime", "model.bsosnn.pt"),
        (
            ["--model", "conv", "--width", "16", "--batch-size", "64", "--epochs", "1"],
            "realtime",
            "model.bsosnn.pt",
        ),
    ],
    ids=["fp-baseline", "bso-accumulated", "spikingjelly", "snntorch", "conv"],
)
def test_train_variants_learn(tmp_path, args, update, checkpoint):
    out, m = _train(tmp_path, *args)
    assert m["config"]["update"] == update
    assert (out / checkpoint).is_file()
    assert m["test_acc"] > 0.3, "digits, chance is 0.1"
    assert m["test_acc"] == m["epochs"][-1]["test_acc"]
    if update == "bptt":
        assert m["flips_per_layer"] == {} and m["model_size"]["binary_weights"] == 0
    else:
        assert len(m["flips_per_layer"]) == 2
    # bso-snn eval rebuilds the model from the run folder and gets metrics.json's accuracy exactly
    from bso_snn.cli.evaluate import evaluate_path

    assert evaluate_path(out / checkpoint)["test_acc"] == m["test_acc"]


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "imagenet"], r"argument --dataset: invalid choice: 'imagenet'"),
        (["train", "--model", "resnet50"], r"argument --model: invalid choice: 'resnet50'"),
        (["train", "--ecosystem", "norse"], r"argument --ecosystem: invalid choice: 'norse'"),
        (["train", "--optimizer", "adam"], r"argument --optimizer: invalid choice: 'adam'"),
        (["train", "--T", "0"], r"argument --T: must be >= 1, got 0"),
        (["train", "--T", "two"], r"argument --T: 'two' is not a int"),
        (["train", "--epochs", "0"], r"argument --epochs: must be >= 1, got 0"),
        (["train", "--batch-size", "-3"], r"argument --batch-size: must be >= 1, got -3"),
        (["train", "--lr", "0"], r"argument --lr: must be a finite number > 0, got 0"),
        (["train", "--gamma=-1e-6"], r"argument --gamma: must be a finite number >= 0, got -1e-6"),
        (["train", "--gamma", "inf"], r"argument --gamma: must be a finite number >= 0, got inf"),
        (["train", "--optimizer", "fp", "--update", "realtime"], r"--update applies to tbso/bso only"),
        (["fetch", "cifar10-dvs"], r"invalid choice: 'cifar10-dvs'"),
        ([], r"the following arguments are required"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message):
    import re

    assert re.search(message, _usage_error(capsys, argv))


def test_model_too_small_for_the_data_exits_2(tmp_path, capsys):
    assert main(["train", "--model", "resnet18", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--model resnet18 does not fit --dataset digits" in err and "multiples of 16, got 8x8" in err


def test_missing_data_exits_3_with_the_fetch_command(tmp_path, capsys):
    code = main(
        ["train", "--dataset", "mnist", "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 3
    assert not (tmp_path / "r").exists(), "a run that fails before training leaves no folder behind"
    assert "bso-snn: error: mnist not found under" in err
    assert f"python -m bso_snn.data fetch mnist --root {tmp_path / 'nodata'}" in err


def test_corrupted_data_exits_3_with_the_fix(tmp_path, capsys):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for f in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        write_idx(folder / f, np.ones((3, 28, 28) if "images" in f else (3,), np.uint8))
    code = main(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3
    assert "checksum mismatch for" in err and "delete it and fetch again" in err


def test_unwritable_output_folder_exits_4(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["train", "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 4
    assert f"cannot write the run folder --out {blocker / 'run'}" in err and "Choose a writable folder" in err


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["train", "--out", str(out)]) == 4
    err = capsys.readouterr().err
    assert "already holds a finished run (metrics.json)" in err and "bso-snn train --resume RUN_DIR" in err
    assert (out / "metrics.json").read_text() == "{}"


def test_missing_ecosystem_library_exits_5(tmp_path):
    """Simulates an install without snnTorch (sys.modules entry None makes `import snntorch` fail)."""
    code = (
        "import sys; sys.modules['snntorch'] = None\n"
        "from bso_snn.cli import main\n"
        f"sys.exit(main(['train', '--ecosystem', 'snntorch', '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 5
    assert not (tmp_path / "r").exists(), "a run that fails before training leaves no folder behind"
    assert "--ecosystem snntorch needs the snntorch package" in proc.stderr
    assert "pip install 'bso-snn[snntorch]'" in proc.stderr


def test_version(capsys):
    from bso_snn import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"bso-snn {__version__}"


def test_real_process_exit_code_and_help():
    proc = subprocess.run(
        [sys.executable, "-m", "bso_snn", "train", "--T", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "argument --T: must be >= 1, got 0" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "bso_snn", "train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for option in (
        "--dataset",
        "--model",
        "--ecosystem",
        "--optimizer",
        "--T",
        "--epochs",
        "--batch-size",
        "--seed",
    ):
        assert option in proc.stdout
    assert "--update" in proc.stdout and "--out" in proc.stdout


def test_fetch_subcommand_is_idempotent_on_present_files(tmp_path, capsys):
    from bso_snn.data import default_root

    src = default_root() / "mnist"
    if not src.is_dir():
        if os.environ.get("BSO_SNN_REQUIRE_DATA") == "1":
            pytest.fail(f"mnist missing under {src} although BSO_SNN_REQUIRE_DATA=1")
        pytest.skip("mnist not fetched (scripts/test.sh fetches it)")
    (tmp_path / "mnist").mkdir()
    for path in src.iterdir():
        (tmp_path / "mnist" / path.name).symlink_to(path.resolve())
    assert main(["fetch", "mnist", "--root", str(tmp_path), "--source", "web"]) == 0
    assert "already present and verified" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["vgg11"])
def test_paper_model_trains_from_the_command_line(tmp_path, model, one_thread):
    out, m = _train(tmp_path, "--model", model, "--width", "4", "--epochs", "1")
    assert m["config"]["model"] == model and len(m["binary_layers"]) == 7
    assert m["float_layers"] == ["0", "29"]


@pytest.mark.parametrize(
    ("dataset", "make", "args", "steps"),
    [  # optimizer steps: ceil(train images / 32) batches x T
        ("cifar10", "make_cifar10", ["--model", "vgg11"], 3 * 2),  # 5 batches x 16 images
        ("cifar100", "make_cifar100", ["--model", "vgg11"], 2 * 2),  # 48 images
        ("cifar10-dvs", "make_cifar10dvs", ["--model", "vgg11", "--T", "3"], 3 * 3),  # 90 recordings
        ("cifar10", "make_cifar10", ["--model", "resnet18"], 3 * 2),
    ],
    ids=["cifar10-vgg11", "cifar100-vgg11", "cifar10dvs-vgg11", "cifar10-resnet18"],
)
def test_paper_datasets_train_from_generated_files(tmp_path, dataset, make, args, steps, one_thread):
    import _datagen

    getattr(_datagen, make)(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--dataset", dataset, "--data-root", str(tmp_path / "data"), "--epochs", "1"]
    argv += ["--recipe", "paper", "--width", "4", "--batch-size", "32", "--T", "2", "--out", str(out), *args]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["dataset"] == dataset and m["config"]["recipe"] == "paper"
    assert m["epochs"][0]["train_loss"] > 0
    assert m["optimizer_steps"] == steps and 0 <= m["test_acc"] <= 1
