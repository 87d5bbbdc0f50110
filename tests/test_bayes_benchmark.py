"""``benchmarks/bayes_resnet.py --quick`` (what CI runs): every method and depth of the sweep runs end
to end on digits, only the BatchNorm reference has normalisation layers, and a rerun resumes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_sweep_runs_every_method_and_resumes(tmp_path):
    out = tmp_path / "quick.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bayes_resnet.py"), "--quick", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "pipeline ok" in first.stdout
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert len(runs) == 7 and results["settings"]["pool"] == 1
    assert {r["method"]: r["normalisation_layers"] for r in runs.values()}["sg-bn"] == 5
    assert all(r["normalisation_layers"] == 0 for r in runs.values() if r["method"] != "sg-bn")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "digits/depth2" not in again.stdout.split("|")[0]  # nothing retrained
    assert json.loads(out.read_text())["runs"] == runs
