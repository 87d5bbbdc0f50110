"""scripts/gpu_check.sh and scripts/gpu_check.py: argument handling and their loud failures here
(the GPU run itself needs a CUDA machine; docs/paper.md says what ran where)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bash(*args, **kw):
    return subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh"), *args], capture_output=True, text=True, **kw
    )


def test_unknown_argument_exits_2_with_usage():
    proc = _bash("--bogus")
    assert proc.returncode == 2
    assert "unknown argument '--bogus'" in proc.stderr and "--prepare" in proc.stderr


def test_missing_wheel_folder_fails_loudly_naming_the_prepare_step(tmp_path):
    proc = _bash(
        "--dry-run",
        "--wheels",
        str(tmp_path / "none"),
        env={"OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "run bash scripts/gpu_check.sh --prepare" in proc.stderr
    assert "=== FAILED" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure")
@pytest.mark.parametrize("check", ["cupy", "memory", "amp"])
def test_python_checks_refuse_to_pass_without_a_gpu(check):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gpu_check.py"), check], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert f"FAIL {check}: torch {torch.__version__} sees no CUDA GPU" in proc.stderr
