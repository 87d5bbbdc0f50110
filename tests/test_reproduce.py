"""``benchmarks/reproduce.py --quick`` runs end to end, writes its table and plots, and resumes.

Never asserts an accuracy: the quick grid trains 256 images for one epoch. 12 subprocess jobs, 2 at
a time, each mostly torch import and data loading: the whole file took 44 s on the idle 2-core
machine (about 60 CPU-seconds), and 8.5 minutes while seven other jobs loaded it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bso_snn.data import FILES, default_root

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("frozen", "fp-bptt", "ottt", "ndot", "latent-ste-bptt", "bso", "tbso")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fashion_mnist() -> None:
    root = default_root() / "fashion-mnist"
    if not all((root / f).exists() or (root / (f + ".gz")).exists() for f in FILES):
        if os.environ.get("BSO_SNN_REQUIRE_DATA") == "1":
            pytest.fail(f"fashion-mnist missing under {root} although BSO_SNN_REQUIRE_DATA=1")
        pytest.skip(f"fashion-mnist not fetched under {root}: run python -m bso_snn.data fetch fashion-mnist")


def _run(tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "reproduce.py"),
        "--quick",
        "--out",
        str(tmp_path / "q.json"),
    ]
    cmd += ["--doc", str(tmp_path / "results.md"), "--img-dir", str(tmp_path / "img")]
    cmd += ["--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_quick_grid_writes_every_row_the_tables_and_the_plots_then_resumes(tmp_path):
    _fashion_mnist()
    (tmp_path / "results.md").write_text("# Results\n\nhand-written text\n")
    _run(tmp_path)
    data = json.loads((tmp_path / "q.json").read_text())
    train = [r for r in data["rows"] if r["kind"] == "train"]
    assert {r["method"] for r in train} == set(METHODS)
    for r in train:
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0
        assert r["peak_train_mem_bytes"] > 0 and r["train_time_per_epoch_s"] > 0
        assert r["n_train"] == 256 and r["T"] == 2
    binary = {r["method"]: r for r in train if r["method"] in ("frozen", "bso", "tbso", "latent-ste-bptt")}
    full = [r for r in train if r["method"] in ("fp-bptt", "ottt", "ndot")]
    assert all(r["model_bytes"] < r["model_bytes_float32"] / 5 for r in binary.values())
    assert all(r["model_bytes"] == r["model_bytes_float32"] for r in full)
    assert {"flip_events", "never_flipped_fraction"} <= binary["bso"].keys()
    assert set(data["selected_gamma"]) == {"bso", "tbso"}
    sweep = [r for r in train if r["phase"] == "sweep"]
    assert sorted((r["method"], r["gamma"]) for r in sweep) == [("bso", 5e-7), ("tbso", 0.3), ("tbso", 3.0)]
    memory = {(r["method"], r["T"]) for r in data["rows"] if r["kind"] == "memory"}
    assert memory == {("fp-bptt", 1), ("fp-bptt", 4), ("tbso", 1), ("tbso", 4)}
    (invocation,) = data["invocations"]
    assert invocation["wall_s"] > 0 and "--quick" in invocation["command"] and invocation["machine"]["torch"]

    page = (tmp_path / "results.md").read_text()
    assert page.startswith("# Results\n\nhand-written text\n")
    for method in METHODS:
        assert f"| {method} | 2 |" in page
    assert "### Claims" in page and "Table 3 analogue" in page
    for name in ("reproduce_memory_vs_T.png", "reproduce_tbso_vs_bso.png", "reproduce_gamma.png"):
        assert (tmp_path / "img" / name).read_bytes().startswith(PNG_MAGIC)

    proc = _run(tmp_path)  # resumable: a rerun finds every row and starts nothing
    assert " start " not in proc.stdout
    again = json.loads((tmp_path / "q.json").read_text())
    assert again["rows"] == data["rows"] and len(again["invocations"]) == 2
    assert (tmp_path / "results.md").read_text().count("<!-- reproduce:begin -->") == 1


def test_results_file_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "q.json"
    out.write_text(json.dumps({"settings": {"n_train": 1}, "rows": [], "invocations": []}))
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "reproduce.py"),
        "--quick",
        "--out",
        str(out),
        "--report-only",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "other settings" in proc.stderr and "--out" in proc.stderr
    assert json.loads(out.read_text())["settings"] == {"n_train": 1}
