"""``bso-snn train --method sbnn``: the residual SBNN trains on digits without any normalisation
layer, metrics.json records it; usage errors of the two methods' options."""

import json
import re

import pytest

from bso_snn.cli import main


def test_sbnn_resnet_trains_on_digits_without_normalisation(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    argv = ["train", "--method", "sbnn", "--model", "resnet", "--width", "8", "--blocks", "1"]
    assert main([*argv, "--epochs", "4", "--batch-size", "32", "--mc", "3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["normalisation_layers"] == 0 and metrics["sbnn_convs"] == 1 + 2 * 3  # 3 stages on 8x8
    assert set(metrics["test_accuracy"]) == {"noiseless", "single", "mc3"}
    assert metrics["test_acc"] == metrics["test_accuracy"]["single"]
    assert metrics["config"]["recipe"] == "cifar10" and metrics["config"]["lam_aux"] == 1e-8
    assert metrics["config"]["T"] == 1 and metrics["recipe"]["sigma_lr_factor"] == 10.0
    first, last = metrics["epochs"][0], metrics["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]
    assert metrics["test_accuracy"]["noiseless"] > 0.3  # chance is 0.1; seed 0 reached 0.64 here
    assert {p.name for p in out.iterdir()} == {"metrics.json", "loss_acc.png", "model.pt"}
    assert "0 normalisation layers" in capsys.readouterr().out


def test_sbnn_recurrent_on_row_mnist_one_epoch(tmp_path, one_thread):
    from bso_snn.cli import build_parser
    from bso_snn.cli.sbnn import config_from_args

    defaults = config_from_args(
        build_parser().parse_args(["train", "--method", "sbnn", "--dataset", "mnist-rows"])
    )
    assert (defaults.model, defaults.recipe, defaults.T, defaults.lam_aux) == ("recurrent", "shd", 28, 1e-6)
    out = tmp_path / "rows"
    code = main(["train", "--method", "sbnn", "--dataset", "mnist-rows", "--T", "4", "--width", "16",
                 "--epochs", "1", "--batch-size", "500", "--out", str(out)])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == "recurrent" and metrics["config"]["recipe"] == "shd"
    assert metrics["config"]["T"] == 4 and metrics["normalisation_layers"] == 0
    assert metrics["test_acc"] > 0.2  # 7 image rows per step; chance is 0.1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "sbnn", "--model", "mlp"], r"--method sbnn takes --model resnet or recurrent"),
        (["--method", "sbnn", "--optimizer", "bso"], r"--optimizer belong to --method bso"),
        (["--method", "sbnn", "--gamma", "1e-6"], r"--gamma belong to --method bso"),
        (["--model", "resnet"], r"--model resnet is an SBNN model; add --method sbnn"),
        (["--mc", "4"], r"--mc belong to --method sbnn"),
        (["--recipe", "shd"], r"--recipe shd is an SBNN recipe; add --method sbnn"),
        (["--method", "sbnn", "--mc", "-1"], r"--mc -1: the number of Monte Carlo samples must be >= 0"),
        (["--method", "sbnn", "--p", "2"], r"--p 2.0 is outside \[0, 1\]"),
        (["--method", "sbnn", "--blocks", "0"], r"--blocks 0 must be >= 1"),
        (["--method", "gd"], r"argument --method: invalid choice: 'gd'"),
    ],
)
def test_sbnn_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_sbnn_resnet_that_does_not_fit_the_data_exits_2(tmp_path, capsys):
    code = main(["train", "--method", "sbnn", "--model", "recurrent", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "--model recurrent does not fit --dataset digits" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sbnn_trains_on_generated_shd_and_dvs_gesture_files(tmp_path, one_thread):
    import numpy as np
    from test_data_temporal import _aedat3, _gesture_events, _shd_samples, _write_shd

    rng = np.random.default_rng(0)
    (tmp_path / "SHD").mkdir()
    _write_shd(tmp_path / "SHD" / "shd_train.h5", _shd_samples(rng, 8))
    _write_shd(tmp_path / "SHD" / "shd_test.h5", _shd_samples(rng, 4))
    extract = tmp_path / "DVS128Gesture" / "extract" / "DvsGesture"
    extract.mkdir(parents=True)
    for name in ("user01_led", "user24_led"):
        (extract / f"{name}.aedat").write_bytes(_aedat3([(0, _gesture_events(rng, 0, 40000, 800))]))
        rows = "\n".join(f"{c},{c * 3000},{c * 3000 + 2500}" for c in range(1, 12))
        (extract / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + rows + "\n")
    (extract / "trials_to_train.txt").write_text("user01_led.aedat\n")
    (extract / "trials_to_test.txt").write_text("user24_led.aedat\n")
    common = ["train", "--method", "sbnn", "--data-root", str(tmp_path), "--epochs", "1", "--batch-size", "4"]
    assert main([*common, "--dataset", "shd", "--width", "8", "--T", "5", "--out", str(tmp_path / "s")]) == 0
    shd = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert shd["config"]["recipe"] == "shd" and shd["recipe"]["aux_form"] == "input-step-std"
    argv = [*common, "--dataset", "dvs-gesture", "--width", "2", "--blocks", "1", "--T", "3", "--mc", "2"]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    dvs = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert (
        dvs["config"]["recipe"] == "dvs-gesture"
        and dvs["sbnn_convs"] == 7
        and dvs["normalisation_layers"] == 0
    )
    assert set(dvs["test_accuracy"]) == {"noiseless", "single", "mc2"}
